"""The agent's voice, in the session's output format.

With `espeak-ng` installed the audio is that text spoken, so the demo's recording is recognisable speech;
without it, a voice-like synthetic signal (harmonics of a wandering pitch shaped by moving formants, under
a syllable envelope). Either way the length is the same, `audio_ms` or ~70 ms a character, so tests time the
same on every machine: espeak's speaking rate is fitted to it and the rest padded with silence. Everything
is deterministic and cached per text, length, voice and format, and callers run it in a thread.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave
import zlib

import numpy as np
import soxr

from sim.realtime import g711

RATE = 24000
MS_PER_CHAR = 70
MIN_MS = 300
BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}
_ESPEAK_WPM = 165
# Session voices as espeak variants: only so that two voices do not sound the same.
_VARIANTS = {
    "alloy": "f2",
    "ash": "m3",
    "ballad": "m2",
    "coral": "f4",
    "echo": "m1",
    "sage": "f1",
    "shimmer": "f3",
    "verse": "m4",
    "marin": "f5",
    "cedar": "m7",
}


def default_ms(text: str, speed: float = 1.0) -> int:
    """How long the model takes to say `text` at `audio.output.speed`."""
    return max(MIN_MS, round(len(text) * MS_PER_CHAR / speed))


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=512)
def render(text: str, ms: int, fmt: str, voice: str = "marin", seed: int = 0) -> bytes:
    """`text` spoken in exactly `ms` milliseconds, encoded as `fmt` (audio/pcm 24 kHz, pcmu or pcma)."""
    return encode(speech(text, ms, voice, seed), fmt)


def speech(text: str, ms: int, voice: str = "marin", seed: int = 0) -> np.ndarray:
    """PCM16 samples at 24 kHz, exactly `ms` long."""
    want = ms * RATE // 1000
    audio = _espeak(text, ms, voice) if text.strip() and espeak_available() else None
    if audio is None:
        audio = _synthetic(text, ms, seed)
    if len(audio) >= want:
        return audio[:want]
    return np.concatenate([audio, np.zeros(want - len(audio), np.int16)])


def encode(samples: np.ndarray, fmt: str) -> bytes:
    """24 kHz PCM16 samples in the wire format: little-endian PCM16, or G.711 at 8 kHz."""
    if fmt == "audio/pcm":
        return samples.astype("<i2").tobytes()
    down = soxr.resample(samples.astype(np.float32), RATE, 8000)
    return g711.encode(np.clip(down, -32768, 32767).astype(np.int16), fmt)


def from_pcm24(pcm: bytes, fmt: str) -> bytes:
    """Scripted PCM16 24 kHz bytes in the session's output format."""
    return encode(np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2"), fmt)


def _run_espeak(text: str, voice: str, wpm: int) -> np.ndarray | None:
    variant = _VARIANTS.get(voice, "f5")
    try:
        wav = subprocess.run(
            ["espeak-ng", "-v", f"en-us+{variant}", "-s", str(wpm), "--stdout", text],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        with wave.open(io.BytesIO(wav)) as w:
            rate, frames = w.getframerate(), w.readframes(w.getnframes())
    except (OSError, subprocess.SubprocessError, wave.Error, EOFError):
        return None
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32)
    if not len(samples):
        return None
    return np.clip(soxr.resample(samples, rate, RATE), -32768, 32767).astype(np.int16)


def _espeak(text: str, ms: int, voice: str) -> np.ndarray | None:
    audio = _run_espeak(text, voice, _ESPEAK_WPM)
    if audio is None:
        return None
    natural_ms = len(audio) * 1000 / RATE
    if abs(natural_ms - ms) > 0.05 * ms:
        # Fit the speaking rate to the wanted length (espeak accepts 80–450 words a minute).
        wpm = int(min(450, max(80, _ESPEAK_WPM * natural_ms / ms)))
        audio = _run_espeak(text, voice, wpm) if wpm != _ESPEAK_WPM else audio
    return audio


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
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.6  # ~4 a second
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02) if n else t  # no clicks at the edges
    signal *= syllables * fade / (np.max(np.abs(signal)) or 1)
    return (signal * 0.35 * 32767).astype(np.int16)
