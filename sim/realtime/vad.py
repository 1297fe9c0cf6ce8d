"""Server VAD from audio energy: deterministic, on the session's input clock (ms of audio appended).

`threshold` (0–1) maps linearly to an RMS gate in dBFS: gate = -70 + 60 × threshold, so 0 is -70 dBFS
(anything but digital silence is speech), the default 0.5 is -40 dBFS, and 1 is -10 dBFS (only shouting).
Audio is judged in 10 ms windows; a window is voiced when its RMS is above the gate. Speech starts after
`MIN_SPEECH_MS` of consecutive voiced windows (a click is not a turn) and is reported at the first of them
minus `prefix_padding_ms`; it stops once `silence_duration_ms` of unvoiced audio follows the last voiced
window, reported at `last voiced + silence_duration_ms`, as the real server counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_MS = 10
MIN_SPEECH_MS = 30


def gate_dbfs(threshold: float) -> float:
    return -70.0 + 60.0 * threshold


@dataclass
class VadEvent:
    kind: str  # "started" | "stopped"
    ms: int  # audio_start_ms or audio_end_ms on the input clock


class EnergyVad:
    def __init__(
        self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int, rate: int, start_ms: float = 0
    ):
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.rate = rate
        self.window = rate * WINDOW_MS // 1000
        gate = 10 ** (gate_dbfs(threshold) / 20) * 32768
        self.gate_sq = gate * gate * self.window  # compare sums of squares: no sqrt or division per window
        self._clock_ms = float(start_ms)  # input-clock time of the next window
        self._rest = np.zeros(0, dtype=np.int16)  # samples short of a whole window
        self.reset()

    def reset(self) -> None:
        """Forget any speech in progress (after a commit or a clear)."""
        self.speaking = False
        self._run = 0  # consecutive voiced windows while not speaking
        self._run_start_ms = 0.0
        self._last_voiced_end_ms = 0.0
        self._clock_ms += len(self._rest) * 1000 / self.rate  # dropped samples still moved the clock
        self._rest = np.zeros(0, dtype=np.int16)

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        if len(self._rest):
            samples = np.concatenate([self._rest, samples])
        whole = len(samples) // self.window * self.window
        self._rest = samples[whole:].copy()
        if not whole:
            return []
        flat = samples[:whole].astype(np.float64)
        if not self.speaking and self._run == 0 and float(np.dot(flat, flat)) <= self.gate_sq:
            # Quiet between turns (most of every call, fed 50 times a second): the whole chunk's energy is
            # under one window's gate, so no window is voiced and only the clock moves.
            for _ in range(whole // self.window):
                self._clock_ms += WINDOW_MS
            return []
        frames = flat.reshape(-1, self.window)
        voiced = np.einsum("ij,ij->i", frames, frames) > self.gate_sq
        out: list[VadEvent] = []
        need = max(1, MIN_SPEECH_MS // WINDOW_MS)
        for is_voiced in voiced.tolist():
            start = self._clock_ms
            end = start + WINDOW_MS
            if is_voiced:
                if not self.speaking:
                    if self._run == 0:
                        self._run_start_ms = start
                    self._run += 1
                    if self._run >= need:
                        self.speaking = True
                        out.append(VadEvent("started", int(max(0.0, self._run_start_ms - self.prefix_padding_ms))))
                self._last_voiced_end_ms = end
            else:
                self._run = 0
                if self.speaking and end - self._last_voiced_end_ms >= self.silence_duration_ms:
                    self.speaking = False
                    out.append(VadEvent("stopped", int(self._last_voiced_end_ms + self.silence_duration_ms)))
            self._clock_ms = end
        return out
