"""The Stasis-entry race on a controlled transfer (issue 14): a real Asterisk 22 answers POST /channels/create
before the new leg is in Stasis (ari_channel_thread() runs Stasis after the response), and until its
StasisStart POST /channels/{id}/dial answers 409 "Channel not in Stasis application". With every ARI-made
channel held out of Stasis for 50-150 ms the controller must still set the call up and then ring, answer and
bridge the transfer leg. (Its worker is the test's AudioSocket listener; see test_call_control.)"""

from __future__ import annotations

import pytest

from sim.asterisk import AsteriskSim
from tests.ari_harness import ARI_PASSWORD, ARI_USER
from tests.test_controller_calls import (  # noqa: F401  (fixtures)
    aredis,
    call_record,
    keys,
    listener,
    nothing_left,
    state_is,
    until,
    workers,
)
from tests.test_call_control import active_call, bridged, controller, requests_to, setup  # noqa: F401
from tests.test_stasis_race import LATE_STASIS_MS

# slow tier: every test here runs a controller and media workers as processes (measured 2.5 s or more each)
pytestmark = pytest.mark.slow


@pytest.fixture
async def sim(tmp_path):
    s = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=tmp_path / "sim", stasis_delay_ms=LATE_STASIS_MS, seed=14)
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


async def test_a_transfer_leg_is_dialled_once_in_stasis(sim, listener, setup, aredis, keys):
    side = await setup()
    call, call_id = await active_call(sim, listener, aredis, keys)
    reply = await side.final(await side.request(call_id, "transfer", "sales"), timeout=15)
    leg = f"{call_id}-xfer1"
    dials = [r.status for r in requests_to(sim, "POST", f"/channels/{leg}/dial")]
    assert (reply.status, reply.ok) == ("answered", True), (reply, dials)
    await until(lambda: bridged(sim, call_id) == {call.channel_id, leg})
    await call.hangup()
    await until(nothing_left(sim))
    await until(await state_is(aredis, keys, call_id, "ended"))
    assert (await call_record(aredis, keys, call_id))["end_reason"] == "transferred"
