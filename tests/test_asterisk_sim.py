"""The Asterisk simulator's Python API and behaviour, driven by plain aiohttp clients (never the product's ARI
client): simulated callers into Stasis, media through AudioSocket/RTP legs, DTMF, hangups, Stasis failure and
the fallback branch, transfers (continue and create+dial), queue, voicemail, MOH, playback, the events socket
lifecycle, the CLI process and the control API. Event shapes are validated against the swagger models."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from sim.asterisk import AsteriskSim, CallerAudio
from sim.asterisk.audio import read_wav, tone_pcm
from tests.test_asterisk_sim_traces import SWAGGER

ROOT = Path(__file__).resolve().parent.parent
APP = "asterisk-ai-voice-agent"
AUTH = {"Authorization": aiohttp.encode_basic_auth("asterisk", "secret")}
SCALE = 0.05  # dialplan Wait()/ring timers run 20x faster


def dominant_hz(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def rms_dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return 20 * np.log10(max(np.sqrt(np.mean(samples**2)), 1e-9) / 32768)


class Ari:
    """A tiny test client: REST calls and one events WebSocket with waiting helpers."""

    def __init__(self, sim: AsteriskSim, session: aiohttp.ClientSession):
        self.sim, self.session = sim, session
        self.events: list[dict] = []
        self.ws = None
        self._reader = None
        self._new = asyncio.Event()

    async def connect(self, query: str = f"app={APP}") -> None:
        self.ws = await self.session.ws_connect(f"{self.sim.url}/ari/events?{query}", headers=AUTH)
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    async def _read(self, ws) -> None:
        async for msg in ws:
            self.events.append(json.loads(msg.data))
            self._new.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            await asyncio.wait([self._reader], timeout=2)
            self.ws = None

    async def wait(self, type_: str, timeout: float = 3.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        start = 0
        while True:
            for event in self.events[start:]:
                if event["type"] == type_ and all(_get(event, k) == v for k, v in match.items()):
                    return event
            start = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_} {match} in {[e['type'] for e in self.events]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def types(self, channel_id: str | None = None) -> list[str]:
        return [
            e["type"]
            for e in self.events
            if channel_id is None or (e.get("channel") or e.get("peer") or {}).get("id") == channel_id
        ]

    async def req(self, method: str, path: str, *, body=None, auth: bool = True, **query):
        async with self.session.request(
            method, f"{self.sim.url}/ari{path}", params=query, json=body, headers=AUTH if auth else {}
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)


def _get(event: dict, dotted: str):
    value = event
    for part in dotted.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class WorkerSocket:
    """A stand-in media worker: an AudioSocket TCP server that records what Asterisk sends."""

    def __init__(self):
        self.frames: list[tuple[int, bytes, float]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        self.writer = writer
        self.connected.set()
        try:
            while True:
                head = await reader.readexactly(3)
                payload = await reader.readexactly(int.from_bytes(head[1:], "big"))
                self.frames.append((head[0], payload, time.monotonic()))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()

    def audio(self, kind: int) -> bytes:
        return b"".join(p for k, p, _ in self.frames if k == kind)

    def send(self, kind: int, payload: bytes) -> None:
        self.writer.write(bytes([kind]) + len(payload).to_bytes(2, "big") + payload)

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()


@pytest.fixture
async def sim(tmp_path):
    s = AsteriskSim(users={"asterisk": "secret"}, workdir=tmp_path, time_scale=SCALE)
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


@pytest.fixture
async def ari(sim):
    async with aiohttp.ClientSession() as session:
        client = Ari(sim, session)
        yield client
        await client.close()


@pytest.fixture
async def worker():
    w = WorkerSocket()
    w.port = await w.start()
    yield w
    await w.stop()


async def bridged_call(sim, ari, worker, fmt="slin16", audio=None, **call_kw):
    """The product's flow: StasisStart -> answer -> bridge -> AudioSocket externalMedia -> addChannel."""
    call = await sim.place_call(audio=audio, **call_kw)
    assert await call.wait_stasis(2)
    await ari.wait("StasisStart", channel__id=call.channel_id)
    assert (await ari.req("POST", f"/channels/{call.channel_id}/answer"))[0] == 204
    bridge_id = str(uuid.uuid4())
    assert (await ari.req("POST", "/bridges", type="mixing", bridgeId=bridge_id))[0] == 200
    assert (await ari.req("POST", f"/bridges/{bridge_id}/addChannel", channel=call.channel_id))[0] == 204
    em_id, data = str(uuid.uuid4()), str(uuid.uuid4())
    status, em = await ari.req(
        "POST",
        "/channels/externalMedia",
        app=APP,
        external_host=f"127.0.0.1:{worker.port}",
        format=fmt,
        encapsulation="audiosocket",
        transport="tcp",
        data=data,
        channelId=em_id,
    )
    assert status == 200, em
    await ari.wait("StasisStart", channel__id=em_id)
    assert (await ari.req("POST", f"/bridges/{bridge_id}/addChannel", channel=em_id))[0] == 204
    await ari.wait("ChannelConnectedLine", channel__id=em_id)
    return call, bridge_id, em_id, data


