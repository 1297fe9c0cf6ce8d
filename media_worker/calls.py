"""The calls of one media worker: assignments from the inbox become sessions, media connections bind to them
(AudioSocket by the call UUID, RTP by the port reserved for the call, WebSocket by the worker connecting to the
URL the controller sends once the media channel exists), and leases say who owns each call."""

from __future__ import annotations

import asyncio
import errno
import logging

import msgspec
import redis.asyncio as aioredis

from media_worker.context import WorkerContext
from media_worker.session import CallSession
from shared.tasks import TaskSet
from media_worker.transport.audiosocket_server import AudioSocketLink
from media_worker.transport.link import MediaLink, MediaSink
from media_worker.transport.rtp_endpoint import RtpEndpoint
from media_worker.transport.websocket_media import MediaConnectError, WebSocketMediaLink
from shared.dead_letters import UNDECODABLE, UNKNOWN_TYPE, PoisonEntry
from shared.messages import (
    MOVED,
    Assignment,
    CallEnded,
    ControlReply,
    ControlRequest,
    MediaBridged,
    MediaPeer,
    MediaReady,
    inbox_fields,
)
from shared import rtp_ports
from shared.logs import call_context
from shared.websocket_url import redact

InboxMessage = Assignment | ControlReply | MediaPeer | MediaReady | MediaBridged | CallEnded
INBOX_TYPES: dict[str, type[InboxMessage]] = {
    "assign": Assignment,
    "control_result": ControlReply,
    "media_peer": MediaPeer,
    "media": MediaReady,
    "media_bridged": MediaBridged,
    "end": CallEnded,
}

log = logging.getLogger("calls")

# Asterisk may connect a call's AudioSocket before this worker has read the call's assignment from its inbox
# (the controller writes it first, but the read can lag under a burst): such a connection is held this long.
HOLD_UNASSIGNED_S = 2.0
MAX_HELD = 100
# WebSocket media: start the clock this long after MEDIA_START even if Asterisk has sent no audio yet.
WEBSOCKET_LIVE_AFTER = 0.5
LEASE_MS = 3000  # renewed every second: a worker dead for 3 s has lost its calls

_RENEW_LEASES = """
-- KEYS: per call, its record and its lease. ARGV: 1 worker id, 2 lease ms, 3.. each call's epoch.
-- 1 per call whose record still has our epoch (lease renewed), 0 where another epoch took it (a move). A record
-- that is missing (a Redis restarted without its data) proves nothing: the lease is renewed, the call goes on.
local out = {}
for i = 1, #KEYS, 2 do
  local epoch = ARGV[2 + (i + 1) / 2]
  local current = redis.call('HGET', KEYS[i], 'epoch')
  if current == false or current == epoch then
    redis.call('SET', KEYS[i + 1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"""
STOP_ALL_TIMEOUT_S = 10.0  # a session's stop is bounded (CallSession's close timeout); this bounds them all


