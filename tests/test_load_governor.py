"""The media worker's load governor (media_worker/load_governor.py) on plain numbers: the thresholds, the CPU
headroom estimate, the hysteresis, never below the calls in progress, never above the configured capacity."""

from __future__ import annotations

import pytest

from media_worker.audio.lag import BUCKETS_MS, LagHistogram, quantile_of_counts
from media_worker.load_governor import GovernorLimits, LoadGovernor, LoadState, Reading, Window, window_between
from shared import metrics
from shared.config import ConfigError
from shared.config.load import parse_config
from shared.config.schema import WorkerAdmission
from tests.conftest import TEST_API_KEY

LIMITS = GovernorLimits(max_tick_lag_p99_ms=10.0, max_cpu_percent=80.0, window_s=5, recover_s=3)
CALM = Window(lag_p99_ms=1.0, cpu_percent=5.0)


def governor(configured: int = 200, **limits) -> LoadGovernor:
    return LoadGovernor(configured, GovernorLimits(**{**LIMITS.__dict__, **limits}))


def test_under_the_limits_the_configured_capacity_is_advertised():
    gov = governor()
    decision = gov.decide(Window(lag_p99_ms=5.0, cpu_percent=60.0), active=150)
    assert (decision.advertised, decision.state, decision.reason) == (200, LoadState.OK, "")


def test_tick_lag_over_its_limit_takes_no_new_call_at_once():
    gov = governor()
    decision = gov.decide(Window(lag_p99_ms=20.0, cpu_percent=30.0), active=12)
    assert (decision.advertised, decision.state) == (12, LoadState.OVERLOADED)
    assert decision.reason == "tick lag p99 20 ms > 10 ms"
    # At the limit is not over it.
    assert governor().decide(Window(lag_p99_ms=10.0, cpu_percent=30.0), active=12).state is LoadState.OK


def test_cpu_over_its_limit_takes_no_new_call():
    decision = governor().decide(Window(lag_p99_ms=1.0, cpu_percent=95.0), active=30)
    assert (decision.advertised, decision.state) == (30, LoadState.SATURATED)
    assert decision.reason == "CPU 95% (limit 80%)"


def test_an_idle_worker_over_its_cpu_limit_advertises_nothing():
    decision = governor().decide(Window(lag_p99_ms=1.0, cpu_percent=90.0), active=0, idle=True)
    assert (decision.advertised, decision.state) == (0, LoadState.SATURATED)


def test_the_cpu_headroom_estimate_leaves_the_idle_load_out():
    gov = governor()
    gov.decide(Window(lag_p99_ms=1.0, cpu_percent=10.0), active=0, idle=True)  # the process's own: 10 %
    # 20 calls at 50 %: 2 % a call on top of the idle 10 %; (80 - 10) / 2 = 35 calls fit.
    decision = gov.decide(Window(lag_p99_ms=1.0, cpu_percent=50.0), active=20)
    assert (decision.advertised, decision.state) == (35, LoadState.SATURATED)
    assert decision.reason == "CPU 50% (limit 80%): fits 35 calls"


def test_below_half_the_cpu_limit_no_estimate_is_made():
    gov = governor()
    gov.decide(Window(lag_p99_ms=1.0, cpu_percent=0.0), active=0, idle=True)
    # 3 calls at 6 %: 26 would fit by the per-call figure, but three calls say little; 6 % < 40 %.
    assert gov.decide(Window(lag_p99_ms=1.0, cpu_percent=6.0), active=3).advertised == 200
    assert gov.decide(Window(lag_p99_ms=1.0, cpu_percent=40.0), active=20).advertised == 40  # from half on


def test_never_above_the_configured_capacity():
    gov = governor(configured=30)
    gov.decide(Window(lag_p99_ms=1.0, cpu_percent=0.0), active=0, idle=True)
    # 20 calls at 40 %: 2 % a call, 40 would fit: the configured 30 is the figure, and the state is OK.
    decision = gov.decide(Window(lag_p99_ms=1.0, cpu_percent=40.0), active=20)
    assert (decision.advertised, decision.state) == (30, LoadState.OK)


def test_never_below_the_calls_in_progress():
    gov = governor()
    assert gov.decide(Window(lag_p99_ms=50.0, cpu_percent=30.0), active=8).advertised == 8
    # Two more were admitted before the lower figure reached Redis: they are kept, and counted.
    assert gov.decide(Window(lag_p99_ms=50.0, cpu_percent=30.0), active=10).advertised == 10
    # Calls ending while overloaded lower the figure with them: still no new call.
    assert gov.decide(Window(lag_p99_ms=50.0, cpu_percent=30.0), active=6).advertised == 6


