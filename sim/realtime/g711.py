"""G.711 μ-law and A-law by lookup table (the simulator's own: it shares no codec code with the product)."""

from __future__ import annotations

import numpy as np


def _ulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(sign, magnitude, -magnitude).astype(np.int16)


ULAW_DECODE = _ulaw_decode_table()
ALAW_DECODE = _alaw_decode_table()


def _encode_table(decode: np.ndarray) -> np.ndarray:
    """For every int16 value, the code whose decoded value is nearest (exact inverse by construction)."""
    order = np.argsort(decode, kind="stable")
    levels = decode[order].astype(np.int32)
    samples = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(levels, samples), 1, len(levels) - 1)
    nearer_low = (samples - levels[idx - 1]) <= (levels[idx] - samples)
    return order[np.where(nearer_low, idx - 1, idx)].astype(np.uint8)


ULAW_ENCODE = _encode_table(ULAW_DECODE)
ULAW_ENCODE[32768] = 0xFF  # zero has two μ-law codes; silence is the positive one, 0xFF
ALAW_ENCODE = _encode_table(ALAW_DECODE)


def encode(pcm16: np.ndarray, law: str) -> bytes:
    table = ULAW_ENCODE if law == "audio/pcmu" else ALAW_ENCODE
    return table[pcm16.astype(np.int32) + 32768].tobytes()


def decode(data: bytes, law: str) -> np.ndarray:
    table = ULAW_DECODE if law == "audio/pcmu" else ALAW_DECODE
    return table[np.frombuffer(data, dtype=np.uint8)]
