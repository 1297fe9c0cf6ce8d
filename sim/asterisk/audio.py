"""Audio of the simulated Asterisk: PCM helpers, a scripted caller, a recorder, and the caller's phone.

All audio here is signed 16-bit little-endian mono PCM (`bytes`) at a stated rate. Frames are 20 ms.
"""

from __future__ import annotations

import asyncio
import math
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

from sim.asterisk.frame_clock import FrameClock, Ticket

FRAME_MS = 20
_FULL_SCALE = 32768.0


def samples_per_frame(rate: int) -> int:
    return rate * FRAME_MS // 1000


def as_samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def to_pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """A whole signal at another rate (soxr HQ); identity when the rates match."""
    if from_rate == to_rate or not pcm:
        return pcm
    # float in, rounded out: soxr's own int16 output adds dither, so digital silence would not stay silent
    return to_pcm(soxr.resample(as_samples(pcm).astype(np.float32), from_rate, to_rate, quality="HQ"))


class StreamResampler:
    """Frame-by-frame resampling that keeps its filter state across frames (no clicks at frame edges).

    soxr's "QQ" quality returns output for every input frame (a few samples of delay); the higher qualities
    hold back 60+ ms and release it in bursts, which a 20 ms media path must not do.
    """

    def __init__(self, from_rate: int, to_rate: int):
        self.from_rate, self.to_rate = from_rate, to_rate
        self._stream = (
            None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="QQ")
        )

    def process(self, pcm: bytes) -> bytes:
        if self._stream is None or not pcm:
            return pcm
        out = self._stream.resample_chunk(as_samples(pcm).astype(np.float32))
        np.rint(out, out=out)  # to_pcm's rounding and clipping, in place: this runs for every frame
        np.clip(out, -32768, 32767, out=out)
        return out.astype("<i2").tobytes()


def stream_resampler(resamplers: dict[int, StreamResampler], from_rate: int, to_rate: int) -> StreamResampler:
    """The one resampler of a stream from `from_rate`, made on first use: its filter state carries across
    frames. Not `setdefault(rate, StreamResampler(...))`: that builds a resampler per frame and throws it
    away, which cost more than resampling the frame."""
    resampler = resamplers.get(from_rate)
    if resampler is None:
        resampler = resamplers[from_rate] = StreamResampler(from_rate, to_rate)
    return resampler


def tone_pcm(hz: float, ms: int, rate: int, dbfs: float = -12) -> bytes:
    """A sine whose *peak* is `dbfs` below full scale (its RMS is 3 dB lower)."""
    n = ms * rate // 1000
    amplitude = _FULL_SCALE * 10 ** (dbfs / 20)
    return to_pcm(amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate))


