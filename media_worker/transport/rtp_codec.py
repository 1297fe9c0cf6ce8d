"""RTP (RFC 3550) as externalMedia uses it, sans-I/O: parse any well-formed V=2 packet, build ours.

Asterisk sends a 12-byte header, one SSRC per channel, a random first sequence number, and never sets the
marker bit (seen on Asterisk 22.10.1: tests/fixtures/ari-traces). Only static payload types work toward
Asterisk (chan_rtp has no receive map for dynamic ones), so the product uses PT 0 (ulaw) and PT 10 (slin 8 kHz,
big-endian).
"""

from __future__ import annotations

import random
import struct
from typing import NamedTuple

PT_ULAW, PT_SLIN = 0, 10
PT_BY_FORMAT = {"ulaw": PT_ULAW, "slin": PT_SLIN}
BYTES_PER_SAMPLE = {PT_ULAW: 1, 8: 1, PT_SLIN: 2}  # 8 = alaw, known for completeness
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size
_SEQ_TS = struct.Struct(">HI")
_unpack_from = HEADER.unpack_from


class RtpPacket(NamedTuple):
    pt: int
    seq: int
    ts: int
    ssrc: int
    marker: bool
    payload: bytes


def parse(data: bytes) -> RtpPacket | None:
    """The packet, or None for anything that is not well-formed RTP version 2 (CSRCs, extension, padding
    are skipped; RTCP on the same port, PT 72..76 with the marker bit, is rejected as well)."""
    size = len(data)
    if size < HEADER_SIZE:
        return None
    first, second, seq, ts, ssrc = _unpack_from(data)
    if first & 0xC0 != 0x80:
        return None
    pt = second & 0x7F
    if 72 <= pt <= 76:
        return None  # RTCP SR/RR/SDES/BYE/APP: second byte 200..204
    offset = HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if size < offset + 4:
            return None
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    end = size
    if first & 0x20:
        if size <= offset:
            return None
        pad = data[-1]
        if pad == 0 or size - pad < offset:
            return None
        end -= pad
    if end < offset:
        return None
    return RtpPacket(pt, seq, ts, ssrc, bool(second & 0x80), data[offset:end])


class RtpSender:
    """Our outbound stream: fixed SSRC and PT, seq += 1 per packet, ts += the payload's sample count.

    Timestamps follow RFC 3550 (a packet carries the time of its first sample, the next one starts where
    it ended). The marker bit is never set, as Asterisk's own streams don't. The header lives in one
    preallocated bytearray; a packet costs one pack_into and one join (its only allocation).
    """

    __slots__ = ("pt", "ssrc", "seq", "ts", "samples_per_frame", "bytes_per_sample", "frame_bytes", "_header")

    def __init__(
        self, pt: int, samples_per_frame: int, ssrc: int | None = None, seq: int | None = None, ts: int | None = None
    ):
        if not 0 <= pt <= 127:
            raise ValueError(f"payload type {pt} is not 0..127")
        self.pt = pt
        self.samples_per_frame = samples_per_frame
        self.bytes_per_sample = BYTES_PER_SAMPLE.get(pt, 2)
        self.frame_bytes = samples_per_frame * self.bytes_per_sample
        self.ssrc = random.getrandbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self.seq = random.getrandbits(16) if seq is None else seq & 0xFFFF  # the next packet's
        self.ts = random.getrandbits(32) if ts is None else ts & 0xFFFFFFFF  # the next packet's
        self._header = bytearray(HEADER.pack(0x80, pt, 0, 0, self.ssrc))

    def packet(self, payload: bytes | bytearray) -> bytes:
        header = self._header
        seq, ts = self.seq, self.ts
        _SEQ_TS.pack_into(header, 2, seq, ts)
        self.seq = (seq + 1) & 0xFFFF
        self.ts = (ts + len(payload) // self.bytes_per_sample) & 0xFFFFFFFF
        return b"".join((header, payload))
