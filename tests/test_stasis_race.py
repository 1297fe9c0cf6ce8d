"""The Stasis-entry race of issue 14 through real processes (a controller and a media worker on the real Redis,
the Asterisk simulator and the Realtime emulator in this process).

A real Asterisk 22 answers POST /channels/externalMedia before the media channel is in Stasis; until its
StasisStart, POST /bridges/{id}/addChannel answers 422 "Channel not in Stasis application". Here the simulator
holds every ARI-made channel out of Stasis for 50-150 ms after its response, far longer than a controller
takes to go from the externalMedia answer to addChannel, so a controller that does not wait for StasisStart
loses every call to the fallback; one that waits sets them all up."""

from __future__ import annotations

import asyncio

import pytest

from sim.asterisk import AsteriskSim
from sim.asterisk.audio import CallerAudio
from sim.realtime import Reply, Script
from tests.ari_harness import ARI_PASSWORD, ARI_USER
from tests.media_harness import aredis, cluster_up, emulator, keys, loud_ms, until  # noqa: F401  (fixtures)

# slow tier: every test here runs a controller and media workers as processes (measured 2.5 s or more each)
pytestmark = pytest.mark.slow

LATE_STASIS_MS = (50, 150)
CALLS = 5
FALLBACK = "Playback(ss-noservice)"  # the shipped fallback context's first step


@pytest.fixture
async def sim(tmp_path):
    s = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=tmp_path / "sim", stasis_delay_ms=LATE_STASIS_MS, seed=14)
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


def outcome(call) -> str | None:
    """bridged (caller and media leg together), fallback, ended; None while still being set up."""
    if FALLBACK in call.trail:
        return "fallback"
    if call.ended:
        return "ended"
    bridge = call.channel.bridge
    if bridge is not None and len(bridge.members) == 2:
        return "bridged"
    return None


async def call_records(aredis, keys) -> dict[str, dict]:
    """caller channel id -> the controller's call hash."""
    records = {}
    async for key in aredis.scan_iter(match=keys.call("*")):
        if await aredis.type(key) == "hash":
            record = await aredis.hgetall(key)
            if "caller_channel" in record:
                records[record["caller_channel"]] = record
    return records


async def test_calls_are_set_up_although_media_channels_reach_stasis_late(sim, emulator, cluster_up, aredis, keys):
    emu = await emulator(Script(greeting=Reply(text="Hello, how can I help?", audio_ms=1200)), speed=4.0)
    await cluster_up(emu)
    calls = await asyncio.gather(
        *(
            sim.place_call(caller_name=f"Caller {i}", caller_number=str(2000 + i), audio=CallerAudio.silence(8000))
            for i in range(CALLS)
        )
    )
    await until(lambda: all(outcome(c) for c in calls), timeout=20)
    outcomes = {c.channel_id: outcome(c) for c in calls}
    records = await call_records(aredis, keys)
    assert list(outcomes.values()) == ["bridged"] * CALLS, {
        cid: (seen, records.get(cid, {}).get("end_reason")) for cid, seen in outcomes.items()
    }
    # every caller hears the agent's greeting through its media leg
    await until(lambda: all(any(loud for _, loud in loud_ms(c.heard)) for c in calls), timeout=15)
    await asyncio.gather(*(c.hangup() for c in calls))
    await until(lambda: not sim.channels and not sim.bridges, timeout=20)
    await until(_no_active_calls(aredis, keys), timeout=20)
    records = await call_records(aredis, keys)
    assert {cid: records[cid].get("end_reason") for cid in outcomes} == {cid: "caller_hangup" for cid in outcomes}


def _no_active_calls(aredis, keys):
    async def check():
        return await aredis.scard(keys.calls_active) == 0

    check.__name__ = "no call left in the active set"
    return check
