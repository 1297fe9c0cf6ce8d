"""WebSocket media (chan_websocket, server mode): the sans-I/O control codec with the exact messages a real
Asterisk 22.10.1 sent; the simulator's /media/<id> endpoint and re-timing queue as the real one behaves; the
worker's link against the simulator."""

from __future__ import annotations

import asyncio
import base64
import tracemalloc

import aiohttp
import pytest
import websockets

from media_worker.transport import websocket_codec as wc
from media_worker.transport.websocket_media import MediaConnectError, WebSocketMediaLink
from sim.asterisk import AsteriskSim
from shared.websocket_url import media_url, redact

APP = "asterisk-ai-voice-agent"

# Recorded from Asterisk 22.10.1 (externalMedia transport=websocket connection_type=server, format ulaw).
REAL_MEDIA_START = (
    "MEDIA_START connection_id:6fc19566-46db-4a1d-a973-69cadcc63940 "
    "channel:WebSocket/INCOMING/0x7efd5c00de30 channel_id:em1 format:ulaw optimal_frame_size:160 "
    "ptime:20"
)
REAL_STATUS = (
    "STATUS channel_id:em1 queue_length:75 xon_level:800 xoff_level:900 queue_full:false "
    "bulk_media:false media_paused:false"
)
REAL_JSON_START = (
    '{"event":"MEDIA_START","connection_id":"04062fa9-b367-4a3a-9dc4-002d503ecd59",'
    '"channel":"WebSocket/INCOMING/0x7efd4c0126c0","channel_id":"em1","format":"slin16",'
    '"optimal_frame_size":640,"ptime":20,"channel_variables":{"MEDIA_WEBSOCKET_CONNECTION_ID":'
    '"04062fa9-b367-4a3a-9dc4-002d503ecd59","MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE":"640"}}'
)
REAL_JSON_ERROR = '{"event":"ERROR","channel_id":"em1","error_text":"Unable to parse JSON command"}'


# ------------------------------------------------------------------ sans-I/O codec


def test_events_as_22_10_1_prints_them():
    start = wc.parse_event(REAL_MEDIA_START)
    assert start == wc.MediaStart(
        connection_id="6fc19566-46db-4a1d-a973-69cadcc63940",
        channel="WebSocket/INCOMING/0x7efd5c00de30",
        channel_id="em1",
        format="ulaw",
        optimal_frame_size=160,
        ptime=20,
    )
    assert wc.parse_event(REAL_JSON_START) == wc.MediaStart(
        connection_id="04062fa9-b367-4a3a-9dc4-002d503ecd59",
        channel="WebSocket/INCOMING/0x7efd4c0126c0",
        channel_id="em1",
        format="slin16",
        optimal_frame_size=640,
        ptime=20,
    )
    assert wc.parse_event(REAL_STATUS) == wc.Status(queue_length=75, queue_full=False)
    assert wc.parse_event(REAL_STATUS.replace("queue_full:false", "queue_full:true")).queue_full is True
    assert wc.parse_event("MEDIA_MARK_PROCESSED m5") == wc.MarkProcessed("m5")
    assert wc.parse_event("MEDIA_MARK_PROCESSED") == wc.MarkProcessed("")
    assert wc.parse_event(b"MEDIA_XOFF") == wc.MediaXoff()
    assert wc.parse_event("MEDIA_XON") == wc.MediaXon()
    assert wc.parse_event("QUEUE_DRAINED") == wc.QueueDrained()
    assert wc.parse_event("DTMF_END digit:5 channel_id:em1") == wc.DtmfEnd("5")
    assert wc.parse_event("ERROR channel_id:em1 error_text:FLUSH_MEDIA not supported in passthrough mode") == wc.Error(
        "FLUSH_MEDIA not supported in passthrough mode"
    )
    assert wc.parse_event(REAL_JSON_ERROR) == wc.Error("Unable to parse JSON command")
    assert wc.parse_event(
        '{"event":"MEDIA_MARK_PROCESSED","channel_id":"em1","correlation_id":"a"}'
    ) == wc.MarkProcessed("a")
    assert wc.parse_event("SOMETHING_NEW x:1") == wc.Unknown("SOMETHING_NEW", "SOMETHING_NEW x:1")


