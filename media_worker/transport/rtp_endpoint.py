"""One UDP socket per RTP call, on the port the controller reserved for it (externalMedia `rtp`/`udp`).

Anyone who can reach the port could send to it, so the endpoint hears one stream only: from the address and
port Asterisk reported for the call's channel (UNICASTRTP_LOCAL_ADDRESS/PORT, sent by the controller as
`media_peer`), with the SSRC seen first from there. Nothing is heard or sent before that report: on loopback
a stranger has Asterisk's own address, and only the port tells them apart. Only when the controller reports
that it learnt no address does the first good packet from an allowed host latch (symmetric RTP). Everything
else is dropped and counted (`va_rtp_dropped_total` by reason), never latched to. RTP carries no hangup: the
call ends by the controller (StasisEnd) or the session.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from media_worker.transport.allowlist import HostAllowList, resolve_allow_list
from media_worker.transport.link import LinkStats, MediaLink, MediaSink
from media_worker.transport.refusals import RefusalLog
from media_worker.transport.rtp_codec import PT_BY_FORMAT, RtpSender, parse
from shared.metrics import RTP_DROPPED

log = logging.getLogger("media.rtp")

SinkFactory = Callable[[MediaLink], MediaSink]
RATE = 8000  # both product formats (ulaw, slin) are 8 kHz
SAMPLES_PER_FRAME = RATE // 50
# Asterisk may start a new SSRC on the same address (a bridge change, SRCCHANGE). A new SSRC from the call's
# own address and port is taken only once the current one has been silent this long, so a packet forged with
# Asterisk's address cannot cut into a stream that is flowing.
SSRC_CHANGE_AFTER = 0.5
# Datagrams asyncio may hold when the kernel refuses more (rare with UDP): beyond it, drop.
MAX_WRITE_BUFFER = 64 * 1024
# asyncio reads each datagram into a new bytes object of its transport's max_size (256 KiB), shrunk to the ~200 B
# received: 50 a second per call, which left glibc's heap growing with calls in the soak. Our packets are at most
# 12 + 320 B (+ a CSRC list or an extension); a longer datagram is cut to this size.
READ_SIZE = 4096

# One log line per foreign source and reason a minute, for every endpoint of the process together.
_refusals = RefusalLog(log, "RTP")
_DROPPED = {
    reason: RTP_DROPPED.labels(reason)
    for reason in ("host", "early", "source", "ssrc", "payload_type", "own_ssrc", "malformed")
}


class Latch(enum.Enum):
    """Whose packets the endpoint hears, and where it sends."""

    AWAITING_REPORT = "awaiting_report"  # until the controller reports Asterisk's address: nothing heard or sent
    AWAITING_FIRST = "awaiting_first"  # the controller learnt no address: the first good packet latches
    FIRST_PACKET = "first_packet"  # that packet's address and SSRC; a late report of the address replaces it
    REPORTED = "reported"  # the address Asterisk reported for the channel (media_peer): final


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

    The latch (`Latch`): AWAITING_REPORT drops every packet until the controller reports Asterisk's address
    (`set_peer`: REPORTED, final) or that it learnt none (`peer_unknown`: AWAITING_FIRST, then the first
    well-formed packet with the link's payload type from an allowed host latches: FIRST_PACKET, its address
    and SSRC; a report arriving after all still replaces it). Only the latched address and port are heard,
    and from it only the latched SSRC (a new one after `ssrc_change_after` s of silence of the old). Packets
    carrying our own sender's SSRC (our audio looped back) are dropped.

    **Sending starts once latched**: to the reported address from the first frame, or else to the source of
    Asterisk's first packet; send() returns False (counted in dropped_out) before either.
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
        ssrc_change_after: float = SSRC_CHANGE_AFTER,
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
        self.ssrc_change_after = ssrc_change_after
        self.max_write_buffer = max_write_buffer
        self.latch = Latch.AWAITING_REPORT
        self._sink_factory = sink_factory
        self._sink: MediaSink = _NoSink()
        self._allow = HostAllowList()
        self._udp: _UdpTransport | None = None  # None once closed
        self._family = socket.AF_INET
        # The latched source, as the socket reports a sender (compared per packet), and where we send.
        self._src_host = ""
        self._src_port = 0
        self._dest: tuple | None = None
        self._ssrc: int | None = None  # the latched stream; None: the next good packet from the source sets it
        self._last_rx = 0.0  # monotonic time of the last accepted packet
        self._done = False

    @property
    def latched(self) -> tuple | None:
        """Where we send (the latched source), or None before the latch."""
        return self._dest

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
        if hasattr(transport, "max_size"):  # CPython's selector transport: how much each recvfrom asks for
            cast(Any, transport).max_size = READ_SIZE
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._family = sock.family
        try:
            self._sink = self._sink_factory(self)
        except BaseException:
            self._udp = None
            transport.close()
            raise
        return self

    def set_peer(self, host: str, port: int) -> bool:
        """Asterisk's end of the leg as the controller learnt it from externalMedia: from now on only packets
        from there are heard, and we send there, before any packet came. False if the endpoint is closed, the
        host is not allowed, or the peer was reported already."""
        if self._done or self._udp is None or self.latch is Latch.REPORTED:
            return False
        if not self._allow.allows(host):
            log.error(
                "RTP :%d: Asterisk reports its end at %s:%d, a host outside media_worker.allowed_media_hosts: "
                "not taken (add Asterisk's media address to the list)",
                self.port,
                host,
                port,
            )
            return False
        src_host = self._socket_form(host)
        if self.latch is Latch.FIRST_PACKET and (src_host, port) != (self._src_host, self._src_port):
            log.warning(
                "RTP :%d: the first packets came from %s, Asterisk reports %s:%d: only that is heard now",
                self.port,
                self.peer,
                host,
                port,
            )
            self.stats.relatched += 1
            self._ssrc = None  # the reported address's own stream is learnt from its first packet
        self.latch = Latch.REPORTED
        self._src_host, self._src_port = src_host, port
        self._dest = (src_host, port)
        self.peer = f"{host}:{port}"
        log.info("RTP :%d sends to %s:%d (told by the controller)", self.port, host, port)
        return True

    def peer_unknown(self) -> None:
        """The controller learnt no address for Asterisk's end (externalMedia reported none): the first good
        packet from an allowed host latches, as symmetric RTP does."""
        if self.latch is Latch.AWAITING_REPORT:
            self.latch = Latch.AWAITING_FIRST
            log.info("RTP :%d: Asterisk's address is unknown; latching to the first packet", self.port)

    def _socket_form(self, host: str) -> str:
        """The host as the socket reports senders: compressed, and IPv4-mapped on an IPv6 socket."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        if self._family == socket.AF_INET6 and address.version == 4:
            return f"::ffff:{address}"
        return address.compressed

    # ------------------------------------------------------------------ MediaLink

    def send(self, payload: bytes | bytearray) -> bool:
        udp, dest = self._udp, self._dest
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
        if addr[1] != self._src_port or addr[0] != self._src_host:  # also every packet before the latch
            self._from_elsewhere(data, addr)
            return
        packet = parse(data)
        if packet is None:
            self._drop("malformed", addr)
            return
        if packet.pt != self.pt:
            self._drop("payload_type", addr)
            return
        now = time.monotonic()
        if packet.ssrc != self._ssrc and not self._new_ssrc(packet.ssrc, now, addr):
            return
        self._last_rx = now
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        self._sink.on_audio(packet.payload)

    def _new_ssrc(self, ssrc: int, now: float, addr: tuple) -> bool:
        """Another SSRC from the latched address: our own audio back, the reported address's first stream,
        or Asterisk's new stream once the old one fell silent."""
        if ssrc == self.sender.ssrc:
            self._drop("own_ssrc", addr)
            return False
        if self._ssrc is not None:
            if now - self._last_rx < self.ssrc_change_after:
                self._drop("ssrc", addr)
                return False
            self.stats.ssrc_changes += 1
            log.info("RTP :%d: %s changed SSRC %08x -> %08x after a silence", self.port, self.peer, self._ssrc, ssrc)
        self._ssrc = ssrc
        return True

    def _from_elsewhere(self, data: bytes, addr: tuple) -> None:
        """A packet from an address other than the latched one: the first packet of the call (it latches, when
        no report is coming), or one to drop."""
        if self._done:
            return
        if not self._allow.allows(addr[0]):
            self._drop("host", addr)
            return
        if self.latch is Latch.AWAITING_REPORT:
            self._drop("early", addr)
            return
        if self.latch is not Latch.AWAITING_FIRST:
            self._drop("source", addr)
            return
        packet = parse(data)
        if packet is None:
            self._drop("malformed", addr)
            return
        if packet.pt != self.pt:
            self._drop("payload_type", addr)
            return
        if packet.ssrc == self.sender.ssrc:
            self._drop("own_ssrc", addr)
            return
        self.latch = Latch.FIRST_PACKET
        self._src_host, self._src_port = addr[0], addr[1]
        self._dest = addr  # as the socket reports it, so sendto reaches the same address
        self._ssrc = packet.ssrc
        self.peer = f"{addr[0]}:{addr[1]}"
        log.info("RTP :%d latched to %s:%d (its first packet: no address was reported)", self.port, *addr[:2])
        self._last_rx = time.monotonic()
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        self._sink.on_audio(packet.payload)

    def _drop(self, reason: str, addr: tuple) -> None:
        """Count a dropped packet (the link's figures and the metric); log a foreign source, rate-limited."""
        stats = self.stats
        if reason == "malformed":
            stats.bad_in += 1
        elif reason == "payload_type":
            stats.dropped_pt += 1
        elif reason == "own_ssrc":
            stats.dropped_loop += 1
        elif reason == "ssrc":
            stats.dropped_ssrc += 1
        else:
            stats.dropped_source += 1
        _DROPPED[reason].inc()
        # Logged (once a minute per host): strangers. Counted only: Asterisk's own packets that beat the
        # report of its address (early), and what a legitimate stream may carry (malformed, PT, our SSRC).
        if reason == "host":
            _refusals.refused(addr[0], reason, "not in media_worker.allowed_media_hosts")
        elif reason == "source" or reason == "ssrc":
            _refusals.refused(addr[0], reason, "port %d hears only %s", self.port, self.peer)

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