def assert_swagger(ari: Ari) -> None:
    errors = [e for event in ari.events for e in SWAGGER.validate(event, "Message", event["type"])]
    assert not errors, errors


# --- callers and media -------------------------------------------------------------------------------------------


async def test_place_call_into_stasis_with_channelvars_and_audio_both_ways(sim, ari, worker):
    await ari.connect()
    speech = CallerAudio.tone(440, 600, rate=8000).then(CallerAudio.silence(200))
    call, bridge_id, em_id, data = await bridged_call(sim, ari, worker, audio=speech, rate=8000)
    start = next(e for e in ari.events if e["type"] == "StasisStart" and e["channel"]["id"] == call.channel_id)
    assert start["args"] == []
    assert start["channel"]["channelvars"] == {"AI_CONTEXT": "demo_openai", "AI_PROVIDER": "openai_realtime"}
    assert start["channel"]["caller"] == {"name": "Alice", "number": "5551234"}
    assert start["channel"]["dialplan"]["app_name"] == "Stasis"
    assert call.stasis_start_t is not None and call.stasis_status == ""
    em_start = next(e for e in ari.events if e["type"] == "StasisStart" and e["channel"]["id"] == em_id)
    assert em_start["args"] == [data]
    # the caller's 440 Hz reaches the worker as 16 kHz 0x12 frames (resampled), 640 bytes each
    await asyncio.wait_for(worker.connected.wait(), 1)
    assert uuid.UUID(bytes=worker.frames[0][1]) == uuid.UUID(data)
    for _ in range(100):
        if len(worker.audio(0x12)) >= 640 * 25:
            break
        await asyncio.sleep(0.02)
    got = worker.audio(0x12)
    assert len(got) >= 640 * 25
    assert abs(dominant_hz(got[: 640 * 25], 16000) - 440) < 20
    # the worker's 1 kHz (24 kHz would be resampled the same way) reaches the caller's ear
    reply = tone_pcm(1000, 400, 16000)
    for i in range(0, len(reply), 640):
        worker.send(0x12, reply[i : i + 640])
    for _ in range(100):
        if call.heard.duration_ms >= 380:
            break
        await asyncio.sleep(0.02)
    assert call.heard.duration_ms >= 380
    assert abs(dominant_hz(call.heard.pcm(8000), 8000) - 1000) < 30
    assert_swagger(ari)


async def test_variables_override_or_omit_the_dialplan_set(sim, ari):
    await ari.connect()
    call = await sim.place_call(variables={"AI_CONTEXT": "sales", "AI_PROVIDER": None})
    assert await call.wait_stasis(2)
    start = await ari.wait("StasisStart", channel__id=call.channel_id)
    assert start["channel"]["channelvars"] == {"AI_CONTEXT": "sales", "AI_PROVIDER": ""}
    status, body = await ari.req("GET", f"/channels/{call.channel_id}/variable", variable="AI_PROVIDER")
    assert (status, body) == (404, {"message": "Provided variable was not found"})
    status, body = await ari.req("GET", f"/channels/{call.channel_id}/variable", variable="CALLERID(num)")
    assert (status, body) == (200, {"value": "5551234"})


