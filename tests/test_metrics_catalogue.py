"""The metrics catalogue, the usage/cost arithmetic behind the cost metrics, and `advertise_host: auto`."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from media_worker.usage import CallUsage, charge, tokens
from shared import loop_lag, metrics
from shared.config.schema import Pricing
from shared.netaddr import local_address_towards, resolve_advertise_host

# Closed sets only: a call id, channel or phone number must never become a label.
ALLOWED_LABELS = {
    "reason",
    "kind",
    "tool",
    "status",
    "code",
    "cause",
    "source",
    "limit",
    "state",
    "queue",
    "task",
    "method",
    "type",
    "action",
    "stream",  # worker_inbox | controller_inbox, never a key
    "calls",  # va_worker_deaths_total: with_calls | idle
    "outcome",  # va_call_takeovers_total: moved | fallback
    "le_ms",  # va_playout_tick_lag_wakeups: the lag histogram's 15 fixed bucket bounds
}


def test_every_metric_is_prefixed_and_labelled_with_closed_sets():
    cat = metrics.catalogue()
    assert len(cat) == len(metrics.COMMON) + sum(len(g) for g in metrics.ROLES.values())  # no name twice
    for name, (_kind, _role, labels) in cat.items():
        assert name.startswith("va_"), name
        assert set(labels) <= ALLOWED_LABELS, (name, labels)


def test_each_role_exports_the_common_metrics_and_only_its_own():
    exported = {}
    for role, group in metrics.ROLES.items():
        registry = CollectorRegistry()
        for metric in metrics.COMMON + group:
            registry.register(metric)
        exported[role] = generate_latest(registry).decode()
    assert "va_turn_latency_seconds_bucket" in exported["media-worker"]
    assert "va_turn_latency_seconds" not in exported["controller"]
    assert "va_calls_rejected_total" not in exported["media-worker"]
    assert "va_tool_jobs_total" not in exported["controller"]
    assert all("va_event_loop_lag_seconds_count" in text for text in exported.values())
    assert all("va_process_asyncio_tasks " in text for text in exported.values())  # the soak's leaked-task figure


async def test_loop_tick_counts_the_tasks_on_the_loop(monkeypatch):
    monkeypatch.setattr(loop_lag, "INTERVAL_S", 0.001)  # the tick's pace, not what it records
    asleep = [asyncio.create_task(asyncio.sleep(60)) for _ in range(7)]
    watcher = asyncio.create_task(loop_lag.watch())
    try:
        await _tick()
        assert metrics.ASYNCIO_TASKS._value.get() == len(asyncio.all_tasks())  # this test, the watcher, 7 sleepers
        for task in asleep:
            task.cancel()
        await asyncio.gather(*asleep, return_exceptions=True)
        await _tick()
        assert metrics.ASYNCIO_TASKS._value.get() == 2  # ended tasks are not counted
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _tick() -> None:
    """Until the watcher has run one more tick (each tick observes the lag histogram once)."""
    seen = metrics.LOOP_LAG._sum.get(), _lag_count()
    async with asyncio.timeout(5):
        while (metrics.LOOP_LAG._sum.get(), _lag_count()) == seen:
            await asyncio.sleep(0.001)


def _lag_count() -> float:
    return sum(bucket.get() for bucket in metrics.LOOP_LAG._buckets)


def test_register_is_idempotent():
    metrics.register("media-worker")
    metrics.register("media-worker")  # a second registration would raise "Duplicated timeseries"


USAGE = {  # the shape of a GA response.done usage
    "total_tokens": 1900,
    "input_tokens": 1500,
    "output_tokens": 400,
    "input_token_details": {
        "text_tokens": 1000,
        "audio_tokens": 500,
        "image_tokens": 0,
        "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 576, "audio_tokens": 64, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 300},
}


def test_tokens_by_kind():
    assert tokens(USAGE) == {
        "input_text": 1000,
        "input_audio": 500,
        "input_cached": 640,
        "output_text": 100,
        "output_audio": 300,
    }
    assert tokens(None) == dict.fromkeys(tokens(USAGE), 0)
    assert tokens({"input_token_details": "junk", "output_token_details": {"audio_tokens": -5}})["output_audio"] == 0


def test_cost_bills_cached_input_at_the_cached_price():
    prices = Pricing(
        text_input=4, text_cached_input=0.4, text_output=16, audio_input=32, audio_cached_input=0.4, audio_output=64
    )
    expected = ((1000 - 576) * 4 + 576 * 0.4 + (500 - 64) * 32 + 64 * 0.4 + 100 * 16 + 300 * 64) / 1e6
    assert charge(USAGE, prices) == (tokens(USAGE), pytest.approx(expected))
    # without the split, cached tokens are taken from the text first
    no_split = {**USAGE, "input_token_details": {**USAGE["input_token_details"], "cached_tokens_details": None}}
    assert charge(no_split, prices)[1] == pytest.approx(
        ((1000 - 640) * 4 + 640 * 0.4 + 500 * 32 + 100 * 16 + 300 * 64) / 1e6
    )
    assert charge({}, prices)[1] == 0.0 and charge(None, prices)[1] == 0.0


def test_call_usage_adds_up_responses():
    call = CallUsage(Pricing())
    call.add(USAGE)
    spent, cost = call.add(USAGE)
    assert call.totals["output_audio"] == 600 and spent["output_audio"] == 300
    assert call.cost == pytest.approx(2 * cost) and call.responses == 2


async def test_advertise_auto_is_the_address_routing_towards_redis():
    assert await local_address_towards("127.0.0.1") == "127.0.0.1"
    assert await resolve_advertise_host("auto", "redis://127.0.0.1:6379/0") == "127.0.0.1"
    assert await resolve_advertise_host("10.1.2.3", "redis://127.0.0.1:6379/0") == "10.1.2.3"
    with pytest.raises(OSError):
        await resolve_advertise_host("auto", "redis://no-such-host.invalid:6379/0")