@pytest.mark.parametrize(
    "bad", ["", "   ", "{not json", '{"no_event": 1}', '["MEDIA_XON"]', b"\xff\xfe", "STATUS queue_length:many"]
)
def test_unreadable_control_messages_raise(bad):
    with pytest.raises(wc.ControlError):
        wc.parse_event(bad)


def test_commands_plain_and_json_within_asterisks_limits():
    assert wc.command("FLUSH_MEDIA") == b"FLUSH_MEDIA"
    assert wc.command("MARK_MEDIA", "item-3") == b"MARK_MEDIA item-3"
    assert wc.command("MARK_MEDIA", "m1", json=True) == b'{"command":"MARK_MEDIA","correlation_id":"m1"}'
    with pytest.raises(ValueError, match="unknown"):
        wc.command("BOGUS")
    with pytest.raises(ValueError, match="one word"):
        wc.command("MARK_MEDIA", "two words")
    with pytest.raises(ValueError, match="over 128"):
        wc.command("MARK_MEDIA", "x" * 120)  # Asterisk would ignore it without a word
    assert [wc.frame_size(f) for f in ("ulaw", "slin", "slin16", "slin24")] == [160, 320, 640, 960]


def test_control_state_counts_what_a_flush_dropped():
    state = wc.ControlState()
    state.receive(REAL_MEDIA_START)
    assert state.started and state.format == "ulaw" and state.frame_size == 160 and state.channel_id == "em1"
    assert state.status() == b"GET_STATUS"
    assert state.flush() == [b"GET_STATUS", b"FLUSH_MEDIA"]
    state.receive(REAL_STATUS.replace("75", "3"))  # answers the sample, not the flush
    assert state.flushed_frames is None
    state.receive(REAL_STATUS.replace("75", "2"))  # answers the flush
    assert state.flushed_frames == 2
    state.receive("MEDIA_XOFF")
    assert state.paused
    state.receive("MEDIA_XON")
    assert not state.paused
    json_state = wc.ControlState(json=True)
    assert json_state.flush() == [b'{"command":"GET_STATUS"}', b'{"command":"FLUSH_MEDIA"}']
    follows = wc.ControlState()  # an Asterisk configured for JSON: our commands follow its MEDIA_START
    follows.receive(REAL_JSON_START)
    assert follows.json and follows.flush() == [b'{"command":"GET_STATUS"}', b'{"command":"FLUSH_MEDIA"}']
    assert follows.hangup_command == b'{"command":"HANGUP"}'


def test_control_state_stops_asking_when_asterisk_stops_answering():
    state = wc.ControlState(max_pending=2)
    assert len(state.flush()) == 2 and len(state.flush()) == 2
    assert state.flush() == [b"FLUSH_MEDIA"] and state.status() is None


def test_media_url_from_the_ari_url():
    cid = "6fc19566-46db-4a1d-a973-69cadcc63940"
    assert media_url("http://10.0.0.5:8088", cid) == f"ws://10.0.0.5:8088/media/{cid}"
    assert media_url("https://pbx.example:8089/ari/", cid) == f"wss://pbx.example:8089/media/{cid}"
    assert media_url("http://h:8088/asterisk/ari", cid) == f"ws://h:8088/asterisk/media/{cid}"
    assert media_url("ws://h:8088/media", cid) == f"ws://h:8088/media/{cid}"
    for base, c in (("ftp://h", cid), ("h:8088", cid), ("http://h:8088", ""), ("http://h", "a/b")):
        with pytest.raises(ValueError):
            media_url(base, c)
    assert redact(f"ws://h:8088/media/{cid}") == "ws://h:8088/media/6fc19566…"


# ------------------------------------------------------------------ the simulator's chan_websocket