async def test_dtmf_reaches_the_app_and_the_audiosocket_leg(sim, ari, worker):
    await ari.connect()
    call, _, em_id, _ = await bridged_call(sim, ari, worker)
    call.send_dtmf("1")
    call.send_dtmf("#")
    event = await ari.wait("ChannelDtmfReceived", channel__id=call.channel_id, digit="#")
    assert event["duration_ms"] == 100
    for _ in range(50):
        if len([f for f in worker.frames if f[0] == 0x03]) == 2:
            break
        await asyncio.sleep(0.01)
    assert [p for k, p, _ in worker.frames if k == 0x03] == [b"1", b"#"]


async def test_remote_hangup_orders_events_and_leaves_media_and_bridge(sim, ari, worker):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    n = len(ari.events)
    await call.hangup()
    await ari.wait("StasisEnd", channel__id=call.channel_id)
    assert await call.wait_ended(1) and call.ended
    after = [e for e in ari.events[n:] if e.get("channel", {}).get("id") == call.channel_id]
    assert [e["type"] for e in after] == ["ChannelHangupRequest", "ChannelVarset", "ChannelLeftBridge", "StasisEnd"]
    assert after[0]["cause"] == 16 and "soft" not in after[0]
    assert after[1]["variable"] == "BRIDGEPEER" and after[1]["value"] == ""
    # orphans: the media channel and the bridge stay until the app deletes them
    status, channels = await ari.req("GET", "/channels")
    assert [c["id"] for c in channels] == [em_id]
    status, bridge = await ari.req("GET", f"/bridges/{bridge_id}")
    assert bridge["channels"] == [em_id]
    assert (await ari.req("GET", f"/channels/{call.channel_id}")) == (404, {"message": "Channel not found"})


async def test_worker_hangup_0x00_ends_the_media_channel_without_hangup_request(sim, ari, worker):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    n = len(ari.events)
    worker.send(0x00, b"")
    await ari.wait("ChannelDestroyed", channel__id=em_id)
    assert [e["type"] for e in ari.events[n:]] == [
        "ChannelVarset",
        "ChannelLeftBridge",
        "StasisEnd",
        "ChannelVarset",
        "ChannelDestroyed",
    ]
    await asyncio.wait_for(worker.closed.wait(), 1)
    assert not call.ended


async def test_a_media_leg_hung_up_before_its_life_starts_is_still_destroyed(sim, ari, worker):
    """A DELETE handled in the loop turn that created the externalMedia leg cancels its life task before the
    task's first step, so the life's own cleanup never runs: the soak found 24 of 999 such RTP legs left Down."""
    await ari.connect()
    for encapsulation in ("rtp", "audiosocket"):
        channel_id = f"em-{encapsulation}"
        await sim.calls.external_media(
            app=APP,
            host_port="127.0.0.1:9" if encapsulation == "rtp" else f"127.0.0.1:{worker.port}",
            encapsulation=encapsulation,
            fmt="ulaw" if encapsulation == "rtp" else "slin",
            data=str(uuid.uuid4()),
            channel_id=channel_id,
            variables={},
        )
        ch = sim.pbx.find(channel_id)
        assert ch is not None and not ch.dialplan_task.done()
        sim.pbx.hangup(ch)  # in the same loop turn: the life task has not started
        async with asyncio.timeout(5):
            while channel_id in sim.channels:
                await asyncio.sleep(0.01)
        assert ch.destroyed