class CallManager:
    def __init__(
        self,
        ctx: WorkerContext,
        *,
        listen_host: str,
        allowed_hosts: list[str],
        rtp_ports: tuple[int, int] = (1, 65535),
    ):
        self.ctx = ctx
        self.listen_host = listen_host
        self.allowed_hosts = allowed_hosts
        self.rtp_ports = rtp_ports  # this worker's range: an assignment's port outside it is refused
        self.sessions: dict[str, CallSession] = {}
        self._rtp: dict[str, RtpEndpoint] = {}
        self._held: dict[str, _Held] = {}  # AudioSocket connections that came before their assignment
        self._ws: dict[str, tuple[WebSocketMediaLink, asyncio.Task[None] | None]] = {}  # connecting or connected
        self._tasks = TaskSet("calls")  # each session's reaper, each WebSocket media connect
        self._no_calls = asyncio.Event()  # set while no session is on this worker (a drain waits for it)
        self._no_calls.set()
        self._renew = ctx.redis.register_script(_RENEW_LEASES)

    # --- inbox messages --------------------------------------------------------------------------------
    async def handle(self, kind: str, data: str | bytes) -> None:
        """One inbox message; what cannot be used raises (the inbox dead-letters it, and refuses an assign)."""
        message_type = INBOX_TYPES.get(kind)
        if message_type is None:
            raise PoisonEntry(UNKNOWN_TYPE, f"unknown inbox message type {kind[:40]!r}")
        message = msgspec.json.decode(data, type=message_type)
        with call_context(message.call_id):  # the inbox task serves every call: each line names its own
            await self._dispatch(message)

    async def _dispatch(self, message: InboxMessage) -> None:
        if isinstance(message, Assignment):
            await self.assign(message)
        elif isinstance(message, ControlReply):
            session = self.sessions.get(message.call_id)
            if session is not None:
                session.tools.on_reply(message)
        elif isinstance(message, MediaPeer):
            self.media_peer(message)
        elif isinstance(message, MediaReady):
            self.connect_websocket(message)
        elif isinstance(message, MediaBridged):
            self.websocket_bridged(message)
        else:
            session = self.sessions.get(message.call_id)
            if session is not None:
                # A move: the call goes on elsewhere; this session stops without hanging up or writing figures.
                session.stop(MOVED if message.reason == MOVED else f"controller: {message.reason}")

    async def assign(self, assignment: Assignment) -> None:
        call_id = assignment.call_id
        if assignment.plan.call_id != call_id:  # the session, its lease and its reaper go by the plan's id
            raise PoisonEntry(
                UNDECODABLE,
                f"the assignment of call {call_id[:40]!r} carries a plan for {assignment.plan.call_id[:40]!r}",
            )
        current = self.sessions.get(call_id)
        if current is not None:
            if assignment.epoch <= current.assignment.epoch:
                return  # a duplicate delivery
            current.stop("reassigned")
        session = CallSession(self.ctx, assignment)
        self.sessions[call_id] = session
        self._no_calls.clear()
        if assignment.plan.transport == "rtp":
            try:
                self._rtp[call_id] = await self._open_rtp(session, assignment)
            except (OSError, ValueError) as exc:
                # Asterisk would send to a port nobody hears, and RTP has no connection to refuse: the
                # controller is told, so the slot and the port are freed and the call goes elsewhere.
                log.error("call %s: RTP port %d not opened: %s", call_id, assignment.rtp_port, exc)
                self._forget(session)
                if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                    await self._block_port(assignment.rtp_port)
                await self.media_failed(call_id, assignment.epoch, f"RTP port {assignment.rtp_port}: {exc}")
                return
        session.start()
        held = self._held.pop(call_id, None)
        if held is not None:
            held.cancel_timer()
            if session.plan.transport == "audiosocket":
                self._attach_audiosocket(session, held.link)
                held.link.rebind(session)
            else:
                held.link.refuse()
        self._tasks.spawn(self._forget_when_done(session), f"reap-{call_id}")
        log.info(
            "call %s assigned (epoch %d, %s %s, context %s)",
            call_id,
            assignment.epoch,
            assignment.plan.transport,
            assignment.plan.format,
            assignment.plan.context,
        )

    async def _open_rtp(self, session: CallSession, assignment: Assignment) -> RtpEndpoint:
        low, high = self.rtp_ports
        if not low <= assignment.rtp_port <= high:
            raise ValueError(f"not in this worker's range {low}-{high}")
        # Admission gave this port to this call, so the call that held it before has ended for the controller;
        # its session may still be winding down here (closing its Realtime session) with the socket bound, and
        # the bind would fail (EADDRINUSE: the new caller sent to the fallback). Its media is over: release it.
        stale = [cid for cid, held in self._rtp.items() if held.port == assignment.rtp_port]
        for cid in stale:
            log.info("call %s: RTP port %d released for call %s", cid, assignment.rtp_port, assignment.call_id)
            self._rtp.pop(cid).stop()
        if stale:
            await asyncio.sleep(0)  # asyncio closes a datagram socket on the loop's next turn
        endpoint = RtpEndpoint(
            self.listen_host,
            assignment.rtp_port,
            assignment.plan.format,
            lambda link: self._rtp_sink(session, link),
            allowed_hosts=self.allowed_hosts,
        )
        await endpoint.open()
        return endpoint

    async def _block_port(self, port: int) -> None:
        """Another process holds `port` (none of our calls does: _open_rtp let go of those): admission is told to
        skip it for a while, or every next call would be given it, and fail, again."""
        try:
            blocked = await rtp_ports.block(self.ctx.redis, self.ctx.keys.worker_rtp_blocked(self.ctx.worker_id), port)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("RTP port %d: cannot set it aside (%s); it may be given again", port, exc)
            return
        log.warning(
            "RTP port %d is held by another process: not given to calls for %d min (%d port(s) of %d-%d set aside)",
            port,
            rtp_ports.BLOCKED_FOR_MS // 60_000,
            blocked,
            *self.rtp_ports,
        )

    async def media_failed(self, call_id: str, epoch: int, why: str) -> None:
        """Tell the controller this worker cannot take the call (action media_failed): an RTP port that will
        not open, or an assignment the inbox could not use (media_worker/inbox.py)."""
        request = ControlRequest(
            request_id=f"{call_id}:{epoch}:media_failed",
            call_id=call_id,
            worker_id=self.ctx.worker_id,
            action="media_failed",
            reason=why,
        )
        try:
            await self.ctx.redis.xadd(
                self.ctx.keys.controller_inbox, inbox_fields("control", request), maxlen=100_000, approximate=True
            )
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.error(
                "call %s: the controller could not be told (%s); the call is silent until it ends",
                call_id,
                exc,
            )

    def _rtp_sink(self, session: CallSession, link: MediaLink) -> MediaSink:
        session.attach(link, live=False)  # RTP: live once we know Asterisk's address (media_peer, or first packet)
        return session

    def media_peer(self, peer: MediaPeer) -> None:
        endpoint = self._rtp.get(peer.call_id)
        session = self.sessions.get(peer.call_id)
        if endpoint is None or session is None:
            return  # the call is over already
        if not peer.host:
            endpoint.peer_unknown()  # the session goes live with the first packet
        elif endpoint.set_peer(peer.host, peer.port):
            session.media_ready()

    def _forget(self, session: CallSession) -> None:
        if self.sessions.get(session.call_id) is session:
            del self.sessions[session.call_id]
        if not self.sessions:
            self._no_calls.set()

    async def wait_no_calls(self) -> None:
        """Return once no call is left on this worker."""
        await self._no_calls.wait()

    async def _forget_when_done(self, session: CallSession) -> None:
        await session.finished.wait()
        self._forget(session)
        endpoint = self._rtp.pop(session.call_id, None)
        if endpoint is not None:
            endpoint.stop()
        ws = self._ws.pop(session.call_id, None)
        if ws is not None:
            link, task = ws
            if task is not None:
                task.cancel()
            link.stop()  # no-op when the session closed it; otherwise (still connecting) it is aborted
        try:
            await self.ctx.redis.delete(self.ctx.keys.call_lease(session.call_id))
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            pass

    # --- media connections -----------------------------------------------------------------------------
    def bind_audiosocket(self, call_uuid: str, peer_host: str, link: AudioSocketLink) -> MediaSink | None:
        session = self.sessions.get(call_uuid)
        if session is None and call_uuid not in self._held and len(self._held) < MAX_HELD:
            held = self._held[call_uuid] = _Held(self, call_uuid, peer_host, link)
            return held
        if session is None or session.plan.transport != "audiosocket" or session.link is not None:
            return None  # refused: the server counts it and logs it (once a minute per host)
        self._attach_audiosocket(session, link)
        return session

    @staticmethod
    def _attach_audiosocket(session: CallSession, link: AudioSocketLink) -> None:
        link.expect(session.plan.format)
        session.attach(link)
        if link.format and link.format != session.plan.format:
            session.on_format(link.format)  # learnt from audio Asterisk sent while the connection was held

    def connect_websocket(self, ready: MediaReady) -> None:
        """The controller created the call's WebSocket media channel: connect to it (in a task of its own; the
        inbox goes on). A failure ends the session: the controller's addChannel then times out and the call
        is retried on another worker or takes the fallback."""
        session = self.sessions.get(ready.call_id)
        if (
            session is None
            or session.plan.transport != "websocket"
            or session.assignment.epoch != ready.epoch
            or session.link is not None
            or ready.call_id in self._ws
        ):
            log.warning(
                "media URL %s for call %s (epoch %d) not taken: no such session waiting for it",
                redact(ready.url),
                ready.call_id,
                ready.epoch,
            )
            return
        try:
            link = WebSocketMediaLink(
                ready.url,
                session.plan.format,
                call_id=ready.call_id,
                on_started=lambda link: self._websocket_started(session, link),
            )
        except ValueError as exc:
            log.error("call %s: unusable media URL: %s", ready.call_id, exc)
            session.stop("media_connect_failed")
            return
        task = self._tasks.spawn(self._connect_websocket(session, link), f"ws-media-{ready.call_id}")
        self._ws[ready.call_id] = (link, task)

    async def _connect_websocket(self, session: CallSession, link: WebSocketMediaLink) -> None:
        try:
            await link.connect()
        except MediaConnectError as exc:
            session.logger.error("call %s: WebSocket media not connected: %s", session.call_id, exc)
            session.stop("media_connect_failed")

    def _websocket_started(self, session: CallSession, link: WebSocketMediaLink) -> MediaSink | None:
        """MEDIA_START: the channel is answered, but not yet in the caller's bridge (the controller adds it
        once its StasisStart arrives, a few ms later); frames sent before that are played into nothing. So
        the clock starts when the controller says the leg is bridged (media_bridged), or with the first frame
        Asterisk sends us (it sends only once bridged), whichever comes first; WEBSOCKET_LIVE_AFTER bounds the
        wait should both be lost."""
        if session.finished.is_set() or session.stopping or session.link is not None:
            return None
        session.attach(link, live=False)

        def live_anyway() -> None:
            if not session.finished.is_set() and not session.stopping:
                session.media_ready()

        asyncio.get_running_loop().call_later(WEBSOCKET_LIVE_AFTER, live_anyway)
        return session

    def websocket_bridged(self, bridged: MediaBridged) -> None:
        session = self.sessions.get(bridged.call_id)
        if (
            session is None
            or session.assignment.epoch != bridged.epoch
            or session.link is None
            or session.linked.is_set()
            or session.stopping
        ):
            return  # live already (the caller spoke first), or over
        session.media_ready()

    # --- leases and shutdown ---------------------------------------------------------------------------
    async def renew_leases(self) -> None:
        """Renew the lease of each call whose record still names this epoch; a call whose epoch moved on (it was
        moved to another worker while this one was wedged, and the `end` in the inbox is not read yet) is
        stopped here, without hanging up: it is not ours to end."""
        if not self.sessions:
            return
        sessions = [s for s in self.sessions.values() if not s.stopping]
        keys = self.ctx.keys
        reply = await self._renew(
            keys=[k for s in sessions for k in (keys.call(s.call_id), keys.call_lease(s.call_id))],
            args=[self.ctx.worker_id, LEASE_MS, *(s.assignment.epoch for s in sessions)],
        )
        for session, held in zip(sessions, reply, strict=True):
            if not int(held) and not session.stopping:
                session.logger.warning(
                    "call %s was moved to another worker (epoch %d is no longer its own): stopping its session here",
                    session.call_id,
                    session.assignment.epoch,
                )
                session.stop(MOVED)

    def every_second(self, now: float) -> None:
        """The worker's 1 s tick, for each call (metrics counted on the frame path, the flood guard)."""
        for session in list(self.sessions.values()):
            session.every_second(now)

    async def hand_over(self, timeout: float) -> None:
        """The worker stops with calls still up: ask the controller to move each to another worker (`media_failed`,
        as for a worker that cannot keep a call) instead of ending them, which would send AudioSocket and WebSocket
        callers to the fallback and leave RTP callers in silence. Waits, bounded, for the `moved` ends."""
        sessions = [s for s in self.sessions.values() if not s.stopping]
        if not sessions:
            return
        log.info("stopping with %d calls: asking the controller to move them to other workers", len(sessions))
        await asyncio.gather(
            *(self.media_failed(s.call_id, s.assignment.epoch, "the worker is stopping") for s in sessions)
        )
        try:
            async with asyncio.timeout(timeout):
                for session in sessions:
                    await session.finished.wait()
        except TimeoutError:
            left = sum(not s.finished.is_set() for s in sessions)
            log.warning("%d of %d calls were not moved within %.0f s: they are ended", left, len(sessions), timeout)

    async def stop_all(self, reason: str) -> None:
        """Stop every call and wait until each has ended (each stop is bounded; so is the wait)."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.stop(reason)
        try:
            async with asyncio.timeout(STOP_ALL_TIMEOUT_S):
                for session in sessions:
                    await session.finished.wait()
        except TimeoutError:
            left = [s.call_id for s in sessions if not s.finished.is_set()]
            log.error("%d calls had not ended %.0f s after the stop: %s", len(left), STOP_ALL_TIMEOUT_S, left)
        await self._tasks.close(finish_s=2.0)  # the reapers' cleanup (RTP ports, leases) finishes first


class _Held:
    """The sink of an AudioSocket connection whose call is not assigned here yet: the caller's first frames
    are dropped (the session is not there to take them), and without an assignment in time it is refused."""

    def __init__(self, calls: CallManager, call_uuid: str, peer_host: str, link: AudioSocketLink):
        self.calls, self.call_uuid, self.peer_host, self.link = calls, call_uuid, peer_host, link
        self.timer = asyncio.get_running_loop().call_later(HOLD_UNASSIGNED_S, self.expire)

    def cancel_timer(self) -> None:
        self.timer.cancel()

    def on_audio(self, payload: bytes) -> None:
        pass

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_format(self, fmt: str) -> None:
        pass  # the link keeps the format it learnt; the session is told when the connection is bound

    def on_hangup(self, reason: str) -> None:
        self._forget()

    def expire(self) -> None:
        if self._forget():
            self.link.refuse()  # no assignment within HOLD_UNASSIGNED_S: counted and logged by the server

    def _forget(self) -> bool:
        if self.calls._held.get(self.call_uuid) is not self:
            return False
        del self.calls._held[self.call_uuid]
        self.timer.cancel()
        return True
