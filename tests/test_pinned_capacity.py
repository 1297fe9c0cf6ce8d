"""bench/pinned_capacity.py's arithmetic: the lag percentiles of a window from two scrapes of the worker's
cumulative buckets, and each core's busy share from /proc/stat."""

from __future__ import annotations

import os

from bench import pinned_capacity as pc
from media_worker.audio.lag import LagHistogram


def scrape(hist: LagHistogram) -> list:
    """What the worker's /metrics says of `hist` (shared/metrics.py's gauges, parsed)."""
    out = [
        ("va_playout_tick_lag_wakeups", {"le_ms": "+Inf" if le == float("inf") else f"{le:g}"}, float(n))
        for le, n in hist.cumulative()
    ]
    return [*out, ("va_playout_tick_lag_max_ms", {}, hist.max)]


def test_window_lag_counts_only_the_wakeups_between_the_scrapes():
    hist = LagHistogram()
    for _ in range(1000):
        hist.observe(30.0)  # the ramp: late wakeups that must not count in the hold
    first = scrape(hist)
    for _ in range(990):
        hist.observe(0.3)
    for _ in range(10):
        hist.observe(4.5)
    lag = pc.window_lag(first, scrape(hist))
    assert lag == {"wakeups": 1000, "p50_ms": 0.5, "p99_ms": 0.5, "max_ms": 5.0, "wakeups_over_5ms": 0}
    hist.observe(2000.0)  # past the last bound: the max is the worker's own
    lag = pc.window_lag(first, scrape(hist))
    assert lag["max_ms"] == 2000.0 and lag["p99_ms"] == 5.0 and lag["wakeups_over_5ms"] == 1


def test_window_lag_without_wakeups_says_so():
    first = scrape(LagHistogram())
    assert pc.window_lag(first, first)["p99_ms"] is None


def test_core_busy_share_from_proc_stat():
    now = pc.core_jiffies()
    assert set(now) == set(range(os.cpu_count() or 1))
    before = pc.Sample(0.0, 0.0, 0.0, {0: (100, 1000)}, [])
    after = pc.Sample(1.0, 0.0, 0.0, {0: (150, 1100)}, [])
    assert pc.core_busy_pct(before, after, 0) == 50.0


def test_top_functions_from_collapsed_stacks():
    collapsed = (
        "<module> (cli.py:1);run (playout.py:230);tick (calls.py:10) 6\n"
        "<module> (cli.py:1);run (playout.py:231);encode (protocol.py:5) 3\n"
        'process 1:"python";<module> (cli.py:1);EpollSelector.select (selectors.py:9) 10\n'
        "<module> (cli.py:1);write (selector_events.py:3) 1\n"
    )
    top = pc.top_functions(collapsed, 3)
    assert top["samples"] == 10 and top["idle_pct"] == 50.0  # the selector's wait is idle, not work
    assert top["self"] == [
        ("tick (calls.py)", 60.0),
        ("encode (protocol.py)", 30.0),
        ("write (selector_events.py)", 10.0),
    ]
    assert top["inclusive"][:2] == [("<module> (cli.py)", 100.0), ("run (playout.py)", 90.0)]
