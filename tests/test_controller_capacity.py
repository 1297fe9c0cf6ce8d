"""bench/controller_capacity.py's arithmetic and its rows in bench/run_all.py: the event-loop lag of a window
from two scrapes of the controller's cumulative histogram, and the verdicts set beside the figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import controller_capacity as cc
from bench import run_all
from shared.metrics import LOOP_LAG
from sim.loadtest_report import parse_metrics


def lag_histogram() -> tuple[Histogram, CollectorRegistry]:
    """A histogram with the buckets of the controller's `va_event_loop_lag_seconds`, in a registry of its own."""
    registry = CollectorRegistry()
    bounds = tuple(b for b in LOOP_LAG._upper_bounds if b != float("inf"))
    return Histogram("va_event_loop_lag_seconds", "lag", buckets=bounds, registry=registry), registry


def scrape(registry: CollectorRegistry) -> list:
    return parse_metrics(generate_latest(registry).decode())


def test_lag_window_counts_only_the_observations_between_the_scrapes():
    hist, registry = lag_histogram()
    for _ in range(50):
        hist.observe(0.3)  # before the run: must not count
    first = scrape(registry)
    for _ in range(98):
        hist.observe(0.0008)
    hist.observe(0.004)
    hist.observe(0.04)
    lag = cc.lag_window(first, scrape(registry))
    assert lag == {"observations": 100, "p50_ms": 1.0, "p99_ms": 5.0, "max_ms": 50.0}


def test_lag_window_without_observations_says_so():
    _, registry = lag_histogram()
    first = scrape(registry)
    assert cc.lag_window(first, first)["p99_ms"] is None


def figures(**changes) -> dict:
    d = {
        "calls": 200,
        "ramp_s": 10.0,
        "hold_s": 10.0,
        "set_up": 200,
        "not_connected": 0,
        "left_active": 0,
        "events": 4600,
        "events_per_s": 230.0,
        "events_per_call": 23.0,
        "requests_per_call": 7.0,
        "request_errors": 0,
        "cpu_ms_per_call": 7.0,
        "cpu_us_per_event": 304.0,
        "controller_core_pct": 7.0,
        "runqueue_wait_pct": 2.8,
        "setup_ms": {"n": 200, "p50": 3.7, "p95": 6.6, "p99": 10.0, "max": 10.8},
        "loop_lag": {"observations": 40, "p50_ms": 1.0, "p99_ms": 2.5, "max_ms": 2.5},
        "rss_mb_idle": 53.1,
        "rss_mb_peak": 54.6,
        "core0_busy_pct": 42.4,
        "core1_busy_pct": 45.5,
    }
    return {**d, **changes}


def test_controller_rows_judge_setup_and_lag():
    rows = run_all.controller_rows(run_all.Run("controller_capacity", [], data=figures()))
    assert [r[3] for r in rows] == ["met", "figure only", "figure only", "met"]
    late = figures(
        not_connected=3, set_up=197, loop_lag={"observations": 40, "p50_ms": 1, "p99_ms": 250.0, "max_ms": 500}
    )
    rows = run_all.controller_rows(run_all.Run("controller_capacity", [], data=late))
    assert rows[0][1] == "197/200 / 3 / 0" and rows[0][3] == "missed"
    assert rows[3][3] == "missed by 2.5×"
    assert run_all.controller_rows(run_all.Run("controller_capacity", [], rc=1))[0][3] == "not measured"
    assert "| 200 / 10 s / 10 s | 200/200 | 4600 (23) | 230 |" in run_all.controller_table(figures())[-1]


def test_pinned_rows_report_the_largest_count_that_passed():
    def one(calls: int, ok: bool, cpu: float) -> dict:
        lag = {"p99_ms": 3.0 if ok else 50.0}
        return {
            "calls": calls,
            "loop": "asyncio",
            "ok": ok,
            "lag": lag,
            "worker_cpu_ms_per_call_s": cpu,
            "underruns": 0,
            "core1_busy_pct": 90.0,
        }

    runs = [one(25, True, 7.6), one(50, True, 2.4), one(100, False, 2.0)]
    rows = run_all.pinned_rows(run_all.Run("pinned_capacity", [], data={"runs": runs}))
    assert rows[0][1] == "50" and rows[0][3] == "missed by 150.0 calls"
    assert [r[3] for r in rows[1:]] == ["CPU missed by 3.0×; the run passed", "met", "CPU met; the run failed"]
    failed = {"calls": 200, "loop": "asyncio", "ok": False, "why": "the cluster did not start"}
    rows = run_all.pinned_rows(run_all.Run("pinned_capacity", [], data={"runs": [failed]}))
    assert rows[0][1] == "none passed" and rows[1][1] == "FAIL: the cluster did not start"
