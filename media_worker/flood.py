"""A media peer that sends caller audio faster than real time, for long: a broken or hostile peer, not jitter.

Asterisk sends one 20 ms frame every 20 ms; after a network hiccup it may send a backlog at once, which is
why a burst is allowed. A peer that keeps sending more than FLOOD_RATIO times real time for FLOOD_SECONDS
checks in a row is flooding: the call is ended (`media_flood`), the normal end path, and the worker stops
spending CPU and memory on it. Until then the uplink's bound (uplink.py) keeps memory flat.

Sans-I/O: the frame path only adds the bytes it received to a plain int (`CallAudio.bytes_in`); `check` runs
once a second, on the worker's 1 s tick, with the clock passed in.
"""

from __future__ import annotations

FLOOD_RATIO = 2.0  # more than twice real time ...
FLOOD_SECONDS = 3  # ... for this many one-second checks in a row (a backlog after a stall lasts less)


class FloodGuard:
    def __init__(self) -> None:
        self._bytes = 0  # bytes_in at the last check
        self._at: float | None = None  # when that was (monotonic seconds); None before the first check
        self._over = 0  # checks in a row above FLOOD_RATIO
        self.peak_ratio = 0.0  # the highest rate seen, in times real time (for the log)

    def check(self, bytes_in: int, bytes_per_ms: float, now: float) -> bool:
        """True once the peer has sent more than FLOOD_RATIO × real time for FLOOD_SECONDS checks in a row.
        `bytes_in`: caller audio received so far (wire bytes); `bytes_per_ms`: of the wire format."""
        last_bytes, last_at = self._bytes, self._at
        self._bytes, self._at = bytes_in, now
        if last_at is None or now <= last_at or bytes_per_ms <= 0:
            return False
        ratio = (bytes_in - last_bytes) / bytes_per_ms / ((now - last_at) * 1000)
        self.peak_ratio = max(self.peak_ratio, ratio)
        self._over = self._over + 1 if ratio > FLOOD_RATIO else 0
        return self._over >= FLOOD_SECONDS
