"""The Realtime session of one call, over a WebSocket: handshake, audio, controls, reconnect, rotation.

The rules live in `protocol.RealtimeProtocol`; this module only moves frames and decides when to open a new
connection: after an unexpected close (with backoff, replaying the conversation from the call's log) and
shortly before the server's 60-minute limit (during silence, make-before-break).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import OPEN

from media_worker.realtime import events as ev
from media_worker.realtime import failures
from media_worker.realtime.failures import Failure
from media_worker.realtime.protocol import (
    FATAL_CLOSE_CODES,
    Fatal,
    Ready,
    RealtimeProtocol,
    ServerError,
    SessionRejected,
)
from shared.tasks import TaskSet
from shared.config.ga_session import effective_model
from shared.config.schema import OpenAIRealtime
from shared.metrics import REALTIME_CONNECT
from shared.metrics import REALTIME_ERRORS as ERRORS
from shared.metrics import REALTIME_RECONNECTS as RECONNECTS

log = logging.getLogger("realtime")

History = Callable[[], Awaitable[list[dict[str, Any]]]]
# Told when an open session meets a failure of the key or the account (insufficient_quota mid-call).
KeyFailureReport = Callable[[Failure, "Connection"], None]
# Each connection reads into a buffer of its own (see BufferedClientConnection); a longer message takes several reads.
READ_BUFFER = 64 * 1024


class BufferedClientConnection(ClientConnection, asyncio.BufferedProtocol):
    """websockets' connection, reading into a buffer of its own. As a plain asyncio.Protocol it gets a new bytes
    object per read (and per TLS record read), allocated at 256 KiB and shrunk to what came: many a second per
    call, which left glibc's heap growing with calls in the soak (freed memory it did not reuse)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_view = memoryview(bytearray(READ_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_view[:nbytes]))  # the parser keeps what it is given: a copy


class RealtimeError(Exception):
    """The session cannot be used; the message says why (shown in the call's log and metrics). `failure`: what
    kind of failure it was, when the API said (a refused key, no quota, a rate limit, a server fault)."""

    def __init__(self, message: str, failure: Failure | None = None):
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class ClientSettings:
    url: str
    model: str
    api_key: str
    organization: str = ""
    project: str = ""
    open_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 10.0
    stall_timeout_s: float = 15.0  # a response that goes this long without any event is stalled
    reconnect_attempts: int = 6
    reconnect_backoff_s: float = 0.2
    reconnect_backoff_max_s: float = 3.0
    rotate_before_expiry_s: float = 300.0
    replay_buffer_ms: int = 10_000  # caller audio kept while reconnecting, then sent to the new session

    @classmethod
    def from_config(cls, p: OpenAIRealtime, **overrides: Any) -> "ClientSettings":
        return cls(
            url=p.base_url,
            model=effective_model(p.model),
            api_key=p.api_key,
            organization=p.organization,
            project=p.project,
            **overrides,
        )

    @property
    def endpoint(self) -> str:
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}{urlencode({'model': self.model})}"

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers


class Connection:
    """One WebSocket to the Realtime API that has received `session.created` (what the prewarm pool holds)."""

    def __init__(self, ws: ClientConnection, first_frame: str | bytes, opened_at: float):
        self.ws = ws
        self.first_frame = first_frame
        self.opened_at = opened_at
        self.key_generation = 0  # which key it was opened with (the pool's KeyHealth generation)

    @classmethod
    async def open(cls, settings: ClientSettings) -> "Connection":
        started = time.monotonic()
        try:
            ws = await connect(
                settings.endpoint,
                additional_headers=settings.headers(),
                compression=None,
                open_timeout=settings.open_timeout_s,
                ping_interval=settings.ping_interval_s,
                ping_timeout=settings.ping_timeout_s,
                max_size=16 * 1024 * 1024,
                close_timeout=2,
                user_agent_header="asterisk-ai-voice-agent",
                create_connection=BufferedClientConnection,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            failure = failures.from_status(status, exc.response.body or b"")
            raise RealtimeError(
                f"the Realtime API refused the connection: HTTP {status} ({failure.reason})", failure
            ) from None
        try:
            async with asyncio.timeout(settings.handshake_timeout_s):
                first = await ws.recv()
        except asyncio.TimeoutError:
            await discard(ws, "no session.created")
            raise RealtimeError(f"no session.created within {settings.handshake_timeout_s:g}s") from None
        except websockets.ConnectionClosed as exc:
            frame = exc.rcvd
            closed = failures.from_close(frame.code, frame.reason) if frame is not None else None
            raise RealtimeError(_close_reason(exc), closed) from None
        except BaseException:
            # Cancelled (the call ended while its session was opening): nobody else holds this socket, and
            # its keepalive would keep it open for good.
            await discard(ws, "cancelled")
            raise
        # A refused key or an empty account is an `error` event where session.created belongs (then a close):
        # it is not an open connection, and must not be counted as one.
        event = ev.decode(first)
        if isinstance(event, ev.Error):
            await discard(ws, "error instead of session.created")
            failure = failures.from_error(event.error.code, event.error.type, event.error.message)
            raise RealtimeError(f"the Realtime API refused the session: {failure.reason}: {failure.detail}", failure)
        return cls(ws, first, started)

    @property
    def usable(self) -> bool:
        return self.ws.state is websockets.protocol.State.OPEN

    async def close(self) -> None:
        await self.ws.close(1000, "done")


async def discard(ws: ClientConnection, reason: str) -> None:
    """Close a connection nobody will use. A cancellation while it closes aborts the socket instead: a
    closing handshake cut short could leave it open, and the server would keep the session."""
    try:
        await ws.close(1000, reason)
    except BaseException:
        ws.transport.abort()
        raise


def _close_reason(exc: websockets.ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "the connection dropped (no close frame)"
    return f"the server closed the connection: {frame.code} {frame.reason}".rstrip()


def _close_code(exc: websockets.ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else 1006


class _Stalled(Exception):
    pass


class Reconnecting(msgspec.Struct, frozen=True):
    cause: str


class Reconnected(msgspec.Struct, frozen=True):
    replayed: int
    rotation: bool


class Closed(msgspec.Struct, frozen=True):
    """The session ended for good; `reason` is for people."""

    reason: str


class RealtimeClient:
    """A call's Realtime session: `start()`, then read `events`, `append()` the caller's audio, and queue
    controls (`create_response`, `truncate`, …): they are written in order by one writer task."""

    def __init__(
        self,
        settings: ClientSettings,
        session: dict[str, Any],
        *,
        history: History | None = None,
        connection_source: Callable[[], Awaitable[Connection]] | None = None,
        on_key_failure: KeyFailureReport | None = None,
    ):
        self.settings = settings
        self._on_key_failure = on_key_failure
        self.session = session
        self.history = history
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.protocol = RealtimeProtocol(session)
        self.expires_at: float | None = None
        self._source = connection_source or (lambda: Connection.open(settings))
        self._conn: Connection | None = None
        # A dead reader or writer would leave the call with a session that neither hears nor answers: the call
        # is told the session is closed, and ends.
        self._tasks = TaskSet("realtime client", on_death=lambda why: self._finish(f"Realtime client failed: {why}"))
        self._closing = False
        self._connected = asyncio.Event()
        self._controls_ready = asyncio.Event()  # the protocol's outbox has controls for the writer
        # The call's side of "a quiet moment" (nothing playing, the caller silent), told by `set_idle`; the
        # protocol's side is checked by the rotation itself. Set while nobody says otherwise.
        self._idle = True
        self._quiet_changed = asyncio.Event()
        self._switching = asyncio.Lock()  # a reconnect and a rotation never build sessions at once
        # Caller audio (append frames, with their PCM sizes) held while no session is connected.
        self._held: list[tuple[bytes, int]] = []
        self._held_bytes = 0
        self._held_limit = settings.replay_buffer_ms * 48  # bytes of 24 kHz pcm16: the largest input format
        self.replayed = 0

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self, *, replay: bool = False) -> Ready:
        """Connect, configure, and return once the session is ready. Raises RealtimeError naming the cause.
        `replay`: the call began elsewhere (moved from a worker that died): its conversation so far, from the call
        log, goes into the session before it is used."""
        ready = await self._establish(rotation=False, replay=replay)
        self._tasks.spawn(self._read_forever(), "realtime-reader", essential=True)
        self._tasks.spawn(self._write_forever(), "realtime-writer", essential=True)
        self._tasks.spawn(self._rotate_forever(), "realtime-rotator", essential=True)
        return ready

    async def _establish(self, *, rotation: bool, replay: bool) -> Ready:
        async with self._switching:
            return await self._establish_locked(rotation=rotation, replay=replay)

    async def _establish_locked(self, *, rotation: bool, replay: bool) -> Ready:
        if self._closing:
            raise RealtimeError("the session is closed")
        started = time.monotonic()
        conn = await self._source()
        protocol = RealtimeProtocol(self.session)
        try:
            ready = await self._handshake(conn, protocol)
            self.replayed = 0
            if replay and self.history is not None:
                items = await self.history()
                protocol.replay(items)
                self.replayed = len(items)
                await self._flush(conn, protocol)
            await self._release_held(conn)
            if self._closing:  # close() came while this connection was being set up: it is not ours to keep
                raise RealtimeError("the session was closed while it was being set up")
        except BaseException:
            await discard(conn.ws, "handshake failed")
            raise
        REALTIME_CONNECT.observe(time.monotonic() - started)
        old = self._conn
        self._conn, self.protocol = conn, protocol
        self.expires_at = ready.expires_at
        self._connected.set()
        if old is not None and rotation:
            await old.close()
        log.info("OpenAI session configured with %d tools", ready.tools)
        return ready

    async def _handshake(self, conn: Connection, protocol: RealtimeProtocol) -> Ready:
        deadline = time.monotonic() + self.settings.handshake_timeout_s
        frame = conn.first_frame
        while True:
            for item in protocol.receive(frame):
                if isinstance(item, Ready):
                    return item
                if isinstance(item, SessionRejected):
                    ERRORS.labels(item.code or "session_rejected").inc()
                    raise RealtimeError(
                        f"session.update rejected: {item.message} (param {item.param}, code "
                        f"{item.code}); the server would keep its defaults, so the call stops here"
                    )
                if isinstance(item, Fatal):
                    raise RealtimeError(item.reason)
            await self._flush(conn, protocol)
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    frame = await conn.ws.recv()
            except asyncio.TimeoutError:
                raise RealtimeError(f"no session.updated within {self.settings.handshake_timeout_s:g}s") from None
            except websockets.ConnectionClosed as exc:
                raise RealtimeError(_close_reason(exc)) from None

    async def close(self) -> None:
        """End the session: its tasks, then its connection. Idempotent; a start() or reconnect still under way
        sees `_closing` before it would keep a new connection, and closes that one itself."""
        self._closing = True
        self._connected.clear()
        await self._tasks.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await discard(conn.ws, "done")

    def set_idle(self, idle: bool) -> None:
        """The call says whether it is at a quiet moment (nothing playing, the caller silent): the session
        is rotated only then."""
        if idle != self._idle:
            self._idle = idle
            self._quiet_changed.set()

    # --- sending ---------------------------------------------------------------------------------------
    @staticmethod
    async def _flush(conn: Connection, protocol: RealtimeProtocol) -> None:
        for frame in protocol.take_outbox():
            await conn.ws.send(frame, text=True)

    def _send_controls(self) -> None:
        self._controls_ready.set()

    async def _write_forever(self) -> None:
        """The one writer of controls, so they go out in the order they were queued."""
        while True:
            await self._controls_ready.wait()
            self._controls_ready.clear()
            if self._conn is None or not self._connected.is_set():
                continue  # kept in the outbox of a protocol that is being replaced; the replay covers it
            try:
                await self._flush(self._conn, self.protocol)
            except websockets.ConnectionClosed:
                pass  # the reader sees the close and reconnects

    async def append(self, pcm: bytes) -> None:
        """Send caller audio. While reconnecting it is held (up to `replay_buffer_ms`) and sent afterwards."""
        frame = RealtimeProtocol.append_frame(pcm)
        if self._connected.is_set() and self._conn is not None:
            try:
                await self._conn.ws.send(frame, text=True)
                return
            except websockets.ConnectionClosed:
                self._connected.clear()
        self._hold(frame, len(pcm))

    def append_now(self, pcm: bytes) -> bool:
        """`append` without a task hop, for the per-frame path: written at once if the session is connected and
        its socket takes it without waiting (what `ws.send` does before its drain, minus a coroutine and a context
        manager per frame). False, with nothing sent, whenever `append` might wait or hold: the caller then
        goes through `append`, in order."""
        conn = self._conn
        if conn is None or self._held or not self._connected.is_set():
            return False
        ws = conn.ws
        if ws.protocol.state is not OPEN or ws.paused or ws.fragmented_send_waiter is not None:
            return False
        if ws.transport.is_closing():
            return False
        ws.protocol.send_text(RealtimeProtocol.append_frame(pcm))
        try:
            ws.send_data()
        except OSError:  # as ws.send would: the connection is broken; the reader sees it close and reconnects
            ws.transport.abort()
        return True

    def _hold(self, frame: bytes, size: int) -> None:
        self._held.append((frame, size))
        self._held_bytes += size
        while self._held_bytes > self._held_limit:
            self._held_bytes -= self._held.pop(0)[1]  # oldest first: keep the most recent speech

    async def _release_held(self, conn: Connection) -> None:
        # Appends that arrive while these are sent are held too, so order is kept; the loop drains them.
        while self._held:
            held, self._held, self._held_bytes = self._held, [], 0
            for frame, _ in held:
                await conn.ws.send(frame, text=True)

    # Controls: queued in the protocol at once (so their order is the call's), written by the writer task.
    def create_response(self, *, event_id: str | None = None, **response: Any) -> None:
        self.protocol.create_response(event_id=event_id, **response)
        self._send_controls()

    def cancel_response(self) -> bool:
        sent = self.protocol.cancel_response()
        self._send_controls()
        return sent

    def truncate(self, item_id: str, played_ms: float) -> int | None:
        end = self.protocol.truncate(item_id, played_ms)
        self._send_controls()
        return end

    def delete_item(self, item_id: str) -> None:
        self.protocol.delete_item(item_id)
        self._send_controls()

    def add_system_text(self, text: str) -> None:
        self.protocol.add_system_text(text)
        self._send_controls()

    def add_user_text(self, text: str) -> None:
        self.protocol.add_user_text(text)
        self._send_controls()

    def function_output(self, call_id: str, output: str) -> None:
        """Raises KeyError for a call the current session never made (one from before a reconnect)."""
        self.protocol.function_output(call_id, output)
        self._send_controls()

    def update_session(self, session: dict[str, Any]) -> None:
        self.session = session
        self.protocol.update_session(session)
        self._send_controls()

    # --- receiving, reconnect, rotation ----------------------------------------------------------------
    async def _read_forever(self) -> None:
        while not self._closing:
            conn, protocol = self._conn, self.protocol
            assert conn is not None
            fatal: Fatal | None = None
            try:
                while fatal is None:
                    # Silence from the server is normal while the caller talks or listens, but not in the
                    # middle of a response: that is a stalled server, and waiting longer helps nobody.
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel of close() when
                    # a frame arrives at the same moment, and the reader then lives on until the stall timeout.
                    limit = self.settings.stall_timeout_s if protocol.active_response else None
                    try:
                        async with asyncio.timeout(limit):
                            frame = await conn.ws.recv()
                    except asyncio.TimeoutError:
                        raise _Stalled(f"no event for {limit:g}s during a response") from None
                    for item in protocol.receive(frame):
                        self._observe(item)
                        self.events.put_nowait(item)
                        if isinstance(item, Fatal):
                            fatal = item
                    if protocol.outbox:
                        self._controls_ready.set()
                    if protocol.quiet:
                        self._quiet_changed.set()
                await conn.ws.close(1000, "fatal error")
                self._report(fatal, conn)
                self._finish(f"Realtime session ended: {fatal.reason}")
                return
            except websockets.ConnectionClosed as exc:
                if conn is not self._conn:
                    continue  # rotated: the old connection was closed on purpose; read the new one
                cause, code = _close_reason(exc), _close_code(exc)
            except _Stalled as exc:
                cause, code = f"the server stalled ({exc})", 1011
                self._tasks.spawn(conn.ws.close(1011, "stalled"), "realtime-close-stalled")
            if self._closing:
                return
            if code in FATAL_CLOSE_CODES:
                self._finish(f"Realtime session ended: {cause}")
                return
            if not await self._reconnect(cause):
                return

    def _observe(self, item: Any) -> None:
        if isinstance(item, ServerError):
            ERRORS.labels(item.code or "unknown").inc()
            log.warning("Realtime error %s: %s (param %s)", item.code, item.message, item.param)
        elif isinstance(item, Fatal):
            ERRORS.labels(item.reason.split(":")[0]).inc()
            log.error("Realtime fatal error: %s", item.reason)
        elif isinstance(item, ev.Malformed):
            log.warning("Realtime sent an unusable event (%s): %s", item.type or "no type", item.reason)

    def _report(self, fatal: Fatal, conn: Connection) -> None:
        if self._on_key_failure is None or (fatal.code is None and fatal.error_type is None):
            return
        failure = failures.from_error(fatal.code, fatal.error_type, fatal.reason)
        if failure.kind.blocks_the_key:
            self._on_key_failure(failure, conn)

    def _finish(self, reason: str) -> None:
        self._connected.clear()
        log.warning("%s", reason)
        self.events.put_nowait(Closed(reason))

    async def _reconnect(self, cause: str) -> bool:
        self._connected.clear()
        RECONNECTS.labels("close").inc()
        log.warning("Realtime connection lost (%s); reconnecting", cause)
        self.events.put_nowait(Reconnecting(cause))
        delay = self.settings.reconnect_backoff_s
        for attempt in range(1, self.settings.reconnect_attempts + 1):
            try:
                await self._establish(rotation=False, replay=True)
                self.events.put_nowait(Reconnected(self.replayed, rotation=False))
                return True
            except (RealtimeError, OSError, websockets.WebSocketException) as exc:
                blocked = isinstance(exc, RealtimeError) and exc.failure is not None and exc.failure.kind.blocks_the_key
                if blocked or (isinstance(exc, RealtimeError) and "rejected" in str(exc)):
                    self._finish(str(exc))
                    return False
                log.warning("reconnect attempt %d/%d failed: %s", attempt, self.settings.reconnect_attempts, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_backoff_max_s)
        self._finish(f"Realtime session lost: {cause}; {self.settings.reconnect_attempts} reconnects failed")
        return False

    async def _rotate_forever(self) -> None:
        """Open a fresh session shortly before the server's limit, at a quiet moment, then switch to it."""
        while not self._closing:
            if self.expires_at is None:
                return
            due = self.expires_at - self.settings.rotate_before_expiry_s - time.time()
            if due > 0:
                await asyncio.sleep(min(due, 60))
                continue
            while not (self.protocol.quiet and self._idle):
                self._quiet_changed.clear()
                await self._quiet_changed.wait()  # set by the reader (protocol quiet) and by set_idle
            RECONNECTS.labels("rotation").inc()
            try:
                await self._establish(rotation=True, replay=True)
                self.events.put_nowait(Reconnected(self.replayed, rotation=True))
            except (RealtimeError, OSError, websockets.WebSocketException) as exc:
                log.warning("session rotation failed (%s); keeping the current session", exc)
                await asyncio.sleep(5)