def test_raising_again_waits_for_recover_s_good_windows_in_a_row():
    gov = governor()  # recover_s = 3
    gov.decide(Window(lag_p99_ms=20.0, cpu_percent=30.0), active=5)
    assert [gov.decide(CALM, active=5).advertised for _ in range(2)] == [5, 5]
    # A bad window in between starts the count again.
    assert gov.decide(Window(lag_p99_ms=20.0, cpu_percent=30.0), active=5).state is LoadState.OVERLOADED
    states = [gov.decide(CALM, active=5).state for _ in range(3)]
    assert states == [LoadState.OVERLOADED, LoadState.OVERLOADED, LoadState.OK]
    assert gov.decision.advertised == 200


def test_a_raise_goes_to_the_lowest_figure_of_the_good_windows():
    gov = governor(recover_s=3)
    gov.decide(Window(lag_p99_ms=1.0, cpu_percent=0.0), active=0, idle=True)
    gov.decide(Window(lag_p99_ms=20.0, cpu_percent=40.0), active=10)  # overloaded at 10
    # Then windows that would allow 20 calls (CPU 40 %), 16 (50 %), the configured 200 (20 %: under half the
    # limit): raised once, to the lowest, 16.
    figures = [gov.decide(Window(lag_p99_ms=1.0, cpu_percent=cpu), active=10).advertised for cpu in (40, 50, 20)]
    assert figures == [10, 10, 16] and gov.decision.state is LoadState.SATURATED


def test_lowering_is_immediate_and_does_not_flap_back_up():
    gov = governor(recover_s=3)
    gov.decide(Window(lag_p99_ms=1.0, cpu_percent=0.0), active=0, idle=True)
    # Noise: 20 calls at 40 % (40 fit), then 80 % (20 fit), and again: the figure stays at 20.
    figures = [gov.decide(Window(lag_p99_ms=1.0, cpu_percent=cpu), active=20).advertised for cpu in (40, 80, 40, 80)]
    assert figures == [40, 20, 20, 20]


def test_window_between_two_readings():
    old = Reading(lag_counts=(100, 0, 0), cpu_s=10.0, wall_s=100.0)
    # 100 wakeups in the window, two of them over the last bound (as late as the histogram's max, 40 ms).
    new = Reading(lag_counts=(150, 48, 2), cpu_s=10.5, wall_s=102.0)
    window = window_between(old, new, (1.0, 5.0), lag_max_ms=40.0)
    assert window == Window(lag_p99_ms=40.0, cpu_percent=25.0)
    assert window_between(old, old, (1.0, 5.0), 40.0) == Window(lag_p99_ms=0.0, cpu_percent=0.0)


def test_observe_judges_the_last_window_s_seconds_of_the_lag_histogram():
    gov = governor(window_s=2, recover_s=1)
    lag = LagHistogram()

    def second(late_ms: float, t: int, active: int = 3):
        for _ in range(50):
            lag.observe(late_ms)
        reading = Reading(lag_counts=tuple(lag.counts), cpu_s=0.1 * t, wall_s=float(t))
        return gov.observe(reading, active, lag.buckets, lag.max)

    assert second(0.2, 0).state is LoadState.OK  # nothing to judge yet
    assert second(0.2, 1).state is LoadState.OK
    assert second(30.0, 2).state is LoadState.OVERLOADED
    # The late second stays in the 2 s window for two more readings, then leaves it.
    assert [second(0.2, t).state for t in (3, 4)] == [LoadState.OVERLOADED, LoadState.OK]
    assert gov.cpu_percent == pytest.approx(10.0)


def test_quantile_of_counts_is_the_histograms_quantile():
    lag = LagHistogram()
    for ms in [0.1] * 97 + [6.0, 12.0, 2000.0]:
        lag.observe(ms)
    assert lag.quantile(0.99) == quantile_of_counts(BUCKETS_MS, lag.counts, 0.99, lag.max) == 20.0
    assert quantile_of_counts(BUCKETS_MS, lag.counts, 1.0, lag.max) == 2000.0
    assert quantile_of_counts(BUCKETS_MS, [0] * len(lag.counts), 0.99, lag.max) == 0.0


def test_the_metric_labels_are_the_states():
    assert tuple(state.value for state in LoadState) == metrics.LOAD_STATES


def test_config_admission_keys():
    def media_worker(text: str):
        return parse_config(text, "test.yaml", {"OPENAI_API_KEY": TEST_API_KEY}).config.media_worker

    assert media_worker("{}\n").admission == WorkerAdmission()  # on by default
    settings = media_worker("media_worker:\n  admission: {max_cpu_percent: 50, recover_s: 20}\n")
    assert settings.admission == WorkerAdmission(max_cpu_percent=50.0, recover_s=20)
    assert media_worker("media_worker:\n  admission: {enabled: false}\n").admission.enabled is False
    with pytest.raises(ConfigError) as info:
        parse_config("media_worker:\n  admission: {max_cpu_percent: 150}\n", "test.yaml", {})
    assert "media_worker.admission.max_cpu_percent" in str(info.value), str(info.value)
