"""One caller's call as the controller runs it: route, admission (or the queue), setup, teardown, fallback.

Event handlers only flip flags and start tasks (the ARI reader must never wait on a call's REST work); the
work itself runs in the call's own tasks. Setup steps that do not depend on each other run concurrently:
answer, bridge and externalMedia go out together, and each `addChannel` waits only for what it needs.
Teardown runs once, whatever triggered it, and deletes every channel and bridge the call created.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis

from controller import ids
from controller import websocket_media as wsm
from controller.admission import Admission, Limited, Queued, Reserved, Unavailable
from controller.ari.capabilities import Capabilities, TransportUnavailable
from controller.ari.errors import AriError, quietly
from controller.ari.resources import Channel
from controller.ari.rest import AriRest, MediaTransport
from controller.contexts import Route, Unroutable, resolve
from controller.leadership import Leadership
from controller.stasis_legs import NotInStasis, StasisLegs
from controller.transfer_leg import TransferLeg
from shared.config.schema import Config
from shared.keys import Keys
from shared.logs import bind_call
from shared.messages import WORKER_HANGUP_FIELD, CallPlan, MediaBridged, MediaPeer, MediaReady, inbox_fields
from shared.tasks import TaskSet
from shared.usage_limits import Cap
from shared.websocket_url import media_url
from shared.metrics import (
    CALLS_ADMITTED,
    CALLS_ENDED,
    CALLS_QUEUED,
    CALLS_REJECTED,
    FALLBACKS,
    MOVE_WAITS,
    QUEUE_WAIT,
    SETUP_SECONDS,
    TAKEOVERS,
)

log = logging.getLogger("call")

QUEUE_POLL_S = 0.1
SETUP_ATTEMPTS = 2  # a worker that refuses the media connection gets one replacement
INBOX_MAXLEN = 10_000  # as the admission script's assignments
MAX_MOVES = 3  # a call that loses its worker this many times goes to the fallback the next time


class SetupFailed(Exception):
    pass


class MoveWait(enum.Enum):
    """How the wait of a call whose worker was declared dead, with no other worker free, ended (MOVE_WAITS)."""

    RESUMED = "resumed"  # its worker beat again: the call stays with it, untouched
    MOVED = "moved"  # another worker has a free slot (or the media leg ended meanwhile): the move goes ahead
    FALLBACK = "fallback"  # controller.move_wait_ms passed: the move finds no worker and takes the fallback


def media_transport(transport: str, reserved: Reserved) -> MediaTransport:
    """externalMedia's transport arguments toward the reserved worker."""
    if transport == "rtp":
        return MediaTransport(
            external_host=f"{reserved.media_host}:{reserved.rtp_port}", encapsulation="rtp", transport="udp"
        )
    if transport == "websocket":
        return wsm.EXTERNAL_MEDIA
    return MediaTransport(
        external_host=f"{reserved.media_host}:{reserved.audiosocket_port}", encapsulation="audiosocket", transport="tcp"
    )


@dataclass
class CallDeps:
    """What every call needs from the controller process."""

    config: Config
    rest: AriRest
    redis: aioredis.Redis
    keys: Keys
    admission: Admission
    app: str
    capabilities: Callable[[], Capabilities | None]
    controller_id: str
    # After the teardown of a call that reached a worker: e.g. enqueue the end-of-call emails.
    after_end: Callable[[str, str], Awaitable[object]] | None = None  # (call id, end reason); its result is ignored
    # Every call's setup, move and teardown task: failures logged, all cancelled and awaited on stop (StasisApp.stop).
    tasks: TaskSet = field(default_factory=lambda: TaskSet("calls"))
    # A teardown that could not finish (Redis or ARI away): ask for a reconcile once they are back.
    unfinished: Callable[[], None] | None = None

    @property
    def fence(self) -> Leadership:
        """Writes of call state go through the admission's fence: refused once this controller no longer leads."""
        return self.admission.fence


