"""AudioSocket server: Asterisk (chan_audiosocket) connects per call, sends the call UUID, then 20 ms frames.

One `AudioSocketLink` per TCP connection is both the asyncio protocol and the `MediaLink` the call session
holds, so a frame goes from `data_received` to the sink, and from `send` to `transport.write`, with no hop
in between. Nothing here awaits per frame: writes are immediate and bounded by the transport's buffer size.
"""

from __future__ import annotations

import asyncio
from typing import cast
import logging
import socket
import uuid as uuid_module
from collections.abc import Callable, Sequence

from media_worker.transport.allowlist import HostAllowList, resolve_allow_list
from media_worker.transport.audiosocket_codec import (
    AUDIO_KINDS,
    ERROR_FRAME,
    FORMAT_BY_KIND,
    HANGUP_FRAME,
    HEADER,
    KIND_BY_FORMAT,
    KIND_DTMF,
    KIND_ERROR,
    KIND_HANGUP,
    KIND_UUID,
    MAX_PAYLOAD,
    RATE_BY_FORMAT,
    AudioSocketParser,
    ProtocolError,
)
from media_worker.transport.link import LinkStats, MediaLink, MediaSink, frame_bytes
from media_worker.transport.refusals import RefusalLog
from shared.logs import CallLogger
from shared.metrics import AUDIOSOCKET_REFUSED

log = logging.getLogger("media.audiosocket")
# Every reason exported from the start (at 0), so a dashboard shows "none" rather than "no data".
_REFUSED = {reason: AUDIOSOCKET_REFUSED.labels(reason) for reason in ("host", "unknown_call", "no_uuid", "protocol")}

Bind = Callable[[str, str, MediaLink], "MediaSink | None"]
# Bytes we let asyncio hold for a peer that reads slower than we write (about 1.3 s of slin24): beyond it,
# frames are dropped, so a stuck Asterisk costs bounded memory and never delays the other calls.
MAX_WRITE_BUFFER = 64 * 1024
# After close(), a peer that does not take the rest of the buffer (and the 0x00) is reset after this long:
# no socket is left half-closed (the anchor's CLOSE-WAIT pile-up, its issue #616).
CLOSE_LINGER = 1.0
STOP_GRACE = CLOSE_LINGER + 0.5  # stop(): links still open by then (their linger timer did not fire) are reset
# Each link reads into a buffer of its own (about 17 slin24 frames; a longer burst takes several reads). A plain
# asyncio.Protocol gets a new bytes object per read, allocated at 256 KiB and shrunk to the ~1 KB received: 50
# of those a second per call left glibc's heap growing by ~1 MB/s at 60 calls (freed, never reused or returned).
READ_BUFFER = 16 * 1024
_pack = HEADER.pack