async def test_a_life_cancelled_before_it_starts_leaves_no_coroutine_unawaited(sim, ari):
    """The same early hangup: the life coroutine (`Calls._external_life`) handed to the cancelled task was never
    awaited, and Python warned about it at garbage collection ("coroutine ... was never awaited")."""
    await ari.connect()
    await sim.calls.external_media(
        app=APP,
        host_port="127.0.0.1:9",
        encapsulation="rtp",
        fmt="ulaw",
        data=None,
        channel_id="em-early",
        variables={},
    )
    ch = sim.pbx.find("em-early")
    assert ch is not None
    task = ch.dialplan_task
    sim.pbx.hangup(ch)  # in the same loop turn: the life task has not started
    await asyncio.wait({task}, timeout=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ch.dialplan_task = task = None  # the last references: the coroutines are freed here
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_ari_delete_gives_cause_32_soft_and_channel_destroyed_only_for_ari_channels(sim, ari, worker):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    assert (await ari.req("DELETE", f"/channels/{call.channel_id}", reason="bogus"))[0] == 400
    assert (await ari.req("DELETE", f"/channels/{call.channel_id}", reason="normal", reason_code="16")) == (
        400,
        {"message": "The reason and reason_code can't both be specified"},
    )
    assert (await ari.req("DELETE", f"/channels/{call.channel_id}"))[0] == 204
    request = await ari.wait("ChannelHangupRequest", channel__id=call.channel_id)
    assert (request["cause"], request["soft"]) == (32, True)
    assert (await ari.req("DELETE", f"/channels/{em_id}", reason="normal"))[0] == 204
    destroyed = await ari.wait("ChannelDestroyed", channel__id=em_id)
    assert (destroyed["cause"], destroyed["cause_txt"]) == (16, "Normal Clearing")
    assert (await ari.req("DELETE", f"/bridges/{bridge_id}"))[0] == 204
    await ari.wait("BridgeDestroyed")  # the last channel hung up inside the bridge (trace 08 case E)
    await asyncio.sleep(0.05)
    assert "ChannelDestroyed" not in ari.types(call.channel_id)
    assert await call.wait_ended(1)
    assert_swagger(ari)


# --- Stasis availability ---------------------------------------------------------------------------------------


async def test_stasis_failed_without_app_runs_the_fallback(sim):
    call = await sim.place_call()
    assert not await call.wait_stasis(1)
    assert call.stasis_status == "FAILED"
    assert await call.wait_ended(3)
    assert "Playback(ss-noservice)" in call.trail
    assert call.trail[-1] == "Hangup()"
    assert call.heard.duration_ms > 0  # the caller heard the (fallback) prompt


async def test_drop_event_sockets_then_reconnect(sim, ari, worker):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    await sim.drop_event_sockets()
    await asyncio.wait([ari._reader], timeout=2)
    ari.ws = None
    # the app owns channels: registered but not active; a new call fails at once
    status, apps = await ari.req("GET", "/applications")
    assert apps[0]["name"] == APP and set(apps[0]["channel_ids"]) == {call.channel_id, em_id}
    second = await sim.place_call()
    assert not await second.wait_stasis(1) and second.stasis_status == "FAILED"
    call.send_dtmf("5")  # missed while inactive
    ari.events.clear()
    await ari.connect()
    call.send_dtmf("7")
    event = await ari.wait("ChannelDtmfReceived", channel__id=call.channel_id)
    assert event["digit"] == "7"
    assert "StasisStart" not in ari.types()  # no replay on reconnect
    third = await sim.place_call()
    assert await third.wait_stasis(1)


async def test_app_is_destroyed_when_its_last_socket_closes_owning_nothing(sim, ari):
    await ari.connect()
    assert (await ari.req("GET", f"/applications/{APP}"))[0] == 200
    await ari.close()
    for _ in range(50):
        if (await ari.req("GET", "/applications"))[1] == []:
            break
        await asyncio.sleep(0.01)
    assert (await ari.req("GET", f"/applications/{APP}")) == (404, {"message": "Application not found"})


async def test_events_socket_accepts_repeated_and_comma_separated_apps(sim, ari):
    await ari.connect(f"app={APP},other&app=third&api_key=asterisk:secret")
    status, apps = await ari.req("GET", "/applications")
    assert sorted(a["name"] for a in apps) == sorted([APP, "other", "third"])


async def test_subscribe_all_sees_every_channel(sim, ari):
    await ari.connect(f"app={APP}&subscribeAll=true")
    call = await sim.place_call()
    await ari.wait("StasisStart", channel__id=call.channel_id)
    types = ari.types(call.channel_id)
    assert types[0] == "ChannelCreated" and "ChannelVarset" in types and "ChannelDialplan" in types
    assert (await ari.req("POST", "/bridges", bridgeId="b1"))[0] == 200
    await ari.wait("BridgeCreated", bridge__id="b1")


# --- transfers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exten,statuses",
    [("6001", ["", "RINGING", "ANSWER"]), ("6003", ["", "BUSY"]), ("6002", ["", "RINGING", "NOANSWER"])],
)
async def test_create_and_dial_an_agent(sim, ari, worker, exten, statuses):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    assert (await ari.req("POST", f"/channels/{call.channel_id}/moh"))[0] == 204
    leg = str(uuid.uuid4())
    status, body = await ari.req(
        "POST",
        "/channels/create",
        endpoint=f"Local/{exten}@agents",
        app=APP,
        appArgs=f"transfer,{call.channel_id}",
        channelId=leg,
    )
    assert status == 200 and body["state"] == "Down"
    start = await ari.wait("StasisStart", channel__id=leg)
    assert start["args"] == ["transfer", call.channel_id] and start["channel"]["state"] == "Down"
    assert (await ari.req("POST", f"/channels/{leg}/answer")) == (412, {"message": "Channel in invalid state"})
    assert (await ari.req("POST", f"/channels/{leg}/dial", timeout="10"))[0] == 204
    await ari.wait("Dial", peer__id=leg, dialstatus=statuses[-1], timeout=3)
    dials = [e for e in ari.events if e["type"] == "Dial" and e["peer"]["id"] == leg]
    assert [d["dialstatus"] for d in dials] == statuses
    assert dials[0]["dialstring"] == f"{exten}@agents" and all(d["dialstring"] == "" for d in dials[1:])
    if exten == "6001":
        assert (await ari.req("POST", f"/bridges/{bridge_id}/removeChannel", channel=em_id))[0] == 204
        assert (await ari.req("POST", f"/bridges/{bridge_id}/addChannel", channel=leg))[0] == 204
        assert (await ari.req("DELETE", f"/channels/{call.channel_id}/moh"))[0] == 204
        call.heard.clear()
        agent_phone = sim.pbx.channels[leg].local_peer  # the agent's end of the Local pair speaks
        sim.pbx.write_to(agent_phone, tone_pcm(700, 200, 8000), 8000)
        assert abs(dominant_hz(call.heard.pcm(8000), 8000) - 700) < 20
        assert call.heard.duration_ms == pytest.approx(200, abs=20)
    assert (await ari.req("DELETE", f"/channels/{leg}"))[0] == 204
    await ari.wait("ChannelDestroyed", channel__id=leg)
    assert_swagger(ari)


