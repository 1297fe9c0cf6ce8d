"""Call-control requests from the media workers: the consumer of `va:controller:inbox` and the actions
(transfer, cancel_transfer, hangup, voicemail).

Delivery is at least once, execution once: the inbox is read through a consumer group and an entry is acked
only after its action finished, so a controller that dies mid-request leaves it pending for the next one
(claimed with XAUTOCLAIM); every request id has a record (`{prefix}request:{id}`, a HASH with the owner and the
latest reply, kept an hour), so a request delivered again is answered with what was already replied, never
executed twice. A request whose owner died before its final reply is executed again: the actions are safe to
repeat (reconcile hangs up the transfer leg an earlier controller left ringing; a second hang-up finds the
call ended).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from controller import ids
from controller.ari.errors import AriError
from controller.call import Call
from controller.leadership import AriGated, Leadership
from controller.stasis import StasisApp
from controller.transfer import local_endpoint, run_transfer
from controller.transfer_leg import TransferLeg
from shared.keys import Keys
from shared import dead_letters
from shared.logs import call_context
from shared.messages import TIME_LIMIT, ControlReply, ControlRequest, inbox_fields
from shared.metrics import CONTROL_REQUESTS, CONTROL_SECONDS
from shared.tasks import TaskSet

log = logging.getLogger("tools")

GROUP = "controllers"
READ_COUNT = 50
READ_BLOCK_MS = 1000
# A pending entry idle this long belongs to a controller that died (a live one acks within the action; a
# transfer that rings longer is ours and recognised as in flight).
CLAIM_IDLE_MS = 3000
CLAIM_EVERY_S = 1.0
REQUEST_TTL_MS = 3_600_000
REPLY_MAXLEN = 10_000
CANCEL_WAIT_S = 5.0

Send = Callable[[ControlReply], Awaitable[None]]

_decode_request = msgspec.json.Decoder(ControlRequest).decode
_decode_reply = msgspec.json.Decoder(ControlReply).decode
_encode = msgspec.json.Encoder().encode


def request_key(keys: Keys, request_id: str) -> str:
    """HASH: owner (the executing process's token) and reply (the latest reply's JSON)."""
    return f"{keys.prefix}request:{request_id}"


class ControlInbox:
    """Reads the controller inbox as one consumer of the group and runs each new request once."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        consumer: str,
        actions: "CallControl",
        *,
        fence: Leadership,
        streams: aioredis.Redis | None = None,
    ):
        self.redis = redis
        self.fence = fence  # the request records and the replies are written only while this process leads
        # The group reads go through a bytes client: an entry that is not UTF-8 is dead-lettered alone instead
        # of failing every read (shared/dead_letters.py).
        self.streams = streams or redis
        self.keys = keys
        self.consumer = consumer
        self.actions = actions
        self.token = f"{consumer}:{uuid.uuid4().hex[:8]}"  # this process, even if a restart reuses the name
        self.in_flight: dict[str, str] = {}  # request id -> entry id, while its action runs here
        self._tasks = TaskSet("control requests")  # one per request being handled; a new set per run
        self._group_ok = False

    async def run(self, stopping: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Until `stopping` (or cancelled); starts reading once `ready` is set (the first reconcile: requests
        act on calls this process must know first). Running actions are cancelled on the way out and stay
        pending for the next controller."""
        self._tasks = TaskSet("control requests")  # a reader restarted by its supervisor gets a fresh set
        try:
            await self._loop(stopping, ready)
        finally:
            await self._tasks.close()

    async def _loop(self, stopping: asyncio.Event, ready: asyncio.Event | None) -> None:
        if ready is not None:
            await _until_either(ready, stopping)
        next_claim = 0.0
        # This process leads now (a standby that took over, or a restarted reader): whatever another consumer read
        # and did not ack is claimed at once, not after CLAIM_IDLE_MS. Its reader, if still alive, is fenced.
        claim_idle_ms = 0
        backoff = 0.25
        while not stopping.is_set():
            try:
                await self._ensure_group()
                if time.monotonic() >= next_claim:
                    for entry_id, fields in await self._claim(claim_idle_ms):
                        self._dispatch(entry_id, fields)
                    next_claim = time.monotonic() + CLAIM_EVERY_S
                    claim_idle_ms = CLAIM_IDLE_MS
                got = await self.streams.xreadgroup(
                    GROUP, self.consumer, {self.keys.controller_inbox: ">"}, count=READ_COUNT, block=READ_BLOCK_MS
                )
                if not isinstance(got, list):  # RESP2, the connection's protocol: [[stream, [[id, fields], ...]]]
                    raise TypeError(f"XREADGROUP answered a {type(got).__name__}")
                for _stream, entries in got:
                    for entry_id, fields in entries:
                        self._dispatch(entry_id, fields)
                backoff = 0.25
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("controller inbox: %s; retrying in %.1f s", exc, backoff)
                self._group_ok = False
                try:
                    async with asyncio.timeout(backoff):
                        await stopping.wait()
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)

    async def _ensure_group(self) -> None:
        if self._group_ok:
            return
        try:
            await self.redis.xgroup_create(self.keys.controller_inbox, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ok = True

    async def _claim(self, min_idle_ms: int = CLAIM_IDLE_MS) -> list[tuple[str, dict]]:
        """Entries another (dead) consumer read but never acked."""
        claimed: list[tuple[str, dict]] = []
        start = "0-0"
        for _ in range(100):  # bounded: 100 pages of 100
            result = await self.streams.xautoclaim(
                self.keys.controller_inbox, GROUP, self.consumer, min_idle_time=min_idle_ms, start_id=start, count=100
            )
            start, entries = result[0], result[1]
            claimed.extend((e, f) for e, f in entries if f is not None)  # None: trimmed from the stream
            if start in ("0-0", b"0-0"):
                break
        return claimed

    # --- one entry --------------------------------------------------------------------------------------
    def _dispatch(self, entry_id, fields: dict) -> None:
        self._tasks.spawn(self._contained(_text(entry_id), fields), f"control-{_text(entry_id)}")

    async def _contained(self, entry_id: str, fields: dict) -> None:
        """One entry, whatever happens: Redis trouble leaves it pending (claimed again, see `_claim`); any other
        exception is a bug or a corrupt record that would fail every retry: logged once, dead-lettered, acked."""
        try:
            await self._handle(entry_id, fields)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, AriGated) as exc:
            # Redis trouble, or this process is not (or no longer) the leader: another reader, or this one once
            # it can act again, claims the entry.
            log.warning("control entry %s not handled (%s); left pending, to be claimed again", entry_id, exc)
        except Exception as exc:
            await dead_letters.dead_letter(
                self.streams,
                self.keys,
                stream=self.keys.controller_inbox,
                label="controller_inbox",
                entry_id=entry_id,
                fields=fields,
                exc=exc,
            )
            try:
                await self._ack(entry_id)
            except (RedisError, OSError) as err:
                log.warning("control entry %s not acked (%s)", entry_id, err)

    async def _handle(self, entry_id: str, fields: dict) -> None:
        """One entry; a poison one raises (PoisonEntry, a decode error), and `_contained` dead-letters and acks it."""
        kind, data = dead_letters.message(fields)
        if kind != "control":
            raise dead_letters.PoisonEntry(dead_letters.UNKNOWN_TYPE, f"unknown entry type {kind[:40]!r}")
        request = _decode_request(data)
        with call_context(request.call_id):  # this task serves every call: each line names its own
            await self._handle_request(entry_id, request)

    async def _handle_request(self, entry_id: str, request: ControlRequest) -> None:
        key = request_key(self.keys, request.request_id)
        if request.request_id in self.in_flight:
            if self.in_flight[request.request_id] != entry_id:  # a second delivery while the first runs
                await self._resend(request, key)
                await self._ack(entry_id)
            return  # our own entry, claimed back by the periodic claim: its task acks it
        self.in_flight[request.request_id] = entry_id  # before any await: a duplicate in the same batch waits
        try:
            await self.fence.may_act()  # a deposed or lapsed leader leaves the request to the one that leads
            if not await self._take(request, key):
                await self._ack(entry_id)
                self.in_flight.pop(request.request_id, None)
                return
        except BaseException:
            self.in_flight.pop(request.request_id, None)
            raise
        started = time.monotonic()
        status = "failed"
        try:

            async def send(reply: ControlReply) -> None:
                nonlocal status
                status = reply.status
                await self._send(request, reply)

            await self.actions.execute(request, send)
            await self._ack(entry_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("control request %s (%s) failed", request.request_id, request.action)
            await self._send(request, reply_for(request, False, "failed", "the controller hit an internal error"))
            await self._ack(entry_id)
        finally:
            self.in_flight.pop(request.request_id, None)
            CONTROL_REQUESTS.labels(_action_label(request.action), status).inc()
            CONTROL_SECONDS.labels(_action_label(request.action)).observe(time.monotonic() - started)

    async def _take(self, request: ControlRequest, key: str) -> bool:
        """True when this process is to execute the request; False when it was handled already (the stored
        reply has been sent again)."""
        took, _ = await self.fence.write(("HSETNX", key, "owner", self.token), ("PEXPIRE", key, REQUEST_TTL_MS))
        if took:
            return True
        owner, stored = await self.redis.hmget(key, "owner", "reply")
        if _text(owner or "") == self.token or (stored is not None and _decode_reply(_bytes(stored)).final):
            log.info("request %s delivered again: answered with the stored reply", request.request_id)
            if stored is not None:
                await self._send(request, _decode_reply(_bytes(stored)), remember=False)
            return False
        # Its owner (another process) died before the final reply: run it again (see the module docstring).
        log.info("request %s was left unfinished by %s: running it again", request.request_id, _text(owner or "?"))
        await self.fence.write(("HSET", key, "owner", self.token), ("PEXPIRE", key, REQUEST_TTL_MS))
        return True

    async def _resend(self, request: ControlRequest, key: str) -> None:
        stored = await self.redis.hget(key, "reply")
        if stored is not None:
            await self._send(request, _decode_reply(_bytes(stored)), remember=False)

    async def _send(self, request: ControlRequest, reply: ControlReply, *, remember: bool = True) -> None:
        reply_to = self.keys.worker_inbox(request.worker_id)
        entry = [p for pair in inbox_fields("control_result", reply).items() for p in pair]
        append = ("XADD", reply_to, "MAXLEN", "~", REPLY_MAXLEN, "*", *entry)
        if remember:
            await self.fence.write(
                ("HSET", request_key(self.keys, request.request_id), "reply", _encode(reply)), append
            )
        else:
            await self.fence.write(append)

    async def _ack(self, entry_id: str) -> None:
        await self.redis.xack(self.keys.controller_inbox, GROUP, entry_id)


def reply_for(request: ControlRequest, ok: bool, status: str, message: str = "", final: bool = True) -> ControlReply:
    return ControlReply(
        request_id=request.request_id, call_id=request.call_id, ok=ok, status=status, message=message, final=final
    )


class CallControl:
    """The actions, on the calls this controller runs."""

    def __init__(self, app: StasisApp):
        self.app = app
        self.deps = app.deps

    async def execute(self, request: ControlRequest, send: Send) -> None:
        def fail(status: str, message: str) -> Awaitable[None]:
            return send(reply_for(request, False, status, message))

        handler = {
            "transfer": self._transfer,
            "cancel_transfer": self._cancel_transfer,
            "hangup": self._hangup,
            "voicemail": self._voicemail,
            "media_failed": self._media_failed,
        }.get(request.action)
        if handler is None:
            await fail(
                "failed",
                f"unknown action {request.action!r}; use transfer, cancel_transfer, hangup, voicemail or media_failed",
            )
            return
        call = self.app.calls.get(request.call_id)
        if call is None or call.state in ("ending", "ended"):
            record = await self.deps.redis.hget(self.deps.keys.call(request.call_id), "state")
            known = call is not None or record is not None
            await fail(
                "failed", f"call {request.call_id} has already ended" if known else f"unknown call {request.call_id}"
            )
            return
        owner = await self.deps.redis.hget(self.deps.keys.call(request.call_id), "worker")
        if owner is not None and _text(owner) != request.worker_id:
            await fail("failed", f"call {request.call_id} is not on worker {request.worker_id}")
            return
        await handler(call, request, send)

    # --- transfer -----------------------------------------------------------------------------------------
    async def _transfer(self, call: Call, request: ControlRequest, send: Send) -> None:
        settings = self.deps.config.tools.transfer
        destination = settings.destinations.get(request.destination)
        if destination is None:
            allowed = ", ".join(sorted(settings.destinations)) or "none are configured"
            await send(
                reply_for(
                    request,
                    False,
                    "refused",
                    f"{request.destination!r} is not a transfer destination; allowed: {allowed}",
                )
            )
            return
        if call.state != "active":
            await send(reply_for(request, False, "failed", f"the call is {call.state}, not with the agent"))
            return
        if call.transfer is not None and call.transfer.pending:
            await send(reply_for(request, False, "failed", "a transfer is already in progress"))
            return
        context = (
            destination.dialplan_context
            or {
                "extension": settings.extension_context,
                "queue": settings.queue_context,
                "ringgroup": settings.ringgroup_context,
            }[destination.type]
        )
        if settings.mode == "continue":
            ok, message = await self._hand_off(call, "transferred", context, destination.target, destination.priority)
            await send(reply_for(request, ok, "answered" if ok else "failed", message))
            return
        (n,) = await self.deps.fence.write(("HINCRBY", self.deps.keys.call(call.call_id), "transfers", 1))
        transfer = TransferLeg(
            ids.transfer_channel_id(call.call_id, n),
            local_endpoint(destination.target, context),
            settings.ring_timeout_ms / 1000,
        )
        call.transfer = transfer
        log.info(
            "transfer of %s to %s (%s) as %s", call.caller.id, request.destination, transfer.endpoint, transfer.leg
        )
        status, message = await run_transfer(
            call,
            transfer,
            lambda: send(reply_for(request, True, "ringing", f"ringing {request.destination}", final=False)),
        )
        call.transfer_settled()  # a worker lost while it rang: the call moves now (not if it connected)
        await send(reply_for(request, status == "answered", status, message))

    async def _cancel_transfer(self, call: Call, request: ControlRequest, send: Send) -> None:
        attempt = call.transfer
        if attempt is None or not attempt.cancel():
            why = "the transfer was already answered" if call.state == "transferred" else "no transfer is ringing"
            await send(reply_for(request, False, "nothing_to_cancel", why))
            return
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                await attempt.finished.wait()
        except TimeoutError:
            log.warning("cancelled transfer leg %s took more than %.0f s to clean up", attempt.leg, CANCEL_WAIT_S)
        await send(reply_for(request, True, "cancelled", "the transfer was cancelled; the caller is back"))

    # --- hangup / voicemail -------------------------------------------------------------------------------
    async def _hangup(self, call: Call, request: ControlRequest, send: Send) -> None:
        await self._stop_transfer(call)
        # The agent's own hang-up, or the one at the duration cap (the summary mail says which).
        reason = TIME_LIMIT if request.reason == TIME_LIMIT else "agent_hangup"
        call.end_hint = reason
        try:
            await self.deps.rest.hangup(call.caller.id, "normal")  # False: already gone, fine too
        except AriError as exc:
            if not exc.gone:
                call.end_hint = ""
                await send(reply_for(request, False, "failed", str(exc)))
                return
        call.end(reason)
        await send(reply_for(request, True, "done"))

    async def _media_failed(self, call: Call, request: ControlRequest, send: Send) -> None:
        """The worker could not take the call: the setup attempt fails, or the live call moves to another worker."""
        call.media_failed(request.worker_id, request.reason or "no reason given")
        await send(reply_for(request, True, "done"))

    async def _voicemail(self, call: Call, request: ControlRequest, send: Send) -> None:
        if call.state != "active":
            await send(reply_for(request, False, "failed", f"the call is {call.state}, not with the agent"))
            return
        await self._stop_transfer(call)
        vm = self.deps.config.tools.leave_voicemail
        ok, message = await self._hand_off(call, "voicemail", vm.dialplan_context, vm.extension, vm.priority)
        await send(reply_for(request, ok, "done" if ok else "failed", message))

    async def _hand_off(self, call: Call, reason: str, context: str, extension: str, priority: int) -> tuple[bool, str]:
        """The caller leaves Stasis for a dialplan target; teardown deletes the media leg and the bridge and
        must not hang the caller up (decided before the call to continue: its StasisEnd looks like a hangup's)."""
        call.state, call.end_hint = "handing_off", reason
        try:
            await self.deps.rest.continue_in_dialplan(call.caller.id, context, extension, priority)
        except AriError as exc:
            log.warning("continue to %s,%s,%d failed: %s", context, extension, priority, exc)
            if call.state == "handing_off":
                call.state, call.end_hint = "active", ""
            return False, str(exc)
        log.info("call %s handed to %s,%s,%d (%s)", call.caller.id, context, extension, priority, reason)
        return True, f"{context},{extension},{priority}"

    @staticmethod
    async def _stop_transfer(call: Call) -> None:
        attempt = call.transfer
        if attempt is not None and attempt.cancel():
            try:
                async with asyncio.timeout(CANCEL_WAIT_S):
                    await attempt.finished.wait()
            except TimeoutError:
                pass


def _action_label(action: str) -> str:
    return action if action in ("transfer", "cancel_transfer", "hangup", "voicemail", "media_failed") else "unknown"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def _until_either(first: asyncio.Event, second: asyncio.Event) -> None:
    waiters = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
