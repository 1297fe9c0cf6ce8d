"""Two controllers on the real Asterisk 22: the leader is killed (kill -9) in the middle of a call, the standby
takes the lease, connects the events WebSocket and reconciles; the call goes on (the agent answers the caller's
next question), then ends cleanly with nothing left in Asterisk (the suite's autouse check) or in Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from sim.realtime import Reply, Script
from tests.media_harness import caller_speech, until
from tests.realpbx.pbx_harness import (  # noqa: F401  (fixtures)
    PROFILES,
    aredis,
    call_of,
    emulator,
    keys,
    nothing_of_the_call_left,
    pbx_cluster,
    pbx,
)

QUESTION = "When are you open?"


def conversation() -> Script:
    return Script(
        greeting=Reply(text="Hello, thanks for calling.", audio_ms=1000),
        turns={1: Reply(text="We are open from nine to five.", audio_ms=1200)},
        transcripts={1: QUESTION},
    )


@pytest.mark.parametrize("transport", ["audiosocket-slin24", "rtp-ulaw"])
async def test_a_call_goes_on_when_the_leading_controller_is_killed(
    transport, pbx_cluster, pbx, emulator, aredis, keys
):
    emu = await emulator(conversation(), speed=4.0)
    cluster = await pbx_cluster(emu, PROFILES[transport], tool_workers=1)
    (leader,) = [p for p in cluster.processes if p.role == "controller"]
    standby = cluster.start("controller", instance_id=f"{leader.id}-standby")
    assert await asyncio.to_thread(cluster.wait_ready, [standby], 30), standby.log_text()[-3000:]
    assert standby.readiness()["leadership"] == "standby"

    leg = await pbx.call()
    call_id = await call_of(aredis, keys, leg.peer_id)
    await until(lambda: leg.first_voiced_after(leg.answered_at), timeout=5)  # the greeting
    await asyncio.sleep(1.0)

    leader.popen.kill()
    killed = time.monotonic()
    leader.popen.wait()
    cluster.processes.remove(leader)  # killed on purpose: not one of the roles that must exit 0

    def took_over() -> bool:
        return "calls reconciled" in standby.log_text() and standby.readiness().get("leadership") == "leading"

    await until(took_over, timeout=15)
    print(
        f"\n{transport}: kill -9 of the leader -> the standby leads and reconciled: {time.monotonic() - killed:.2f} s"
    )
    assert "adopted call" in standby.log_text() and call_id in standby.log_text()

    spoke_end = time.monotonic() + 0.9
    await leg.say(caller_speech(QUESTION, 900))
    await until(lambda: leg.first_voiced_after(spoke_end), timeout=10)  # the agent answers after the takeover
    await leg.hangup()
    await nothing_of_the_call_left(aredis, keys, call_id)
    record = await aredis.hgetall(keys.call(call_id))
    assert record["end_reason"] == "caller_hangup"
    lines = [
        line for line in standby.log_text().splitlines() if f"call {call_id} ended" in line and "email job" in line
    ]
    assert len(lines) == 1, lines  # the summary enqueued once, by the new leader
