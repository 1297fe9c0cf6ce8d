"""Is the caller really speaking, or is it our own voice coming back down the line?

The worker decides barge-in itself (not the server's VAD), so this gate must not open on echo. A caller frame counts
as speech when
1. the VAD says voiced: webrtcvad at `aggressiveness` (the guide: 1, never 0) on an 8 or 16 kHz view of
   the frame, or an energy detector if webrtcvad is not installed, and
2. its level is above both an absolute floor and what our own recent audio could explain: the loudest frame
   we sent within the echo-delay window (~200 ms) minus `echo_margin_db`. In other words, echo is taken
   to come back at least `echo_margin_db` below what we sent (G.168 assumes >= 6 dB return loss on a
   network hybrid; lines are typically 10–20+ dB; handsets with AEC far more). While we are silent this
   test passes trivially.
The gate opens after `start_frames` consecutive speech frames and closes after `hang_frames` unvoiced ones.
A voiced burst of `start_frames` that failed only the echo test counts once in `closures`: a healthy call
shows 1–2, a misconfigured one (aggressiveness 0, a very hot echo path) 50+.
"""

from __future__ import annotations

import math

import numpy as np

try:  # webrtcvad-wheels; the energy detector below stands in without it
    import webrtcvad
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    webrtcvad = None

ECHO_WINDOW_MS = 200
# The first sign (a duck, which is undone if nothing confirms it) may use the echo return this line really has:
# the loudest recent ratio of what came back to what we sent while the caller was silent, held and let down by
# RETURN_DECAY_DB a frame, plus SIGN_SAFETY_DB. Never more sensitive than that, never less than the gate's test.
# The estimate is let down only while a quiet frame says something about the return: our latest frame is within
# STEADY_DB of the loudest in the window (after a sudden drop, a duck or the end of a reply, what comes back is
# still the echo of the louder past), and the echo the estimate predicts would be above `floor_dbfs`.
RETURN_DECAY_DB = 0.2
RETURN_FLOOR_DB = -60.0  # no line is quieter than this for the sign (the absolute floor_dbfs decides below it)
SIGN_SAFETY_DB = 6.0
STEADY_DB = 20.0
FRAME_MS = 20
_SILENT_DB = -200.0
_THIRDS = np.full(3, 1.0 / 3.0, dtype=np.float32)  # 24 kHz -> 8 kHz view for the VAD: mean of each three


def level_db(x: np.ndarray) -> float:
    """Mean-square level of int16-scaled float samples in dBFS (a full-scale square wave is 0 dB)."""
    energy = float(np.dot(x, x))
    return 10.0 * math.log10(energy / (len(x) * 32768.0 * 32768.0)) if energy > 0.0 else _SILENT_DB


class _EnergyVad:
    """Fallback VAD: level above a slowly tracked noise floor and above an absolute threshold."""

    def __init__(self) -> None:
        self.noise_db = -70.0

    def voiced(self, level: float) -> bool:
        voiced = level > max(self.noise_db + 12.0, -45.0)
        # Track the floor fast downwards and slowly upwards, so speech itself does not raise it much.
        self.noise_db += (level - self.noise_db) * (0.2 if level < self.noise_db else 0.01)
        return voiced


