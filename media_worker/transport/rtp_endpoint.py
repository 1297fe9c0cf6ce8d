"""One UDP socket per RTP call, on the port the controller reserved for it (externalMedia `rtp`/`udp`).

Asterisk's UnicastRTP channel sends from a port of its own choosing (rtp.conf range) that the worker is
not told; we answer to wherever the call's packets come from (symmetric RTP, as Asterisk's `strictrtp`
does on its side). RTP carries no hangup: the call ends by the controller (StasisEnd) or the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from media_worker.transport.allowlist import HostAllowList, resolve_allow_list
from media_worker.transport.link import LinkStats, MediaLink, MediaSink
from media_worker.transport.rtp_codec import PT_BY_FORMAT, RtpSender, parse

log = logging.getLogger("media.rtp")

SinkFactory = Callable[[MediaLink], MediaSink]
RATE = 8000  # both product formats (ulaw, slin) are 8 kHz
SAMPLES_PER_FRAME = RATE // 50
# A latched source silent this long may be replaced by a new one (Asterisk re-INVITEd, or restarted the
# channel on another port); shorter gaps are normal (no RTP while the caller is silent) and keep the latch.
RELATCH_AFTER = 2.0
# Datagrams asyncio may hold when the kernel refuses more (rare with UDP): beyond it, drop.
MAX_WRITE_BUFFER = 64 * 1024


class _NoSink:
    """Stands in until open() has built the real sink (packets cannot arrive before, but keep it total)."""

    def on_audio(self, payload: bytes) -> None:
        pass

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_hangup(self, reason: str) -> None:
        pass

    def on_format(self, fmt: str) -> None:
        pass


class RtpEndpoint:
    """The call's RTP socket and its MediaLink (open() returns the endpoint itself).

    Symmetric RTP: the endpoint latches to the source (host, port) of the first well-formed packet from an
    allowed host with the expected payload type. Packets from any other source are dropped and counted,
    unless the latched source has been silent for `relatch_after` seconds: then the new source takes over.
    Packets carrying our own sender's SSRC (our audio looped back) are dropped.

    **Sending starts once latched**: to the address the controller learnt from externalMedia (`set_peer`), or
    else to the source of Asterisk's first packet; send() returns False (counted in dropped_out) before either.
    The sink gets each payload as is, in arrival order (ulaw bytes, or slin big-endian: the audio module
    converts); there is no jitter buffer and no DTMF (Asterisk does not forward RFC 4733 events to
    externalMedia; PT 101 is dropped as a foreign PT).
    """

    transport = "rtp"

    def __init__(
        self,
        host: str,
        port: int,
        fmt: str,
        sink_factory: SinkFactory,
        *,
        allowed_hosts: Sequence[str] = (),
        relatch_after: float = RELATCH_AFTER,
        ssrc: int | None = None,
        max_write_buffer: int = MAX_WRITE_BUFFER,
    ):
        if fmt not in PT_BY_FORMAT:
            raise ValueError(
                f"RTP format {fmt!r} is not one of {sorted(PT_BY_FORMAT)} "
                "(Asterisk drops inbound dynamic payload types: slin16 over RTP is one-way)"
            )
        self.host, self.port = host, port
        self.format = fmt
        self.rate = RATE
        self.pt = PT_BY_FORMAT[fmt]
        self.sender = RtpSender(self.pt, SAMPLES_PER_FRAME, ssrc=ssrc)
        self.frame_bytes = self.sender.frame_bytes
        self.peer = ""
        self.stats = LinkStats()
        self.allowed_hosts = tuple(allowed_hosts)
        self.relatch_after = relatch_after
        self.max_write_buffer = max_write_buffer
        self._sink_factory = sink_factory
        self._sink: MediaSink = _NoSink()
        self._allow = HostAllowList()
        self._udp: _UdpTransport | None = None  # None once closed
        self._latched: tuple | None = None  # the source address we receive from and send to
        self._last_rx = 0.0  # monotonic time of the latched source's last accepted packet
        self._done = False

    @property
    def latched(self) -> tuple | None:
        return self._latched

    @property
    def local_port(self) -> int:
        return self._udp.get_extra_info("sockname")[1] if self._udp is not None else self.port

    async def open(self) -> MediaLink:
        """Bind host:port and build the sink (sink_factory(link)); the link is this endpoint."""
        self._allow = await resolve_allow_list(self.allowed_hosts)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _RtpProtocol(self), local_addr=(self.host, self.port)
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"RTP endpoint cannot bind UDP {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self._udp = cast(_UdpTransport, transport)
        try:
            self._sink = self._sink_factory(self)
        except BaseException:
            self._udp = None
            transport.close()
            raise
        return self

    def set_peer(self, host: str, port: int) -> bool:
        """Asterisk's end of the leg as the controller learnt it from externalMedia: send there from now on,
        before any packet came. False if the endpoint is closed, the host is not allowed, or a source is
        latched already."""
        if self._done or self._udp is None or self._latched is not None or not self._allow.allows(host):
            return False
        self._latched = (host, port)  # an IPv4 source is reported as (host, port): packets from it match
        self.peer = f"{host}:{port}"
        log.info("RTP :%d sends to %s:%d (told by the controller)", self.port, host, port)
        return True

    # ------------------------------------------------------------------ MediaLink

    def send(self, payload: bytes) -> bool:
        udp, dest = self._udp, self._latched
        if udp is None or dest is None or udp.get_write_buffer_size() > self.max_write_buffer:
            self.stats.dropped_out += 1
            return False
        packet = self.sender.packet(payload)
        udp.sendto(packet, dest)
        stats = self.stats
        stats.frames_out += 1
        stats.bytes_out += len(packet)
        return True

    def close(self, hangup: bool = True) -> None:
        """Stop sending and release the port (RTP has no hangup message). No on_hangup follows."""
        self._done = True
        self._close_socket()

    def flush(self) -> None:
        return None  # Asterisk plays each frame as it arrives: nothing of ours is queued there

    def summary(self) -> dict[str, int | float]:
        return {}

    def stop(self) -> None:
        """The worker stops: the sink hears on_hangup("stopped"), then the port is released."""
        self._finish("stopped")
        self._close_socket()

    # ------------------------------------------------------------------ receive path

    def _received(self, data: bytes, addr: tuple) -> None:
        if addr != self._latched and not self._accept_source(data, addr):
            return
        packet = parse(data)
        stats = self.stats
        if packet is None:
            stats.bad_in += 1
            return
        if packet.pt != self.pt:
            stats.dropped_pt += 1
            return
        if packet.ssrc == self.sender.ssrc:
            stats.dropped_loop += 1
            return
        self._last_rx = time.monotonic()
        stats.frames_in += 1
        stats.bytes_in += len(data)
        self._sink.on_audio(packet.payload)

    def _accept_source(self, data: bytes, addr: tuple) -> bool:
        """A packet from a source other than the latched one: latch (or re-latch) to it, or drop it."""
        stats = self.stats
        if self._done or not self._allow.allows(addr[0]):
            stats.dropped_source += 1
            return False
        packet = parse(data)
        if packet is None:
            stats.bad_in += 1
            return False
        if packet.pt != self.pt:
            stats.dropped_pt += 1
            return False
        if packet.ssrc == self.sender.ssrc:
            stats.dropped_loop += 1
            return False
        if self._latched is not None:
            if time.monotonic() - self._last_rx < self.relatch_after:
                stats.dropped_source += 1
                return False
            stats.relatched += 1
            log.info("RTP :%d re-latched from %s to %s:%d", self.port, self.peer, addr[0], addr[1])
        else:
            log.info("RTP :%d latched to %s:%d", self.port, addr[0], addr[1])
        self._latched = addr  # as the socket reports it, so the per-packet comparison is exact
        self.peer = f"{addr[0]}:{addr[1]}"
        return True

    def _finish(self, reason: str) -> None:
        if not self._done:
            self._done = True
            self._sink.on_hangup(reason)

    def _close_socket(self) -> None:
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()

    def _lost(self, exc: Exception | None) -> None:
        self._udp = None
        if exc is not None:
            log.warning("RTP :%d socket failed: %r", self.port, exc)
            self._finish("error")


class _UdpTransport(Protocol):
    """What the endpoint uses of asyncio's UDP transport. Both of them (selector, proactor) have
    get_write_buffer_size; the DatagramTransport base class just does not declare it."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def get_write_buffer_size(self) -> int: ...
    def sendto(self, data: bytes, addr: tuple) -> None: ...
    def close(self) -> None: ...


class _RtpProtocol(asyncio.BaseProtocol):
    """asyncio's datagram protocol interface (datagram_received, error_received). Not a DatagramProtocol
    subclass: there datagram_received is a method, and here it is the endpoint's bound method itself."""

    datagram_received: Callable[[bytes, tuple], None]

    def __init__(self, endpoint: RtpEndpoint):
        self.datagram_received = endpoint._received  # bound once: no extra hop per packet
        self._endpoint = endpoint

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable (Asterisk's port went away): UDP goes on; the controller ends the call

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint._lost(exc)