class Ari:
    def __init__(self, sim: AsteriskSim):
        self.sim = sim
        token = base64.b64encode(b"asterisk:secret").decode()
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"})
        self.events: asyncio.Queue = asyncio.Queue()
        self._ws = None
        self._task = None

    async def start(self):
        self._ws = await self.http.ws_connect(f"{self.sim.ari_url}/events?app={APP}")
        self._task = asyncio.create_task(self._read())

    async def _read(self):
        async for msg in self._ws:
            await self.events.put(msg.json())

    async def wait(self, kind: str, channel: str, timeout: float = 3.0) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event["type"] == kind and event.get("channel", {}).get("id") == channel:
                    return event

    async def req(self, method: str, path: str, **params):
        async with self.http.request(method, f"{self.sim.ari_url}{path}", params=params) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def close(self):
        if self._task:
            self._task.cancel()
        if self._ws:
            await self._ws.close()
        await self.http.close()


@pytest.fixture
async def ari(tmp_path):
    sim = AsteriskSim(workdir=tmp_path)
    await sim.start("127.0.0.1", 0)
    client = Ari(sim)
    await client.start()
    yield client
    await client.close()
    await sim.stop()


async def make_leg(ari: Ari, fmt: str = "ulaw", channel_id: str = "em1", **extra) -> tuple[dict, str]:
    status, body = await ari.req(
        "POST",
        "/channels/externalMedia",
        app=APP,
        channelId=channel_id,
        format=fmt,
        transport="websocket",
        encapsulation="none",
        connection_type="server",
        **extra,
    )
    assert status == 200, body
    return body, media_url(ari.sim.url, body["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"])


async def test_the_channel_enters_stasis_only_once_the_worker_connected(ari):
    status, _ = await ari.req("POST", "/bridges", bridgeId="b1", type="mixing")
    body, url = await make_leg(ari)
    assert body["state"] == "Down" and body["name"].startswith("WebSocket/INCOMING/")
    assert list(body["channelvars"]) == ["MEDIA_WEBSOCKET_CONNECTION_ID", "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"]
    assert body["channelvars"]["MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"] == "160"
    assert await ari.req("POST", "/bridges/b1/addChannel", channel="em1") == (
        422,
        {"message": "Channel not in Stasis application"},
    )
    with pytest.raises(websockets.InvalidStatus) as unknown:
        await websockets.connect(url[:-4] + "0000", subprotocols=["media"])
    assert unknown.value.response.status_code == 404
    async with websockets.connect(url, subprotocols=["media"]) as ws:
        assert ws.subprotocol == "media"
        first = await asyncio.wait_for(ws.recv(), 2)
        assert first.startswith("MEDIA_START connection_id:") and "format:ulaw optimal_frame_size:160 ptime:20" in first
        start = await ari.wait("StasisStart", "em1")
        assert start["channel"]["state"] == "Up"
        assert (await ari.req("POST", "/bridges/b1/addChannel", channel="em1"))[0] == 204
        with pytest.raises(websockets.InvalidStatus) as second:
            await websockets.connect(url, subprotocols=["media"])
        assert second.value.response.status_code == 409
        await ws.send("HANGUP")
        await ari.wait("StasisEnd", "em1")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == 1000


