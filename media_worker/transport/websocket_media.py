"""WebSocket media (chan_websocket, Asterisk ≥ 22.6): the media worker connects to Asterisk.

**Direction: server mode** (externalMedia `transport=websocket`, `encapsulation=none`,
`connection_type=server`). The controller creates the media channel; Asterisk answers with a connection id
(channel variable MEDIA_WEBSOCKET_CONNECTION_ID); the worker that holds the call opens
`ws://<asterisk http>/media/<connection id>` (subprotocol `media`). Why this direction and not Asterisk
dialling a `websocket_client.conf` entry (client mode):
- no listening port and no per-worker entry in Asterisk's config: workers come and go (scaling, rolling
  restarts) without touching Asterisk; client mode needs one static websocket_client.conf entry per worker
  address, edited and reloaded on every change;
- whoever holds the connection id can attach, so a media channel can be given to *any* worker, chosen when
  the controller creates it. Live takeover (another worker continues a call) is then: the controller creates
  a new media channel, hands its id to the new worker, swaps the legs in the bridge, and drops the old one.
  It cannot reuse the old channel: on 22.10.1 a closed or broken socket hangs its channel up (no reattach),
  and a second connection to a live id is refused with 409 (so there is never a split brain). Client mode
  could only take over toward a worker listed in Asterisk's config;
- NAT and firewalls: workers only make outbound connections to Asterisk's HTTP port, which ARI already
  needs open to the cluster.
The connection id (a random UUID) is the only credential of the media URL: it travels in the controller →
worker inbox (Redis) only and is never logged in full. Keep http.conf on a private interface (as for ARI).

Asterisk answers the media channel (and it enters Stasis) only once the worker has connected: MEDIA_START is
the first message, then the channel is answered (no `n` dial option), then StasisStart arrives at the
controller, which can only then add it to the bridge (addChannel before that answers 422).

Pacing: our `PlayoutClock` sends one frame per 20 ms, as on the other transports, so the echo guard, the
"what did the caller hear" accounting and the metrics are the same code. Asterisk re-times what it gets
through its own queue (one frame per tick), which then holds 0–1 frames. Barge-in stops our queue and sends
GET_STATUS + FLUSH_MEDIA in one write: Asterisk drops the few frames it still holds at once, and the STATUS
answer (handled before the flush) says how many, which the session subtracts from what it sent so the
Realtime truncation is exact to the frame. (MARK_MEDIA cannot serve this: FLUSH_MEDIA drops the queued marks
with the audio, so a mark behind the cut is never acknowledged.) MEDIA_XOFF pauses sending until MEDIA_XON.

The protocol logic is sans-I/O (`websocket_codec` for chan_websocket's control messages, websockets'
`ClientProtocol` for RFC 6455 framing); this module is the thin asyncio shell. Nothing awaits per frame.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from media_worker.transport import websocket_codec as wc
from media_worker.transport.link import LinkStats, MediaSink
from shared.logs import CallLogger
from shared.websocket_url import redact

log = logging.getLogger("media.websocket")

SUBPROTOCOL = Subprotocol("media")
# Bytes we let asyncio hold for an Asterisk that reads slower than we write (about 1.3 s of slin24).
MAX_WRITE_BUFFER = 64 * 1024
CONNECT_TIMEOUT = 3.0  # TCP + HTTP upgrade + MEDIA_START
CLOSE_LINGER = 1.0  # after our close frame, the socket is reset if Asterisk does not close it
NORMAL_CLOSURE = 1000
MAX_RECEIVE = 64 * 1024  # Asterisk sends one frame per message (≤ 960 B): anything this big is wrong
# Each link reads into a buffer of its own: a plain asyncio.Protocol gets a new bytes object per read, allocated
# at 256 KiB and shrunk to the ~1 KB received, which left glibc's heap growing with calls (the soak).
READ_BUFFER = 16 * 1024
STATUS_EVERY = 250  # frames (5 s) between GET_STATUS samples of Asterisk's queue depth

Started = Callable[["WebSocketMediaLink"], "MediaSink | None"]


class MediaConnectError(Exception):
    """The media WebSocket could not be opened (refused, 404 unknown connection id, 409 already connected,
    no MEDIA_START in time)."""


class WebSocketMediaLink(asyncio.BufferedProtocol):
    """One call's media WebSocket: the asyncio protocol and the call's MediaLink.

    `connect()` returns once MEDIA_START has arrived (or fails after `connect_timeout` seconds);
    `on_started(link)` is then called (inside the protocol callback, before any audio is delivered) and
    returns the sink, or None to refuse (the link closes).
    on_hangup reasons: "hangup" (Asterisk closed with 1000: the channel was hung up), "closed" (another
    close code, EOF or a reset), "error" (a protocol error), "stopped" (the worker stops).
    """

    transport = "websocket"

    def __init__(
        self,
        url: str,
        fmt: str,
        *,
        on_started: Started,
        call_id: str = "",
        json: bool = False,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        connect_timeout: float = CONNECT_TIMEOUT,
    ):
        if fmt not in wc.RATE_BY_FORMAT:
            raise ValueError(f"WebSocket media format {fmt!r} is not one of {sorted(wc.RATE_BY_FORMAT)}")
        self.url = url
        self.call_id = call_id
        self._log = CallLogger(log, call_id)  # its callbacks run outside the call's context
        self.stats = LinkStats()
        self.peer = ""
        self.max_write_buffer = max_write_buffer
        self.connect_timeout = connect_timeout
        self.control = wc.ControlState(json=json)
        self._set_format(fmt)
        self._on_started = on_started
        try:
            self._uri = parse_uri(url)
            self._ws = ClientProtocol(self._uri, subprotocols=[SUBPROTOCOL], max_size=MAX_RECEIVE)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {redact(url)}: {exc}") from None
        self._transport: asyncio.Transport | None = None  # None once closed: send() drops from then on
        self._raw_transport: asyncio.Transport | None = None
        self._read_view = memoryview(bytearray(READ_BUFFER))  # asyncio reads into it
        self._sink: MediaSink | None = None
        self._opened: asyncio.Future[None] | None = None  # resolved at MEDIA_START
        self._flush_future: asyncio.Future[int] | None = None
        self._done = False
        self.xoff = 0  # MEDIA_XOFF events seen
        # Asterisk's queue depth, sampled every STATUS_EVERY frames sent (how well our pacing meets its timer)
        self.queue_max = 0
        self.queue_total = 0
        self.queue_samples = 0
        self.flushed_frames = 0
        self._until_status = STATUS_EVERY

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> None:
        """Open the socket, upgrade, and wait for MEDIA_START. Raises MediaConnectError."""
        timeout = self.connect_timeout
        loop = asyncio.get_running_loop()
        self._opened = loop.create_future()
        uri = self._uri
        ssl_ctx = ssl_module.create_default_context() if uri.secure else None
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: self, uri.host, uri.port, ssl=ssl_ctx)
                await self._opened
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            self._abort()
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                why = f"no MEDIA_START within {timeout:.1f} s"
            else:
                why = f"cannot connect: {exc.strerror or exc}"
            raise MediaConnectError(f"{redact(self.url)}: {why}") from None
        except MediaConnectError:
            self._abort()
            raise

    def _fail_open(self, why: str) -> None:
        opened = self._opened
        if opened is not None and not opened.done():
            opened.set_exception(MediaConnectError(f"{redact(self.url)}: {why}"))

    # ------------------------------------------------------------------ the session's side (MediaLink)

    def send(self, payload: bytes | bytearray) -> bool:
        transport = self._transport
        if (
            transport is None
            or self._sink is None
            or self.control.paused
            or transport.get_write_buffer_size() > self.max_write_buffer
        ):
            self.stats.dropped_out += 1
            return False
        ws = self._ws
        ws.send_binary(cast(bytes, payload))  # serialised (copied) at once: a reused buffer is safe to pass
        self._until_status -= 1
        if not self._until_status:
            self._until_status = STATUS_EVERY
            query = self.control.status()
            if query is not None:
                ws.send_text(query)
        transport.writelines(ws.data_to_send())
        stats = self.stats
        stats.frames_out += 1
        stats.bytes_out += len(payload)
        return True

    def summary(self) -> dict[str, int | float]:
        """Per-call figures for the call record (once, at the end)."""
        samples = self.queue_samples
        return {
            "media_queue_max": self.queue_max,
            "media_queue_samples": samples,
            "media_queue_mean": round(self.queue_total / samples, 2) if samples else 0,
            "media_flushed_frames": self.flushed_frames,
            "media_xoff": self.xoff,
            "media_dropped_out": self.stats.dropped_out,
        }

    def flush(self) -> asyncio.Future[int] | None:
        """Barge-in: drop what Asterisk has queued. The future gets the number of frames dropped (from the
        STATUS answered just before the flush), or is None when the count cannot be had."""
        if self._transport is None or self._sink is None:
            return None
        for cmd in self.control.flush():
            self._ws.send_text(cmd)
        self._transport.writelines(self._ws.data_to_send())
        previous, self._flush_future = self._flush_future, asyncio.get_running_loop().create_future()
        if previous is not None and not previous.done():
            previous.set_result(0)  # superseded: the newer flush reports what it dropped
        return self._flush_future

    def close(self, hangup: bool = True) -> None:
        """End the call's media. A close frame hangs the channel up on Asterisk's side either way; `hangup`
        sends HANGUP first so the channel's cause is a normal clearing. No on_hangup follows."""
        self._done = True
        self._shutdown(hangup)

    def stop(self) -> None:
        """The worker stops: the sink hears "stopped", Asterisk gets HANGUP and a close."""
        self._finish("stopped")
        self._shutdown(True)

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's implement it without subclassing it
        self._raw_transport = self._transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = self._ws
        ws.send_request(ws.connect())
        transport.writelines(ws.data_to_send())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_view[:nbytes]))  # the parser keeps what it is given: a copy

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        self.stats.bytes_in += len(data)
        for event in ws.events_received():
            if self._done:
                break
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.BINARY:  # the hot path: one 20 ms frame of caller audio
                    sink = self._sink
                    if sink is not None:
                        self.stats.frames_in += 1
                        # Received frames hold bytes (the parser reads bytes; only frames we build may hold
                        # a bytearray or memoryview): the cast only says so to the type checker.
                        sink.on_audio(cast(bytes, event.data))
                elif opcode is Opcode.TEXT:
                    self._control(cast(bytes, event.data))
                elif opcode is Opcode.CLOSE:
                    received = ws.close_rcvd  # close_code is only set once TCP is closed too
                    code = received.code if received is not None else None
                    self._fail_open(f"closed by Asterisk ({code})")
                    self._end("hangup" if code == NORMAL_CLOSURE else "closed")
            elif isinstance(event, Response):
                self._handshake(event)
        transport = self._transport
        if transport is not None:
            out = ws.data_to_send()
            if out:
                transport.writelines(out)
        if ws.state is State.CLOSED and not self._done:
            self._fail_open("closed during the handshake")
            self._end("error" if ws.handshake_exc is not None else "closed")

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        return False  # asyncio closes the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._raw_transport = None
        self._fail_open(f"connection lost ({exc!r})" if exc else "connection closed")
        self._finish("closed")
        future = self._flush_future
        if future is not None and not future.done():
            future.set_result(0)

    def pause_writing(self) -> None:
        pass  # send() checks the buffer size itself

    def resume_writing(self) -> None:
        pass

    # ------------------------------------------------------------------ internals

    def _handshake(self, response: Response) -> None:
        exc = self._ws.handshake_exc
        if exc is None:
            return
        status = response.status_code
        why = {
            404: "404: no such media channel (connection id unknown or the channel is gone)",
            409: "409: another connection holds this media channel",
        }.get(status, f"handshake failed: {exc}")
        self._fail_open(why)
        self._done = True
        self._shutdown(False)

    def _control(self, text: bytes | str) -> None:
        control = self.control
        try:
            event = control.receive(text)
        except wc.ControlError as exc:
            self.stats.bad_in += 1
            self._log.warning("WebSocket media %s: unreadable control message: %s", self.call_id, exc)
            return
        if isinstance(event, wc.MediaStart):
            self._started(event)
        elif isinstance(event, wc.Status):
            if control.answered == "query":
                self.queue_samples += 1
                self.queue_total += event.queue_length
                if event.queue_length > self.queue_max:
                    self.queue_max = event.queue_length
            elif control.answered == "flush":
                self.flushed_frames += event.queue_length
                future = self._flush_future
                if future is not None and not future.done():
                    future.set_result(event.queue_length)
                    self._flush_future = None
        elif isinstance(event, wc.DtmfEnd):
            if self._sink is not None and event.digit:
                self.stats.dtmf_in += 1
                self._sink.on_dtmf(event.digit[:1])
        elif isinstance(event, wc.MediaXoff):
            self.xoff += 1
            self._log.warning("WebSocket media %s: Asterisk's queue is full (XOFF): pausing", self.call_id)
        elif isinstance(event, wc.MediaXon):
            self._log.info("WebSocket media %s: XON: sending again", self.call_id)
        elif isinstance(event, wc.Error):
            self.stats.bad_in += 1
            self._log.warning("WebSocket media %s: Asterisk reports an error: %s", self.call_id, event.error_text)
        elif isinstance(event, wc.Unknown):
            self._log.info("WebSocket media %s: unknown event %s", self.call_id, event.name)

    def _started(self, event: wc.MediaStart) -> None:
        if self._sink is not None:
            return  # a second MEDIA_START would be Asterisk's bug: keep the first
        if event.format and event.format != self.format:
            # The session's converter is built for the format the controller asked for: refuse, don't guess.
            self._fail_open(f"Asterisk sends {event.format}, the call expects {self.format}")
            self._protocol_error(f"format {event.format} is not the expected {self.format}")
            return
        if event.optimal_frame_size and event.optimal_frame_size != self.frame_bytes:
            # Asterisk keeps only whole frames of *its* size: sending ours would lose audio.
            self._fail_open(f"frame size {event.optimal_frame_size}, expected {self.frame_bytes}")
            self._protocol_error(f"optimal_frame_size {event.optimal_frame_size} is not {self.frame_bytes}")
            return
        try:
            sink = self._on_started(self)
        except Exception:
            self._log.exception("WebSocket media %s: binding the call failed", self.call_id)
            sink = None
        if self._done:
            self._fail_open("closed while binding")
            return
        if sink is None:
            self._fail_open("the call is not taken by this worker")
            self._done = True
            self._shutdown(True)
            return
        self._sink = sink
        opened = self._opened
        if opened is not None and not opened.done():
            opened.set_result(None)

    def _set_format(self, fmt: str) -> None:
        self.format = fmt
        self.rate = wc.RATE_BY_FORMAT[fmt]
        self.frame_bytes = wc.frame_size(fmt)

    def _protocol_error(self, why: str) -> None:
        self.stats.bad_in += 1
        self._log.warning("WebSocket media %s: %s", self.call_id, why)
        self._end("error")

    def _end(self, reason: str) -> None:
        self._shutdown(False)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        """Tell the sink, once, unless the session ended the link itself."""
        if self._done:
            return
        self._done = True
        sink = self._sink
        if sink is not None:
            self._log.info("WebSocket media %s ended: %s", self.call_id, reason)
            sink.on_hangup(reason)

    def _shutdown(self, hangup: bool) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        ws = self._ws
        if ws.state is State.OPEN:
            if hangup:
                ws.send_text(self.control.hangup_command)
            ws.send_close(NORMAL_CLOSURE)
            transport.writelines(ws.data_to_send())
            asyncio.get_running_loop().call_later(CLOSE_LINGER, self._abort)
        else:
            out = ws.data_to_send()  # e.g. the reply to Asterisk's close frame, queued by the protocol
            if out:
                transport.writelines(out)
            transport.close()  # after the buffered bytes are written

    def _abort(self) -> None:
        raw = self._raw_transport
        self._transport = None
        if raw is not None:
            raw.abort()
