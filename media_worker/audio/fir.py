"""8 kHz <-> 8·K kHz by an integer factor K (3 for 24 kHz, 2 for 16 kHz): linear-phase polyphase FIR.

One Kaiser-windowed sinc low-pass per factor, cut off at 4 kHz (the 8 kHz Nyquist), 60 dB design: the
pass band is flat to 3.4 kHz within ±0.02 dB, everything >= 4.6 kHz is >= 58 dB down, and the group delay
is 1.5 ms in both directions (24·K taps + 1, centre tap on the 8 kHz grid). soxr has no preset with both
properties (measured: QQ aliases at 0 dB, LQ holds back 22–25 ms, VHQ 85 ms; bench/media_audio.py).

Both classes keep their filter state across calls, so a stream cut into frames of any size gives the same
samples as one call over the whole stream, and nothing is held back beyond the filter's own delay:
a 20 ms frame in gives 20 ms out. The work per call is one or two contiguous BLAS matrix products over
[history + input] cut into blocks, into preallocated buffers; no Python loop per sample. At 50 frames a
second the cost is the number of numpy calls (~0.3 µs each), not arithmetic: a frame in makes 9, a 100 ms
delta out 10 (bench/frame_path.py measures them alone as the floor, and bench/CONVERSION.md has the figures).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

try:
    from numpy._core import umath as _umath
except ImportError:  # numpy < 2
    from numpy.core import umath as _umath  # type: ignore[no-redef]

# np.clip's ufunc without np.clip's Python wrapper: ~0.5 µs less per frame than minimum + maximum
_clip: np.ufunc = _umath.clip  # type: ignore[attr-defined]  # not in the stubs

BASE_RATE = 8000
CUTOFF_HZ = 4000.0
STOP_ATTENUATION_DB = 60.0  # Kaiser design target; the measured worst case above 4.6 kHz is ~59 dB
_F32 = np.dtype(np.float32)
# 0-d float32 arrays, not numpy scalars: a scalar bound is made into an array on every call (~0.3 µs)
_HI, _LO = np.array(32767.0, dtype=np.float32), np.array(-32768.0, dtype=np.float32)
PCM16_LE, PCM16_BE = np.dtype("<i2"), np.dtype(">i2")  # dtype objects: a string costs a parse per call


@lru_cache(maxsize=None)
def lowpass(factor: int) -> np.ndarray:
    """The prototype low-pass at 8000·factor Hz, unity DC gain, symmetric, 24·factor + 1 taps."""
    if factor < 2:
        raise ValueError("factor must be >= 2")
    numtaps = 24 * factor + 1  # the 3.4–4.6 kHz transition needs ~1.5 ms of taps at any rate
    fs = BASE_RATE * factor
    n = np.arange(numtaps) - (numtaps - 1) / 2
    beta = 0.1102 * (STOP_ATTENUATION_DB - 8.7)
    h = 2 * CUTOFF_HZ / fs * np.sinc(2 * CUTOFF_HZ / fs * n) * np.kaiser(numtaps, beta)
    h /= h.sum()
    h.setflags(write=False)
    return h


def delay_samples(factor: int) -> int:
    """Group delay of either direction, in samples at the high rate (a multiple of `factor`)."""
    return (len(lowpass(factor)) - 1) // 2


def round_int16(y: np.ndarray, dtype: np.dtype = PCM16_LE) -> np.ndarray:
    """Round and saturate float samples (in place, so `y` is scratch) to int16 of the given byte order."""
    np.rint(y, out=y)
    _clip(y, _LO, _HI, out=y)
    return y.astype(dtype)


def to_pcm16(y: np.ndarray, dtype: np.dtype = PCM16_LE) -> bytes:
    """Round and saturate float samples (in place) to int16 bytes; `dtype=PCM16_BE` for big-endian."""
    np.rint(y, out=y)  # round_int16 inlined: one Python call less per frame
    _clip(y, _LO, _HI, out=y)
    return y.astype(dtype).tobytes()


class Upsampler:
    """8 kHz -> 8·factor kHz. Each input sample yields `factor` output samples at once (no hold-back).

    The input is cut into rows of BLOCK samples; a row's outputs depend only on it and the row before (the
    filter's history is shorter than a row), so one frame is one contiguous matrix product (fast BLAS)
    of [previous row | row] pairs with a (2·BLOCK × factor·BLOCK) matrix. A last, partial row is padded
    with zeros: the filter is causal, so the padding never reaches the outputs that are kept."""

    BLOCK = 32  # input samples per row: >= the history (24), and 20 ms at 8 kHz (160) is 5 whole rows

    def __init__(self, factor: int = 3) -> None:
        h = lowpass(factor) * factor  # zero-stuffing divides the gain by `factor`
        taps = -(-len(h) // factor)
        padded = np.zeros(taps * factor)
        padded[: len(h)] = h
        # phase_taps[j, p] meets the window's sample j (window [x[n-taps+1] .. x[n]]) for output y[n·factor + p].
        phase_taps = padded.reshape(taps, factor)[::-1]
        b = self.BLOCK
        if taps - 1 > b:
            raise ValueError("filter history longer than a block")
        # Row pair [x[r·B - B] .. x[r·B + B - 1]] -> outputs of inputs r·B .. r·B + B - 1.
        matrix = np.zeros((2 * b, factor * b))
        for i in range(b):
            start = b + i - (taps - 1)
            matrix[start : start + taps, i * factor : (i + 1) * factor] = phase_taps
        self._matrix = matrix.astype(np.float32)
        self.factor = factor
        self._flat = np.zeros(b, dtype=np.float32)
        self._n = -1
        self._resize(0)

    def _resize(self, n: int) -> None:
        # Frames nearly always have one size: the buffers and views below are per size, reused. `_flat` is
        # [the last BLOCK inputs | this call's input | zero padding to whole rows]; its rows go in pairs
        # into `_pairs` (one strided copy), the matrix product's operand.
        b, k = self.BLOCK, self.factor
        rows = -(-n // b)
        hist = self._flat[:b].copy()
        self._flat = np.zeros(b + rows * b, dtype=np.float32)
        self._flat[:b] = hist
        self._in = self._flat[b : b + n]
        self._pairs = np.empty((rows, 2, b), dtype=np.float32)
        self._pair_src = np.ndarray((rows, 2, b), _F32, self._flat, 0, (b * _F32.itemsize,) * 2 + (_F32.itemsize,))
        self._pair_rows = self._pairs.reshape(rows, 2 * b)
        self._out = np.empty((rows, k * b), dtype=np.float32)
        self._y = self._out.reshape(-1)[: k * n]
        self._hist, self._last = self._flat[:b], self._flat[n : n + b]  # copyto copes with their overlap
        self._n = n

    def process_array(self, x: np.ndarray) -> np.ndarray:
        """Any real samples at 8 kHz -> float32 at the high rate. The result is a reused buffer: valid
        until the next call."""
        if len(x) != self._n:
            self._resize(len(x))
        self._in[:] = x
        np.copyto(self._pairs, self._pair_src)
        np.dot(self._pair_rows, self._matrix, out=self._out)
        np.copyto(self._hist, self._last)  # the last BLOCK inputs (with older history if n < BLOCK)
        return self._y

    def process_codes(self, codes: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Like `process_array(table[codes])`, decoding straight into the filter's buffer (μ-law)."""
        if len(codes) != self._n:
            self._resize(len(codes))
        table.take(codes, out=self._in, mode="clip")  # "clip": no bounds pass (a uint8 code is < 256)
        np.copyto(self._pairs, self._pair_src)  # the rest as process_array, inline (a call less per frame)
        np.dot(self._pair_rows, self._matrix, out=self._out)
        np.copyto(self._hist, self._last)
        return self._y

    def process(self, pcm8k: bytes) -> bytes:
        """PCM16 LE at 8 kHz -> PCM16 LE at 8·factor kHz, `factor` times the samples."""
        return to_pcm16(self.process_array(np.frombuffer(pcm8k, PCM16_LE, len(pcm8k) // 2)))

    def reset(self) -> None:
        self._flat[:] = 0.0


class Downsampler:
    """8·factor kHz -> 8 kHz. Accepts any input length; the samples short of the next output stay in the
    state (fewer than `factor`, i.e. < 0.125 ms), so no whole frame is ever held back."""

    BLOCK = 25  # outputs per block of the BLAS path

    def __init__(self, factor: int = 3) -> None:
        h = np.asarray(lowpass(factor)[::-1], dtype=np.float32)  # symmetric; y[m] = h · x[m·K .. m·K+N-1]
        self._ntaps = len(h)
        self.factor = factor
        # Whole blocks of BLOCK outputs are two contiguous matrix products (fast BLAS): block b reads input
        # blocks b and b+1 of factor·BLOCK samples; t0/t1 hold the filter taps each block contributes.
        k, b, n = factor, self.BLOCK, len(h)
        span = self._span = k * b
        if k * (b - 1) + n > 2 * span:
            raise ValueError("filter longer than two blocks")
        s, r = np.arange(span)[:, None], np.arange(b)[None, :]
        taps = np.concatenate((h, np.zeros(2 * span, dtype=np.float32)))
        j0, j1 = s - k * r, span + s - k * r
        self._t0 = np.where((j0 >= 0) & (j0 < n), taps[np.clip(j0, 0, n)], 0).astype(np.float32)
        self._t1 = np.where((j1 >= 0) & (j1 < n), taps[np.clip(j1, 0, n)], 0).astype(np.float32)
        self._buf = np.zeros(0, dtype=np.float32)
        self._held = 0
        self._grow(2)  # grows to the first chunk's size, then stays (a stream's chunks are alike)
        self.reset()

    def _grow(self, rows: int) -> None:
        # Rows of `span` input samples: the products of `blocks` output blocks read blocks + 1 rows, past
        # the input up to the last block's end, where the taps are zero. The buffer starts as zeros and only
        # ever holds input samples, so those reads are finite (0 · finite = 0) and the outputs kept exact.
        buf = np.zeros(rows * self._span, dtype=np.float32)
        buf[: self._held] = self._buf[: self._held]
        self._buf = buf
        self._grid = buf.reshape(rows, self._span)
        self._y0 = np.empty((rows, self.BLOCK), dtype=np.float32)
        self._y1 = np.empty((rows, self.BLOCK), dtype=np.float32)

    def process_array(self, x: np.ndarray) -> np.ndarray:
        """Any real samples at the high rate -> float32 at 8 kHz. The result is a reused buffer: valid
        until the next call."""
        held, k = self._held, self.factor
        total = held + len(x)
        count = (total - self._ntaps) // k + 1 if total >= self._ntaps else 0
        blocks = -(-count // self.BLOCK)
        if blocks + 1 > len(self._grid):  # the input fits too: it ends less than a span past the last output's
            self._grow(blocks + 1)
        buf = self._buf
        buf[held:total] = x
        y0, y1, grid = self._y0[:blocks], self._y1[:blocks], self._grid
        np.dot(grid[:blocks], self._t0, out=y0)
        np.dot(grid[1 : blocks + 1], self._t1, out=y1)
        np.add(y0, y1, out=y0)
        used = count * k
        self._held = total - used
        buf[: self._held] = buf[used:total]
        return y0.reshape(-1)[:count]

    def process(self, pcm: bytes) -> bytes:
        """PCM16 LE at 8·factor kHz -> PCM16 LE at 8 kHz."""
        return to_pcm16(self.process_array(np.frombuffer(pcm, PCM16_LE, len(pcm) // 2)))

    def reset(self) -> None:
        self._buf[:] = 0.0
        self._held = self._ntaps - 1  # output m is the window ending at input m·factor: zeros before the start


class Upsampler3(Upsampler):
    """8 kHz -> 24 kHz."""

    def __init__(self) -> None:
        super().__init__(3)


class Downsampler3(Downsampler):
    """24 kHz -> 8 kHz."""

    def __init__(self) -> None:
        super().__init__(3)