async def test_the_queue_retimes_marks_flushes_and_flow_controls_like_22_10_1(ari):
    _, url = await make_leg(ari)
    leg = next(iter(ari.sim.websocket_media.legs.values()))
    frame = bytes([0x55]) * 160
    async with websockets.connect(url, subprotocols=["media"]) as ws:
        await ws.recv()  # MEDIA_START
        for _ in range(100):
            await ws.send(frame)
        await ws.send("MARK_MEDIA m100")  # behind the audio: flushed with it, never acknowledged
        await ws.send("GET_STATUS")
        status = wc.parse_event(await ws.recv())
        assert 95 <= status.queue_length <= 100
        await ws.send("GET_STATUS")
        await ws.send("FLUSH_MEDIA")
        await ws.send("GET_STATUS")
        dropped, after = wc.parse_event(await ws.recv()), wc.parse_event(await ws.recv())
        assert dropped.queue_length > 80 and after.queue_length == 0
        # whole frames only: half a frame is dropped, 170 bytes play 160
        await ws.send(frame[:80])
        await ws.send(frame + frame[:10])
        await ws.send("GET_STATUS")
        assert wc.parse_event(await ws.recv()).queue_length == 1
        await ws.send("REPORT_QUEUE_DRAINED")
        for _ in range(5):
            await ws.send(frame)
        await ws.send("MARK_MEDIA m5")
        t0 = asyncio.get_running_loop().time()
        # the next message is m5's: m100 was flushed with its audio and is never acknowledged
        assert wc.parse_event(await asyncio.wait_for(ws.recv(), 2)) == wc.MarkProcessed("m5")
        assert 0.08 <= asyncio.get_running_loop().time() - t0 <= 0.3  # played out at 20 ms per frame
        assert await asyncio.wait_for(ws.recv(), 1) == "QUEUE_DRAINED"
        for _ in range(950):
            await ws.send(frame)
        assert await asyncio.wait_for(ws.recv(), 2) == "MEDIA_XOFF"
        await ws.send("FLUSH_MEDIA")
        assert await asyncio.wait_for(ws.recv(), 2) == "MEDIA_XON"
        await ws.send("BOGUS")  # ignored
        await ws.send("MARK_MEDIA " + "x" * 200)  # over 128 bytes: ignored
        await ws.send("GET_STATUS")
        assert isinstance(wc.parse_event(await ws.recv()), wc.Status)
        assert leg.flushes == 2 and leg.commands.count("MARK_MEDIA") == 2  # the long one never reached it
        # a message over 65,535 bytes closes with 1009 and the channel hangs up
        await ws.send(b"\0" * 70000)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == 1009
    await ari.wait("ChannelDestroyed", "em1")


async def test_json_control_messages_with_transport_data(ari):
    _, url = await make_leg(ari, fmt="slin16", transport_data="f(json)")
    async with websockets.connect(url, subprotocols=["media"]) as ws:
        start = wc.parse_event(await ws.recv())
        assert start.format == "slin16" and start.optimal_frame_size == 640
        await ws.send("GET_STATUS")  # plain text in JSON mode
        assert wc.parse_event(await ws.recv()) == wc.Error("Unable to parse JSON command")
        await ws.send('{"command":"GET_STATUS"}')
        assert wc.parse_event(await ws.recv()).queue_length == 0


# ------------------------------------------------------------------ the worker's link against the simulator


class Sink:
    def __init__(self):
        self.audio: list[bytes] = []
        self.hangups: list[str] = []

    def on_audio(self, payload: bytes) -> None:
        self.audio.append(payload)

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def on_format(self, fmt: str) -> None:
        raise AssertionError(f"a WebSocket link carries the negotiated format, yet reported {fmt}")


async def test_the_link_starts_on_media_start_flushes_with_a_count_and_hears_the_hangup(ari):
    _, url = await make_leg(ari, fmt="slin")
    sink = Sink()
    link = WebSocketMediaLink(url, "slin", call_id="c1", on_started=lambda link: sink, connect_timeout=2)
    assert not link.send(bytes(320)) and link.stats.dropped_out == 1  # not started: nothing to send to
    await link.connect()
    assert link.format == "slin" and link.frame_bytes == 320 and link.control.channel_id == "em1"
    await ari.wait("StasisStart", "em1")
    leg = next(iter(ari.sim.websocket_media.legs.values()))
    for _ in range(50):  # a burst: Asterisk queues it
        assert link.send(bytes(320))
    await asyncio.sleep(0.1)
    dropped = await asyncio.wait_for(link.flush(), 1)
    assert 40 <= dropped <= 50 and leg.queue_length == 0 and leg.commands[-2:] == ["GET_STATUS", "FLUSH_MEDIA"]
    assert leg.frames_in == 50
    assert (await ari.req("DELETE", "/channels/em1"))[0] == 204
    for _ in range(100):
        if sink.hangups:
            break
        await asyncio.sleep(0.01)
    assert sink.hangups == ["hangup"]  # Asterisk closed with 1000
    assert not link.send(bytes(320))