@dataclass
class Call:
    deps: CallDeps
    call_id: str
    caller: Channel
    started: float = field(default_factory=time.monotonic)  # when StasisStart was handled
    route: Route | None = None
    plan: CallPlan | None = None
    provider: str = "openai_realtime"
    reservation: Reserved | None = None
    bridge: str = ""
    media: str = ""
    # new | queued | setting_up | active | moving | handing_off | transferred | ending | ended
    # (moving: the call lost its media worker and is being set up on another one, the caller still bridged)
    state: str = "new"
    moves: int = 0  # times the call was moved to another worker after it was up (MAX_MOVES)
    _move_reason: str = ""  # what the move under way is for: worker_dead | media_lost | media_failed
    # A worker lost while a transfer rang (the caller hears hold music): (worker id, reason, lost at), moved once
    # the transfer did not connect (transfer_settled); an answered transfer needs no worker at all.
    _deferred_move: tuple[str, str, int] | None = None
    _gone_media: str = ""  # the media leg whose StasisEnd came last (one ending during a move's wait)
    _awaiting_worker: bool = False  # in `_await_worker`: its worker declared dead, nothing let go yet
    admitted: bool = False  # a worker slot was reserved at some point (the call had a conversation)
    end_hint: str = ""  # why the caller is about to leave Stasis (agent_hangup, voicemail, transferred)
    transfer: TransferLeg | None = None  # the controlled transfer ringing, or answered
    agent_leg: str = ""  # an answered transfer's leg, bridged with the caller
    extra_legs: set[str] = field(default_factory=set)  # transfer legs teardown must hang up
    caller_gone: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    playback_done: dict[str, asyncio.Event] = field(default_factory=dict)
    legs: StasisLegs = field(default_factory=StasisLegs)  # our own legs' Stasis membership
    _bridge_made: bool = False
    _caller_bridged: bool = False
    _setup: asyncio.Task | None = None
    _attempts: int = 0  # media legs made so far: each gets its own id (ids.media_channel_id)
    # Set when the reserved worker cannot take the call (media_failed, via the controller inbox).
    _refusal: asyncio.Event = field(default_factory=asyncio.Event)
    _refusal_reason: str = ""
    _waiting: Queued | None = None  # the admission line's last answer while the call waits in it
    _waiting_since: float = 0.0  # monotonic: when it began waiting
    _teardown: asyncio.Task | None = None
    on_ended: Callable[["Call"], None] | None = None

    # --- event entry points (fast) ---------------------------------------------------------------------
    def start(self) -> None:
        self._setup = self.deps.tasks.spawn(self._run(), f"call-{self.call_id}")

    def caller_left(self) -> None:
        """StasisEnd of the caller: hung up, or gone to the dialplan (continue)."""
        self.caller_gone.set()
        if self.state == "queued" and self._waiting is not None:
            # Never answered: only INFO said it waited. At scale this is how callers are lost without a trace.
            log.warning(
                "caller %s hung up after %.1f s in the admission line, never answered (waiting: %s, position %d)",
                self.caller.id,
                time.monotonic() - self._waiting_since,
                self._waiting.reason,
                self._waiting.position,
            )
        self.end(self.end_hint or ("caller_hangup" if self.state != "handing_off" else "handed_off"))

    def transfer_leg_event(
        self,
        leg: str,
        *,
        dialstatus: str | None = None,
        left: bool = False,
        cause: int | None = None,
        soft: bool | None = None,
    ) -> None:
        """A Dial, ChannelHangupRequest or StasisEnd of one of our transfer legs."""
        attempt = self.transfer
        if left:
            self.extra_legs.discard(leg)
            if leg == self.agent_leg and self.state == "transferred":
                # The agent hung up first: nobody is left for the caller to talk to.
                log.info("transfer leg %s hung up: hanging up the caller", leg)
                self.end(self.end_hint or "transferred", hang_up_caller=True)
                return
        if attempt is None or attempt.leg != leg:
            return
        if dialstatus is not None:
            attempt.dial_status(dialstatus)
        if cause is not None or soft is not None:
            attempt.hangup_requested(cause, soft)
        if left:
            attempt.leg_left()

    def leg_entered(self, leg: str) -> None:
        """StasisStart of one of our own legs (media or transfer)."""
        self.legs.entered(leg)

    def media_left(self, leg: str) -> None:
        """StasisEnd of a media leg: the worker closed it (or died) while the caller is still here. A worker
        that ends a call on purpose says so first (WORKER_HANGUP_FIELD): then the fallback, as before; without
        it the worker is taken for lost (AudioSocket and WebSocket legs end the moment a worker dies) and the
        call is moved. The state goes to `moving` here, synchronously, so the worker watch finding the same
        worker dead a moment later does not start a second move."""
        self.legs.left(leg)
        if leg != self.media:
            return  # the leg of a setup attempt that was given up
        self._gone_media = leg
        reserved = self.reservation
        if self.state == "active" and not self.caller_gone.is_set():
            log.warning("media leg %s ended while the call was active", self.media)
            if reserved is None or self.plan is None:  # adopted without a plan to move it with
                self.end("media_lost", fallback=True)
                return
            if self._defer_move(reserved.worker_id, "media_lost", 0):
                return
            self.state = "moving"
            self._setup = self.deps.tasks.spawn(self._media_lost(reserved), f"media-lost-{self.call_id}")

    def restore(self, record: dict[str, str]) -> None:
        """An adopted call (reconcile after a controller restart): what its record says about its plan, worker
        and media leg, so a worker lost later can still be replaced (without them: the fallback, as before)."""
        try:
            self.plan = msgspec.json.decode(record.get("plan", ""), type=CallPlan)
            self.reservation = Reserved(record["worker"], "", 0, int(record.get("rtp_port") or 0), int(record["epoch"]))
        except (KeyError, ValueError, msgspec.DecodeError):
            return  # a record from before plans were kept, or one without a worker (a move under way)
        self.moves = int(record.get("moves") or 0)
        owner = ids.owner(self.media)
        suffix = owner[1].removeprefix("em") if owner is not None else ""
        self._attempts = int(suffix) if suffix.isdigit() else 0
        self._bridge_made = self._caller_bridged = True

    def worker_lost(self, worker_id: str, lost_at_ms: int) -> bool:
        """The worker watch found `worker_id` dead (last heard from at `lost_at_ms`, Redis time). An active call
        on it is moved; a setup under way toward it gives that worker up at once. True if this call was on it."""
        reserved = self.reservation
        if reserved is None or reserved.worker_id != worker_id:
            return False
        if self.state == "active":
            return self.rehome(worker_id, "worker_dead", lost_at_ms)
        if self._awaiting_worker:
            return True  # declared dead again while the call waits for it (`_await_worker`): it waits on
        if self.state in ("setting_up", "moving"):  # a setup (or a move) toward it: another worker at once
            self._refusal_reason = "the worker died"
            self._refusal.set()
            return True
        return False

    def rehome(self, worker_id: str, reason: str, lost_at_ms: int = 0) -> bool:
        """Move the active call off `worker_id` (once: a second trigger finds the state `moving`)."""
        reserved = self.reservation
        if (
            self.state != "active"
            or reserved is None
            or reserved.worker_id != worker_id
            or self._teardown is not None
            or self.caller_gone.is_set()
        ):
            return False
        if self._defer_move(worker_id, reason, lost_at_ms):
            return True
        self.state = "moving"
        self._setup = self.deps.tasks.spawn(self._move(worker_id, reason, lost_at_ms), f"move-{self.call_id}")
        return True

    def continue_move(self, reason: str) -> None:
        """An adopted call with no media to speak through: the move its lost worker called for starts (or goes on)
        here. The worker it had, if any, is given up like a dead one."""
        worker_id = self.reservation.worker_id if self.reservation is not None else ""
        self.state = "moving"
        self._setup = self.deps.tasks.spawn(self._move(worker_id, reason, 0), f"move-{self.call_id}")

    def _defer_move(self, worker_id: str, reason: str, lost_at_ms: int) -> bool:
        """A transfer is ringing: the caller hears hold music, and a new agent would talk over it (and never
        learn the transfer's outcome, which goes to the worker that asked for it). The move waits for it."""
        if self.transfer is None or not self.transfer.pending:
            return False
        log.warning("worker %s lost while a transfer rings: the call moves if the transfer does not connect", worker_id)
        self._deferred_move = (worker_id, reason, lost_at_ms)
        return True

    def transfer_settled(self) -> None:
        """The transfer's outcome is in (controller/call_control.py): a move it held back runs now, unless the
        transfer connected (the call no longer needs a worker)."""
        deferred, self._deferred_move = self._deferred_move, None
        if deferred is not None and self.state == "active":
            self.rehome(*deferred)

    def media_failed(self, worker_id: str, why: str) -> None:
        """The worker holding the reservation could not take the call (an RTP port that would not open, an
        assignment it could not use: `media_failed` through the controller inbox). During the setup the attempt
        fails at once (its slot and port are released, another worker is tried, then the fallback); once the
        call is up, it is moved to another worker (`_move`), not left with one that will never speak."""
        reserved = self.reservation
        if reserved is None or reserved.worker_id != worker_id:
            log.info("stale media_failed for call %s from %s: ignored", self.call_id, worker_id)
            return  # an attempt already given up, or a stale report
        log.warning("worker %s cannot take call %s (epoch %d): %s", worker_id, self.call_id, reserved.epoch, why)
        if self.state == "active":
            self.rehome(worker_id, "media_failed")
            return
        self._refusal_reason = why
        self._refusal.set()  # the setup under way gives up this worker (_connect)

    def playback_finished(self, playback_id: str) -> None:
        done = self.playback_done.get(playback_id)
        if done is not None:
            done.set()

    def end(self, reason: str, *, fallback: bool = False, hang_up_caller: bool = False) -> None:
        if self._teardown is None:
            self._teardown = self.deps.tasks.spawn(self._end(reason, fallback, hang_up_caller), f"end-{self.call_id}")

    # --- the call's work -------------------------------------------------------------------------------
    async def _run(self) -> None:
        bind_call(self.call_id)
        try:
            try:
                self.route = await self._route()
            except Unroutable as exc:
                log.warning("call %s from %r cannot be routed: %s", self.caller.id, self.caller.caller.number, exc)
                CALLS_REJECTED.labels(exc.reason).inc()
                self.end(exc.reason, fallback=True)
                return
            self.provider = self.route.provider
            self.plan = self._plan(self.route)
            await self._place(self.plan, [])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call setup failed")
            self.end("setup_error", fallback=True)

    async def _place(self, plan: CallPlan, excluded: list[str], lost_at_ms: int = 0) -> None:
        """Admit the call and set its media up, on another worker when one fails (`excluded` grows); then the
        call is active, or it has gone to the fallback (or the caller left). A moved call (`moves` > 0) keeps
        its record live and its provider session between attempts (`drop_worker`, not `release`)."""
        d = self.deps
        for attempt in range(SETUP_ATTEMPTS):
            reserved = await self._admit(plan, tuple(excluded), self._attempts, lost_at_ms)
            if reserved is None:
                return  # queue timeout or no worker for a move (fallback started), or caller gone
            try:
                await self._connect(reserved, plan, self._attempts)
                break
            except SetupFailed as exc:
                self._attempts += 1
                excluded.append(reserved.worker_id)
                if self.moves:
                    await d.admission.drop_worker(self.call_id)
                else:
                    await d.admission.release(self.call_id, self.provider, "setup_failed")
                self.reservation = None
                await self.drop_media()
                if self.caller_gone.is_set():
                    return
                log.warning(
                    "media setup on worker %s failed (%s)%s",
                    reserved.worker_id,
                    exc,
                    "; trying another worker" if attempt + 1 < SETUP_ATTEMPTS else "",
                )
        else:
            if self.moves:
                TAKEOVERS.labels("fallback", "move_failed").inc()
                self.end("move_failed", fallback=True)
                return
            CALLS_REJECTED.labels("setup_failed").inc()
            self.end("setup_failed", fallback=True)
            return
        if self.caller_gone.is_set():
            return  # teardown is already on its way
        self.state = "active"
        if self.moves:
            TAKEOVERS.labels("moved", self._move_reason).inc()
            await d.fence.hset(
                d.keys.call(self.call_id), {"state": "active", "media_channel": self.media, "moves": str(self.moves)}
            )
            log.info(
                "call %s moved to worker %s (move %d, %s)",
                self.caller.id,
                reserved.worker_id,
                self.moves,
                self._move_reason,
            )
            return
        setup_ms = int((time.monotonic() - self.started) * 1000)
        SETUP_SECONDS.observe(setup_ms / 1000)
        await d.fence.hset(
            d.keys.call(self.call_id),
            {"state": "active", "bridge": self.bridge, "media_channel": self.media, "setup_ms": setup_ms},
        )
        log.info(
            "call %s up on worker %s (%s %s) in %d ms",
            self.caller.id,
            reserved.worker_id,
            plan.transport,
            plan.format,
            setup_ms,
        )

    async def _media_lost(self, reserved: Reserved) -> None:
        """The active call's media leg ended (state already `moving`): the worker's own hang-up, or its death."""
        bind_call(self.call_id)
        d = self.deps
        try:
            ended_by_worker = await d.redis.hget(d.keys.call(self.call_id), WORKER_HANGUP_FIELD)
        except Exception:
            log.exception("cannot tell whether worker %s ended the call: moving it", reserved.worker_id)
            ended_by_worker = None
        if ended_by_worker is not None and int(ended_by_worker) == reserved.epoch:
            log.info("worker %s ended its media leg on purpose: fallback", reserved.worker_id)
            self.end("media_lost", fallback=True)
            return
        await self._move(reserved.worker_id, "media_lost", 0)

    async def _move(self, worker_id: str, reason: str, lost_at_ms: int) -> None:
        """The call lost its worker after it was up (dead, wedged, or it gave the call up): the same setup on
        another worker. The caller stays answered and in the bridge, nothing is re-dialled; the lost worker's
        slot and media leg are let go, and its provider session passes to the new worker. The new worker is
        told it resumes (`moves`): it replays the call log and does not greet again. Never queued: no free
        worker, or MAX_MOVES reached, and the caller goes to the fallback; a worker only declared dead (no
        heartbeat) is waited for first when no other worker is free (`_await_worker`)."""
        bind_call(self.call_id)
        d = self.deps
        try:
            self.state = "moving"
            self._move_reason = reason
            if reason == "worker_dead":
                waited = await self._await_worker(worker_id)
                if waited is MoveWait.RESUMED or self.caller_gone.is_set():
                    return  # it stays with its worker, or the caller left (the teardown is on its way)
                if self._media_gone() and self.reservation is not None:
                    # Its media leg ended while the call waited: the worker's own hang-up (the fallback) or its
                    # death (the move), told apart as for any lost leg.
                    await self._media_lost(self.reservation)
                    return
            if self.moves >= MAX_MOVES:
                log.warning("call moved %d times already: fallback", self.moves)
                TAKEOVERS.labels("fallback", "too_many_moves").inc()
                self.end("too_many_moves", fallback=True)
                return
            self.moves += 1
            self._attempts += 1
            self.reservation = None
            await asyncio.gather(d.admission.drop_worker(self.call_id), self.drop_media())
            if self.plan is not None and not self.caller_gone.is_set():
                log.info("moving the call off worker %s (%s)", worker_id, reason)
                await self._place(self.plan, [worker_id], lost_at_ms)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("moving the call off worker %s (%s) failed", worker_id, reason)
            self.end("setup_error", fallback=True)

    async def _await_worker(self, worker_id: str) -> MoveWait | None:
        """The worker watch declared `worker_id` dead, but nothing of the call has been let go yet: its record,
        slot, epoch and media leg are as they were, and the worker (whose sessions stop only on an `end` or
        another epoch) keeps the call if it wakes. A loop stalled by a busy machine beats again a few hundred ms
        late; when no other worker is free, moving at once would send every call to the fallback. So the call
        waits, up to `controller.move_wait_ms`, for that worker to beat again (the call goes on with it,
        untouched: no greeting, no replay) or for another worker to have a slot (the move goes ahead); then the
        move finds nobody and takes the fallback. None: another worker was free at once (no wait), or the
        caller left."""
        d = self.deps
        wait_s = d.config.controller.move_wait_ms / 1000
        options = await d.admission.move_options(worker_id)
        if options.other_free or wait_s <= 0:
            return None
        started_ms = options.lost_started_ms  # a process restarted under the same id never held this call
        since = time.monotonic()
        self._refusal.clear()  # set meanwhile: the worker reported it cannot keep the call (media_failed)
        self._awaiting_worker = True
        outcome: MoveWait | None = None
        try:
            while outcome is None and not self.caller_gone.is_set():
                try:
                    async with asyncio.timeout(QUEUE_POLL_S):
                        await self.caller_gone.wait()  # a hang-up ends the call (and cancels this wait) at once
                except TimeoutError:
                    pass
                options = await d.admission.move_options(worker_id)
                if self._media_gone() or self._refusal.is_set():
                    outcome = MoveWait.MOVED  # nothing left on that worker to resume (`_move` tells why)
                elif options.lost_is_live and options.lost_started_ms == started_ms:
                    outcome = MoveWait.RESUMED
                elif options.other_free:
                    outcome = MoveWait.MOVED
                elif time.monotonic() - since >= wait_s:
                    outcome = MoveWait.FALLBACK
        finally:
            self._awaiting_worker = False
            MOVE_WAITS.labels(outcome.value if outcome is not None else "ended").inc()
        if outcome is MoveWait.RESUMED:
            self.state = "active"
            log.info(
                "worker %s beats again %.1f s after it was declared dead: call %s stays with it",
                worker_id,
                time.monotonic() - since,
                self.caller.id,
            )
        return outcome

    def _media_gone(self) -> bool:
        """The current media leg has ended (its StasisEnd came)."""
        return bool(self.media) and self._gone_media == self.media

    async def _route(self) -> Route:
        vars_ = self.caller.channelvars
        values: dict[str, str | None] = {}
        for name in ("AI_CONTEXT", "AI_PROVIDER"):
            if vars_ is not None and name in vars_:
                values[name] = vars_[name] or None  # listed in ari.conf channelvars; "" = not set
        missing = [n for n in ("AI_CONTEXT", "AI_PROVIDER") if n not in values]
        if missing:  # ari.conf without channelvars: ask (404 = not set)
            got = await asyncio.gather(*(self.deps.rest.get_variable(self.caller.id, n) for n in missing))
            values.update(zip(missing, got, strict=True))
        return resolve(
            self.deps.config,
            values["AI_CONTEXT"],
            values["AI_PROVIDER"],
            self.caller.caller.name,
            self.caller.caller.number,
        )

    def _plan(self, route: Route) -> CallPlan:
        caps = self.deps.capabilities()
        fmt: str = route.profile.format
        transport = route.profile.transport
        if caps is not None:
            try:
                best = caps.best_format(transport, fmt)
            except TransportUnavailable:
                if transport in ("audiosocket", "websocket"):  # module not loaded: RTP is always there
                    transport, best = "rtp", "ulaw" if fmt == "ulaw" else "slin"
                else:
                    raise
            if best != fmt:
                log.warning(
                    "profile %s wants %s %s; Asterisk %s offers %s",
                    route.profile_name,
                    transport,
                    fmt,
                    caps.version,
                    best,
                )
            fmt = best
        return CallPlan(
            call_id=self.call_id,
            caller_channel=self.caller.id,
            context=route.context,
            provider=route.provider,
            profile=route.profile_name,
            transport=transport,
            format=fmt,
            provider_format=route.profile.provider_format,
            caller_name=self.caller.caller.name,
            caller_number=self.caller.caller.number,
            greeting=route.greeting,
            instructions=route.instructions,
            tools=route.tools,
            voice=route.voice,
            created_ms=int(time.time() * 1000),
        )

    async def _admit(
        self, plan: CallPlan, exclude: tuple[str, ...], attempt: int, lost_at_ms: int = 0
    ) -> Reserved | None:
        d = self.deps
        fields = {
            "caller_channel": self.caller.id,
            "context": plan.context,
            "provider": plan.provider,
            "caller_name": plan.caller_name,
            "caller_number": plan.caller_number,
            "transport": plan.transport,
            "format": plan.format,
            "controller": d.controller_id,
            "created_ms": str(plan.created_ms),
            "bridge": ids.bridge_id(self.call_id),
            "media_channel": ids.media_channel_id(self.call_id, attempt),
        }
        settings = d.config.controller
        deadline = time.monotonic() + settings.queue_timeout_ms / 1000
        queued_at: float | None = None
        while True:
            result = await d.admission.reserve(plan, fields, exclude=exclude, moves=self.moves, lost_at_ms=lost_at_ms)
            if isinstance(result, Limited):
                if queued_at is not None:
                    await self._stop_queue_music()
                self._refuse_over_limit(result)
                return None
            if isinstance(result, Unavailable):
                if not self.moves:  # a retry after a failed setup: the caller is answered, and waits in no line
                    log.warning(
                        "media setup failed on worker %s and no other worker can take the call (%s): fallback",
                        ", ".join(exclude),
                        result.reason,
                    )
                    CALLS_REJECTED.labels("setup_failed").inc()
                    self.end("setup_failed", fallback=True)
                    return None
                log.warning("no worker to move the call to (%s): fallback", result.reason)
                TAKEOVERS.labels("fallback", "no_worker").inc()
                self.end("no_worker", fallback=True)
                return None
            if isinstance(result, Reserved):
                self._refusal.clear()  # a refusal concerns the reservation it names
                self.reservation = result
                self.admitted = True
                CALLS_ADMITTED.inc()
                if queued_at is not None:
                    QUEUE_WAIT.observe(time.monotonic() - queued_at)
                    await self._stop_queue_music()
                return result
            assert isinstance(result, Queued)
            self._waiting = result
            if queued_at is None:
                queued_at = self._waiting_since = time.monotonic()
                self.state = "queued"
                CALLS_QUEUED.labels(result.reason).inc()
                log.info("no capacity (%s): call %s waits, position %d", result.reason, self.caller.id, result.position)
                await self._start_queue_music()
            if self.caller_gone.is_set():
                await d.admission.leave_queue(self.call_id)
                return None
            if time.monotonic() >= deadline:
                await d.admission.leave_queue(self.call_id)
                await self._stop_queue_music()
                log.warning("no capacity for %.0f s: fallback", settings.queue_timeout_ms / 1000)
                CALLS_REJECTED.labels("queue_timeout").inc()
                self.end("queue_timeout", fallback=True)
                return None
            # Slots are freed by other calls' ends, in this process or another, through Redis, which tells nobody:
            # the reservation is retried on a short period, and a caller hanging up ends the wait at once.
            try:
                async with asyncio.timeout(QUEUE_POLL_S):
                    await self.caller_gone.wait()
            except TimeoutError:
                pass

    def _refuse_over_limit(self, limited: Limited) -> None:
        """A usage cap is reached: this new call goes to the fallback. The cap's first refusal in its period (in
        the whole cluster) is logged as a warning; the calls after it only at debug (the metric counts them)."""
        cap, limits = limited.cap, self.deps.config.limits
        if limited.first:
            log.warning(
                "usage cap %s reached (limits.%s = %s): new calls go to the fallback until it resets "
                "(calls in progress finish); see `voice-agent usage`",
                cap.value,
                _CAP_KEYS[cap],
                getattr(limits, _CAP_KEYS[cap]),
            )
        else:
            log.debug("usage cap %s reached: call %s goes to the fallback", cap.value, self.caller.id)
        CALLS_REJECTED.labels(cap.reason).inc()
        self.end(cap.reason, fallback=True)

    async def _start_queue_music(self) -> None:
        rest, settings = self.deps.rest, self.deps.config.controller
        try:
            if settings.queue_music == "moh":
                await rest.start_moh(self.caller.id, settings.moh_class or None)
            else:
                await rest.ring(self.caller.id)
        except AriError as exc:
            log.info("queue music not started: %s", exc)

    async def _stop_queue_music(self) -> None:
        rest, settings = self.deps.rest, self.deps.config.controller
        try:
            if settings.queue_music == "moh":
                await rest.stop_moh(self.caller.id)
            else:
                await rest.ring_stop(self.caller.id)
        except AriError:
            pass

    async def _connect(self, reserved: Reserved, plan: CallPlan, attempt: int = 0) -> None:
        """Answer, bridge and the media leg, concurrently where possible. Raises SetupFailed when the media
        leg cannot be made (the worker did not take the connection, or the leg never entered Stasis)."""
        self.state = "setting_up"
        self.bridge = ids.bridge_id(self.call_id)
        # A retry gets a new id: the previous attempt's leg may not be destroyed yet, and its StasisEnd must
        # not be taken for the new leg's.
        self.media = ids.media_channel_id(self.call_id, attempt)
        timeout = self.deps.config.controller.ari_timeout_ms / 1000
        bridge_made = asyncio.create_task(self._make_bridge())
        media = asyncio.create_task(self._bridge_media(reserved, plan, bridge_made, timeout))
        # Every step runs to its end (none is left in flight for a retry to trip over: the bridge and the caller
        # have fixed ids), then the first failure, if any, is raised. A refusal by the worker cancels only the
        # media step (its leg has an id of this attempt, hung up by the retry); a timeout cancels them all.
        steps = asyncio.gather(self._bridge_caller(bridge_made), media, bridge_made, return_exceptions=True)
        refused = asyncio.create_task(self._refusal.wait())
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            await asyncio.wait((steps, refused), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if self._refusal.is_set() and not steps.done():
                media.cancel()
                await asyncio.wait((steps,), timeout=max(deadline - asyncio.get_running_loop().time(), 0))
        finally:
            refused.cancel()
            finished = steps.done()
            if not finished:
                steps.cancel()
                await asyncio.gather(steps, return_exceptions=True)
        if self._refusal.is_set():  # even if the leg got bridged: nobody on that worker will speak
            raise SetupFailed(f"the worker cannot take the call: {self._refusal_reason}")
        if not finished:
            raise SetupFailed(f"an ARI step took longer than {timeout:.1f}s")
        results = steps.result()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, SetupFailed)), errors[0])
        # No await from here to the state `active`: a later media_failed finds the call active (and moves it).

    async def _make_bridge(self) -> None:
        if not self._bridge_made:
            try:
                await self.deps.rest.create_bridge(self.bridge, "mixing", name=self.call_id)
            except AriError as exc:
                # 409: it exists. Its id is this call's: an earlier attempt made it (its answer cut off by a
                # timeout), and it is ours to use.
                if exc.status != 409:
                    raise
            self._bridge_made = True

    async def _bridge_caller(self, bridge_made: asyncio.Task[None]) -> None:
        if self._caller_bridged:
            return  # a retry on another worker: the caller is already answered and in the bridge
        await self.deps.rest.answer(self.caller.id)
        await bridge_made
        await self.deps.rest.add_channel(self.bridge, self.caller.id)
        self._caller_bridged = True

    async def _bridge_media(
        self, reserved: Reserved, plan: CallPlan, bridge_made: asyncio.Task[None], stasis_wait_s: float
    ) -> None:
        """The media leg toward the reserved worker, handed to it, then added to the bridge once in Stasis."""
        d = self.deps
        leg = await self._create_media_leg(reserved, plan)
        if plan.transport == "rtp":
            await self._tell_rtp_peer(reserved, leg)
        elif plan.transport == "websocket":  # the worker connects to Asterisk; the leg enters Stasis then
            await self._hand_websocket_to_worker(reserved, leg)
        await asyncio.shield(bridge_made)  # a cancelled media step must not cancel the (fixed-id) bridge's creation
        try:
            await self.legs.run(self.media, partial(d.rest.add_channel, self.bridge, self.media), stasis_wait_s)
        except NotInStasis as exc:
            raise SetupFailed(str(exc)) from exc
        except AriError as exc:
            if exc.status in (400, 404):  # the leg is gone already: the worker turned the connection away
                raise SetupFailed(f"media leg {self.media}: {exc}") from exc
            raise
        if plan.transport == "websocket":  # the worker's clock may start: what it sends is heard now
            await wsm.send_bridged(
                d.fence, d.keys, reserved.worker_id, MediaBridged(call_id=self.call_id, epoch=reserved.epoch)
            )

    async def _create_media_leg(self, reserved: Reserved, plan: CallPlan) -> Channel:
        d = self.deps
        media = media_transport(plan.transport, reserved)
        try:
            return await d.rest.external_media(
                app=d.app, channel_id=self.media, format=plan.format, data=self.call_id, **media
            )
        except AriError as exc:
            if exc.status >= 500 or exc.status == 0:
                raise SetupFailed(f"externalMedia toward {media['external_host'] or 'a worker'}: {exc}") from exc
            raise

    async def _tell_rtp_peer(self, reserved: Reserved, leg: Channel) -> None:
        """Tell the worker where Asterisk's end of the RTP leg is: it hears only that address (anyone could send
        to its port) and sends there from the first frame (a silent caller, or a phone with silence
        suppression, sends no packet it could learn it from). Without a usable address, an empty host tells
        it to latch to the first packet instead."""
        found = leg.channelvars or {}
        host, port = found.get("UNICASTRTP_LOCAL_ADDRESS", ""), found.get("UNICASTRTP_LOCAL_PORT", "")
        if not host or not port.isdigit() or host in ("0.0.0.0", "::"):
            log.warning(
                "externalMedia gave no usable RTP address (%r:%r): the worker latches to the first packet", host, port
            )
            host, port = "", "0"
        d = self.deps
        await d.fence.xadd(
            d.keys.worker_inbox(reserved.worker_id),
            inbox_fields("media_peer", MediaPeer(call_id=self.call_id, host=host, port=int(port))),
            maxlen=INBOX_MAXLEN,
        )

    async def _hand_websocket_to_worker(self, reserved: Reserved, leg: Channel) -> None:
        """WebSocket media: send the worker Asterisk's connection id (as its media URL); the worker connects,
        Asterisk answers the leg and enters it into Stasis, and the addChannel below, waiting for that, follows."""
        cid = wsm.connection_id(leg)
        if not cid:
            raise SetupFailed("externalMedia (websocket) answered without MEDIA_WEBSOCKET_CONNECTION_ID")
        d = self.deps
        await wsm.send_media_ready(
            d.fence,
            d.keys,
            reserved.worker_id,
            MediaReady(
                call_id=self.call_id,
                epoch=reserved.epoch,
                channel_id=self.media,
                url=media_url(wsm.media_base_url(d.config), cid),
            ),
        )

    async def drop_media(self) -> None:
        if self.media:
            await _quietly(self.deps.rest.hangup(self.media))

    # --- the end ---------------------------------------------------------------------------------------
    async def _end(self, reason: str, fallback: bool, hang_up_caller: bool) -> None:
        bind_call(self.call_id)
        d = self.deps
        if self._setup is not None and not self._setup.done() and asyncio.current_task() is not self._setup:
            self._setup.cancel()
            await asyncio.gather(self._setup, return_exceptions=True)
        previous, self.state = self.state, "ending"
        released = False
        try:
            if self.transfer is not None and self.transfer.pending:
                self.transfer.abort("the call ended")  # its task hangs the leg up and replies to the worker
            if hang_up_caller and not self.caller_gone.is_set():
                await _quietly(d.rest.hangup(self.caller.id, "normal"))
            if fallback and not self.caller_gone.is_set():
                await self._fallback(reason)
            # Asterisk never cleans these up by itself: delete the media leg, the transfer
            # legs (an answered agent stays in Stasis until we hang it up), then the bridge.
            await asyncio.gather(self.drop_media(), *(_quietly(d.rest.hangup(leg)) for leg in list(self.extra_legs)))
            self.extra_legs.clear()
            await _quietly(d.rest.destroy_bridge(ids.bridge_id(self.call_id)))
            released = await d.admission.release(self.call_id, self.provider, reason, emails=self.admitted)
        except Exception:
            log.exception("teardown of the call failed (reason %s); reconcile will finish it", reason)
            if d.unfinished is not None:
                d.unfinished()
        finally:
            self.state = "ended"
            CALLS_ENDED.labels(reason).inc()
            log.info(
                "call %s ended (%s, was %s) after %.1f s",
                self.caller.id,
                reason,
                previous,
                time.monotonic() - self.started,
            )
            self.ended.set()
            if self.on_ended is not None:
                self.on_ended(self)
        if released and self.admitted and d.after_end is not None:
            try:
                await d.after_end(self.call_id, reason)
            except Exception:
                log.exception("after-call work failed (reason %s)", reason)

    async def _fallback(self, reason: str) -> None:
        """Never silence: send the caller to the configured dialplan target, or play a prompt and hang up."""
        d = self.deps
        fb = d.config.controller.fallback
        self.state = "handing_off"
        FALLBACKS.labels(reason).inc()
        if fb.action == "continue":
            log.info("fallback (%s): continue to %s,%s,%d", reason, fb.context, fb.extension, fb.priority)
            try:
                await d.rest.continue_in_dialplan(self.caller.id, fb.context, fb.extension, fb.priority)
                return
            except AriError as exc:
                log.warning("fallback continue failed (%s): hanging up", exc)
        elif fb.prompt:
            log.info("fallback (%s): prompt %s, then hangup", reason, fb.prompt)
            playback_id = f"{self.call_id}-fallback"
            done = self.playback_done[playback_id] = asyncio.Event()
            try:
                await d.rest.answer(self.caller.id)
                await d.rest.play(self.caller.id, fb.prompt, playback_id=playback_id)
                waiters = [asyncio.create_task(done.wait()), asyncio.create_task(self.caller_gone.wait())]
                await asyncio.wait(waiters, timeout=fb.prompt_timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
            except AriError as exc:
                log.warning("fallback prompt failed (%s): hanging up", exc)
        if not self.caller_gone.is_set():
            await _quietly(d.rest.hangup(self.caller.id, "normal"))


# The `limits:` key of each cap, for the log line that names it.
_CAP_KEYS = {
    Cap.SESSIONS_PER_DAY: "sessions_per_day",
    Cap.SPEND_PER_DAY: "spend_per_day_usd",
    Cap.SPEND_PER_MONTH: "spend_per_month_usd",
}

# A cleanup step whose object may already be gone; status 0 (Asterisk unreachable) is left to reconcile.
_quietly = partial(quietly, expected=(0, 404, 409))