class AudioSocketLink(asyncio.BufferedProtocol):
    """One AudioSocket connection: the asyncio protocol and the call's MediaLink.

    The format is learnt from the first audio frame's kind (Asterisk sends audio only once the caller
    produces some); until then it is what the session declared with `expect(fmt)` inside `bind`, and that
    is what `send` frames with. A later audio frame of another kind is a protocol error.
    """

    transport = "audiosocket"

    def __init__(self, server: AudioSocketServer):
        self._server = server
        self.format = ""
        self.rate = 0
        self.frame_bytes = 0
        self.peer = ""
        self.call_uuid = ""
        self.stats = LinkStats()
        self.max_write_buffer = server.max_write_buffer
        self._parser = AudioSocketParser(server.max_payload)
        self._read_view = memoryview(bytearray(READ_BUFFER))  # asyncio reads into it; the parser copies out
        self._transport: asyncio.Transport | None = None  # None once closed: send() drops from then on
        self._raw_transport: asyncio.Transport | None = None
        self._sink: MediaSink | None = None
        self._out_kind = -1  # kind that send() frames with; -1 while the format is unknown
        self._in_kind = -1  # kind of the audio received so far; -1 until the first audio frame
        self._done = False  # the link has ended (on_hangup given, or the session closed it)
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ the session's side (MediaLink)

    def expect(self, fmt: str) -> None:
        """Declare the format the controller asked Asterisk for; the first audio frame confirms or corrects it."""
        if fmt not in KIND_BY_FORMAT:
            raise ValueError(f"AudioSocket format {fmt!r} is not one of {sorted(KIND_BY_FORMAT)}")
        if self._in_kind < 0:
            self._set_format(KIND_BY_FORMAT[fmt])

    def send(self, payload: bytes | bytearray) -> bool:
        transport = self._transport
        if transport is None or self._out_kind < 0 or transport.get_write_buffer_size() > self.max_write_buffer:
            self.stats.dropped_out += 1
            return False
        transport.write(_pack(self._out_kind, len(payload)) + payload)
        stats = self.stats
        stats.frames_out += 1
        stats.bytes_out += len(payload) + 3
        return True

    def rebind(self, sink: MediaSink) -> None:
        """Hand the link to another sink (a connection held until its call's assignment arrived)."""
        self._sink = sink

    def refuse(self) -> None:
        """Turn the connection away after all: 0xFF and close. No on_hangup follows."""
        self._server._refused(self.peer, "unknown_call", f"call {self.call_uuid} not assigned here in time")
        self._done = True
        self._shutdown(ERROR_FRAME)

    def close(self, hangup: bool = True) -> None:
        """End the call's media: 0x00 (Asterisk then hangs the channel up) and close. No on_hangup follows."""
        self._done = True
        self._shutdown(HANGUP_FRAME if hangup else b"")

    def flush(self) -> None:
        return None  # Asterisk plays each frame as it arrives: nothing of ours is queued there

    def summary(self) -> dict[str, int | float]:
        return {}

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's implement it without subclassing it
        self._raw_transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        host, port = peer[0], peer[1]
        self.peer = f"{host}:{port}"
        server = self._server
        if not server.allow_list.allows(host):
            server._refused(self.peer, "host", "not in media_worker.allowed_media_hosts")
            self._done = True
            transport.abort()
            return
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._add_link(self)
        self._timer = asyncio.get_running_loop().call_later(server.uuid_timeout, self._uuid_timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from Asterisk; `data` may be a view of the read buffer, valid only during this call."""
        if self._done:
            return
        stats = self.stats
        stats.bytes_in += len(data)
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            if self._dispatch(exc.frames):  # the good frames before the bad header still count
                self._protocol_error(str(exc))
            return
        self._dispatch(frames)

    def _dispatch(self, frames: list[tuple[int, bytes]]) -> bool:
        """Hand the frames to the sink; False once the link has ended."""
        stats = self.stats
        sink = self._sink
        for kind, payload in frames:
            if sink is None:  # the first frame: the call UUID
                if not self._bind(kind, payload):
                    return False
                sink = self._sink
                continue
            if kind == self._in_kind:  # the hot path: audio of the link's format
                stats.frames_in += 1
                sink.on_audio(payload)
            elif kind in FORMAT_BY_KIND and self._in_kind < 0:
                self._learn_format(kind)
                stats.frames_in += 1
                sink.on_audio(payload)
            elif kind == KIND_DTMF:
                if payload:
                    stats.dtmf_in += 1
                    sink.on_dtmf(payload[:1].decode("latin-1"))
                else:
                    stats.bad_in += 1
            elif kind == KIND_HANGUP:
                self._end("hangup", b"")
                return False
            elif kind == KIND_ERROR:
                self._log.warning("AudioSocket %s: Asterisk sent an error frame %s", self.call_uuid, payload.hex())
                self._end("error", b"")
                return False
            elif kind in AUDIO_KINDS:
                self._protocol_error(f"audio kind 0x{kind:02x} on a {self.format or 'new'} link")
                return False
            else:
                self._protocol_error(f"unexpected frame kind 0x{kind:02x}")
                return False
            if self._done:
                return False  # the sink closed the link while handling this frame
        return True

    def eof_received(self) -> bool:
        return False  # close our side too: asyncio then calls connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._raw_transport = None
        self._server._forget_link(self)
        self._finish("closed")

    def pause_writing(self) -> None:
        pass  # send() checks the buffer size itself

    def resume_writing(self) -> None:
        pass

    @property
    def _log(self) -> logging.Logger | CallLogger:
        """Once bound, its lines name the call (they are logged from the connection's callbacks, outside any
        call's context); made per line logged, never per frame."""
        return CallLogger(log, self.call_uuid) if self.call_uuid else log

    # ------------------------------------------------------------------ internals

    def _bind(self, kind: int, payload: bytes) -> bool:
        """The first frame must be the call UUID; the server's bind decides whether the call is ours."""
        server = self._server
        if kind != KIND_UUID or len(payload) != 16:
            self._protocol_error(f"first frame is kind 0x{kind:02x}/{len(payload)} B, not a 16-byte UUID")
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.call_uuid = str(uuid_module.UUID(bytes=payload))
        try:
            sink = server.bind(self.call_uuid, self.peer.rpartition(":")[0], self)
        except Exception:
            self._log.exception("AudioSocket %s: bind failed", self.call_uuid)
            sink = None
        if self._done:
            return False  # bind closed the link itself
        if sink is None:
            server._refused(self.peer, "unknown_call", f"call {self.call_uuid} is not on this worker")
            self._done = True
            self._shutdown(ERROR_FRAME)
            return False
        self._sink = sink
        self._log.info("AudioSocket %s bound (peer %s, expecting %s)", self.call_uuid, self.peer, self.format or "?")
        return True

    def _set_format(self, kind: int) -> None:
        self.format = FORMAT_BY_KIND[kind]
        self.rate = RATE_BY_FORMAT[self.format]
        self.frame_bytes = frame_bytes(self.rate)
        self._out_kind = kind

    def _learn_format(self, kind: int) -> None:
        expected = self.format
        self._set_format(kind)
        self._in_kind = kind
        if expected and expected != self.format:
            self._log.warning(
                "AudioSocket %s: expected %s, Asterisk sends %s; following Asterisk",
                self.call_uuid,
                expected,
                self.format,
            )
            if self._sink is not None:
                self._sink.on_format(self.format)

    def _uuid_timed_out(self) -> None:
        self._timer = None
        if self._sink is None and not self._done:
            self._server._refused(self.peer, "no_uuid", f"no call UUID within {self._server.uuid_timeout:.1f} s")
            self._done = True
            self._shutdown(b"")

    def _protocol_error(self, why: str) -> None:
        self.stats.bad_in += 1
        if self._sink is None:  # never bound: a refusal, not a call that failed
            self._server._refused(self.peer, "protocol", why)
        else:
            self._log.warning("AudioSocket %s from %s: protocol error: %s", self.call_uuid, self.peer, why)
        self._end("error", ERROR_FRAME)

    def _end(self, reason: str, last_frame: bytes) -> None:
        self._shutdown(last_frame)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        """Tell the sink, once, unless the session ended the link itself."""
        if self._done:
            return
        self._done = True
        sink = self._sink
        if sink is not None:
            self._log.info("AudioSocket %s ended: %s", self.call_uuid, reason)
            sink.on_hangup(reason)

    def _shutdown(self, last_frame: bytes) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if last_frame:
            transport.write(last_frame)
        transport.close()
        if self._raw_transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_LINGER, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self._raw_transport is not None:
            self._raw_transport.abort()

    def _stop(self) -> None:
        """The server stops: the sink hears "stopped", Asterisk gets 0x00."""
        self._finish("stopped")
        self._shutdown(HANGUP_FRAME)


class AudioSocketServer:
    """Listens for chan_audiosocket connections and hands each to the call it names.

    bind(call_uuid, peer_host, link) -> the call's sink, or None to refuse (the call is not assigned to
    this worker): a refused connection gets 0xFF and is closed. bind may call link.expect(fmt). A source
    host outside allowed_hosts (empty = any) is reset before anything is read; a connection that sends
    no UUID within uuid_timeout is closed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        bind: Bind,
        allowed_hosts: Sequence[str] = (),
        uuid_timeout: float = 2.0,
        max_payload: int = MAX_PAYLOAD,
        max_write_buffer: int = MAX_WRITE_BUFFER,
    ):
        self.host, self._port = host, port
        self.bind = bind
        self.allowed_hosts = tuple(allowed_hosts)
        self.allow_list = HostAllowList()
        self.uuid_timeout = uuid_timeout
        self.max_payload = max_payload
        self.max_write_buffer = max_write_buffer
        self.refused = 0
        self._refusals = RefusalLog(log, "AudioSocket connection")
        self._links: set[AudioSocketLink] = set()
        self._no_links = asyncio.Event()  # set while _links is empty, so stop() can wait for the last close
        self._no_links.set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    def _refused(self, peer: str, reason: str, detail: str) -> None:
        """Count a refused connection (here and in the metric) and log it at most once a minute per host."""
        self.refused += 1
        _REFUSED[reason].inc()
        self._refusals.refused(peer.rpartition(":")[0] or peer, reason, detail)

    @property
    def connections(self) -> int:
        return len(self._links)

    def _add_link(self, link: AudioSocketLink) -> None:
        self._links.add(link)
        self._no_links.clear()

    def _forget_link(self, link: AudioSocketLink) -> None:
        self._links.discard(link)
        if not self._links:
            self._no_links.set()

    async def start(self) -> None:
        self.allow_list = await resolve_allow_list(self.allowed_hosts)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: AudioSocketLink(self), self.host, self._port, reuse_address=True, backlog=1024
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"AudioSocket server cannot listen on {self.host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        log.info("AudioSocket server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and end every link (sinks get on_hangup("stopped")); returns once all are closed."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link._stop()
        try:
            async with asyncio.timeout(STOP_GRACE):
                await self._no_links.wait()
        except TimeoutError:
            for link in list(self._links):
                link._abort_if_open()
        if server is not None:
            await server.wait_closed()
