"""The simulator enters ARI-made channels (externalMedia, originate, /channels/create) into Stasis after the
HTTP response, as res_ari's detached threads do on a real Asterisk 22: until StasisStart the channel exists but
has no Stasis control, so bridges answer 422 and /channels/{id} operations 409, while GET, variable reads and
DELETE work. The delay is drawn per channel from a seeded RNG (sim.asterisk.stasis_delay).

A delay of an hour stands for "StasisStart has not come yet": nothing here depends on how fast the host is."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import aiohttp
import pytest

from sim.asterisk import AsteriskSim
from sim.asterisk.stasis_delay import StasisDelay
from tests.test_asterisk_sim import APP, ROOT, SCALE, Ari, WorkerSocket

NEVER_MS = (3_600_000, 3_600_000)  # StasisStart does not come while the test runs
NOT_IN_STASIS = "Channel not in Stasis application"


@pytest.fixture
async def make_sim(tmp_path):
    sims: list[AsteriskSim] = []

    async def make(stasis_delay_ms: tuple[float, float], seed: int | None = None) -> AsteriskSim:
        s = AsteriskSim(
            users={"asterisk": "secret"},
            workdir=tmp_path / f"sim-{len(sims)}",
            time_scale=SCALE,
            stasis_delay_ms=stasis_delay_ms,
            seed=seed,
        )
        await s.start("127.0.0.1", 0)
        sims.append(s)
        return s

    yield make
    for s in sims:
        await s.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def worker():
    w = WorkerSocket()
    w.port = await w.start()
    yield w
    await w.stop()


async def connected(sim: AsteriskSim, session) -> Ari:
    ari = Ari(sim, session)
    await ari.connect()
    return ari


async def caller_in_bridge(sim: AsteriskSim, ari: Ari, bridge_id: str = "b") -> str:
    """A dialplan caller (its Stasis() is synchronous to the dialplan, no delay) answered and bridged."""
    call = await sim.place_call()
    await ari.wait("StasisStart", channel__id=call.channel_id)
    assert (await ari.req("POST", f"/channels/{call.channel_id}/answer"))[0] == 204
    assert (await ari.req("POST", "/bridges", type="mixing", bridgeId=bridge_id))[0] == 200
    assert (await ari.req("POST", f"/bridges/{bridge_id}/addChannel", channel=call.channel_id))[0] == 204
    return call.channel_id


async def audiosocket_media(ari: Ari, port: int, channel_id: str = "em") -> dict:
    status, body = await ari.req(
        "POST",
        "/channels/externalMedia",
        app=APP,
        external_host=f"127.0.0.1:{port}",
        format="slin16",
        encapsulation="audiosocket",
        transport="tcp",
        data=str(uuid.uuid4()),
        channelId=channel_id,
    )
    assert status == 200, body
    return body


async def rtp_media(ari: Ari, channel_id: str) -> dict:
    status, body = await ari.req(
        "POST", "/channels/externalMedia", app=APP, external_host="127.0.0.1:9", format="ulaw", channelId=channel_id
    )
    assert status == 200, body
    return body


# --- before StasisStart ------------------------------------------------------------------------------------------


async def test_external_media_before_stasis_start_is_refused_like_asterisk(make_sim, session, worker):
    sim = await make_sim(NEVER_MS)
    ari = await connected(sim, session)
    await caller_in_bridge(sim, ari)
    em = await audiosocket_media(ari, worker.port)
    assert em["state"] == "Down"
    # res/ari/resource_bridges.c find_channel_control(): the channel exists but has no control -> 422
    assert await ari.req("POST", "/bridges/b/addChannel", channel="em") == (422, {"message": NOT_IN_STASIS})
    assert await ari.req("POST", "/bridges/b/removeChannel", channel="em") == (422, {"message": NOT_IN_STASIS})
    # res/ari/resource_channels.c find_control(): 409 for the channel operations
    for method, path, query in [
        ("POST", "/answer", {}),
        ("POST", "/ring", {}),
        ("POST", "/moh", {}),
        ("POST", "/play", {"media": "sound:beep"}),
        ("POST", "/continue", {}),
        ("POST", "/variable", {"variable": "X", "value": "1"}),
        ("POST", "/dtmf", {"dtmf": "1"}),
    ]:
        assert await ari.req(method, f"/channels/em{path}", **query) == (409, {"message": NOT_IN_STASIS}), path
    # what needs no control works: GET (snapshot), variable reads (ast_channel_get_by_name)
    status, body = await ari.req("GET", "/channels/em")
    assert status == 200 and body["state"] == "Down"
    status, body = await ari.req("GET", "/channels/em/variable", variable="AUDIOSOCKET_UUID")
    assert status == 200 and body["value"]
    # the TCP connection exists (made during the request) but the UUID frame only comes with the call
    await asyncio.wait_for(worker.connected.wait(), 2)
    assert worker.frames == []
    assert "StasisStart" not in ari.types("em") and "Dial" not in ari.types("em")


async def test_hanging_up_before_stasis_start_ends_the_channel_without_stasis_events(make_sim, session, worker):
    sim = await make_sim(NEVER_MS)
    ari = await connected(sim, session)
    await caller_in_bridge(sim, ari)
    await audiosocket_media(ari, worker.port)
    assert (await ari.req("DELETE", "/channels/em"))[0] == 204
    await ari.wait("ChannelDestroyed", channel__id="em")
    assert ari.types("em") == ["ChannelHangupRequest", "ChannelDestroyed"]
    await asyncio.wait_for(worker.closed.wait(), 2)
    assert worker.frames == []
    assert (await ari.req("GET", "/channels/em"))[0] == 404
    assert "em" not in [c["id"] for c in (await ari.req("GET", "/channels"))[1]]


async def test_originate_into_an_app_is_dialled_and_in_stasis_only_later(make_sim, session):
    sim = await make_sim(NEVER_MS)
    ari = await connected(sim, session)
    status, ch = await ari.req(
        "POST", "/channels", endpoint="Local/6001@agents", app=APP, channelId="orig", otherChannelId="orig2"
    )
    assert status == 200 and ch["state"] == "Down"
    assert await ari.req("POST", "/channels/orig/answer") == (409, {"message": NOT_IN_STASIS})
    assert "Dial" not in ari.types("orig")  # ast_dial_run() has not started
    assert (await ari.req("DELETE", "/channels/orig"))[0] == 204
    await ari.wait("ChannelDestroyed", channel__id="orig")
    await ari.wait("ChannelDestroyed", channel__id="orig2")
    assert "StasisStart" not in ari.types("orig") and sim.channels == {}


async def test_a_created_channel_cannot_be_dialled_before_its_stasis_start(make_sim, session):
    sim = await make_sim(NEVER_MS)
    ari = await connected(sim, session)
    status, _ = await ari.req("POST", "/channels/create", endpoint="Local/6001@agents", app=APP, channelId="agent")
    assert status == 200
    assert await ari.req("POST", "/channels/agent/dial") == (409, {"message": NOT_IN_STASIS})
    assert (await ari.req("DELETE", "/channels/agent"))[0] == 204
    await ari.wait("ChannelDestroyed", channel__id="agent")


# --- after StasisStart -------------------------------------------------------------------------------------------


async def test_after_stasis_start_the_media_leg_is_bridged(make_sim, session, worker):
    sim = await make_sim((20, 40))
    ari = await connected(sim, session)
    await caller_in_bridge(sim, ari)
    await audiosocket_media(ari, worker.port)
    start = await ari.wait("StasisStart", channel__id="em")
    assert start["channel"]["state"] == "Up"
    # the dial thread's events, in Asterisk's order (trace 03): Dial, answer, Dial ANSWER, StasisStart
    assert ari.types("em") == ["Dial", "ChannelStateChange", "Dial", "ChannelVarset", "StasisStart"]
    assert (await ari.req("POST", "/bridges/b/addChannel", channel="em"))[0] == 204
    await ari.wait("ChannelEnteredBridge", channel__id="em")
    await asyncio.wait_for(worker.connected.wait(), 2)
    assert worker.frames and worker.frames[0][0] == 0x01  # the UUID frame came with the call
    status, bridge = await ari.req("GET", "/bridges/b")
    assert status == 200 and "em" in bridge["channels"]


async def test_created_channel_dials_after_its_stasis_start(make_sim, session):
    sim = await make_sim((5, 10))
    ari = await connected(sim, session)
    await ari.req("POST", "/channels/create", endpoint="Local/6001@agents", app=APP, channelId="agent")
    await ari.wait("StasisStart", channel__id="agent")
    assert (await ari.req("POST", "/channels/agent/dial"))[0] == 204
    await ari.wait("Dial", channel__id=None, peer__id="agent", dialstatus="ANSWER")


# --- the delay distribution --------------------------------------------------------------------------------------


def test_delays_are_drawn_within_bounds_and_repeat_with_the_seed():
    a, b = StasisDelay(2, 8, seed=11), StasisDelay(2, 8, seed=11)
    draws = [a.draw_s() for _ in range(200)]
    assert draws == [b.draw_s() for _ in range(200)]
    assert all(0.002 <= d <= 0.008 for d in draws)
    assert len(set(draws)) > 100  # drawn, not one fixed value
    assert draws != [StasisDelay(2, 8, seed=12).draw_s() for _ in range(200)]
    assert StasisDelay(3, 3).draw_s() == 0.003


@pytest.mark.parametrize("text, bounds", [("0.5:5", (0.5, 5.0)), ("7", (7.0, 7.0)), ("0:0", (0.0, 0.0))])
def test_delay_parses_min_max(text, bounds):
    delay = StasisDelay.parse(text)
    assert (delay.min_ms, delay.max_ms) == bounds


@pytest.mark.parametrize("text", ["5:1", "-1:2", "fast", "1:x"])
def test_delay_rejects_nonsense(text):
    with pytest.raises(ValueError):
        StasisDelay.parse(text)


async def test_each_channel_draws_its_delay_from_the_seeded_simulator(make_sim, session):
    runs = []
    for _ in range(2):
        sim = await make_sim((1, 30), seed=5)
        ari = await connected(sim, session)
        for i in range(4):
            await rtp_media(ari, f"em{i}")
        for i in range(4):
            await ari.wait("StasisStart", channel__id=f"em{i}")
        runs.append([sim.channels[f"em{i}"].stasis_delay_s for i in range(4)])
        await ari.close()
    assert runs[0] == runs[1]
    assert all(0.001 <= d <= 0.030 for d in runs[0]) and len(set(runs[0])) == 4


def test_the_cli_refuses_a_bad_delay():
    proc = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "sim", "asterisk", "--stasis-delay-ms", "9:1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "--stasis-delay-ms" in proc.stderr
