"""The agent's voice: espeak-ng when installed (the demo recording should be recognisable speech),
otherwise a voice-like synthetic signal: harmonics of a wandering pitch, shaped by moving formants,
under a syllable envelope. Both are deterministic and cached per text and length."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave
import zlib

import numpy as np
import soxr

RATE = 24000
MS_PER_CHAR = 70


def default_ms(text: str) -> int:
    return max(300, len(text) * MS_PER_CHAR)


@functools.lru_cache(maxsize=256)
def speech(text: str, ms: int | None, seed: int = 0) -> bytes:
    """PCM16 mono at 24 kHz saying `text`, exactly `ms` long when given."""
    audio = _espeak(text) if text.strip() and shutil.which("espeak-ng") else None
    if audio is None:
        audio = _synthetic(text, ms or default_ms(text), seed)
    if ms is not None:
        want = ms * RATE // 1000
        audio = audio[:want] if len(audio) >= want else np.concatenate([audio, np.zeros(want - len(audio), np.int16)])
    return audio.astype("<i2").tobytes()


def _espeak(text: str) -> np.ndarray | None:
    try:
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "--stdout", text], capture_output=True,
                             timeout=20, check=True).stdout
        with wave.open(io.BytesIO(wav)) as w:
            rate, frames = w.getframerate(), w.readframes(w.getnframes())
    except (OSError, subprocess.SubprocessError, wave.Error, EOFError):
        return None
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32)
    return np.clip(soxr.resample(samples, rate, RATE), -32768, 32767).astype(np.int16)


def _synthetic(text: str, ms: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()) ^ seed)
    n = ms * RATE // 1000
    t = np.arange(n) / RATE
    f0 = 150 + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    f1 = 500 + 250 * np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6))  # moving formants: vowel-like colour
    f2 = 1500 + 600 * np.sin(2 * np.pi * 1.7 * t + rng.uniform(0, 6))
    signal = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0
        gain = np.exp(-(((fk - f1) / 180) ** 2)) + 0.6 * np.exp(-(((fk - f2) / 250) ** 2)) + 0.05 / k
        signal += gain * np.sin(k * phase)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.6  # ~4 syllables a second
    signal *= syllables / (np.max(np.abs(signal)) or 1)
    return (signal * 0.35 * 32767).astype(np.int16)
