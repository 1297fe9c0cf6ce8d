"""A ramp on the real Asterisk: 50 callers within 2 s, each held 20 s. Every call is set up on the agent (none
to the fallback, none failed on the Stasis-entry race), every caller hears the greeting, and nothing is left
in Asterisk or Redis afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from sim.pbx_caller import CallerError
from sim.realtime import Reply, Script
from tests.media_harness import until
from tests.realpbx.pbx_harness import aredis, emulator, keys, pbx_cluster, pbx  # noqa: F401  (fixtures)

CALLS, RAMP_S, HOLD_S = 50, 2.0, 20.0


@pytest.mark.parametrize("profile", ["telephony_pcm16_24k", "websocket_ulaw_8k"])
async def test_fifty_callers_in_two_seconds_are_all_served(
    profile, real_asterisk, pbx_cluster, pbx, emulator, aredis, keys
):
    emu = await emulator(Script(greeting=Reply(text="Hello, thanks for calling.", audio_ms=1500)), speed=4.0)
    await pbx_cluster(emu, profile, extra={"media_worker": {"capacity": CALLS + 10}})

    async def caller(i: int):
        await asyncio.sleep(i * RAMP_S / CALLS)
        try:
            leg = await pbx.call()
        except CallerError as exc:
            return f"not answered: {exc}"
        await asyncio.sleep(HOLD_S)
        heard = leg.first_voiced_after(leg.answered_at) is not None
        await leg.hangup()
        return "served" if heard else "no greeting"

    outcomes = Counter(await asyncio.gather(*(caller(i) for i in range(CALLS))))
    assert outcomes == {"served": CALLS}, outcomes
    await until(lambda: _all_gone(aredis, keys), timeout=15)
    records = [await aredis.hgetall(key) async for key in aredis.scan_iter(match=keys.call("*"), _type="HASH")]
    # Each call was set up on the agent and ended by its caller: no fallback, no setup failure.
    assert Counter(r.get("end_reason") for r in records) == {"caller_hangup": CALLS}
    assert all(r.get("setup_ms") for r in records)


async def _all_gone(aredis, keys) -> bool:
    return not await aredis.scard(keys.calls_active)
