"""The playout clock's lateness reaches /metrics as cumulative buckets, a max and the skipped slots, so a
benchmark can take the lag percentiles over its own window (two scrapes) rather than the process's life."""

from __future__ import annotations

from media_worker.audio.playout import PlayoutClock
from media_worker.service import publish_lag
from shared.metrics import LATE_TICKS, TICK_LAG, TICK_LAG_MAX, TICK_LAG_WAKEUPS


def gauge(metric, **labels: str) -> float:
    for family in metric.collect():
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {labels} in {metric}")


def test_publish_lag_exports_every_bucket_the_max_and_late_ticks():
    clock = PlayoutClock()
    for ms in (0.1, 0.4, 0.4, 3.5, 12.0):
        clock.run_due(now=1.0 + ms / 1000, deadline=1.0)
    clock.late_ticks = 2
    publish_lag(clock)
    assert gauge(TICK_LAG_WAKEUPS, le_ms="0.25") == 1
    assert gauge(TICK_LAG_WAKEUPS, le_ms="0.5") == 3
    assert gauge(TICK_LAG_WAKEUPS, le_ms="4") == 4
    assert gauge(TICK_LAG_WAKEUPS, le_ms="10") == 4
    assert gauge(TICK_LAG_WAKEUPS, le_ms="20") == 5
    assert gauge(TICK_LAG_WAKEUPS, le_ms="+Inf") == 5
    assert abs(gauge(TICK_LAG_MAX) - 12.0) < 1e-6
    assert gauge(LATE_TICKS) == 2
    assert gauge(TICK_LAG) == 20.0  # the p99's bucket bound, as before
