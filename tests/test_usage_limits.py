"""Usage limits against the real Redis: the admission script's caps (sessions and spend per day and month), one
session per call, the seconds added by the release, the media worker's spend counters and the report.
End to end through the processes: tests/test_usage_limit_calls.py."""

from __future__ import annotations

import datetime as dt

import pytest
import redis.asyncio as aioredis

from controller.admission import Admission, Limited, Reserved
from shared.config import ConfigError, load_config
from shared.config.schema import Limits
from shared.keys import Keys
from shared.usage_limits import Cap, SpendBook, parse, periods, read, render
from tests.ari_harness import lease_holder
from tests.conftest import CONFIG
from tests.test_admission import add_worker, plan


@pytest.fixture
async def env(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    await add_worker(client, keys, "w1", 10)
    yield client, keys
    await client.aclose()


def admission(client, keys, limits: Limits) -> Admission:
    return Admission(
        client,
        keys,
        stale_after_ms=3000,
        provider_limit=100,
        queue_timeout_ms=30_000,
        retention_ms=60_000,
        fence=lease_holder(client, keys),
        limits=limits,
    )


async def test_the_sessions_cap_refuses_the_third_call_of_the_day_and_marks_the_crossing_once(env):
    client, keys = env
    adm = admission(client, keys, Limits(sessions_per_day=2))
    assert isinstance(await adm.reserve(plan("c1"), {"context": "demo"}), Reserved)
    assert isinstance(await adm.reserve(plan("c2"), {"context": "demo"}), Reserved)
    assert await adm.reserve(plan("c3"), {}) == Limited(Cap.SESSIONS_PER_DAY, first=True)
    assert await adm.reserve(plan("c4"), {}) == Limited(Cap.SESSIONS_PER_DAY, first=False)  # logged once
    # Refused calls take nothing: no slot, no place in the line, no session counted.
    assert int(await client.hget(keys.worker("w1"), "active")) == 2
    assert await client.zcard(keys.admission_queue) == 0
    day = keys.usage_day(periods(Limits()).day)
    assert await client.hget(day, "sessions") == b"2" and await client.hget(day, "ctx:demo:sessions") == b"2"
    assert 0 < await client.ttl(day) <= 40 * 86_400


async def test_a_call_is_one_session_however_often_it_is_reserved(env):
    client, keys = env
    adm = admission(client, keys, Limits(sessions_per_day=1))
    assert isinstance(await adm.reserve(plan("c1"), {}), Reserved)
    await adm.release("c1", "openai_realtime", "setup_failed")  # a retry on another worker, then a move
    assert isinstance(await adm.reserve(plan("c1"), {}), Reserved)
    await adm.drop_worker("c1")
    assert isinstance(await adm.reserve(plan("c1"), {}, moves=1), Reserved)
    assert await client.hget(keys.usage_day(periods(Limits()).day), "sessions") == b"1"


async def test_spend_recorded_mid_call_refuses_the_next_call_but_not_a_move(env, redis_url):
    client, keys = env
    limits = Limits(spend_per_day_usd=0.05)
    adm = admission(client, keys, limits)
    assert isinstance(await adm.reserve(plan("c1"), {}), Reserved)
    book = SpendBook(client, keys, limits)
    await book.record_spend("demo", 0.03)
    assert isinstance(await adm.reserve(plan("c2"), {}), Reserved)
    await book.record_spend("demo", 0.03)  # c1's next response: the day's cap is crossed while it runs
    assert await adm.reserve(plan("c3"), {}) == Limited(Cap.SPEND_PER_DAY, first=True)
    await adm.drop_worker("c1")  # the call in progress goes on, even on another worker
    assert isinstance(await adm.reserve(plan("c1"), {}, moves=1), Reserved)


async def test_the_monthly_spend_cap_counts_the_whole_month(env):
    client, keys = env
    limits = Limits(spend_per_month_usd=1.0)
    await client.hset(keys.usage_month(periods(limits).month), "spend_usd", "0.99")  # earlier days
    adm = admission(client, keys, limits)
    assert isinstance(await adm.reserve(plan("c1"), {}), Reserved)
    await SpendBook(client, keys, limits).record_spend("demo", 0.02)
    assert await adm.reserve(plan("c2"), {}) == Limited(Cap.SPEND_PER_MONTH, first=True)


async def test_no_caps_no_refusal_and_the_release_adds_the_seconds_the_report_sums(env):
    client, keys = env
    limits = Limits()
    adm = admission(client, keys, limits)
    for call_id, context in (("c1", "sales"), ("c2", "sales"), ("c3", "support")):
        p = plan(call_id)
        p.context = context
        assert isinstance(await adm.reserve(p, {"context": context}), Reserved)
    book = SpendBook(client, keys, limits)
    await book.record_spend("sales", 0.25)
    await book.record_spend("support", 0.5)
    for call_id in ("c1", "c2", "c3"):
        await adm.release(call_id, "openai_realtime", "caller_hangup")
    await adm.release("c1", "openai_realtime", "caller_hangup")  # a second release adds nothing
    report = await read(client, keys, limits)
    today, month = report["today"], report["month"]
    assert isinstance(today, dict) and isinstance(month, dict)
    assert today["sessions"] == month["sessions"] == 3
    assert today["spend_usd"] == pytest.approx(0.75)
    assert today["by_context"]["sales"]["sessions"] == 2 and today["by_context"]["support"]["spend_usd"] == 0.5
    seconds = float(await client.hget(keys.usage_day(periods(limits).day), "seconds"))
    assert 0 <= seconds < 60  # three short calls, each counted once
    assert "Today" in render(report) and "sales: 2 sessions" in render(report)


def test_a_usage_hash_with_junk_reads_as_zero_not_an_exception():
    usage = parse("2026-12", {"sessions": "x", "spend_usd": "1.5", "ctx:a:b:seconds": "60", "crossed:spend": "1"})
    assert usage.total.sessions == 0 and usage.total.spend_usd == 1.5
    assert usage.by_context["a:b"].seconds == 60 and usage.crossed == ["spend"]


def test_day_and_month_follow_the_configured_time_zone():
    late = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC)
    assert periods(Limits(), late).day == "2026-12-31"
    berlin = periods(Limits(timezone="Europe/Berlin"), late)
    assert (berlin.day, berlin.month) == ("2027-01-01", "2027-01")


def test_an_unknown_time_zone_is_a_config_error_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.read_text() + "\nlimits:\n  timezone: Mars/Olympus\n  sessions_per_day: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={"OPENAI_API_KEY": "sk-test"})
    text = str(exc.value)
    assert "limits.sessions_per_day" in text
    path.write_text(CONFIG.read_text() + "\nlimits:\n  timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match=r"limits\.timezone.*unknown time zone 'Mars/Olympus'"):
        load_config(path, env={"OPENAI_API_KEY": "sk-test"})


def test_the_summary_mail_says_the_call_reached_its_time_limit():
    from tool_worker.render import render_summary

    config = load_config(CONFIG, env={"OPENAI_API_KEY": "sk-test"}).config
    body = render_summary({"id": "c1", "end_reason": "time_limit"}, [], config).get_body(("plain",))
    assert body is not None and "the call reached its time limit" in body.get_content()