async def test_moh_replaces_bridge_audio_with_a_quiet_melody(sim, ari, worker):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    assert (await ari.req("POST", f"/channels/{call.channel_id}/moh", mohClass="default"))[0] == 204
    call.heard.clear()
    loud = tone_pcm(1000, 300, 16000, dbfs=-6)
    for i in range(0, len(loud), 640):
        worker.send(0x12, loud[i : i + 640])
    await asyncio.sleep(0.4)
    heard = call.heard.pcm(8000)
    assert len(heard) > 8000 * 2 * 0.2
    assert -40 < rms_dbfs(heard) < -25  # MOH level, not the worker's -6 dBFS
    assert min(abs(dominant_hz(heard, 8000) - hz) for hz in (330, 392)) < 15


async def test_continue_to_a_dialplan_transfer_target(sim, ari, worker):
    await ari.connect()
    call, bridge_id, em_id, _ = await bridged_call(sim, ari, worker)
    assert (
        await ari.req(
            "POST", f"/channels/{call.channel_id}/continue", context="from-internal", extension="6001", priority="1"
        )
    )[0] == 204
    await ari.wait("StasisEnd", channel__id=call.channel_id)
    assert ari.types(call.channel_id)[-3:] == ["ChannelVarset", "ChannelLeftBridge", "StasisEnd"]
    assert (await ari.req("POST", f"/channels/{call.channel_id}/continue")) == (
        409,
        {"message": "Channel not in Stasis application"},
    )
    for _ in range(100):
        if "Dial(Local/6001@agents,20)" in call.trail and call.channel.bridge is not None:
            break
        await asyncio.sleep(0.02)
    assert call.channel.bridge is not None and not call.channel.bridge.stasis  # Dial()'s own bridge
    assert call.stasis_status == "SUCCESS"


async def test_queue_member_answers(sim, ari, worker):
    await ari.connect()
    call, *_ = await bridged_call(sim, ari, worker)
    assert (
        await ari.req(
            "POST", f"/channels/{call.channel_id}/continue", context="ext-queues", extension="support", priority="1"
        )
    )[0] == 204
    for _ in range(100):
        if call.channel.bridge is not None:
            break
        await asyncio.sleep(0.02)
    assert call.trail[-1] == "Queue(support,,,,30)" and call.channel.bridge is not None


