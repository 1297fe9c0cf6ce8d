"""AudioSocket wire format (chan_audiosocket), sans-I/O: `kind(1) | length(2, big-endian) | payload`.

Audio is signed 16-bit little-endian at the kind's rate, as chan_audiosocket writes it. Only the three
formats the product negotiates are accepted as audio; the other slin kinds are known (so a peer using one
gets a precise error) but refused by the server.
"""

from __future__ import annotations

import struct

KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_SLIN, KIND_SLIN16, KIND_SLIN24, KIND_ERROR = (
    0x00,
    0x01,
    0x03,
    0x10,
    0x12,
    0x13,
    0xFF,
)
FORMAT_BY_KIND = {KIND_SLIN: "slin", KIND_SLIN16: "slin16", KIND_SLIN24: "slin24"}
KIND_BY_FORMAT = {fmt: kind for kind, fmt in FORMAT_BY_KIND.items()}
RATE_BY_FORMAT = {"slin": 8000, "slin16": 16000, "slin24": 24000}
# 0x11 slin12, 0x14 slin32, 0x15 slin44, 0x16 slin48, 0x17 slin96, 0x18 slin192: valid wire, not ours.
AUDIO_KINDS = frozenset(range(0x10, 0x19))
KNOWN_KINDS = frozenset({KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_ERROR} | AUDIO_KINDS)
HEADER = struct.Struct(">BH")
HEADER_SIZE = HEADER.size
# 20 ms of slin24 is 960 B; a declared length far beyond that is garbage, not audio.
MAX_PAYLOAD = 8192

_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class ProtocolError(Exception):
    """The stream is not AudioSocket; `frames` holds the whole frames that came before the bad header."""

    def __init__(self, message: str, frames: list[tuple[int, bytes]] | None = None):
        super().__init__(message)
        self.frames = frames or []


def encode(kind: int, payload: bytes = b"") -> bytes:
    """One frame: one header pack and one concatenation (struct.error if kind or length do not fit)."""
    return _pack(kind, len(payload)) + payload


HANGUP_FRAME = encode(KIND_HANGUP)
ERROR_FRAME = encode(KIND_ERROR)


class AudioSocketParser:
    """feed(bytes) -> complete (kind, payload) frames; a partial frame waits for more.

    A header is checked as soon as its 3 bytes arrive, so an oversize length or unknown kind raises
    ProtocolError before its payload is buffered: memory stays under max_payload + a read's size.
    After a ProtocolError the stream is out of sync; the parser must not be fed again.
    """

    __slots__ = ("max_payload", "_buf")

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = b""  # the incomplete tail of the stream (usually empty: Asterisk writes whole frames)

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """`data` may be a view of a buffer its owner reuses: every frame and the kept tail are copies."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        frames: list[tuple[int, bytes]] = []
        size = len(data)
        offset = 0
        max_payload = self.max_payload
        while size - offset >= HEADER_SIZE:
            kind, length = _unpack_from(data, offset)
            if kind not in KNOWN_KINDS:
                raise ProtocolError(f"unknown frame kind 0x{kind:02x}", frames)
            if length > max_payload:
                raise ProtocolError(f"frame kind 0x{kind:02x} declares {length} bytes (limit {max_payload})", frames)
            end = offset + HEADER_SIZE + length
            if end > size:
                break
            frames.append((kind, bytes(data[offset + HEADER_SIZE : end])))  # bytes(bytes) is no copy
            offset = end
        if offset < size:
            self._buf = bytes(data[offset:])
        return frames
