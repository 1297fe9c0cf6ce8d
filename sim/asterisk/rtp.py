"""UnicastRTP as chan_rtp does it: Asterisk binds a UDP port and sends to the external host.

What a real Asterisk 22.10.1 showed: 12-byte header, V=2, one random SSRC
and initial sequence per channel, first timestamp = one frame, marker never set, slin payloads big-endian.
Inbound, only static payload types decode; a dynamic one (slin16 is PT 118) is dropped without a word, so
slin16 and wider over RTP are one-way.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable

import msgspec
import numpy as np

from sim.asterisk.audio import StreamResampler, stream_resampler, as_samples, samples_per_frame
from sim.realtime import g711

PT_BY_FORMAT = {
    "ulaw": 0,
    "alaw": 8,
    "slin": 10,
    "slin12": 122,
    "slin16": 118,
    "slin24": 123,
    "slin32": 124,
    "slin44": 125,
    "slin48": 126,
    "slin96": 127,
    "slin192": 96,
}
RATE_BY_FORMAT = {
    "ulaw": 8000,
    "alaw": 8000,
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin44": 44100,
    "slin48": 48000,
    "slin96": 96000,
    "slin192": 192000,
}
# chan_rtp installs no receive payload map: only static types (<= 34) are understood on the way in.
MAX_STATIC_PT = 34
HEADER = struct.Struct(">BBHII")
_G711_LAW = {"ulaw": "audio/pcmu", "alaw": "audio/pcma"}


class RtpPacket(msgspec.Struct, frozen=True):
    version: int
    padding: bool
    extension: bool
    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int
    csrcs: tuple[int, ...]
    payload: bytes


class RtpStats(msgspec.Struct):
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_pt: int = 0  # a payload type other than the channel's (PT 118 included)
    dropped_source: int = 0  # not from the external host
    dropped_malformed: int = 0  # short, not version 2, bad padding/extension, odd slin length
    dropped_out: int = 0  # delivered before open() or after close()


def build_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, *, marker: bool = False) -> bytes:
    return (
        HEADER.pack(0x80, (0x80 if marker else 0) | (pt & 0x7F), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
        + payload
    )


def parse_packet(data: bytes) -> RtpPacket | None:
    """The packet, or None for anything that is not well-formed RTP version 2."""
    if len(data) < HEADER.size:
        return None
    first, second, seq, ts, ssrc = HEADER.unpack_from(data)
    version, padding, extension, csrc_count = first >> 6, bool(first & 0x20), bool(first & 0x10), first & 0x0F
    if version != 2:
        return None
    offset = HEADER.size + 4 * csrc_count
    if len(data) < offset:
        return None
    csrcs = struct.unpack_from(f">{csrc_count}I", data, HEADER.size)
    if extension:
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from(">H", data, offset + 2)[0]
        if len(data) < offset:
            return None
    end = len(data)
    if padding:
        pad = data[-1]
        if pad == 0 or end - pad < offset:
            return None
        end -= pad
    return RtpPacket(
        version, padding, extension, bool(second & 0x80), second & 0x7F, seq, ts, ssrc, csrcs, bytes(data[offset:end])
    )


def encode_payload(pcm: bytes, fmt: str) -> bytes:
    """Little-endian PCM16 -> the channel format's RTP payload (G.711 or big-endian slin)."""
    if fmt in _G711_LAW:
        return g711.encode(as_samples(pcm), _G711_LAW[fmt])
    return as_samples(pcm).astype(">i2").tobytes()


def decode_payload(payload: bytes, fmt: str) -> bytes | None:
    """The channel format's RTP payload -> little-endian PCM16; None if it cannot be slin (odd length)."""
    if fmt in _G711_LAW:
        return g711.decode(payload, _G711_LAW[fmt]).astype("<i2").tobytes()
    if len(payload) % 2:
        return None
    return np.frombuffer(payload, ">i2").astype("<i2").tobytes()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, leg: RtpLeg):
        self.leg = leg

    def datagram_received(self, data: bytes, addr) -> None:
        self.leg._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the worker is not listening yet: UDP goes on regardless


class RtpLeg:
    """The Asterisk end of one UnicastRTP channel (symmetric: any port of the external host may send)."""

    def __init__(
        self,
        external_host: str,
        external_port: int,
        fmt: str,
        *,
        on_audio: Callable[[bytes, int], None],
        bind_host: str = "127.0.0.1",
        port_range: tuple[int, int] = (20000, 20999),
    ):
        if fmt not in PT_BY_FORMAT:
            raise ValueError(f"unknown RTP format {fmt!r}")
        self.external_host, self.external_port, self.fmt = external_host, external_port, fmt
        self.pt = PT_BY_FORMAT[fmt]
        self.rate = RATE_BY_FORMAT[fmt]
        self.frame_bytes = 2 * samples_per_frame(self.rate)
        self.accepts_inbound = self.pt <= MAX_STATIC_PT
        self.on_audio = on_audio
        self.bind_host, self.port_range = bind_host, port_range
        self.local_address: str | None = None
        self.local_port: int | None = None
        self.last_source: tuple[str, int] | None = None
        self.stats = RtpStats()
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = 0  # each packet carries the samples sent so far, its own included: the first one says 160
        self._external_ips: set[str] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = bytearray()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.external_host, self.external_port, family=socket.AF_INET, type=socket.SOCK_DGRAM
        )
        self._external_ips = {str(info[4][0]) for info in infos}
        low, high = self.port_range
        evens = list(range(low + low % 2, high + 1, 2))  # RTP takes even ports (RTCP would be the odd one)
        start = random.randrange(len(evens))
        for port in evens[start:] + evens[:start]:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(self.bind_host, port)
                )
            except OSError:
                continue
            self._transport = transport
            self.local_address, self.local_port = transport.get_extra_info("sockname")[:2]
            return
        raise OSError(f"no free RTP port in {low}..{high} on {self.bind_host}")

    def deliver(self, pcm: bytes, rate: int) -> None:
        """Bridge audio toward the worker: one packet per 20 ms frame, sent at once."""
        if not pcm:
            return
        if rate == self.rate and not self._pending:
            data = pcm  # pass-through: a short final frame stays short, as Asterisk's did
        else:
            resampler = stream_resampler(self._resamplers, rate, self.rate)
            self._pending += resampler.process(pcm)
            whole = len(self._pending) - len(self._pending) % self.frame_bytes
            data, self._pending[:whole] = bytes(self._pending[:whole]), b""
        for start in range(0, len(data), self.frame_bytes):
            self._send(data[start : start + self.frame_bytes])

    def _send(self, frame: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self.stats.dropped_out += 1
            return
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + len(frame) // 2) & 0xFFFFFFFF
        packet = build_packet(self.pt, self._seq, self._ts, self.ssrc, encode_payload(frame, self.fmt))
        self._transport.sendto(packet, (self.external_host, self.external_port))
        self.stats.packets_out += 1
        self.stats.bytes_out += len(packet)

    def _received(self, data: bytes, addr) -> None:
        if addr[0] not in self._external_ips:
            self.stats.dropped_source += 1
            return
        packet = parse_packet(data)
        if packet is None:
            self.stats.dropped_malformed += 1
            return
        if packet.pt != self.pt or not self.accepts_inbound:
            self.stats.dropped_pt += 1
            return
        pcm = decode_payload(packet.payload, self.fmt)
        if pcm is None:
            self.stats.dropped_malformed += 1
            return
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        self.last_source = (addr[0], addr[1])
        if pcm:
            self.on_audio(pcm, self.rate)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
