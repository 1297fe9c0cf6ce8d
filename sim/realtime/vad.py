"""Server VAD from audio energy, deterministic, on the session's input clock (ms of audio appended).

`threshold` (0–1) maps to an RMS gate in dBFS: gate = -70 + 60 × threshold, so the default 0.5 is
-40 dBFS. Audio is judged in 10 ms windows. A turn starts at the first voiced window and is reported at
`onset − prefix_padding_ms`; it ends once `silence_duration_ms` of unvoiced audio follows the last voiced
window, reported at `last voiced + silence_duration_ms` (as the real server counts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_MS = 10


def gate_dbfs(threshold: float) -> float:
    return -70.0 + 60.0 * threshold


@dataclass
class VadEvent:
    kind: str  # "started" | "stopped"
    ms: int  # audio_start_ms or audio_end_ms


class EnergyVad:
    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int, rate: int,
                 start_ms: int = 0):
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.window = rate * WINDOW_MS // 1000
        gate = 10 ** (gate_dbfs(threshold) / 20) * 32768
        self.gate_sq = gate * gate * self.window  # compare sums of squares: no sqrt or division per window
        self.speaking = False
        self.onset_ms = 0
        self.last_voiced_end_ms = 0
        self._rest = np.zeros(0, dtype=np.int16)
        self._clock_ms = start_ms  # start of the next window, on the session input clock

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        if len(self._rest):
            samples = np.concatenate([self._rest, samples])
        whole = len(samples) // self.window * self.window
        self._rest = samples[whole:].copy()
        if not whole:
            return []
        frames = samples[:whole].astype(np.float64).reshape(-1, self.window)
        voiced = np.einsum("ij,ij->i", frames, frames) > self.gate_sq
        out: list[VadEvent] = []
        for is_voiced in voiced:
            start, end = self._clock_ms, self._clock_ms + WINDOW_MS
            if is_voiced:
                if not self.speaking:
                    self.speaking = True
                    self.onset_ms = start
                    out.append(VadEvent("started", max(0, start - self.prefix_padding_ms)))
                self.last_voiced_end_ms = end
            elif self.speaking and end - self.last_voiced_end_ms >= self.silence_duration_ms:
                self.speaking = False
                out.append(VadEvent("stopped", self.last_voiced_end_ms + self.silence_duration_ms))
            self._clock_ms = end
        return out
