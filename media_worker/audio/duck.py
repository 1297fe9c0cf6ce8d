"""Barge-in that sounds right: duck the agent at the caller's first sound, fade it out when the barge-in is
confirmed, ramp it back up when nothing confirms.

The gate needs `start_frames` (3 × 20 ms) of speech above the echo threshold before it calls a barge-in, so a
cough or a burst of echo does not kill the reply. Waiting that long with the agent at full level is what the
caller hears as "it talks over me". So the session calls `onset()` on the FIRST frame that sounds like the
caller (voiced and above the echo threshold) while the agent plays: the next frame out ramps down to
`duck_db` within `fade_ms`. Then either
- `stop()` (the gate opened: a real barge-in): the next frame fades from where it is to silence within `fade_ms`
  (the session flushes the rest of the queue), or
- nothing within `confirm_ms`: the frame ramps back up to full level over one whole frame (a gentler
  ramp than the fade-out, so a restore is heard as a dip, not a click).

Sans-I/O: `apply(frame)` takes a wire frame and returns it (PLAYING at full level: the same object, no work) or
a preallocated buffer holding it with the gain applied. The ramps are computed once; a frame costs a few
in-place numpy calls on preallocated arrays. The returned buffer is reused by the next call: the transports
copy a frame when they send it.
"""

from __future__ import annotations

import enum

import msgspec
import numpy as np

from media_worker.audio.g711 import DECODE_TABLE_F32, ENCODE_TABLE

_CODING = {"slin": "<i2", "slin16": "<i2", "slin24": "<i2", "slin_be": ">i2", "ulaw": "ulaw"}


class Playback(enum.Enum):
    PLAYING = "playing"  # full level
    DUCKED = "ducked"  # the caller may be speaking: `duck_db` below full level until confirmed or restored
    STOPPING = "stopping"  # a barge-in: the next frame fades out to silence
    STOPPED = "stopped"  # faded out; the next real frame (a new reply) plays at full level


class _Level(enum.IntEnum):
    FULL = 0
    DUCK = 1
    ZERO = 2


class DuckSettings(msgspec.Struct, frozen=True):
    """media_worker.bargein_* of the config."""

    duck_db: float = -30.0  # the agent's level while a caller's onset waits for confirmation
    fade_ms: int = 8  # the fade-out at a confirmed barge-in (and the duck's ramp down)
    confirm_ms: int = 400  # an onset nothing confirms within this long is restored


class Ducker:
    def __init__(self, wire: str, rate: int, settings: DuckSettings | None = None, frame_ms: int = 20) -> None:
        settings = settings or DuckSettings()
        duck_db, fade_ms = settings.duck_db, settings.fade_ms
        if wire not in _CODING:
            raise ValueError(f"unknown wire format {wire!r}")
        if not 1 <= fade_ms <= frame_ms:
            raise ValueError(f"bargein_fade_ms must be 1..{frame_ms}, got {fade_ms}")
        if duck_db > 0:
            raise ValueError(f"bargein_duck_db must be <= 0, got {duck_db}")
        self.wire = wire
        self.confirm_frames = max(1, settings.confirm_ms // frame_ms)
        n = rate * frame_ms // 1000
        self.frame_samples = n
        self.fade_samples = max(1, rate * fade_ms // 1000)
        gains = (1.0, 10.0 ** (duck_db / 20.0), 0.0)
        # (from, to) -> one frame of gains: a raised-cosine ramp over `fade_samples` (whole frame for a
        # restore), then flat. Flat frames at the duck level are (DUCK, DUCK).
        self._ramps: dict[tuple[_Level, _Level], np.ndarray] = {}
        for a in _Level:
            for b in _Level:
                length = n if (a, b) == (_Level.DUCK, _Level.FULL) else self.fade_samples
                ramp = np.full(n, gains[b], dtype=np.float32)
                t = (1.0 - np.cos(np.pi * (np.arange(length, dtype=np.float64) + 1) / length)) / 2.0
                ramp[:length] = (gains[a] + (gains[b] - gains[a]) * t).astype(np.float32)
                self._ramps[(a, b)] = ramp
        self._f32 = np.zeros(n, dtype=np.float32)
        coding = _CODING[wire]
        if coding == "ulaw":
            self._out = bytearray(n)
            self._u8 = np.frombuffer(self._out, dtype=np.uint8)
            self._i16 = np.zeros(n, dtype=np.int16)
            self._dtype = np.dtype(np.uint8)
        else:
            self._out = bytearray(2 * n)
            self._i16 = np.frombuffer(self._out, dtype=coding)
            self._dtype = np.dtype(coding)
        self.state = Playback.PLAYING
        self._level = _Level.FULL  # the gain the last frame out ended at
        self._target = _Level.FULL  # the gain the next frame ramps to
        self._frames_left = 0  # DUCKED: frames before an unconfirmed duck is restored
        self.ducks = 0  # onsets that ducked the agent
        self.restores = 0  # ducks that nothing confirmed (a cough, echo, a noise burst)

    # -- what the session tells it ----------------------------------------------------------------------

    def onset(self) -> None:
        """The caller's first sign while the agent plays: duck from the next frame on."""
        if self.state is Playback.PLAYING:
            self.state = Playback.DUCKED
            self._target = _Level.DUCK
            self._frames_left = self.confirm_frames
            self.ducks += 1

    def stop(self) -> None:
        """A confirmed barge-in: the next frame fades to silence."""
        self.state = Playback.STOPPING
        self._target = _Level.ZERO

    # -- the 20 ms tick ---------------------------------------------------------------------------------

    def apply(self, frame: bytes, real: bool) -> bytes | bytearray:
        """The frame to send for this tick (`real`: agent audio, not the queue's silence). PLAYING is always at
        full level with no ramp pending (onset/stop leave it at once, a restore or a new reply enters it at
        full level), so the caller may skip the call then."""
        state = self.state
        if state is Playback.PLAYING:
            return frame
        if state is Playback.DUCKED:
            self._frames_left -= 1
            if self._frames_left <= 0:  # nothing confirmed the onset: ramp back up
                self.state = Playback.PLAYING
                self._target = _Level.FULL
                self.restores += 1
        elif state is Playback.STOPPING:
            self.state = Playback.STOPPED
        elif state is Playback.STOPPED and real:
            self.state = Playback.PLAYING  # a new reply after the cut
            self._level = self._target = _Level.FULL
        level, target = self._level, self._target
        self._level = target
        if level is _Level.FULL and target is _Level.FULL:
            return frame  # a new reply after the cut
        if not real or len(frame) != len(self._out):
            return frame  # silence stays silence; a short frame is not ours to scale
        return self._scale(frame, self._ramps[(level, target)])

    def _scale(self, frame: bytes, gains: np.ndarray) -> bytearray:
        f32 = self._f32
        if self._dtype == np.uint8:
            DECODE_TABLE_F32.take(np.frombuffer(frame, dtype=np.uint8), out=f32)
            f32 *= gains
            np.copyto(self._i16, f32, casting="unsafe")  # |gain| <= 1: no overflow
            ENCODE_TABLE.take(self._i16.view(np.uint16), out=self._u8)
        else:
            np.multiply(np.frombuffer(frame, dtype=self._dtype), gains, out=f32)
            np.copyto(self._i16, f32, casting="unsafe")
        return self._out