def silence_pcm(ms: int, rate: int) -> bytes:
    return bytes(2 * (ms * rate // 1000))


VOICED_DBFS = -45.0  # a 20 ms frame louder than this holds speech (digital silence is -inf, comfort hiss ~-70)
_VOICED_MEAN_SQUARE = (_FULL_SCALE * 10 ** (VOICED_DBFS / 20)) ** 2


def rms_dbfs(pcm: bytes) -> float:
    """RMS relative to full scale (a full-scale square wave is 0 dBFS); -inf for silence or nothing."""
    samples = as_samples(pcm).astype(np.float64)
    if samples.size == 0:
        return float("-inf")
    rms = math.sqrt(float(np.mean(samples * samples)))
    return 20 * math.log10(rms / _FULL_SCALE) if rms > 0 else float("-inf")


def is_voiced(pcm: bytes) -> bool:
    """rms_dbfs(pcm) > VOICED_DBFS, compared as a mean square (no log, no square root): every chunk a
    simulated caller hears is checked."""
    samples = as_samples(pcm).astype(np.float64)
    return bool(samples.size) and float(np.dot(samples, samples)) > _VOICED_MEAN_SQUARE * samples.size


def write_wav(path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def read_wav(path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as src:
        if src.getnchannels() != 1 or src.getsampwidth() != 2:
            raise ValueError(
                f"{path}: need mono 16-bit PCM, got {src.getnchannels()} channel(s) of {8 * src.getsampwidth()} bits"
            )
        return src.readframes(src.getnframes()), src.getframerate()


class _Segment:
    """Speech (pcm at its own rate) or silence (pcm is None) of a caller's script."""

    __slots__ = ("pcm", "rate", "ms")

    def __init__(self, pcm: bytes | None, rate: int, ms: float):
        self.pcm, self.rate, self.ms = pcm, rate, ms

    def samples_at(self, rate: int) -> int:
        if self.pcm is None:
            return round(self.ms * rate / 1000)
        return len(self.pcm) // 2 if rate == self.rate else round(len(self.pcm) // 2 * rate / self.rate)


class CallerAudio:
    """What a simulated caller says: speech and silence segments, read out one 20 ms frame at a time.

    The segments form one timeline: a frame may span a segment boundary, and it counts as speech if any of
    its samples is speech. The last frame is padded with silence to a full 20 ms.
    """

    def __init__(self, segments: list[_Segment] | None = None):
        self._segments: list[_Segment] = list(segments or [])
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # rate -> (samples, is-speech mask)
        # rate -> every 20 ms frame, cut once: frame() is on each caller's 20 ms clock. Shared by fresh() copies.
        self._frames: dict[int, list[tuple[bytes, bool]]] = {}
        self._pos_ms = 0.0  # read position, in time: the rate may differ between calls to frame()

    def fresh(self) -> CallerAudio:
        """The same audio, read from its start, sharing what was resampled and cut into frames: many callers
        speaking one WAV hold one copy of it."""
        copy = CallerAudio(self._segments)
        copy._cache, copy._frames = self._cache, self._frames
        return copy

    @classmethod
    def from_pcm(cls, pcm: bytes, rate: int) -> CallerAudio:
        if len(pcm) % 2:
            raise ValueError("16-bit PCM must have an even number of bytes")
        return cls([_Segment(bytes(pcm), rate, len(pcm) // 2 * 1000 / rate)])

    @classmethod
    def from_wav(cls, path) -> CallerAudio:
        pcm, rate = read_wav(Path(path))
        return cls.from_pcm(pcm, rate)

    @classmethod
    def silence(cls, ms: int) -> CallerAudio:
        return cls([_Segment(None, 8000, float(ms))])

    @classmethod
    def tone(cls, hz: float, ms: int, dbfs: float = -12, rate: int = 8000) -> CallerAudio:
        return cls.from_pcm(tone_pcm(hz, ms, rate, dbfs), rate)

    def then(self, other: CallerAudio) -> CallerAudio:
        return CallerAudio(self._segments + other._segments)

    @property
    def duration_ms(self) -> int:
        return round(sum(segment.ms for segment in self._segments))

    @property
    def position_ms(self) -> float:
        return self._pos_ms

    def rewind(self) -> None:
        self._pos_ms = 0.0

    def _timeline(self, rate: int) -> tuple[np.ndarray, np.ndarray]:
        if rate not in self._cache:
            parts, masks = [], []
            for segment in self._segments:
                n = segment.samples_at(rate)
                if segment.pcm is None:
                    part = np.zeros(n, np.int16)
                else:
                    part = as_samples(resample(segment.pcm, segment.rate, rate))[:n]
                    part = np.pad(part, (0, n - len(part)))
                parts.append(part)
                masks.append(np.full(n, segment.pcm is not None))
            samples = np.concatenate(parts) if parts else np.zeros(0, np.int16)
            mask = np.concatenate(masks) if masks else np.zeros(0, bool)
            self._cache[rate] = (samples.astype("<i2"), mask)
        return self._cache[rate]

    def _cut(self, rate: int) -> list[tuple[bytes, bool]]:
        """Every frame at `rate` (a whole number of samples per frame), the last padded with silence."""
        frames = self._frames.get(rate)
        if frames is None:
            samples, mask = self._timeline(rate)
            n = samples_per_frame(rate)
            count = -(-len(samples) // n)
            padded = np.pad(samples, (0, count * n - len(samples))).reshape(count, n)
            speech = np.asarray(np.pad(mask, (0, count * n - len(mask))).reshape(count, n).any(axis=1))
            frames = self._frames[rate] = [(padded[i].tobytes(), bool(speech[i])) for i in range(count)]
        return frames

    def frame(self, rate: int) -> tuple[bytes, bool] | None:
        """The next 20 ms at `rate` and whether it holds speech; None when the script is over."""
        if rate * FRAME_MS % 1000 == 0:  # frames start at whole samples: read them from the cut
            frames = self._cut(rate)
            index = int(self._pos_ms) // FRAME_MS  # the position moves by whole frames
            if index >= len(frames):
                return None
            self._pos_ms += FRAME_MS
            return frames[index]
        samples, mask = self._timeline(rate)
        start = round(self._pos_ms * rate / 1000)
        if start >= len(samples):
            return None
        n = samples_per_frame(rate)
        chunk = samples[start : start + n]
        speech = bool(mask[start : start + n].any())
        self._pos_ms += FRAME_MS
        if len(chunk) < n:
            chunk = np.pad(chunk, (0, n - len(chunk)))
        return chunk.tobytes(), speech


def spans(times: list[float], join_s: float = 0.1) -> list[tuple[float, float]]:
    """Sorted arrival times of voiced frames -> [(first, last)] runs, a gap longer than `join_s` starting a new one."""
    out: list[tuple[float, float]] = []
    for t in times:
        if out and t - out[-1][1] <= join_s:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


class Recorder:
    """What one side heard, with the arrival time of every chunk (time.monotonic())."""

    def __init__(self) -> None:
        self._chunks: list[tuple[float, bytes, int]] = []

    def append(self, pcm: bytes, rate: int, t: float | None = None) -> None:
        self._chunks.append((time.monotonic() if t is None else t, bytes(pcm), rate))

    def __len__(self) -> int:
        return len(self._chunks)

    def clear(self) -> None:
        self._chunks.clear()

    def levels(self, window_ms: int = 5) -> list[tuple[float, float]]:
        """(time, RMS dBFS; -200 for digital silence) of every `window_ms` of every chunk, in arrival order: a
        chunk's windows are timed from its arrival, as a phone would play them."""
        out = []
        for t, pcm, rate in self._chunks:
            step = 2 * max(1, rate * window_ms // 1000)
            for k, start in enumerate(range(0, len(pcm) - step + 1, step)):
                out.append((t + k * window_ms / 1000, max(rms_dbfs(pcm[start : start + step]), -200.0)))
        return out

    def timeline(self) -> list[tuple[float, int, int]]:
        """(arrival time, samples, rate) of every chunk, in arrival order."""
        return [(t, len(pcm) // 2, rate) for t, pcm, rate in self._chunks]

    @property
    def native_rate(self) -> int | None:
        return self._chunks[0][2] if self._chunks else None

    @property
    def duration_ms(self) -> float:
        return sum(len(pcm) // 2 * 1000 / rate for _, pcm, rate in self._chunks)

    def pcm(self, rate: int | None = None) -> bytes:
        """Everything heard, back to back (arrival gaps not filled), at `rate` (default: the first chunk's)."""
        rate = rate or self.native_rate or 8000
        out: list[bytes] = []
        run: list[bytes] = []
        run_rate = 0  # the rate of the run being collected (0: none yet)
        # Resample runs of equal rate as a whole: per-chunk resampling would click at every chunk edge.
        for _, pcm, chunk_rate in self._chunks + [(0.0, b"", -1)]:
            if chunk_rate != run_rate and run:
                out.append(resample(b"".join(run), run_rate, rate))
                run = []
            run.append(pcm)
            run_rate = chunk_rate
        return b"".join(out)

    def save_wav(self, path, rate: int | None = None) -> None:
        rate = rate or self.native_rate or 8000
        write_wav(path, self.pcm(rate), rate)

    def rms_dbfs(self) -> float:
        return rms_dbfs(b"".join(pcm for _, pcm, _ in self._chunks))


class CallerEndpoint:
    """The phone side of a caller channel: speaks its CallerAudio on a 20 ms clock and records what it hears.

    start(loop) puts the phone on the loop's FrameClock (one clock for every phone), which calls
    on_audio(pcm, rate) every 20 ms at the phone's native rate. After the
    script (or with no script) the line stays open: silence is sent if send_silence (a SIP trunk streams
    continuously), nothing otherwise (a Local channel sends only while its caller leg produces audio).
    Audio delivered to the phone is recorded in `heard`; with echo_db set it also comes back, attenuated,
    in what the phone sends (a line echo), consumed one frame per tick like a playout buffer would. A frame
    that carries echo counts as audio on the line even when the caller is silent.
    """

    _MAX_LATE_S = 0.2  # behind by more than this (a stalled loop): restart the clock instead of bursting

    def __init__(
        self,
        audio: CallerAudio | None,
        rate: int = 8000,
        *,
        send_silence: bool = True,
        echo_db: float | None = None,
        on_audio: Callable[[bytes, int], None] | None = None,
    ):
        self.audio = audio
        self.rate = rate
        self.send_silence = send_silence
        self.echo_db = echo_db
        self.on_audio = on_audio
        self.heard = Recorder()
        self.voiced: list[float] = []  # arrival time (monotonic) of every heard chunk that holds speech
        self.sent = Recorder()
        self.finished = asyncio.Event()
        self.frames_sent = 0
        self.started_t: float | None = None
        self._echo = bytearray()
        self._echo_resamplers: dict[int, StreamResampler] = {}
        self._ticket: Ticket | None = None  # our place on the loop's FrameClock while running
        self._t0 = 0.0  # loop time of frame 0 (the clock restarts it after a stall)
        self._frames = 0  # frames since _t0

    @property
    def running(self) -> bool:
        return self._ticket is not None and self._ticket.active

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self.running:
            return
        loop = loop or asyncio.get_running_loop()
        self.started_t = time.monotonic()
        self._t0, self._frames = loop.time(), 0
        self._ticket = FrameClock.of(loop).start(self._tick, self._t0)

    def stop(self) -> None:
        if self._ticket is not None:
            self._ticket.cancel()
            self._ticket = None

    def deliver(self, pcm: bytes, rate: int) -> None:
        """Audio reaching the caller's ear."""
        if not pcm:
            return
        now = time.monotonic()
        self.heard.append(pcm, rate, now)
        if is_voiced(pcm):
            self.voiced.append(now)
        if self.echo_db is None:
            return
        resampler = stream_resampler(self._echo_resamplers, rate, self.rate)
        echo = as_samples(resampler.process(pcm)).astype(np.float64) * 10 ** (self.echo_db / 20)
        self._echo += to_pcm(echo)

    def _next_frame(self) -> tuple[bytes, bool]:
        frame = self.audio.frame(self.rate) if self.audio is not None else None
        if frame is None:
            self.finished.set()
            frame = (silence_pcm(FRAME_MS, self.rate), False)
        pcm, on_line = frame
        n = 2 * samples_per_frame(self.rate)
        if self._echo:
            echo, self._echo[:n] = bytes(self._echo[:n]), b""
            mixed = as_samples(pcm).astype(np.int32)
            mixed[: len(echo) // 2] += as_samples(echo)
            pcm, on_line = to_pcm(mixed), True
        return pcm, on_line

    def _tick(self, due: float, now: float) -> float:
        """One frame, on the loop's FrameClock; returns when the next is due."""
        pcm, on_line = self._next_frame()
        if on_line or self.send_silence:
            self.frames_sent += 1
            self.sent.append(pcm, self.rate)
            if self.on_audio is not None:
                self.on_audio(pcm, self.rate)
        self._frames += 1
        next_at = self._t0 + self._frames * FRAME_MS / 1000
        if next_at < now - self._MAX_LATE_S:
            self._t0, self._frames, next_at = now, 0, now
        return next_at
