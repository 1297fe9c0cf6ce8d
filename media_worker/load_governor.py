"""The capacity a media worker advertises, from what it measures: its playout clock's lateness and its CPU.

Sans-I/O: fed once a second with cumulative readings (the lag histogram's bucket counts, the process's CPU
seconds, a monotonic time), it judges the last `window_s` seconds and returns the number of calls the worker
should advertise. The controller's admission script already admits only below a worker's `capacity`, so
advertising fewer calls is all it takes to send new calls elsewhere (or make them wait) before the audio of the
calls in progress degrades. Calls in progress are never cut: the figure never goes below the active count.

- OVERLOADED: the window's tick lag p99 is over its limit: the audio is at risk now; no new calls.
- SATURATED: the CPU is the constraint: past half its limit, at the CPU each call costs (the idle load left
  out), the configured capacity would take the process over its CPU limit; the figure is what fits (no new
  calls once over the limit).
- OK: neither; the configured capacity.

Lowering is immediate; raising waits for `recover_s` windows in a row that allow it (then to the lowest figure
those windows allowed), so a worker near its limit does not flap between taking and refusing calls.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from media_worker.audio.lag import quantile_of_counts


# The CPU headroom estimate is made once the CPU is at least this share of its limit: from fewer calls the
# per-call figure is mostly noise, and there is room for as many calls again, re-judged every second.
ESTIMATE_FROM = 0.5


class LoadState(enum.Enum):
    OK = "ok"
    SATURATED = "saturated"
    OVERLOADED = "overloaded"


@dataclass(frozen=True)
class GovernorLimits:
    max_tick_lag_p99_ms: float
    max_cpu_percent: float  # of one core: the event loop runs on one
    window_s: int  # readings are judged over this many seconds
    recover_s: int  # windows in a row that allow more calls before the figure is raised


@dataclass(frozen=True)
class Reading:
    """Cumulative figures at one moment: the lag histogram's bucket counts, CPU seconds used, monotonic seconds."""

    lag_counts: tuple[int, ...]
    cpu_s: float
    wall_s: float


@dataclass(frozen=True)
class Window:
    """What one window measured: its wakeups' tick lag p99, and the CPU share of the process over it."""

    lag_p99_ms: float
    cpu_percent: float


def window_between(old: Reading, new: Reading, lag_buckets: tuple[float, ...], lag_max_ms: float) -> Window:
    """The window from `old` to `new`. A wakeup later than the last bucket counts as `lag_max_ms` late."""
    counts = [n - o for n, o in zip(new.lag_counts, old.lag_counts, strict=True)]
    wall = new.wall_s - old.wall_s
    cpu = 100.0 * (new.cpu_s - old.cpu_s) / wall if wall > 0 else 0.0
    return Window(lag_p99_ms=quantile_of_counts(lag_buckets, counts, 0.99, lag_max_ms), cpu_percent=cpu)


@dataclass(frozen=True)
class Decision:
    """The figure to advertise, the state it comes from, and why (for the log and `voice-agent status`)."""

    advertised: int
    state: LoadState
    reason: str


class LoadGovernor:
    def __init__(self, configured: int, limits: GovernorLimits) -> None:
        self.configured = configured
        self.limits = limits
        self.decision = Decision(configured, LoadState.OK, "")
        self.cpu_percent: float | None = None  # the last window's, for the metric
        self._readings: deque[tuple[Reading, int]] = deque(maxlen=limits.window_s + 1)  # with the active count
        self._idle_cpu_percent = 0.0  # the process's own work (heartbeats, metrics, prewarmed sessions)
        self._raise_streak = 0  # windows in a row whose figure is above the one advertised
        self._streak_lowest: Decision | None = None

    def observe(self, reading: Reading, active: int, lag_buckets: tuple[float, ...], lag_max_ms: float) -> Decision:
        """Add this second's reading; judge the window that ends with it (none until two readings are in)."""
        self._readings.append((reading, active))
        if len(self._readings) < 2:
            return self.decide(None, active)
        window = window_between(self._readings[0][0], reading, lag_buckets, lag_max_ms)
        self.cpu_percent = window.cpu_percent
        return self.decide(window, active, idle=all(calls == 0 for _, calls in self._readings))

    def decide(self, window: Window | None, active: int, idle: bool = False) -> Decision:
        """The figure after one window (None: nothing measured yet; `idle`: no call at any reading of it), with
        the hysteresis applied."""
        target = self._target(window, active, idle) if window is not None else self._ok()
        current = self.decision
        if target.advertised < current.advertised or _worse(target.state, current.state):
            self._raise_streak, self._streak_lowest = 0, None
            self.decision = target
        elif target.advertised > current.advertised or target.state != current.state:
            lowest = self._streak_lowest
            self._streak_lowest = target if lowest is None or target.advertised < lowest.advertised else lowest
            self._raise_streak += 1
            if self._raise_streak >= self.limits.recover_s:
                self.decision = self._streak_lowest
                self._raise_streak, self._streak_lowest = 0, None
        else:
            self._raise_streak, self._streak_lowest = 0, None
            self.decision = target  # the same figure; the reason carries this window's measurement
        if self.decision.advertised < active:  # admitted before the lower figure was seen: never cut a call
            self.decision = Decision(active, self.decision.state, self.decision.reason)
        return self.decision

    def _ok(self) -> Decision:
        return Decision(self.configured, LoadState.OK, "")

    def _target(self, window: Window, active: int, idle: bool) -> Decision:
        limits = self.limits
        if window.lag_p99_ms > limits.max_tick_lag_p99_ms:
            reason = f"tick lag p99 {window.lag_p99_ms:g} ms > {limits.max_tick_lag_p99_ms:g} ms"
            return Decision(active, LoadState.OVERLOADED, reason)
        if idle:
            # What the process spends with no call (heartbeats, metrics, prewarmed sessions): left out of the
            # per-call cost, so a few calls are not charged the whole idle load.
            self._idle_cpu_percent = window.cpu_percent
        if window.cpu_percent > limits.max_cpu_percent:
            return Decision(active, LoadState.SATURATED, self._cpu_reason(window))
        if window.cpu_percent < ESTIMATE_FROM * limits.max_cpu_percent:
            return self._ok()
        base = min(self._idle_cpu_percent, window.cpu_percent)
        per_call = (window.cpu_percent - base) / active if active else 0.0
        fits = math.floor((limits.max_cpu_percent - base) / per_call) if per_call > 0 else self.configured
        if fits < self.configured:  # the CPU would run out before the configured capacity is reached
            return Decision(max(active, fits), LoadState.SATURATED, self._cpu_reason(window) + f": fits {fits} calls")
        return self._ok()

    def _cpu_reason(self, window: Window) -> str:
        return f"CPU {window.cpu_percent:.0f}% (limit {self.limits.max_cpu_percent:g}%)"


_SEVERITY = {LoadState.OK: 0, LoadState.SATURATED: 1, LoadState.OVERLOADED: 2}


def _worse(a: LoadState, b: LoadState) -> bool:
    return _SEVERITY[a] > _SEVERITY[b]
