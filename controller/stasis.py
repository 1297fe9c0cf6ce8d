"""The Stasis application: which call an ARI event belongs to, what it means for that call, and reconcile.

Events are keyed by the call's caller channel (our own legs name their call in their id), so everything about
one call is handled in arrival order while calls proceed in parallel.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

from controller import ids
from controller.ari.event_types import (
    ChannelDestroyed,
    ChannelHangupRequest,
    Dial,
    Event,
    PlaybackFinished,
    StasisEnd,
    StasisStart,
    default_key,
)
from controller.ari.errors import quietly
from controller.ari.resources import Bridge, Channel
from controller.call import Call, CallDeps
from shared.metrics import CALLS_ACTIVE, RECONCILED

log = logging.getLogger("stasis")

TEARDOWN_FINISH_S = 2.0  # on stop, how long teardowns under way may run before they are cancelled
DEPARTED_KEPT = 10_000  # callers whose StasisEnd was seen, remembered for a reconcile running while events flow


@dataclass
class Held:
    """What Asterisk and Redis hold when reconcile starts."""

    in_stasis: dict[str, Channel]  # channel id -> channel, for the channels in our Stasis app
    existing: set[str]  # every channel id Asterisk has
    bridges: list[Bridge]
    records: dict[str, dict[str, str]]  # call id -> call record, for the calls Redis lists as active


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StasisApp:
    def __init__(self, deps: CallDeps):
        self.deps = deps
        self.calls: dict[str, Call] = {}  # call id -> call
        self.by_caller: dict[str, Call] = {}  # caller channel id -> call
        # Callers whose StasisEnd was handled (the newest DEPARTED_KEPT): a reconcile after a Redis outage lists
        # Asterisk's channels while events flow, and must not take a caller that left since for a new call.
        self.departed: OrderedDict[str, None] = OrderedDict()

    # --- routing --------------------------------------------------------------------------------------
    def key(self, event: Event) -> str:
        key = default_key(event)
        mine = ids.owner(key)
        if mine is not None:
            call = self.calls.get(mine[0])
            if call is not None:
                return call.caller.id
        return key

    async def handle(self, event: Event) -> None:
        if isinstance(event, StasisStart):
            await self._stasis_start(event)
        elif isinstance(event, StasisEnd):
            self._stasis_end(event.channel)
        elif isinstance(event, PlaybackFinished):
            target = event.playback.target_uri.partition(":")[2]
            call = self.by_caller.get(target)
            if call is not None:
                call.playback_finished(event.playback.id)
        elif isinstance(event, Dial):
            call, leg = self._transfer_leg(event.peer.id)
            if call is not None:
                call.transfer_leg_event(leg, dialstatus=event.dialstatus)
        elif isinstance(event, ChannelHangupRequest):
            call, leg = self._transfer_leg(event.channel.id)
            if call is not None:
                call.transfer_leg_event(leg, cause=event.cause, soft=event.soft)
        elif isinstance(event, ChannelDestroyed):
            log.debug("channel %s destroyed: %s (%s)", event.channel.id, event.cause, event.cause_txt)

    def _transfer_leg(self, channel_id: str) -> tuple[Call | None, str]:
        mine = ids.owner(channel_id)
        if mine is None or not mine[1].startswith("xfer"):
            return None, channel_id
        return self.calls.get(mine[0]), channel_id

    async def _stasis_start(self, event: StasisStart) -> None:
        channel = event.channel
        mine = ids.owner(channel.id)
        if mine is not None or (event.args and event.args[0] in ("transfer",)):
            call = self.calls.get(mine[0]) if mine else None
            if call is None or call.state in ("ending", "ended"):
                # A leg of a call that is gone (e.g. created just before a restart): never leave it behind.
                log.info("stray leg %s in Stasis: hanging it up", channel.id)
                await _ignore_errors(self.deps.rest.hangup(channel.id))
            else:
                call.leg_entered(channel.id)
            return
        self.departed.pop(channel.id, None)  # back in Stasis (from the dialplan): a caller again
        if channel.name.startswith(ids.MEDIA_PREFIXES) or channel.id in self.by_caller:
            return  # someone else's media leg, or a duplicate
        self._new_call(channel)

    def _new_call(self, channel: Channel) -> Call:
        call = Call(self.deps, ids.new_call_id(), channel)
        call.on_ended = self._forget
        self.calls[call.call_id] = call
        self.by_caller[channel.id] = call
        CALLS_ACTIVE.set(len(self.calls))
        log.info(
            "call %s from %s <%s> on %s",
            channel.id,
            channel.caller.name,
            channel.caller.number,
            channel.name,
            extra={"call_id": call.call_id},
        )
        call.start()
        return call

    def _stasis_end(self, channel: Channel) -> None:
        mine = ids.owner(channel.id)
        if mine is not None:
            call = self.calls.get(mine[0])
            if call is not None and mine[1].startswith("em"):
                call.media_left(channel.id)
            elif call is not None and mine[1].startswith("xfer"):
                call.legs.left(channel.id)
                call.transfer_leg_event(channel.id, left=True)
            return
        self.departed[channel.id] = None
        if len(self.departed) > DEPARTED_KEPT:
            self.departed.popitem(last=False)
        call = self.by_caller.get(channel.id)
        if call is not None:
            call.caller_left()

    def worker_died(self, worker_id: str, lost_at_ms: int) -> int:
        """The worker watch found a media worker dead: each call of ours on it is moved (or its setup gives that
        worker up). Returns how many calls were on it."""
        return sum(call.worker_lost(worker_id, lost_at_ms) for call in list(self.calls.values()))

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.call_id, None)
        if self.by_caller.get(call.caller.id) is call:
            del self.by_caller[call.caller.id]
        CALLS_ACTIVE.set(len(self.calls))

    async def stop(self) -> None:
        """Controller shutdown: calls keep running in Asterisk and on the workers; the next controller adopts
        them in reconcile. Only the tasks of this process stop: setups at once, teardowns under way get a moment
        to finish (what they leave is the next reconcile's). Idempotent."""
        for call in list(self.calls.values()):
            for task in (call._setup,):
                if task is not None and not task.done():
                    task.cancel()
        await self.deps.tasks.close(finish_s=TEARDOWN_FINISH_S)

    # --- reconcile ------------------------------------------------------------------------------------
    async def reconcile(self, first: bool, why: str = "", *, events_flowing: bool = False) -> None:
        """After every (re)connect, and after Redis came back: Asterisk replays nothing and a teardown may not have
        reached Redis, so compare what Asterisk has with what Redis and this process know, adopt live calls, finish
        the ended ones, and delete whatever belongs to no live call."""
        # The calls known before Asterisk is asked: a reconcile after a Redis outage runs while events flow, and a
        # call whose caller entered Stasis after the listing must not be taken for one whose caller left.
        known = list(self.calls.values())
        held = await self._what_is_held()
        if events_flowing:  # a caller listed in Stasis whose StasisEnd was handled since has left: not to adopt or take
            held.in_stasis = {cid: c for cid, c in held.in_stasis.items() if cid not in self.departed}
        cleaned = self._end_calls_whose_caller_left(held, known)
        adopted = 0
        for call_id, record in held.records.items():
            if call_id in self.calls:
                continue
            if self._adopt_if_live(call_id, record, held):
                adopted += 1
            else:
                await self._finish_teardown(call_id, record, held)
                cleaned += 1
        live = set(self.calls)
        for channel in held.in_stasis.values():
            cleaned += await self._reconcile_channel(channel, live)
        cleaned += await self._delete_orphan_bridges(held.bridges, live)
        await self._enqueue_pending_emails()
        if adopted:
            RECONCILED.labels("adopted").inc(adopted)
        log.info(
            "reconciled (%s): %d calls adopted, %d objects cleaned, %d calls live",
            why or ("first connect" if first else "reconnect"),
            adopted,
            cleaned,
            len(self.calls),
        )

    async def _what_is_held(self) -> Held:
        d = self.deps
        channels = await d.rest.list_channels()
        bridges = await d.rest.list_bridges()
        in_stasis = {
            c.id: c
            for c in channels
            if c.dialplan and c.dialplan.app_name == "Stasis" and c.dialplan.app_data.split(",")[0] == d.app
        }
        records = {}
        for member in await d.redis.smembers(d.keys.calls_active):
            call_id = _text(member)
            records[call_id] = {_text(k): _text(v) for k, v in (await d.redis.hgetall(d.keys.call(call_id))).items()}
        return Held(in_stasis=in_stasis, existing={c.id for c in channels}, bridges=bridges, records=records)

    def _end_calls_whose_caller_left(self, held: Held, known: list[Call]) -> int:
        ended = 0
        for call in known:
            if call.caller.id not in held.in_stasis and not call.caller_gone.is_set():
                log.info("caller %s left while the events socket was down", call.caller.id)
                call.caller_left()
                ended += 1
        return ended

    def _adopt_if_live(self, call_id: str, record: dict[str, str], held: Held) -> bool:
        """A call in Redis (set up by a previous controller) whose caller is still in Stasis with the agent: its
        media leg, or after a transfer the agent's leg."""
        caller = held.in_stasis.get(record.get("caller_channel", ""))
        if caller is None:
            return False
        state = record.get("state")
        if state == "active" and record.get("media_channel", "") in held.existing:
            self._adopt(call_id, caller, record)
            return True
        if state in ("active", "moving") and record.get("plan"):
            # Its media leg is gone (its worker died while no controller listened) or a move was cut short by the
            # controller before us (state `moving`): the move goes on, with the conversation, not a new call.
            self._adopt(call_id, caller, record).continue_move("adopted_without_media")
            return True
        agent_id = record.get("transfer_channel", "")
        if state == "transferred" and agent_id in held.in_stasis:
            self._adopt(call_id, caller, record, agent_leg=agent_id)
            return True
        return False

    async def _finish_teardown(self, call_id: str, record: dict[str, str], held: Held) -> None:
        """The caller is gone (or never got its media, or its transfer's agent is gone): finish the teardown a
        previous controller began."""
        d = self.deps
        caller = held.in_stasis.get(record.get("caller_channel", ""))
        transferred = record.get("state") == "transferred"
        log.info(
            "call %s: cleaning up (caller %s)",
            call_id,
            "gone" if caller is None else "without agent" if transferred else "without media",
        )
        for leg in (record.get("media_channel", ""), record.get("transfer_channel", "")):
            if leg and leg in held.existing:
                await _ignore_errors(d.rest.hangup(leg))
        if transferred and caller is not None:
            await _ignore_errors(d.rest.hangup(caller.id))  # the agent hung up while we were away
        await _ignore_errors(d.rest.destroy_bridge(ids.bridge_id(call_id)))
        reason = "transferred" if transferred else "reconciled" if caller is None else "reconciled_no_media"
        if await d.admission.release(call_id, record.get("provider") or "openai_realtime", reason, emails=True):
            await self._after_end(call_id, reason)
        RECONCILED.labels("call").inc()
        if caller is not None and not transferred:
            # A caller stuck half set up: start over as a new call rather than leave them in silence.
            self._new_call(caller)

    async def _reconcile_channel(self, channel: Channel, live: set[str]) -> int:
        """One channel in our Stasis app: a leg of a call that is gone, a transfer leg nobody rings any more, or
        a caller nobody took. Returns the number of objects cleaned (0 or 1)."""
        mine = ids.owner(channel.id)
        if mine is None:
            if channel.id not in self.by_caller and not channel.name.startswith(ids.MEDIA_PREFIXES):
                # A caller that entered Stasis while no controller was listening (no StasisStart will come).
                log.info("caller %s is in Stasis with no call: taking it", channel.id)
                self._new_call(channel)
            return 0
        call_id, leg_kind = mine
        if call_id not in live:
            await _ignore_errors(self.deps.rest.hangup(channel.id))
            RECONCILED.labels("channel").inc()
            return 1
        call = self.calls[call_id]
        if leg_kind.startswith("xfer") and self._stale_transfer_leg(call, channel.id):
            # A transfer a previous controller was ringing when it died: its request is redelivered and dialled
            # afresh; this leg and the hold music must not outlive it.
            log.info("stale transfer leg %s: hanging it up", channel.id)
            await _ignore_errors(self.deps.rest.hangup(channel.id))
            await _ignore_errors(self.deps.rest.stop_moh(call.caller.id))
            RECONCILED.labels("channel").inc()
            return 1
        return 0

    async def _delete_orphan_bridges(self, bridges: list[Bridge], live: set[str]) -> int:
        deleted = 0
        for bridge in bridges:
            mine = ids.owner(bridge.id)
            if mine is not None and mine[0] not in live:
                await _ignore_errors(self.deps.rest.destroy_bridge(bridge.id))
                RECONCILED.labels("bridge").inc()
                deleted += 1
        return deleted

    async def _enqueue_pending_emails(self) -> None:
        """Ended calls whose emails a controller did not get to enqueue (it died, or lost Redis, right after the
        release). Enqueueing is idempotent (stable job ids), so one whose own teardown is finishing meanwhile is
        not mailed twice."""
        d = self.deps
        for call_id in await d.admission.mail_pending():
            state = await d.redis.hget(d.keys.call(call_id), "state")
            if state is None:  # the record expired (or Redis lost it): nothing to mail from
                await d.admission.emails_enqueued(call_id)
            elif _text(state) == "ended":
                log.info(
                    "call %s: enqueueing the emails a previous teardown left pending",
                    call_id,
                    extra={"call_id": call_id},
                )
                await self._after_end(call_id, "reconciled")

    @staticmethod
    def _stale_transfer_leg(call: Call, leg: str) -> bool:
        return leg != call.agent_leg and (call.transfer is None or call.transfer.leg != leg)

    async def _after_end(self, call_id: str, reason: str) -> None:
        if self.deps.after_end is not None:
            try:
                await self.deps.after_end(call_id, reason)
            except Exception:
                log.exception("after-call work of %s failed", call_id, extra={"call_id": call_id})

    def _adopt(self, call_id: str, caller: Channel, record: dict[str, str], agent_leg: str = "") -> Call:
        call = Call(self.deps, call_id, caller)
        call.on_ended = self._forget
        call.admitted = True
        call.provider = record.get("provider") or "openai_realtime"
        call.bridge = record.get("bridge", "")
        call.media = record.get("media_channel", "")
        if agent_leg:
            call.state = "transferred"
            call.end_hint = "transferred"
            call.agent_leg = agent_leg
            call.extra_legs.add(agent_leg)
        else:
            call.state = "active"
            call.restore(record)  # its plan and worker: movable if that worker dies
        self.calls[call_id] = call
        self.by_caller[caller.id] = call
        CALLS_ACTIVE.set(len(self.calls))
        log.info(
            "adopted call %s (caller %s, worker %s)",
            call_id,
            caller.id,
            record.get("worker"),
            extra={"call_id": call_id},
        )
        return call


_ignore_errors = partial(quietly, what="reconcile step")