async def test_reading_frames_allocates_no_large_buffer(ari):
    """Each read goes into the link's own buffer. A plain asyncio.Protocol gets a 256 KiB bytes object per read,
    shrunk to the ~1 KB received: glibc's heap then grew with every call (the soak)."""
    _, url = await make_leg(ari, fmt="slin")
    sink = Sink()
    link = WebSocketMediaLink(url, "slin", call_id="c1", on_started=lambda link: sink, connect_timeout=2)
    await link.connect()
    leg = next(iter(ari.sim.websocket_media.legs.values()))
    frames = [bytes([i]) * 320 for i in range(20)]
    await ari.wait("StasisStart", "em1")  # ARI's events read before measuring (aiohttp reads 256 KiB too)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for i, payload in enumerate(frames):  # one read per frame, as Asterisk paces them
            leg.deliver(payload, 8000)
            async with asyncio.timeout(2):
                while len(sink.audio) <= i:
                    await asyncio.sleep(0.005)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.audio == frames
    assert peak < 128 * 1024, f"{peak} B traced at the peak: a read allocated a large buffer"
    link.close()


async def test_the_link_speaks_json_to_an_asterisk_configured_for_it(ari):
    _, url = await make_leg(ari, fmt="slin16", transport_data="f(json)")
    link = WebSocketMediaLink(url, "slin16", on_started=lambda link: Sink(), connect_timeout=2)
    await link.connect()
    leg = next(iter(ari.sim.websocket_media.legs.values()))
    for _ in range(20):
        link.send(bytes(640))
    assert await asyncio.wait_for(link.flush(), 1) >= 10  # the JSON STATUS answered the JSON GET_STATUS
    assert leg.flushes == 1 and link.stats.bad_in == 0


async def test_the_link_refuses_and_fails_clearly(ari):
    _, url = await make_leg(ari)
    refused = WebSocketMediaLink(url, "ulaw", on_started=lambda link: None, connect_timeout=2)
    with pytest.raises(MediaConnectError, match="not taken"):
        await refused.connect()
    await ari.wait("ChannelDestroyed", "em1")  # our close hung the channel up
    with pytest.raises(MediaConnectError, match="404"):
        await WebSocketMediaLink(url, "ulaw", on_started=lambda link: Sink(), connect_timeout=2).connect()
    _, url2 = await make_leg(ari, fmt="slin16", channel_id="em2")
    with pytest.raises(MediaConnectError, match="expects ulaw"):
        await WebSocketMediaLink(url2, "ulaw", on_started=lambda link: Sink(), connect_timeout=2).connect()
    with pytest.raises(MediaConnectError, match="cannot connect"):
        await WebSocketMediaLink(
            "ws://127.0.0.1:9/media/x", "ulaw", on_started=lambda link: Sink(), connect_timeout=1
        ).connect()
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never upgrades
    port = silent.sockets[0].getsockname()[1]
    with pytest.raises(MediaConnectError, match="no MEDIA_START within 0.3 s"):
        slow = WebSocketMediaLink(
            f"ws://127.0.0.1:{port}/media/x", "ulaw", on_started=lambda link: Sink(), connect_timeout=0.3
        )
        await slow.connect()
    silent.close()
    with pytest.raises(ValueError):
        WebSocketMediaLink("ws://h/media/x", "g722", on_started=lambda link: Sink())


# ------------------------------------------------------------------ the controller's part


def test_websocket_media_needs_22_6_and_carries_the_four_formats():
    from controller.ari.capabilities import TransportUnavailable, capabilities_from

    old = capabilities_from("22.5.0", audiosocket_loaded=True, websocket_loaded=True)
    with pytest.raises(TransportUnavailable):
        old.best_format("websocket", "ulaw")
    new = capabilities_from("22.10.1", audiosocket_loaded=True, websocket_loaded=True)
    assert new.best_format("websocket", "slin24") == "slin24" and new.best_format("websocket", "ulaw") == "ulaw"


def test_websocket_is_a_profile_transport():
    from shared.config.schema import BUILTIN_PROFILES, Profile
    import msgspec

    assert BUILTIN_PROFILES["websocket_ulaw_8k"] == Profile(
        transport="websocket", format="ulaw", provider_format="g711_ulaw"
    )
    assert msgspec.convert({"transport": "websocket", "format": "slin16"}, Profile).transport == "websocket"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"transport": "webrtc"}, Profile)