async def test_voicemail_records_the_caller(sim, ari, worker, tmp_path):
    await ari.connect()
    speech = CallerAudio.silence(300).then(CallerAudio.tone(500, 2000, rate=8000))
    call, *_ = await bridged_call(sim, ari, worker, audio=speech)
    assert (
        await ari.req(
            "POST", f"/channels/{call.channel_id}/continue", context="ext-local", extension="vmu100", priority="1"
        )
    )[0] == 204
    for _ in range(150):
        if call.channel.input_sink is not None:
            break
        await asyncio.sleep(0.02)
    assert call.channel.input_sink is not None  # greeting and beep done, recording
    await asyncio.sleep(0.5)
    await call.hangup()
    assert await call.wait_ended(2)
    assert len(sim.voicemails) == 1
    vm = sim.voicemails[0]
    assert (vm.mailbox, vm.context, vm.caller_number) == ("100", "default", "5551234")
    assert vm.path.is_relative_to(tmp_path) and vm.path.name == "msg0000.wav"
    pcm, rate = read_wav(vm.path)
    assert rate == 8000 and len(pcm) / 2 / rate > 0.3
    assert abs(dominant_hz(pcm, rate) - 500) < 20


async def test_playback_on_a_channel(sim, ari, worker):
    await ari.connect()
    call, *_ = await bridged_call(sim, ari, worker)
    call.heard.clear()
    status, playback = await ari.req("POST", f"/channels/{call.channel_id}/play", media="sound:beep", playbackId="pb1")
    assert status == 201 and playback == {
        "id": "pb1",
        "media_uri": "sound:beep",
        "target_uri": f"channel:{call.channel_id}",
        "language": "en",
        "state": "queued",
    }
    assert (await ari.wait("PlaybackStarted"))["playback"]["state"] == "playing"
    finished = await ari.wait("PlaybackFinished")
    assert finished["playback"]["state"] == "done"
    assert abs(dominant_hz(call.heard.pcm(8000), 8000) - 1000) < 30
    assert (await ari.req("DELETE", "/playbacks/pb1")) == (404, {"message": "Playback not found"})
    assert_swagger(ari)


async def test_rtp_external_media_two_way_ulaw(sim, ari):
    await ari.connect()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    call = await sim.place_call(audio=CallerAudio.tone(440, 3000, rate=8000))
    await ari.wait("StasisStart", channel__id=call.channel_id)
    await ari.req("POST", f"/channels/{call.channel_id}/answer")
    await ari.req("POST", "/bridges", bridgeId="b")
    await ari.req("POST", "/bridges/b/addChannel", channel=call.channel_id)
    status, em = await ari.req(
        "POST",
        "/channels/externalMedia",
        app=APP,
        format="ulaw",
        channelId="em",
        external_host=f"127.0.0.1:{udp.getsockname()[1]}",
    )
    assert status == 200 and em["state"] == "Down"
    assert list(em["channelvars"]) == ["UNICASTRTP_LOCAL_PORT", "UNICASTRTP_LOCAL_ADDRESS"]
    await ari.wait("StasisStart", channel__id="em")
    await ari.req("POST", "/bridges/b/addChannel", channel="em")
    await asyncio.sleep(0.3)
    packets = []
    while True:
        try:
            packets.append(udp.recvfrom(2048))
        except BlockingIOError:
            break
    assert len(packets) >= 5 and packets[0][0][1] == 0  # PT 0
    source = packets[0][1]
    assert source[1] == int(em["channelvars"]["UNICASTRTP_LOCAL_PORT"])
    # send μ-law 1 kHz back (symmetric RTP: to the port the packets came from)
    from sim.realtime.g711 import encode

    tone = np.frombuffer(tone_pcm(1000, 300, 8000), dtype="<i2")
    call.heard.clear()
    for n, i in enumerate(range(0, len(tone), 160)):
        header = (
            bytes([0x80, 0]) + (n + 1).to_bytes(2, "big") + ((n + 1) * 160).to_bytes(4, "big") + b"\x01\x02\x03\x04"
        )
        udp.sendto(header + encode(tone[i : i + 160], "audio/pcmu"), source)
    await asyncio.sleep(0.1)
    udp.close()
    assert call.heard.duration_ms >= 250
    assert abs(dominant_hz(call.heard.pcm(8000), 8000) - 1000) < 30


