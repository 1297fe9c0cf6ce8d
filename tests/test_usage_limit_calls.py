"""Usage limits end to end through real processes: a controller and a media worker (subprocesses) on the real
Redis, the Asterisk simulator and the Realtime emulator (which reports `usage` on every response.done), and the
`voice-agent usage` command as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.usage_limits import periods
from shared.config.schema import Limits
from sim.asterisk.audio import CallerAudio
from sim.cluster import http_get
from sim.realtime import Reply, Script
from tests.media_harness import (  # noqa: F401  (fixtures)
    aredis,
    call_of,
    caller_speech,
    cluster_up,
    emulator,
    keys,
    log_entries,
    sim,
    until,
)

# slow tier: every test here runs a controller and a media worker as processes
pytestmark = pytest.mark.slow

SCRIPT = Script(
    greeting=Reply(text="Hello, how can I help?", audio_ms=600),
    turns={1: Reply(text="We are open nine to five.", audio_ms=600)},
    default=Reply(text="Goodbye, our time is up.", audio_ms=600),
)


def asks(text: str = "When are you open?", then_ms: int = 4000) -> CallerAudio:
    return CallerAudio.silence(1500).then(caller_speech(text, 900)).then(CallerAudio.silence(then_ms))


def controller_of(cluster):
    return next(p for p in cluster.processes if p.role == "controller")


def usage_report(cluster, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "--config", str(cluster.config_path), "usage", "--json", *args],
        env={**cluster.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def answered(aredis, keys, call_id: str, replies: int = 2) -> None:
    async def check():
        return [e["role"] for e in await log_entries(aredis, keys, call_id)].count("assistant") >= replies

    await until(check, timeout=20)


@pytest.mark.slow  # measured 7.5 s
async def test_the_third_call_of_the_day_goes_to_the_fallback_and_the_report_sums_the_calls(
    sim, emulator, cluster_up, aredis, keys
):
    emu = await emulator(SCRIPT, speed=4.0)
    cluster = await cluster_up(emu, extra={"limits": {"sessions_per_day": 2}})
    calls = []
    for _ in range(2):
        call = await sim.place_call(audio=asks())
        call_id = await call_of(aredis, keys, call.channel_id)
        calls.append((call, call_id))
    for _, call_id in calls:
        await answered(aredis, keys, call_id)  # usage reported by each response.done
    third = await sim.place_call(audio=asks())
    await until(lambda: any("ss-noservice" in step for step in third.trail), timeout=10)
    fourth = await sim.place_call(audio=asks())
    await until(lambda: any("ss-noservice" in step for step in fourth.trail), timeout=10)
    controller = controller_of(cluster)
    metrics = http_get(controller.health_url + "/metrics")[1].decode()
    assert 'va_calls_rejected_total{reason="limit_sessions_per_day"} 2.0' in metrics
    assert 'va_call_fallbacks_total{reason="limit_sessions_per_day"} 2.0' in metrics
    # One line for the crossing, not one per refused call.
    crossing = [line for line in controller.log_text().splitlines() if "usage cap sessions_per_day reached" in line]
    assert len(crossing) == 1 and "limits.sessions_per_day = 2" in crossing[0], crossing
    # The calls in progress were not touched.
    assert all(not call.ended for call, _ in calls)
    for call, _ in calls:
        await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)

    async def released():
        return await aredis.scard(keys.calls_active) == 0

    await until(released)  # the release adds each call's seconds

    report = usage_report(cluster)
    today, month = report["today"], report["month"]
    assert today["sessions"] == month["sessions"] == 2 and today["caps_reached"] == ["sessions_per_day"]
    assert today["spend_usd"] > 0 and today["minutes"] > 0
    costs = [float(await aredis.hget(keys.call(cid), "cost_usd") or 0) for _, cid in calls]
    assert today["spend_usd"] == pytest.approx(sum(costs), abs=1e-5)  # what the calls' own records say
    assert today["by_context"]["demo_openai"]["sessions"] == 2
    assert report["caps"]["sessions_per_day"] == 2
    other = usage_report(cluster, "--month", "2001-01")
    assert "today" not in other and other["month"]["sessions"] == 0


@pytest.mark.slow  # measured 4.8 s
async def test_the_spend_cap_reached_mid_call_lets_the_call_go_on_and_refuses_the_next(
    sim, emulator, cluster_up, aredis, keys
):
    emu = await emulator(SCRIPT, speed=4.0)
    cluster = await cluster_up(emu, extra={"limits": {"spend_per_day_usd": 0.000001}})
    first = await sim.place_call(audio=asks())
    call_id = await call_of(aredis, keys, first.channel_id)
    await answered(aredis, keys, call_id, replies=1)  # the greeting's usage alone crosses the cap

    async def crossed():
        spend = await aredis.hget(keys.usage_day(periods(Limits()).day), "spend_usd")
        return spend is not None and float(spend) >= 0.000001

    await until(crossed)
    second = await sim.place_call(audio=asks())
    await until(lambda: any("ss-noservice" in step for step in second.trail), timeout=10)
    await answered(aredis, keys, call_id, replies=2)  # the first call goes on: the caller gets an answer
    assert not first.ended
    metrics = http_get(controller_of(cluster).health_url + "/metrics")[1].decode()
    assert 'va_calls_rejected_total{reason="limit_spend_per_day"} 1.0' in metrics
    await first.hangup()
    await until(lambda: not sim.channels and not sim.bridges)


@pytest.mark.slow  # measured 7.0 s
async def test_at_the_duration_cap_the_agent_says_goodbye_then_hangs_up(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(SCRIPT, speed=4.0)
    farewell = "Sorry, this call has reached its time limit. Goodbye!"
    await cluster_up(emu, extra={"limits": {"max_call_duration_s": 5, "duration_farewell": farewell}})
    call = await sim.place_call(audio=asks(then_ms=15_000))
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: call.ended, timeout=20)  # the agent hung up, not the caller
    creates = [e for s in emu.sessions for e in s.received if e["type"] == "response.create"]
    last = creates[-1]["response"]
    assert last.get("tool_choice") == "none" and farewell in last.get("instructions", "")
    said = [e["text"] for e in await log_entries(aredis, keys, call_id) if e["role"] == "assistant"]
    # Greeting, answer, and the reply to the farewell request (the emulator's script repeats the turn's text):
    # the farewell was played before the hang-up.
    assert len(said) == 3, said
    await until(lambda: not sim.channels and not sim.bridges)
    record = await aredis.hgetall(keys.call(call_id))
    assert record["end_reason"] == "time_limit"
    assert 5000 <= int(record["ended_ms"]) - int(record["created_ms"]) < 15_000
