"""Per-call audio conversion between the wire (Asterisk) and the provider (OpenAI Realtime) formats.

One `Converter` per call holds both directions, each with its own filter state. What each pairing does:

| wire \\ provider | pcm16 (24 kHz LE)                         | g711_ulaw (8 kHz)                      |
|-----------------|------------------------------------------|----------------------------------------|
| slin24          | passthrough                              | FIR ÷3 + encode / decode + FIR ×3      |
| slin, slin_be   | FIR ×3 / FIR ÷3 (slin_be: byte order)    | encode / decode (tables)               |
| ulaw            | decode + FIR ×3 / FIR ÷3 + encode        | passthrough                            |
| slin16          | soxr QQ up / soxr LQ down                | FIR ÷2 + encode / decode + FIR ×2      |

16 kHz <-> 24 kHz is not an integer ratio, so soxr serves it, with the preset chosen per direction:
- caller -> model (16k -> 24k): QQ. It holds back ~0.1 ms; LQ would hold back 11 ms (20 ms max) of every
  caller frame and delay the server's VAD. QQ's imaging above 8 kHz reaches only the model's ears.
- model -> caller (24k -> 16k): LQ. It is the only preset below VHQ that anti-aliases (>80 dB from 8.5 kHz,
  flat to 6 kHz, −0.3 dB at 6 kHz); QQ folds the model's 8–12 kHz sibilants into the band at −2 dB. Its
  11 ms mean (20 ms max) hold-back is drained by `drain_wire()` at the end of each response item.
  (MQ/HQ hold back 21 ms, VHQ 42 ms, at this ratio.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import soxr

from media_worker.audio.fir import PCM16_BE, PCM16_LE, Downsampler, Upsampler, delay_samples, round_int16, to_pcm16
from media_worker.audio.g711 import (
    DECODE_TABLE,
    DECODE_TABLE_BE,
    DECODE_TABLE_F32,
    ENCODE_TABLE,
    ULAW_SILENCE,
    ulaw_encode_array,
)

WIRE_FORMATS = ("slin", "slin16", "slin24", "ulaw", "slin_be")  # slin_be = RTP slin (8 kHz big-endian)
PROVIDER_FORMATS = ("pcm16", "g711_ulaw")  # pcm16 = 24 kHz LE; g711_ulaw = 8 kHz

# format -> (sample rate, sample coding): "le"/"be" = int16 in that byte order, "ulaw" = one byte per sample
_CODING = {
    "slin": (8000, "le"),
    "slin16": (16000, "le"),
    "slin24": (24000, "le"),
    "ulaw": (8000, "ulaw"),
    "slin_be": (8000, "be"),
    "pcm16": (24000, "le"),
    "g711_ulaw": (8000, "ulaw"),
}
_BYTES_PER_SAMPLE = {"le": 2, "be": 2, "ulaw": 1}
_PCM16 = {"le": PCM16_LE, "be": PCM16_BE}
_CODES = np.dtype(np.uint8)  # a dtype object: np.uint8 (a type) is looked up on every call
_PATTERNS = np.dtype("<u2")  # int16 LE samples seen as the μ-law encode table's indexes
SOXR_UP_QUALITY = "QQ"  # 16k -> 24k, caller to model: no hold-back
SOXR_DOWN_QUALITY = "LQ"  # 24k -> 16k, model to caller: anti-aliased


def silence(wire: str, ms: int = 20) -> bytes:
    """`ms` of silence in a wire format: μ-law silence is 0xFF, linear silence is zeros."""
    rate, coding = _CODING[wire]
    samples = rate * ms // 1000
    return bytes([ULAW_SILENCE]) * samples if coding == "ulaw" else bytes(2 * samples)


class _SoxrStage:
    """A soxr stream with the FIR classes' shape: int16 array in, int16 array out, drainable."""

    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process_array(self, x: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(np.ascontiguousarray(x, dtype=np.int16))

    def drain_array(self) -> np.ndarray:
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream.clear()
        return tail

    def reset(self) -> None:
        self._stream.clear()


class _FirStage:
    """Upsampler/Downsampler with a drain: zeros for the group delay push the last input's tail out."""

    def __init__(self, resampler: Upsampler | Downsampler, in_rate: int) -> None:
        self._fir = resampler
        self.process_array = resampler.process_array
        # μ-law into the upsampler: decoded by table straight into its buffer (no intermediate array)
        self.process_codes = resampler.process_codes if isinstance(resampler, Upsampler) else None
        # The delay in input samples: 1.5 ms at whichever rate feeds the filter.
        self._flush = np.zeros(delay_samples(resampler.factor) * in_rate // (8000 * resampler.factor), dtype=np.float32)

    def drain_array(self) -> np.ndarray:
        tail = self._fir.process_array(self._flush).copy()
        self._fir.reset()
        return tail

    def reset(self) -> None:
        self._fir.reset()


def _make_stage(in_rate: int, out_rate: int) -> _FirStage | _SoxrStage | None:
    if in_rate == out_rate:
        return None
    if out_rate % in_rate == 0 and in_rate == 8000:
        return _FirStage(Upsampler(out_rate // in_rate), in_rate)
    if in_rate % out_rate == 0 and out_rate == 8000:
        return _FirStage(Downsampler(in_rate // out_rate), in_rate)
    quality = SOXR_UP_QUALITY if out_rate > in_rate else SOXR_DOWN_QUALITY
    return _SoxrStage(in_rate, out_rate, quality)


class _Path:
    """One direction: decode the source coding, resample if the rates differ, encode the target coding."""

    def __init__(self, src: str, dst: str) -> None:
        in_rate, self._src = _CODING[src]
        out_rate, self._dst = _CODING[dst]
        self._stage = _make_stage(in_rate, out_rate)
        self._float_in = isinstance(self._stage, _FirStage)  # μ-law decodes straight to float for the FIR
        self._in_dtype, self._out_dtype = _PCM16.get(self._src, PCM16_LE), _PCM16.get(self._dst, PCM16_LE)
        self._carry = b""  # an odd byte of a 16-bit sample split across two calls
        # The per-frame call, chosen once per pairing: an FIR pairing runs no format checks per frame and
        # calls the filter's own method (at 50 frames/s each Python call weighs like a small numpy call).
        self.process: Callable[[bytes], bytes] = self._any
        if isinstance(self._stage, _FirStage):
            self._resample = self._stage.process_array
            if self._src == "ulaw" and self._dst in _PCM16 and self._stage.process_codes is not None:
                self._resample_codes = self._stage.process_codes
                self.process = self._ulaw_fir
            elif self._src in _PCM16:
                self.process = self._pcm_fir

    def _pcm_fir(self, data: bytes) -> bytes:
        if self._carry or len(data) & 1:  # a sample split across calls: the general path keeps the odd byte
            return self._any(data)
        y = self._resample(np.frombuffer(data, self._in_dtype))
        if self._dst == "ulaw":  # ulaw_encode_array inline: the LE int16 bit patterns index the table
            return ENCODE_TABLE.take(round_int16(y).view(_PATTERNS)).tobytes()
        return to_pcm16(y, self._out_dtype)

    def _ulaw_fir(self, data: bytes) -> bytes:
        return to_pcm16(self._resample_codes(np.frombuffer(data, _CODES), DECODE_TABLE_F32), self._out_dtype)

    def _any(self, data: bytes) -> bytes:
        x = self._decode(data)
        if self._stage is not None:
            x = self._stage.process_array(x)
        return self._encode(x)

    def drain(self) -> bytes:
        self._carry = b""
        return b"" if self._stage is None else self._encode(self._stage.drain_array())

    def reset(self) -> None:
        self._carry = b""
        if self._stage is not None:
            self._stage.reset()

    def _decode(self, data: bytes) -> np.ndarray:
        if self._src == "ulaw":
            codes = np.frombuffer(data, dtype=np.uint8)
            if self._stage is None:
                return codes
            return (DECODE_TABLE_F32 if self._float_in else DECODE_TABLE).take(codes)
        if self._carry:
            data, self._carry = self._carry + data, b""
        if len(data) & 1:
            data, self._carry = data[:-1], data[-1:]
        return np.frombuffer(data, self._in_dtype)

    def _encode(self, x: np.ndarray) -> bytes:
        dst = self._dst
        if x.dtype == np.uint8:  # μ-law codes, no resampling: decode to linear by table
            return (DECODE_TABLE if dst == "le" else DECODE_TABLE_BE).take(x).tobytes()
        if x.dtype.kind == "f":
            if dst != "ulaw":
                return to_pcm16(x, self._out_dtype)
            x = round_int16(x)
        if dst == "ulaw":
            return ulaw_encode_array(x)
        return x.astype(self._out_dtype, copy=False).tobytes()


def _same(data: bytes) -> bytes:
    return data


class Converter:
    """Both directions of one call. `to_provider` turns caller audio into what `input_audio_buffer.append`
    carries; `to_wire` turns model audio (any length) into wire bytes (any length)."""

    def __init__(self, wire: str, provider: str) -> None:
        if wire not in WIRE_FORMATS:
            raise ValueError(f"unknown wire format {wire!r}; expected one of {WIRE_FORMATS}")
        if provider not in PROVIDER_FORMATS:
            raise ValueError(f"unknown provider format {provider!r}; expected one of {PROVIDER_FORMATS}")
        self.wire, self.provider = wire, provider
        self.wire_rate, coding = _CODING[wire]
        self.wire_frame_bytes = self.wire_rate // 50 * _BYTES_PER_SAMPLE[coding]
        self.provider_rate, pcoding = _CODING[provider]
        self.provider_frame_bytes = self.provider_rate // 50 * _BYTES_PER_SAMPLE[pcoding]
        self.passthrough = _CODING[wire] == _CODING[provider]
        self._up = None if self.passthrough else _Path(wire, provider)
        self._down = None if self.passthrough else _Path(provider, wire)
        # Bound straight to the path's per-frame call: no wrapper call per frame.
        self.to_provider: Callable[[bytes], bytes] = _same if self._up is None else self._up.process
        self.to_wire: Callable[[bytes], bytes] = _same if self._down is None else self._down.process

    def drain_wire(self) -> bytes:
        """End of a response item: the model audio the resampler still holds (soxr LQ: ~11 ms mean, 20 ms
        max; FIR: its 1.5 ms tail). Call before `PlayoutQueue.end_item`."""
        return b"" if self._down is None else self._down.drain()

    def reset_wire(self) -> None:
        """Barge-in: forget the model audio held in the resampler so none leaks into the next response."""
        if self._down is not None:
            self._down.reset()