# --- REST details ------------------------------------------------------------------------------------------------


async def test_auth_info_modules_and_body_params(sim, ari):
    assert (await ari.req("GET", "/asterisk/info", auth=False)) == (401, {"message": "Authentication required"})
    status, info = await ari.req("GET", "/asterisk/info", auth=False, api_key="asterisk:secret")
    assert status == 200 and list(info) == ["build", "system", "config", "status"]
    assert info["system"] == {"version": "22.10.1", "entity_id": sim.entity_id}
    assert (await ari.req("GET", "/asterisk/info", only="system"))[1] == {"system": info["system"]}
    assert (await ari.req("GET", "/asterisk/ping"))[1]["ping"] == "pong"
    assert (await ari.req("GET", "/asterisk/modules/chan_audiosocket.so"))[1]["status"] == "Running"
    assert (await ari.req("GET", "/asterisk/modules/chan_websocket.so"))[1]["status"] == "Running"
    assert (await ari.req("GET", "/asterisk/modules/chan_bogus.so")) == (
        404,
        {"message": "Module could not be found in running modules"},
    )
    for query in (f"app={APP}", f"app={APP}&api_key=asterisk:wrong"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await ari.session.ws_connect(f"{sim.url}/ari/events?{query}")
        assert exc.value.status == 401
    # JSON body parameters and body variables (as Asterisk's *_parse_body accepts them)
    await ari.connect()
    status, ch = await ari.req(
        "POST",
        "/channels",
        body={"endpoint": "Local/6001@agents", "app": APP, "appArgs": "x,y", "variables": {"AI_CONTEXT": "vip"}},
    )
    assert status == 200 and ch["channelvars"]["AI_CONTEXT"] == "vip"
    start = await ari.wait("StasisStart", channel__id=ch["id"])
    assert start["args"] == ["x", "y"]
    assert (
        await ari.req("POST", "/channels", body={"endpoint": "Local/6001@agents", "app": APP, "variables": {"A": 1}})
    ) == (400, {"message": "Only string values in the 'variables' object allowed"})
    # a real Asterisk 22.10.1 refuses audiosocket over udp with 400 (a bogus encapsulation is the traces' 501)
    status, body = await ari.req(
        "POST",
        "/channels/externalMedia",
        app=APP,
        external_host="127.0.0.1:9",
        format="slin",
        encapsulation="audiosocket",
        transport="udp",
        data=str(uuid.uuid4()),
    )
    assert status == 400 and body["message"]
    status, _ = await ari.req(
        "POST", "/channels/externalMedia", app=APP, external_host="127.0.0.1:9", format="slin", encapsulation="bogus"
    )
    assert status == 501


async def test_version_is_configurable(tmp_path):
    sim = AsteriskSim(version="20.16.0", workdir=tmp_path)
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{sim.url}/ari/asterisk/info?only=system", headers=AUTH) as resp:
                assert (await resp.json())["system"]["version"] == "20.16.0"
    finally:
        await sim.stop()


# --- the process and its control API -----------------------------------------------------------------------------


async def test_cli_process_and_control_api(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voice_agent.cli",
        "sim",
        "asterisk",
        "--port",
        "0",
        "--user",
        "u",
        "--password",
        "p",
        "--workdir",
        str(tmp_path),
        "--time-scale",
        "0.05",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,  # its stderr goes to pytest's capture, shown when the test fails
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        auth = {"Authorization": aiohttp.encode_basic_auth("u", "p")}
        async with aiohttp.ClientSession(headers=auth) as s:
            async with s.ws_connect(f"{url}/ari/events?app={APP}") as ws:
                body = {"caller_number": "6000", "variables": {"AI_CONTEXT": "x"}}
                async with s.post(f"{url}/sim/calls", json=body) as r:
                    assert r.status == 201
                    call_id = (await r.json())["id"]
                event = json.loads((await ws.receive(timeout=3)).data)
                assert event["type"] == "StasisStart" and event["channel"]["id"] == call_id
                assert event["channel"]["channelvars"]["AI_CONTEXT"] == "x"
                async with s.post(f"{url}/ari/channels/{call_id}/play", params={"media": "sound:beep"}) as r:
                    assert r.status == 201
                async with s.post(f"{url}/sim/calls/{call_id}/dtmf", json={"digits": "4"}) as r:
                    assert r.status == 204
                for _ in range(50):
                    async with s.get(f"{url}/sim/calls/{call_id}") as r:
                        state = await r.json()
                    if state["heard_ms"] > 0:
                        break
                    await asyncio.sleep(0.02)
                assert state["trail"][-1] == "Stasis(asterisk-ai-voice-agent)" and state["in_stasis"]
                assert state["heard_ms"] > 0
                wav = tmp_path / "heard.wav"
                async with s.post(f"{url}/sim/calls/{call_id}/save", json={"path": str(wav)}) as r:
                    assert r.status == 200
                assert wav.exists()
                async with s.get(f"{url}/sim/state") as r:
                    assert (await r.json())["channels"] == 1
                async with s.post(f"{url}/sim/calls/{call_id}/hangup") as r:
                    assert r.status == 204
                types = []
                while "StasisEnd" not in types:
                    types.append(json.loads((await ws.receive(timeout=3)).data)["type"])
                assert "ChannelDtmfReceived" in types and types[-2:] == ["ChannelHangupRequest", "StasisEnd"][-2:]
            async with s.get(f"{url}/sim/calls/nope") as r:
                assert r.status == 404
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/sim/state") as r:
                assert r.status == 401
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the dialplan, sans I/O --------------------------------------------------------------------------------------


def test_dialplan_parsing_expansion_and_yaml(tmp_path):
    from sim.asterisk.dialplan import (
        DEFAULT_DIALPLAN,
        Dialplan,
        DialplanError,
        evaluate,
        expand,
        parse_step,
        split_args,
    )

    step = parse_step('(retry)GotoIf($["${STASISSTATUS}"="FAILED"]?ai-agent-fallback,s,1)')
    assert (step.label, step.app) == ("retry", "GotoIf")
    values = {"STASISSTATUS": "FAILED", "X": "A"}
    assert expand(step.data, values.get) == "1?ai-agent-fallback,s,1"
    assert expand('$["${X}"!="A"]', values.get) == "0" and evaluate('"a" = "a"') == "1"
    assert split_args("Local/6001@agents&Local/6002@agents,20,tT") == [
        "Local/6001@agents&Local/6002@agents",
        "20",
        "tT",
    ]
    path = tmp_path / "plan.yaml"
    path.write_text("ctx:\n  s:\n    - NoOp(x)\n    - (end)Hangup()\n")
    plan = Dialplan.load(path)
    assert plan.find_label("ctx", "s", "end") == 2 and not plan.exists("from-ai-agent-openai", "s")
    assert Dialplan.load(None).exists("from-ai-agent-openai", "s") and "ext-queues" in DEFAULT_DIALPLAN
    with pytest.raises(DialplanError):
        Dialplan.load({"ctx": ["not", "a", "mapping"]})


async def test_ring_group_first_answer_wins_and_custom_dialplan(tmp_path):
    plan = {
        "in": {"s": ["Answer()", "Dial(Local/slow@grp&Local/fast@grp,5)", "Set(RESULT=${DIALSTATUS})", "Wait(100)"]},
        "grp": {
            "slow": ["Ringing()", "Wait(10)", "Answer()", "Wait(100)"],
            "fast": ["Ringing()", "Wait(0.5)", "Answer()", "Wait(100)"],
        },
    }
    sim = AsteriskSim(dialplan=plan, workdir=tmp_path, time_scale=SCALE)
    await sim.start("127.0.0.1", 0)
    try:
        call = await sim.place_call(context="in")
        for _ in range(100):
            if call.channel.bridge is not None:
                break
            await asyncio.sleep(0.01)
        bridge = call.channel.bridge
        assert bridge is not None and {c.name.split("-")[0] for c in bridge.members} == {
            "PJSIP/5551234",
            "Local/fast@grp",
        }
        assert not any(c.name.startswith("Local/slow@grp") for c in sim.channels.values())  # the loser hung up
        await call.hangup()
        assert await call.wait_ended(1)
        for _ in range(100):
            if not sim.channels:
                break
            await asyncio.sleep(0.01)
        assert not sim.channels  # the answered agent leg went down with the caller
    finally:
        await sim.stop()