class SpeechGate:
    def __init__(
        self,
        rate: int,
        aggressiveness: int = 1,
        *,
        echo_margin_db: float = 10.0,
        start_frames: int = 3,
        hang_frames: int = 10,
        floor_dbfs: float = -55.0,
        echo_window_ms: int = ECHO_WINDOW_MS,
    ) -> None:
        if rate not in (8000, 16000, 24000):
            raise ValueError("rate must be 8000, 16000 or 24000")
        if not 0 <= aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        self.rate = rate
        self.echo_margin_db = echo_margin_db
        self.start_frames = start_frames
        self.hang_frames = hang_frames
        self.floor_dbfs = floor_dbfs
        # webrtcvad takes 8/16 kHz; 24 kHz is averaged in threes (a cheap low-pass) to an 8 kHz view.
        self._vad_rate = 8000 if rate == 24000 else rate
        self._vad = webrtcvad.Vad(aggressiveness) if webrtcvad is not None else None
        self._energy_vad = _EnergyVad()
        # Outgoing levels per caller frame slot over the echo window (+1 for the slot being filled).
        self._out_levels = [_SILENT_DB] * (max(1, echo_window_ms // FRAME_MS) + 1)
        self._slot = 0
        self._out_now = _SILENT_DB
        self._speech_run = 0  # consecutive voiced frames above the echo threshold
        self._burst_run = 0  # voiced frames in the current burst (gaps < hang_frames bridged)
        self._gap = 0  # consecutive unvoiced frames
        self._burst_counted = False
        self.speaking = False
        # This frame alone sounds like the caller (voiced, above the echo return this line has shown, see
        # RETURN_DECAY_DB): the first sign the playout ducks on, before the gate itself opens.
        self.heard_caller = False
        self.echo_return_db = -echo_margin_db  # measured return (what comes back - what we sent), worst first
        self.closures = 0
        self.speech_starts = 0

    def outgoing(self, pcm_at_rate: bytes | bytearray) -> None:
        """A frame we played (the echo reference), PCM16 LE at `rate`. Several calls between two caller
        frames keep the loudest; time advances with `incoming` (caller frames come every 20 ms)."""
        if len(pcm_at_rate) < 2:
            return
        level = level_db(np.frombuffer(pcm_at_rate, dtype="<i2", count=len(pcm_at_rate) // 2).astype(np.float32))
        if level > self._out_now:
            self._out_now = level

    def sent_db(self) -> float:
        """The loudest frame we sent within the echo window."""
        return max(max(self._out_levels), self._out_now)

    def echo_threshold_db(self) -> float:
        """The caller level that our recent outgoing audio could not explain."""
        return self.sent_db() - self.echo_margin_db

    def incoming(self, pcm_at_rate: bytes | bytearray) -> bool:
        """A caller frame (20 ms PCM16 LE at `rate`) -> True while speech is detected."""
        samples = np.frombuffer(pcm_at_rate, dtype="<i2", count=len(pcm_at_rate) // 2)
        x = samples.astype(np.float32)
        level = level_db(x) if len(x) else _SILENT_DB
        voiced = level > self.floor_dbfs and self._voiced(samples, x, level)
        sent_db = self.sent_db()
        threshold_db = sent_db - self.echo_margin_db
        above_echo = level > threshold_db
        sign_db = min(sent_db + self.echo_return_db + SIGN_SAFETY_DB, threshold_db)
        self.heard_caller = voiced and level > sign_db
        if sent_db > self.floor_dbfs and not self.speaking and not above_echo:
            # We talk and the gate takes this for our echo (or noise, or a caller too soft to count): its
            # ratio to what we sent is the return the sign must clear. A soft caller only raises it (safe).
            ratio = level - sent_db
            if ratio > self.echo_return_db:
                self.echo_return_db = ratio
            elif self._out_now > sent_db - STEADY_DB and sent_db + self.echo_return_db > self.floor_dbfs:
                self.echo_return_db = max(ratio, self.echo_return_db - RETURN_DECAY_DB, RETURN_FLOOR_DB)
        self._advance_echo_window()
        return self._step(voiced, above_echo)

    def absent(self) -> bool:
        """A caller frame that never came: a silent caller whose phone (or a Local channel) sends nothing. It
        counts as an unvoiced frame, so the gate closes as if silence had been sent."""
        self.heard_caller = False
        self._advance_echo_window()
        return self._step(False, False)

    def _step(self, voiced: bool, above_echo: bool) -> bool:
        if self.speaking:
            if voiced:
                self._gap = 0
            else:
                self._gap += 1
                if self._gap >= self.hang_frames:
                    self.speaking = False
                    self._speech_run = self._burst_run = 0
                    self._burst_counted = False
            return self.speaking

        if not voiced:
            self._speech_run = 0
            self._gap += 1
            if self._gap >= self.hang_frames:  # the burst is over (short gaps inside one are bridged)
                self._burst_run = 0
                self._burst_counted = False
            return False
        self._gap = 0
        self._burst_run += 1
        self._speech_run = self._speech_run + 1 if above_echo else 0
        if self._speech_run >= self.start_frames:
            self.speaking = True
            self.speech_starts += 1
            return True
        if not above_echo and self._burst_run >= self.start_frames and not self._burst_counted:
            self.closures += 1  # a burst that would have opened the gate, held shut as our own echo
            self._burst_counted = True
        return False

    def _voiced(self, samples: np.ndarray, x: np.ndarray, level: float) -> bool:
        if self._vad is None:
            return self._energy_vad.voiced(level)
        if self.rate == 24000:
            whole = len(x) - len(x) % 3
            # np.dot, not `@`: the same float32 result, in half the call overhead (per caller frame).
            view = np.dot((x if whole == len(x) else x[:whole]).reshape(-1, 3), _THIRDS)
            data = view.astype("<i2").tobytes()
        else:
            data = samples.astype("<i2", copy=False).tobytes()
        if len(data) not in (self._vad_rate // 50 * 2, self._vad_rate // 100 * 2, self._vad_rate * 3 // 100 * 2):
            return self._energy_vad.voiced(level)  # webrtcvad takes 10/20/30 ms frames only
        return self._vad.is_speech(data, self._vad_rate)

    def _advance_echo_window(self) -> None:
        levels = self._out_levels
        self._slot = (self._slot + 1) % len(levels)
        levels[self._slot] = self._out_now
        self._out_now = _SILENT_DB
