"""A media worker killed (kill -9) in the middle of two calls on the real Asterisk 22, one over ExternalMedia RTP
and one over AudioSocket: both calls move to the other worker in their own bridge, the conversation resumes from
the call log without a second greeting, the callers hear the agent again, and nothing is left behind. The
caller-audible gaps are printed (no threshold here: the budgets live in bench/). And the only worker stalled
(SIGSTOP) past stale_after_ms: its calls wait for it and stay with it."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import yaml

from sim.cluster import LocalCluster
from sim.realtime import Reply, Script
from tests.media_harness import caller_speech, until
from tests.realpbx.pbx_harness import (  # noqa: F401  (fixtures)
    aredis,
    call_of,
    emulator,
    keys,
    nothing_of_the_call_left,
    pbx,
    pbx_config,
)

GREETING = "Hello, thanks for calling. How can I help?"
ANSWER = "We are open from nine to five."
RESUMED = "Sorry, the line dropped for a moment. Please go on."
QUESTION = "When are you open?"
QUESTION_2 = "Are you open on Sundays?"
ANSWER_2 = "No, we are closed on Sundays."
# The shipped dialplan: from-ai-agent-openai sets AI_CONTEXT=demo_openai, from-ai-agent-sales sets sales.
TRANSPORTS = {
    "rtp": ("from-ai-agent-openai", "demo_openai", "telephony_ulaw_8k"),
    "audiosocket": ("from-ai-agent-sales", "sales", "telephony_slin_8k"),
}


def script() -> Script:
    return Script(
        greeting=Reply(text=GREETING, audio_ms=1200),
        turns={1: Reply(text=ANSWER, audio_ms=1000), 2: Reply(text=ANSWER_2, audio_ms=1000)},
        transcripts={1: QUESTION, 2: QUESTION_2},
        default=Reply(text=RESUMED, audio_ms=1200),  # the reply after the resume note (a system message)
    )


async def _answered(aredis, keys, call_id: str) -> bool:
    roles = [f["role"] for _, f in await aredis.xrange(keys.call_log(call_id))]
    return roles.count("assistant") >= 2 and "user" in roles


def _cluster(tmp_path, real_asterisk, cluster_env, emu) -> LocalCluster:
    """A cluster on the real Asterisk whose contexts of TRANSPORTS use their profiles, with a short greeting."""
    config = pbx_config(tmp_path / "cluster.yaml", real_asterisk, "telephony_ulaw_8k")
    data = yaml.safe_load(config.read_text())
    for _, context, profile in TRANSPORTS.values():
        data["contexts"][context]["profile"] = profile
        data["contexts"][context]["greeting"] = "Hi"
    config.write_text(yaml.safe_dump(data))
    return LocalCluster(config, tmp_path, {**cluster_env, "OPENAI_REALTIME_URL": emu.url, "REALTIME_PREWARM": "1"})


async def _calls_asked_and_answered(pbx, aredis, keys) -> tuple[dict, dict[str, str]]:
    """A call per transport (legs and call ids by transport): greeted, asked QUESTION, answered, and quiet again
    (the answers have played out)."""
    legs, calls = {}, {}
    for transport, (dialplan, _, _) in TRANSPORTS.items():
        legs[transport] = await pbx.call(dialplan)
        calls[transport] = await call_of(aredis, keys, legs[transport].peer_id)
    for leg in legs.values():
        await until(lambda leg=leg: leg.first_voiced_after(leg.answered_at), timeout=5)  # the greeting
    await asyncio.sleep(1.5)
    for leg in legs.values():
        await leg.say(caller_speech(QUESTION, 900))
    for call_id in calls.values():
        await until(lambda call_id=call_id: _answered(aredis, keys, call_id), timeout=15)
    await asyncio.sleep(1.0)
    return legs, calls


async def _on(aredis, keys, call_id: str, worker: str) -> bool:
    record = await aredis.hgetall(keys.call(call_id))
    return record.get("worker") == worker and record.get("state") == "active"


async def test_a_killed_worker_with_an_rtp_and_an_audiosocket_call_hands_both_over(
    tmp_path, cluster_env, real_asterisk, emulator, aredis, keys, pbx
):
    emu = await emulator(script(), speed=4.0)
    cluster = _cluster(tmp_path, real_asterisk, cluster_env, emu)
    try:
        procs = [cluster.start("controller", instance_id="controller-1")]
        victim = cluster.start(
            "media-worker", "--audiosocket-port", "0", "--rtp-ports", "15000-15099", instance_id="victim"
        )
        assert await asyncio.to_thread(cluster.wait_ready, [*procs, victim], 30)
        legs, calls = await _calls_asked_and_answered(pbx, aredis, keys)  # both on the only worker there is
        for call_id in calls.values():
            assert await aredis.hget(keys.call(call_id), "worker") == "victim"
        survivor = cluster.start(
            "media-worker", "--audiosocket-port", "0", "--rtp-ports", "15100-15199", instance_id="survivor"
        )
        assert await asyncio.to_thread(cluster.wait_ready, [survivor], 30)

        killed_at = time.monotonic()
        victim.popen.kill()
        await asyncio.to_thread(victim.popen.wait)
        cluster.processes.remove(victim)  # it cannot exit 0: not one of the processes to stop at the end
        gaps = {}
        for transport, leg in legs.items():
            call_id = calls[transport]
            await until(lambda call_id=call_id: _on(aredis, keys, call_id, "survivor"), timeout=10)
            heard = await until(lambda leg=leg: leg.first_voiced_after(killed_at), timeout=10)
            gaps[transport] = (heard - killed_at) * 1000
        print(
            "\ncaller-audible gap, kill -9 to the agent heard again: "
            + ", ".join(f"{t} {ms:.0f} ms" for t, ms in gaps.items())
        )

        for call_id in calls.values():
            record = await aredis.hgetall(keys.call(call_id))
            assert record["moves"] == "1" and record["media_channel"] == f"{call_id}-em1", record
            status, bridge = real_asterisk.ari("GET", f"/bridges/{call_id}-br")  # the same bridge all along
            assert status == 200 and set(bridge["channels"]) == {record["caller_channel"], f"{call_id}-em1"}
            entries = [f for _, f in await aredis.xrange(keys.call_log(call_id))]
            texts = [e["text"] for e in entries if e["role"] == "assistant"]
            assert texts.count(GREETING) == 1, texts  # never greeted twice
            await until(lambda call_id=call_id: _said(aredis, keys, call_id, RESUMED), timeout=10)
        replayed = [
            s
            for s in emu.sessions
            if any(
                e["type"] == "conversation.item.create" and (e.get("item") or {}).get("role") == "user"
                for e in s.received
            )
        ]
        assert len(replayed) == 2  # one new Realtime session per moved call, each given the conversation

        await _hang_up_and_nothing_left(legs, calls, aredis, keys)
    finally:
        codes = cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes


async def _hang_up_and_nothing_left(legs: dict, calls: dict[str, str], aredis, keys) -> None:
    """The callers hang up: nothing of their calls is left, and no provider session is counted."""
    for leg in legs.values():
        await leg.hangup()
    for call_id in calls.values():
        await nothing_of_the_call_left(aredis, keys, call_id)
    assert int(await aredis.get(keys.provider_sessions("openai_realtime")) or 0) == 0


async def _said(aredis, keys, call_id: str, text: str) -> bool:
    return any(f.get("text") == text for _, f in await aredis.xrange(keys.call_log(call_id)))


async def test_the_only_worker_stalled_past_its_heartbeat_keeps_both_calls(
    tmp_path, cluster_env, real_asterisk, emulator, aredis, keys, pbx
):
    """bench/realpbx.py's 100-call ramps found it: the lone worker's heartbeat 799 ms old, declared dead, and every
    call went to the fallback while the worker would have beaten again a moment later. Now its calls wait for it
    (controller.move_wait_ms) and go on with it: same worker, same epoch, the next question answered and heard."""
    emu = await emulator(script(), speed=4.0)
    cluster = _cluster(tmp_path, real_asterisk, cluster_env, emu)
    try:
        controller = cluster.start("controller", instance_id="controller-1")
        worker = cluster.start(
            "media-worker", "--audiosocket-port", "0", "--rtp-ports", "15200-15299", instance_id="lone"
        )
        assert await asyncio.to_thread(cluster.wait_ready, [controller, worker], 30)
        legs, calls = await _calls_asked_and_answered(pbx, aredis, keys)
        epochs = {t: await aredis.hget(keys.call(c), "epoch") for t, c in calls.items()}

        stopped_at = time.monotonic()
        os.kill(worker.popen.pid, signal.SIGSTOP)
        try:
            await until(lambda: aredis.hget(keys.worker("lone"), "dead_ms"), timeout=5)  # declared dead
            await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - stopped_at)))
        finally:
            os.kill(worker.popen.pid, signal.SIGCONT)
        print(f"\nthe lone worker stopped for {(time.monotonic() - stopped_at) * 1000:.0f} ms")
        await until(lambda: controller.log_text().count("stays with it") == 2 or _any_ended(aredis, keys, calls), 5)
        for transport, call_id in calls.items():
            record = await aredis.hgetall(keys.call(call_id))
            assert (record["state"], record["worker"], record["epoch"]) == ("active", "lone", epochs[transport]), record
            assert record.get("moves", "0") == "0" and record["media_channel"] == f"{call_id}-em", record

        continued_at = time.monotonic()
        for leg in legs.values():
            await leg.say(caller_speech(QUESTION_2, 900))
        for transport, leg in legs.items():
            call_id = calls[transport]
            await until(lambda call_id=call_id: _said(aredis, keys, call_id, ANSWER_2), timeout=15)
            await until(lambda leg=leg: leg.first_voiced_after(continued_at), timeout=10)
            entries = [f for _, f in await aredis.xrange(keys.call_log(call_id))]
            texts = [e["text"] for e in entries if e["role"] == "assistant"]
            assert texts.count(GREETING) == 1 and RESUMED not in texts, texts
        assert "moved to another worker" not in worker.log_text()

        await _hang_up_and_nothing_left(legs, calls, aredis, keys)
    finally:
        codes = cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes


async def _any_ended(aredis, keys, calls: dict[str, str]) -> bool:
    states = [await aredis.hget(keys.call(call_id), "state") for call_id in calls.values()]
    return "ended" in states
