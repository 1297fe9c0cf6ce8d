"""The controller's ARI client against a small aiohttp server on loopback that answers like the golden traces.

Responses and events come from the golden traces of a real Asterisk in `tests/fixtures/ari-traces/*.json`
(recorded by scripts/record-ari-traces): every recorded REST step
the client can express is replayed (the client must send the same method, path and query, and map the
recorded answer), and every recorded event must decode to its typed struct.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import random
import re
import socket
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller.ari import models as m
from controller.ari.capabilities import Capabilities, TransportUnavailable, capabilities_from, parse_version, probe
from controller.ari.errors import AriError, AriUnavailable
from controller.ari.events import EventStream, Reconnect, events_url
from controller.ari.ordered import KeyedDispatcher
from controller.ari.rest import AriRest, status_label

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "tests" / "fixtures" / "ari-traces"
TRACE_FILES = sorted(TRACES.glob("*.json"))
USER, PASSWORD = "aiagent", "s3cret-ari-pw-1234"
APP = "asterisk-ai-voice-agent"


def load(name: str) -> dict:
    return json.loads((TRACES / name).read_text())


def trace_events(name: str) -> list[dict]:
    return [s["event"] for s in load(name)["steps"] if s["dir"] == "event"]


def first_response(name: str, method: str, path: str) -> Any:
    return next(
        s["response"]
        for s in load(name)["steps"]
        if s["dir"] == "rest" and s["method"] == method and s["path"] == path and s["status"] < 300
    )


def first_event(name: str, kind: str) -> dict:
    return next(e for e in trace_events(name) if e["type"] == kind)


def test_traces_are_there():
    assert len(TRACE_FILES) >= 13, f"golden traces missing under {TRACES}"


# --- the fake Asterisk ----------------------------------------------------------------------------------------


class Request:
    def __init__(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body


class WsConn:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request):
        self.ws = ws
        self.request = request
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    async def send(self, event: dict | str) -> None:
        await self.ws.send_str(event if isinstance(event, str) else json.dumps(event))

    async def drop(self, how: str) -> None:
        """End the connection the way a failing Asterisk would."""
        transport = self.request.transport
        if how == "1011":
            await self.ws.close(code=1011, message=b"internal error")
        elif how == "1006":  # TCP closed without a close frame
            transport.close()
        elif how == "reset":  # RST instead of FIN
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            raise ValueError(how)


class FakeAri:
    """Answers REST from a FIFO of scripted replies (else fixed routes, else 404 like Asterisk) and serves
    /ari/events with connections the test drives."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.replies: deque[tuple[int, Any]] = deque()
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.delay = 0.0
        self.ws_refuse: int | None = None
        self.ws_attempts: list[float] = []
        self.ws_conns: list[WsConn] = []
        self.ws_opened: asyncio.Queue[WsConn] = asyncio.Queue()
        self.on_open: list[dict] = []  # events sent as soon as a connection opens
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FakeAri":
        app = web.Application()
        app.router.add_get("/ari/events", self._events)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for conn in self.ws_conns:
            if not conn.ws.closed:
                await conn.ws.close()
        if self._runner:
            await self._runner.cleanup()

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Request(request.method, request.path, dict(request.query), dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        key = (request.method, request.path.removeprefix("/ari"))
        if self.replies:
            status, payload = self.replies.popleft()
        elif key in self.routes:
            status, payload = self.routes[key]
        else:
            status, payload = 404, {"message": "Resource not found"}
        if isinstance(payload, bytes):
            return web.Response(status=status, body=payload, content_type="text/plain")
        if payload is None:
            return web.Response(status=status)
        return web.json_response(payload, status=status)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.ws_attempts.append(time.monotonic())
        self.requests.append(Request("GET", request.path, dict(request.query), dict(request.headers), b""))
        if self.ws_refuse:
            return web.json_response({"message": "refused"}, status=self.ws_refuse)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = WsConn(ws, request)
        self.ws_conns.append(conn)
        for event in self.on_open:
            await conn.send(event)
        self.ws_opened.put_nowait(conn)
        async for _ in ws:
            pass
        conn.close_code = ws.close_code
        conn.closed.set()
        return ws


@pytest.fixture
async def ari():
    server = await FakeAri().start()
    yield server
    await server.stop()


@pytest.fixture
async def rest(ari):
    client = AriRest(ari.base_url, USER, PASSWORD, timeout=2.0)
    yield client
    await client.close()


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)


# --- events: every traced event decodes -------------------------------------------------------------------


def _check_ids(event: Any, raw: dict) -> None:
    for attr in ("channel", "bridge", "playback", "peer", "replace_channel", "caller"):
        if isinstance(raw.get(attr), dict):
            assert getattr(event, attr).id == raw[attr]["id"], attr


@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: p.stem)
def test_every_traced_event_decodes(path: Path):
    events = [s["event"] for s in json.loads(path.read_text())["steps"] if s["dir"] == "event"]
    assert events
    for raw in events:
        event = m.decode_event(json.dumps(raw).encode())
        assert not isinstance(event, m.BadEvent), (raw["type"], event)
        assert m.event_type(event) == raw["type"]
        if raw["type"] not in m.KNOWN_TYPES:
            assert isinstance(event, m.OtherEvent) and event.raw == raw
            continue
        assert type(event).__name__ == raw["type"]
        assert (event.timestamp, event.application, event.asterisk_id) == (
            raw["timestamp"],
            raw["application"],
            raw["asterisk_id"],
        )
        _check_ids(event, raw)
        channel = raw.get("channel") or raw.get("peer")
        if channel:
            decoded = getattr(event, "channel", None) or event.peer
            assert decoded.name == channel["name"] and decoded.state == channel["state"]
            assert decoded.caller.number == channel["caller"]["number"]
            assert decoded.channelvars == channel.get("channelvars")
            assert decoded.dialplan.app_name == channel["dialplan"]["app_name"]
            assert m.default_key(event) == channel["id"]
        match event:
            case m.StasisStart():
                assert event.args == raw["args"]
            case m.ChannelHangupRequest():
                assert (event.cause, event.soft) == (raw.get("cause"), raw.get("soft"))
            case m.ChannelDestroyed():
                assert (event.cause, event.cause_txt) == (raw["cause"], raw["cause_txt"])
            case m.ChannelVarset():
                assert (event.variable, event.value) == (raw["variable"], raw["value"])
            case m.ChannelDtmfReceived():
                assert (event.digit, event.duration_ms) == (raw["digit"], raw["duration_ms"])
            case m.Dial():
                assert (event.dialstatus, event.dialstring) == (raw["dialstatus"], raw.get("dialstring", ""))
            case m.ChannelEnteredBridge() | m.ChannelLeftBridge() | m.BridgeDestroyed():
                assert event.bridge.channels == raw["bridge"]["channels"]
                if isinstance(event, m.BridgeDestroyed):
                    assert m.default_key(event) == raw["bridge"]["id"]


def test_trace_quirks_survive_decoding():
    """What the README lists as surprises is visible in the typed events."""
    hangups = [
        m.decode_event(json.dumps(e))
        for p in TRACE_FILES
        for e in (s["event"] for s in json.loads(p.read_text())["steps"] if s["dir"] == "event")
        if e["type"] == "ChannelHangupRequest"
    ]
    assert any(h.cause == 32 and h.soft is True for h in hangups)  # our DELETE: soft-hangup bitmask
    assert any(h.cause == 16 and h.soft is None for h in hangups)  # remote hangup: no soft key
    media_start = [
        m.decode_event(json.dumps(e))
        for e in trace_events("03-audiosocket-slin24.json")
        if e["type"] == "StasisStart" and e["channel"]["name"].startswith("AudioSocket/")
    ]
    assert media_start and media_start[0].args == ["<audiosocket-uuid>"]
    dials = [m.decode_event(json.dumps(e)) for e in trace_events("05-transfer-answer.json") if e["type"] == "Dial"]
    agent = [d for d in dials if d.peer.name.startswith("Local/7001")]
    assert [d.dialstatus for d in agent] == ["", "ANSWER"] and agent[1].dialstring == ""
    assert all(d.caller is None for d in agent)


def test_playback_and_move_events_decode():
    pb = {
        "type": "PlaybackFinished",
        "timestamp": "t",
        "application": APP,
        "playback": {
            "id": "pb1",
            "media_uri": "sound:beep",
            "target_uri": "channel:1795.4",
            "language": "en",
            "state": "done",
            "new_field": 1,
        },
    }
    event = m.decode_event(json.dumps(pb))
    assert isinstance(event, m.PlaybackFinished) and event.playback.state == "done"
    assert m.default_key(event) == "1795.4"  # ordered with its channel's events
    started = m.decode_event(
        json.dumps({**pb, "type": "PlaybackStarted", "playback": {**pb["playback"], "target_uri": "bridge:br-1"}})
    )
    assert isinstance(started, m.PlaybackStarted) and m.default_key(started) == "br-1"
    caller = first_event("01-inbound.json", "StasisStart")["channel"]
    moved = m.decode_event(
        json.dumps(
            {
                "type": "ApplicationMoveFailed",
                "timestamp": "t",
                "application": APP,
                "channel": caller,
                "destination": "nope",
                "args": ["a"],
            }
        )
    )
    assert isinstance(moved, m.ApplicationMoveFailed) and moved.destination == "nope" and moved.args == ["a"]
    glob = m.decode_event(
        json.dumps({"type": "ChannelVarset", "timestamp": "t", "application": APP, "variable": "G", "value": "1"})
    )
    assert isinstance(glob, m.ChannelVarset) and glob.channel is None and m.default_key(glob) == "global"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not json", "not JSON"),
        (b'[{"type": "StasisStart"}]', "not an object"),
        (b'{"channel": {"id": "x"}}', "no event type"),
        (b'{"type": 7}', "no event type"),
        (b'{"type": "StasisStart", "args": []}', "channel"),
        (b'{"type": "ChannelDestroyed", "cause": "16", "cause_txt": "x", "channel": {"id": "c"}}', "cause"),
        (b'{"type": "ChannelDtmfReceived", "digit": "1", "channel": {"id": "c"}}', "duration_ms"),
        (b'{"type": "StasisEnd", "channel": {"name": "no id"}}', "id"),
    ],
)
def test_malformed_messages_are_bad_events(data: bytes, reason: str):
    event = m.decode_event(data)
    assert isinstance(event, m.BadEvent)
    assert reason in event.reason


def test_unknown_types_and_fields():
    raw = first_event("01-inbound.json", "ChannelConnectedLine")
    other = m.decode_event(json.dumps(raw))
    assert isinstance(other, m.OtherEvent) and other.type == "ChannelConnectedLine"
    assert m.default_key(other) == raw["channel"]["id"]
    start = copy.deepcopy(first_event("01-inbound.json", "StasisStart"))
    start["brand_new"] = {"x": 1}
    start["channel"]["tenantid"] = "t1"
    assert isinstance(m.decode_event(json.dumps(start)), m.StasisStart)


def test_lone_surrogates_in_an_event_become_replacement_characters():
    """Asterisk escapes bytes of a caller name or channel variable that are not UTF-8 as lone surrogates
    ("\\udc80"): the StasisStart must still decode, into text any UTF-8 encoder (Redis, the logs) can write."""
    start = copy.deepcopy(first_event("01-inbound.json", "StasisStart"))
    start["channel"]["caller"]["name"] = "Al\udc80ice \ud83d\ude00"  # a lone one, and a real pair
    start["channel"]["channelvars"] = {"AI_CONTEXT": "demo\udfff"}
    data = json.dumps(start)  # ensure_ascii: the surrogates travel as escapes, as from Asterisk
    assert "\\udc80" in data
    event = m.decode_event(data)
    assert isinstance(event, m.StasisStart)
    assert event.channel.caller.name == "Al\ufffdice \U0001f600"
    assert event.channel.channelvars == {"AI_CONTEXT": "demo\ufffd"}
    event.channel.caller.name.encode()  # no UnicodeEncodeError on the way to Redis or a log
    del start["channel"]["channelvars"]
    assert m.decode_event(json.dumps(start)).channel.channelvars is None  # ari.conf without channelvars


# --- REST: the traces replayed ----------------------------------------------------------------------------

ID = r"([^/]+)"


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def call_for(rest: AriRest, method: str, path: str, q: dict[str, str]) -> tuple[str, Any] | None:
    """The AriRest call that sends this recorded request, or None when the client cannot express it (unknown
    routes, or a parameter its signature requires is missing from the recording)."""

    def has(*names: str) -> bool:
        return all(n in q for n in names)

    routes: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", r"/asterisk/info", lambda: ("info", rest.info(q.get("only"))) if set(q) <= {"only"} else None),
        ("GET", r"/channels", lambda: ("list_channels", rest.list_channels())),
        (
            "GET",
            rf"/channels/{ID}/variable",
            lambda c: ("get_variable", rest.get_variable(c, q["variable"])) if has("variable") else None,
        ),
        ("GET", rf"/channels/{ID}", lambda c: ("get_channel", rest.get_channel(c))),
        ("POST", rf"/channels/{ID}/answer", lambda c: ("answer", rest.answer(c))),
        (
            "POST",
            rf"/channels/{ID}/continue",
            lambda c: (
                (
                    "continue",
                    rest.continue_in_dialplan(
                        c, q["context"], q["extension"], int(q.get("priority", 1)), q.get("label")
                    ),
                )
                if has("context", "extension")
                else None
            ),
        ),
        ("POST", rf"/channels/{ID}/dial", lambda c: ("dial", rest.dial(c, q.get("caller"), _int(q.get("timeout"))))),
        ("POST", rf"/channels/{ID}/moh", lambda c: ("start_moh", rest.start_moh(c, q.get("mohClass")))),
        ("DELETE", rf"/channels/{ID}/moh", lambda c: ("stop_moh", rest.stop_moh(c))),
        ("DELETE", rf"/channels/{ID}", lambda c: ("hangup", rest.hangup(c, q.get("reason", "normal")))),
        (
            "POST",
            r"/channels/externalMedia",
            lambda: (
                (
                    "external_media",
                    rest.external_media(
                        app=q["app"],
                        channel_id=q["channelId"],
                        external_host=q["external_host"],
                        format=q["format"],
                        encapsulation=q.get("encapsulation", "rtp"),
                        transport=q.get("transport", "udp"),
                        data=q.get("data"),
                    ),
                )
                if has("app", "channelId", "external_host", "format", "encapsulation", "transport")
                else None
            ),
        ),
        (
            "POST",
            r"/channels/create",
            lambda: (
                (
                    "create_channel",
                    rest.create_channel(
                        endpoint=q["endpoint"],
                        app=q["app"],
                        channel_id=q["channelId"],
                        app_args=q.get("appArgs"),
                        originator=q.get("originator"),
                        formats=q.get("formats"),
                    ),
                )
                if has("endpoint", "app", "channelId")
                else None
            ),
        ),
        (
            "POST",
            r"/channels",
            lambda: (
                (
                    "originate",
                    rest.originate(
                        endpoint=q["endpoint"],
                        context=q.get("context"),
                        extension=q.get("extension"),
                        priority=_int(q.get("priority")),
                        app=q.get("app"),
                        app_args=q.get("appArgs"),
                        caller_id=q.get("callerId"),
                        timeout=_int(q.get("timeout")),
                        channel_id=q.get("channelId"),
                        formats=q.get("formats"),
                    ),
                )
                if has("endpoint")
                else None
            ),
        ),
        ("GET", r"/bridges", lambda: ("list_bridges", rest.list_bridges())),
        ("GET", rf"/bridges/{ID}", lambda b: ("get_bridge", rest.get_bridge(b))),
        (
            "POST",
            r"/bridges",
            lambda: (
                ("create_bridge", rest.create_bridge(q["bridgeId"], q.get("type", "mixing"), q.get("name")))
                if has("bridgeId")
                else None
            ),
        ),
        ("DELETE", rf"/bridges/{ID}", lambda b: ("destroy_bridge", rest.destroy_bridge(b))),
        (
            "POST",
            rf"/bridges/{ID}/addChannel",
            lambda b: ("add_channel", rest.add_channel(b, *q["channel"].split(","), role=q.get("role"))),
        ),
        (
            "POST",
            rf"/bridges/{ID}/removeChannel",
            lambda b: ("remove_channel", rest.remove_channel(b, *q["channel"].split(","))),
        ),
    ]
    for route_method, pattern, make in routes:
        if route_method == method and (match := re.fullmatch(pattern, path)):
            return make(*match.groups())
    return None


def expected_query(name: str, recorded: dict[str, str]) -> dict[str, str]:
    if name == "hangup" and "reason" not in recorded:
        return {**recorded, "reason": "normal"}  # the client always names the reason; Asterisk's default
    return recorded


def check_result(name: str, status: int, response: Any, result: Any) -> None:
    if status == 404 and name in ("get_channel", "get_bridge", "get_variable"):
        assert result is None
    elif status == 404 and name in ("hangup", "destroy_bridge"):
        assert result is False
    elif name in ("hangup", "destroy_bridge"):
        assert result is True
    elif isinstance(response, dict) and "id" in response:
        assert result.id == response["id"]
        if "channels" in response:
            assert result.channels == response["channels"]
        if "channelvars" in response:
            assert result.channelvars == response["channelvars"]
    elif isinstance(response, list):
        assert [x.id for x in result] == [x["id"] for x in response]
    elif name == "get_variable":
        assert result == response["value"]
    elif name == "info":
        assert result.system.version == response["system"]["version"]
    else:
        assert result is None


# The REST steps of each trace, read at collection (not inside the event loop).
REST_STEPS = {
    p.stem: [s for s in json.loads(p.read_text())["steps"] if s["dir"] == "rest"]
    for p in TRACE_FILES
    if p.stem != "07-stasis-failed"
}


@pytest.mark.parametrize("trace", sorted(REST_STEPS))
async def test_traced_rest_steps_replay(ari, rest, trace: str):
    steps = REST_STEPS[trace]
    replayed = 0
    statuses = set()
    for step in steps:
        q = step["query"] or {}
        call = call_for(rest, step["method"], step["path"], q)
        if call is None:
            continue
        name, coro = call
        ari.replies.append((step["status"], step["response"]))
        before = len(ari.requests)
        if (
            200 <= step["status"] < 300
            or (step["status"] == 404 and name in ("get_channel", "get_bridge", "hangup", "destroy_bridge"))
            or (step["status"] == 404 and name == "get_variable" and "variable" in step["response"]["message"])
        ):
            check_result(name, step["status"], step["response"], await coro)
        else:
            with pytest.raises(AriError) as info:
                await coro
            assert info.value.status == step["status"]
            assert info.value.message == step["response"]["message"]
            assert info.value.method == step["method"] and info.value.path.startswith("/")
        sent = ari.requests[before]
        assert (sent.method, sent.path) == (step["method"], "/ari" + step["path"]), name
        assert sent.query == expected_query(name, q), name
        assert sent.body == b""  # every traced step was sent without a body
        replayed += 1
        statuses.add(step["status"])
    assert replayed >= 5 or trace.startswith("08"), f"only {replayed} steps replayed"
    if trace == "04-errors":
        assert {400, 404, 409, 422, 500} <= statuses


# --- REST: mapping, auth, failures ------------------------------------------------------------------------


async def test_basic_auth_and_base_url_forms(ari):
    for base in (ari.base_url, ari.base_url + "/", ari.base_url + "/ari", ari.base_url + "/ari/"):
        client = AriRest(base, USER, PASSWORD)
        ari.routes[("GET", "/asterisk/ping")] = (200, {"ping": "pong", "asterisk_id": "x", "timestamp": "t"})
        await client.ping()
        await client.close()
        sent = ari.requests[-1]
        assert sent.path == "/ari/asterisk/ping"
        assert sent.headers["Authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert "api_key" not in sent.query


async def test_get_variable_unset_vs_channel_gone(ari, rest):
    ari.replies.append((404, {"message": "Provided variable was not found"}))
    assert await rest.get_variable("c1", "AI_CONTEXT") is None
    ari.replies.append((404, {"message": "Provided channel was not found"}))
    with pytest.raises(AriError) as info:
        await rest.get_variable("c1", "AI_CONTEXT")
    assert info.value.not_found and "channel" in info.value.message
    ari.replies.append((200, {"value": ""}))
    assert await rest.get_variable("c1", "AI_CONTEXT") == ""  # set but empty is not None
    assert ari.requests[-1].query == {"variable": "AI_CONTEXT"}


async def test_not_found_mappings(ari, rest):
    gone = {"message": "Channel not found"}
    for call in (rest.get_channel("x"), rest.get_bridge("x"), rest.module("chan_websocket.so")):
        ari.replies.append((404, gone))
        assert await call is None
    for call in (rest.hangup("x"), rest.destroy_bridge("x"), rest.stop_playback("x")):
        ari.replies.append((404, gone))
        assert await call is False
    for call in (rest.hangup("x"), rest.destroy_bridge("x"), rest.stop_playback("x")):
        ari.replies.append((204, None))
        assert await call is True
    # A 404 where the method has no mapping is an error.
    ari.replies.append((404, {"message": "Channel not found"}))
    with pytest.raises(AriError) as info:
        await rest.answer("x")
    assert info.value.not_found and info.value.gone and not info.value.conflict


@pytest.mark.parametrize(
    "status, message",
    [
        (400, "Invalid reason for hangup reason provided"),
        (409, "Channel not in Stasis application"),
        (422, "Channel not in this bridge"),
        (500, "An internal error prevented this request from being handled"),
        (501, "The encapsulation and/or transport is not supported"),
    ],
)
async def test_errors_carry_status_and_message(ari, rest, status, message):
    ari.replies.append((status, {"message": message}))
    with pytest.raises(AriError) as info:
        await rest.hangup("chan-1", "normal")
    err = info.value
    assert (err.status, err.message, err.method, err.path) == (status, message, "DELETE", "/channels/chan-1")
    assert str(err) == f"ARI DELETE /channels/chan-1 -> {status}: {message}"
    assert not isinstance(err, AriUnavailable)
    assert err.server_error == (status >= 500) and err.conflict == (status == 409)


async def test_error_body_that_is_not_json(ari, rest):
    ari.replies.append((502, b"Bad Gateway from a proxy"))
    with pytest.raises(AriError) as info:
        await rest.answer("c")
    assert info.value.status == 502 and info.value.message == "Bad Gateway from a proxy"
    ari.replies.append((200, b"{not json"))
    with pytest.raises(AriError) as info:
        await rest.get_channel("c")
    assert info.value.status == 200 and "unexpected response body" in info.value.message


async def test_unavailable_when_refused_or_slow(ari):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    client = AriRest(f"http://127.0.0.1:{closed_port}", USER, PASSWORD, timeout=1.0)
    with pytest.raises(AriUnavailable) as info:
        await client.list_channels()
    assert info.value.status == 0 and info.value.path == "/channels" and info.value.method == "GET"
    await client.close()
    slow = AriRest(ari.base_url, USER, PASSWORD, timeout=0.2)
    ari.delay = 0.5
    with pytest.raises(AriUnavailable) as info:  # the server answers after 0.5 s: only the timeout ends it
        await slow.answer("c")
    assert "0.2s" in info.value.message
    await slow.close()


async def test_ids_are_path_segments(ari, rest):
    ari.replies.append((204, None))
    await rest.answer("odd/id?x=1;2")
    assert ari.requests[-1].path == "/ari/channels/odd/id?x=1;2/answer"  # decoded by the server
    assert ari.requests[-1].query == {}


async def test_variables_go_in_a_json_body_only(ari, rest):
    chan = first_response("01-inbound.json", "POST", "/channels")
    ari.replies.append((200, chan))
    await rest.originate(endpoint="Local/s@x", app=APP, variables={"AI_CONTEXT": "sales"})
    sent = ari.requests[-1]
    assert json.loads(sent.body) == {"variables": {"AI_CONTEXT": "sales"}}
    assert sent.headers["Content-Type"].startswith("application/json")
    assert sent.query == {"endpoint": "Local/s@x", "app": APP}
    ari.replies.append((200, chan))
    await rest.originate(endpoint="Local/s@x", app=APP)
    assert ari.requests[-1].body == b""


async def test_add_channel_joins_ids_and_needs_one(ari, rest):
    ari.replies.append((204, None))
    await rest.add_channel("br", "a", "b", role="participant", absorb_dtmf=False)
    assert ari.requests[-1].query == {"channel": "a,b", "role": "participant", "absorbDTMF": "false"}
    with pytest.raises(ValueError):
        await rest.add_channel("br")


async def test_password_never_logged(ari, caplog):
    caplog.set_level(logging.DEBUG)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    client = AriRest(ari.base_url, USER, PASSWORD, timeout=0.3)
    ari.replies.extend([(204, None), (409, {"message": "Channel not in Stasis application"})])
    await client.answer("c")
    with pytest.raises(AriError) as err:
        await client.answer("c")
    ari.delay = 0.5
    with pytest.raises(AriUnavailable) as unavailable:
        await client.answer("c")
    ari.delay = 0
    await client.close()
    stopping = asyncio.Event()

    async def handler(event):
        pass

    stream = EventStream(ari.base_url, USER, PASSWORD, APP, handler=handler, backoff=(0.01, 0.05))
    task = asyncio.create_task(stream.run(stopping))
    await asyncio.wait_for(ari.ws_opened.get(), 5)
    stopping.set()
    await asyncio.wait_for(task, 5)
    ari.ws_refuse = 401  # a failed handshake is logged too
    stopping = asyncio.Event()
    task = asyncio.create_task(stream.run(stopping))
    await until(lambda: len(ari.ws_attempts) >= 3, what="refused attempts")
    stopping.set()
    await asyncio.wait_for(task, 5)
    text = caplog.text + repr(client) + repr(stream) + str(err.value) + str(unavailable.value)
    assert "Authorization" in caplog.text  # the handshake headers were logged (redacted) at DEBUG
    assert "HTTP 401" in caplog.text
    assert PASSWORD not in text and token not in text


# --- capabilities -----------------------------------------------------------------------------------------

WIDE = ("slin", "slin16", "slin24")


@pytest.mark.parametrize(
    "version, formats, websocket",
    [
        ("18.20.0", ("slin",), False),
        ("20.17.0", WIDE, True),
        ("21.12.0", WIDE, True),
        ("22.6.0", ("slin",), True),
        ("22.10.1", WIDE, True),
        ("23.4.1", WIDE, True),
        ("24.0.0", WIDE, True),  # newer than the table: keeps everything
    ],
)
async def test_capabilities_by_version(ari, rest, version, formats, websocket):
    system = first_response("02-remote-hangup.json", "GET", "/asterisk/info")
    ari.routes[("GET", "/asterisk/info")] = (200, {"system": {**system["system"], "version": version}})
    for mod in ("chan_audiosocket.so", "chan_websocket.so"):
        ari.routes[("GET", f"/asterisk/modules/{mod}")] = (
            200,
            {"name": mod, "description": "x", "use_count": 0, "status": "Running", "support_level": "core"},
        )
    caps = await probe(rest)
    assert caps.version == version and caps.version_tuple == parse_version(version)
    assert caps.audiosocket is True and caps.audiosocket_formats == formats
    assert caps.websocket_media is websocket  # chan_websocket loaded, but 18.x predates WebSocket media
    assert caps.rtp_formats == ("ulaw", "slin")
    assert ari.requests[0].query == {"only": "system"}
    assert caps.best_format("audiosocket", "slin24") == formats[-1]
    assert caps.best_format("rtp", "slin16") == "slin"  # slin16 over RTP is one-way
    assert caps.best_format("rtp", "ulaw") == "ulaw"


async def test_capabilities_with_modules_absent(ari, rest):
    ari.routes[("GET", "/asterisk/info")] = (200, {"system": {"version": "22.10.1", "entity_id": "e"}})
    caps = await probe(rest)  # the module routes answer 404 like Asterisk
    assert caps.audiosocket is False and caps.websocket_media is False
    assert caps.formats("audiosocket") == () and caps.formats("websocket") == ()
    with pytest.raises(TransportUnavailable):
        caps.best_format("audiosocket", "slin24")
    with pytest.raises(TransportUnavailable):
        caps.best_format("websocket", "ulaw")
    assert caps.best_format("rtp", "slin24") == "slin"


async def test_capabilities_module_not_running(ari, rest):
    ari.routes[("GET", "/asterisk/info")] = (200, {"system": {"version": "22.10.1", "entity_id": "e"}})
    ari.routes[("GET", "/asterisk/modules/chan_audiosocket.so")] = (
        200,
        {
            "name": "chan_audiosocket.so",
            "description": "x",
            "use_count": 0,
            "status": "Not Running",
            "support_level": "extended",
        },
    )
    assert (await probe(rest)).audiosocket is False


def test_capability_rules_pure():
    assert parse_version("certified-20.7-cert3") == (20, 7)
    assert parse_version("GIT-master-abc123") == ()
    git = capabilities_from("GIT-master-abc123", True, True)
    assert git.audiosocket_formats == ("slin",) and git.websocket_media is True  # unknown version trusts modules
    old = capabilities_from("16.30.0", False, False)
    assert old.audiosocket is False and old.websocket_media is False
    caps = Capabilities(
        version="22.10.1", version_tuple=(22, 10, 1), audiosocket=True, audiosocket_formats=WIDE, websocket_media=True
    )
    assert caps.best_format("websocket", "slin24") == "slin24"
    assert caps.best_format("audiosocket", "ulaw") == "slin"
    assert caps.best_format("audiosocket", "slin48") == "slin24"
    with pytest.raises(ValueError):
        caps.best_format("pigeon", "slin")


# --- the keyed dispatcher ---------------------------------------------------------------------------------


async def test_dispatcher_bounds_memory_and_frees_idle_keys():
    release = asyncio.Event()
    seen: list[int] = []

    async def handler(item: int) -> None:
        await release.wait()
        seen.append(item)

    d: KeyedDispatcher[int] = KeyedDispatcher(handler, max_pending=3)
    for i in range(3):
        await d.put(f"k{i % 2}", i)
    blocked = asyncio.create_task(d.put("k0", 3))
    await asyncio.sleep(0.05)
    assert not blocked.done() and d.pending == 3 and d.busy_keys == 2
    release.set()
    await asyncio.wait_for(blocked, 2)
    await asyncio.wait_for(d.drained(), 2)
    assert sorted(seen) == [0, 1, 2, 3] and d.busy_keys == 0 and d.pending == 0
    await d.close()


async def test_dispatcher_close_cancels_stuck_handlers():
    async def handler(item: int) -> None:
        await asyncio.sleep(60)

    d: KeyedDispatcher[int] = KeyedDispatcher(handler)
    for i in range(5):
        await d.put("k", i)
    await d.close(grace=0.05)
    assert d.pending == 0 and d.busy_keys == 0


async def test_dispatcher_close_is_bounded_when_a_handler_swallows_its_cancellation(monkeypatch):
    """On main close() waited for such a handler forever, and the controller's stop with it."""
    from controller.ari import ordered

    monkeypatch.setattr(ordered, "CLOSE_WAIT_S", 0.05, raising=False)
    let_go = asyncio.Event()

    async def handler(item: int) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await let_go.wait()  # a bug: cleanup that waits on something that never comes

    d: KeyedDispatcher[int] = KeyedDispatcher(handler)
    await d.put("k", 1)
    await asyncio.sleep(0)  # the handler runs
    try:
        await asyncio.wait_for(d.close(), 5)
    finally:
        let_go.set()
        await asyncio.sleep(0.01)


# --- the events stream ------------------------------------------------------------------------------------


def varset(key: str, seq: int) -> dict:
    """A ChannelVarset of the traces, moved to channel `key`, carrying a sequence number."""
    event = copy.deepcopy(first_event("01-inbound.json", "ChannelVarset"))
    event["channel"]["id"] = key
    event["variable"] = "SEQ"
    event["value"] = str(seq)
    return event


class Run:
    """An EventStream running against the fake server until the test ends."""

    def __init__(self, ari: FakeAri, handler, **kwargs: Any):
        self.stopping = asyncio.Event()
        kwargs.setdefault("backoff", (0.01, 0.05))
        self.stream = EventStream(ari.base_url, USER, PASSWORD, APP, handler=handler, **kwargs)
        self.task = asyncio.create_task(self.stream.run(self.stopping))

    async def stop(self, timeout: float = 3.0) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, timeout)


def test_events_url():
    assert events_url("http://127.0.0.1:8088", APP) == f"ws://127.0.0.1:8088/ari/events?app={APP}"
    assert events_url("https://pbx:8089/ari/", APP, True) == f"wss://pbx:8089/ari/events?app={APP}&subscribeAll=true"


async def test_stream_connects_with_auth_and_stops(ari):
    got: list[Any] = []

    async def handler(event):
        got.append(event)

    run = Run(ari, handler, subscribe_all=True)
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    assert conn.request.query["app"] == APP and conn.request.query["subscribeAll"] == "true"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert conn.request.headers["Authorization"] == f"Basic {token}"
    await conn.send(first_event("01-inbound.json", "StasisStart"))
    await until(lambda: got, what="StasisStart handled")
    assert isinstance(got[0], m.StasisStart) and run.stream.connected and run.stream.connects == 1
    started = time.monotonic()
    await run.stop()
    assert time.monotonic() - started < 1.0
    await asyncio.wait_for(conn.closed.wait(), 2)
    assert conn.close_code == 1000 and not run.stream.connected


async def test_ordered_per_key_under_load(ari):
    rng = random.Random(7)
    keys = [f"chan-{k}" for k in range(10)]
    order: dict[str, list[int]] = defaultdict(list)
    active: dict[str, int] = defaultdict(int)
    overlap = {"max_keys": 0, "same_key": 0}
    running = set()

    async def handler(event: m.ChannelVarset) -> None:
        key = event.channel.id
        active[key] += 1
        running.add(key)
        overlap["same_key"] = max(overlap["same_key"], active[key])
        overlap["max_keys"] = max(overlap["max_keys"], len(running))
        await asyncio.sleep(rng.uniform(0, 0.004))
        order[key].append(int(event.value))
        active[key] -= 1
        running.discard(key)

    run = Run(ari, handler)
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    sent: dict[str, list[int]] = defaultdict(list)
    for seq in range(200):
        key = rng.choice(keys)
        sent[key].append(seq)
        await conn.send(varset(key, seq))
    await until(lambda: run.stream.events_received == 200, what="200 events read")
    await asyncio.wait_for(run.stream.drained(), 5)
    assert dict(order) == dict(sent)  # each key's order kept, nothing lost
    assert overlap["same_key"] == 1  # one at a time per key
    assert overlap["max_keys"] > 1  # keys interleave
    await run.stop()


async def test_handler_exception_is_isolated(ari, caplog):
    handled: list[tuple[str, str]] = []

    async def handler(event) -> None:
        if isinstance(event, m.ChannelVarset) and event.value == "boom":
            raise RuntimeError("handler bug")
        handled.append((event.channel.id, getattr(event, "value", "")))

    run = Run(ari, handler)
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    bad = varset("a", 0)
    bad["value"] = "boom"
    for event in (varset("a", 1), bad, varset("b", 2), varset("a", 3)):
        await conn.send(event)
    await until(lambda: len(handled) == 3, what="the other events")
    assert handled == [("a", "1"), ("b", "2"), ("a", "3")] or sorted(handled) == [("a", "1"), ("a", "3"), ("b", "2")]
    assert [v for k, v in handled if k == "a"] == ["1", "3"]
    assert "ChannelVarset" in caplog.text and "handler bug" in caplog.text
    assert run.stream.connected
    await run.stop()


async def test_bad_messages_are_counted_and_skipped(ari, caplog):
    got: list[Any] = []

    async def handler(event) -> None:
        got.append(event)

    run = Run(ari, handler)
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    await conn.send("{oops")
    await conn.send(json.dumps({"type": "StasisStart", "args": []}))
    await conn.send(first_event("01-inbound.json", "ChannelConnectedLine"))
    await conn.send(first_event("01-inbound.json", "StasisEnd"))
    await until(lambda: len(got) == 2, what="the good events")
    assert [type(e).__name__ for e in got] == ["OtherEvent", "StasisEnd"]
    assert run.stream.bad_events == 2 and run.stream.events_received == 4
    assert "malformed message" in caplog.text and "StasisStart" in caplog.text
    await run.stop()


@pytest.mark.parametrize("how", ["1006", "1011", "reset"])
async def test_reconnect_reconciles_before_new_events(ari, how):
    log: list[str] = []

    async def on_connect(first: bool) -> None:
        log.append(f"on_connect:{first}:start")
        await asyncio.sleep(0.1)  # a reconcile takes a while; new events wait for it
        log.append(f"on_connect:{first}:end")

    async def handler(event) -> None:
        await asyncio.sleep(0.02)
        log.append(f"event:{event.value}")

    ari.on_open = []
    run = Run(ari, handler, on_connect=on_connect)
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    await until(lambda: "on_connect:True:end" in log, what="first on_connect")
    for seq in range(3):
        await conn.send(varset("c", seq))
    await until(lambda: run.stream.events_received == 3, what="events of connection 1")
    ari.on_open = [varset("c", 10), varset("d", 11)]  # sent the moment connection 2 opens
    await conn.drop(how)
    await asyncio.wait_for(ari.ws_opened.get(), 5)
    await until(lambda: len([x for x in log if x.startswith("event:")]) == 5, what="events of connection 2")
    assert log == [
        "on_connect:True:start",
        "on_connect:True:end",
        "event:0",
        "event:1",
        "event:2",
        "on_connect:False:start",
        "on_connect:False:end",
        "event:10",
        "event:11",
    ] or (
        log[:7]
        == [
            "on_connect:True:start",
            "on_connect:True:end",
            "event:0",
            "event:1",
            "event:2",
            "on_connect:False:start",
            "on_connect:False:end",
        ]
        and sorted(log[7:]) == ["event:10", "event:11"]
    )
    assert run.stream.connects == 2 and run.stream.connected
    await run.stop()


async def test_on_connect_failure_retries(ari):
    calls: list[bool] = []

    async def on_connect(first: bool) -> None:
        calls.append(first)
        if len(calls) == 1:
            raise RuntimeError("reconcile failed")

    async def handler(event) -> None:
        pass

    run = Run(ari, handler, on_connect=on_connect)
    await until(lambda: len(calls) >= 2 and run.stream.connected, what="second on_connect")
    assert calls == [True, True]  # the startup reconcile never succeeded: the retry is still the first
    first = ari.ws_conns[0]
    await asyncio.wait_for(first.closed.wait(), 2)
    assert first.close_code == 1011
    await until(lambda: len(ari.ws_conns) == 2, what="second connection")
    await ari.ws_conns[1].drop("1011")
    await until(lambda: len(calls) == 3, what="third on_connect")
    assert calls == [True, True, False] and run.stream.connects == 3
    await run.stop()


@pytest.mark.parametrize("failure", [RuntimeError("reconcile bug"), Reconnect()])
async def test_an_on_connect_that_asks_to_reconnect_is_not_logged_as_a_bug(ari, caplog, failure):
    calls: list[bool] = []

    async def on_connect(first: bool) -> None:
        calls.append(first)
        if len(calls) == 1:
            raise failure

    async def handler(event) -> None:
        pass

    run = Run(ari, handler, on_connect=on_connect)
    await until(lambda: len(calls) >= 2 and run.stream.connected, what="second on_connect")
    assert calls == [True, True]
    # A bug is logged with its traceback; a passing failure (Reconnect) was explained by whoever raised it.
    assert ("Traceback" in caplog.text) == isinstance(failure, RuntimeError)
    await run.stop()


async def test_backoff_grows_is_bounded_and_stop_interrupts_it(ari):
    ari.ws_refuse = 503

    async def handler(event) -> None:
        pass

    run = Run(ari, handler, backoff=(0.01, 0.08))
    await until(lambda: len(ari.ws_attempts) >= 8, what="8 refused attempts")
    delays = run.stream.last_delays
    assert all(d <= 0.08 for d in delays)
    assert max(delays) > 0.04 and min(delays[:1]) <= 0.01  # grew from the minimum toward the cap
    assert not run.stream.connected
    ari.ws_refuse = None  # Asterisk is back: the stream connects
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    await until(lambda: run.stream.connected, what="connected")
    assert run.stream.connects == 1 and conn.request.query["app"] == APP
    await conn.drop("1011")
    await asyncio.wait_for(ari.ws_opened.get(), 5)
    await until(lambda: run.stream.connects == 2, what="reconnected")
    # Stop while waiting to reconnect: returns at once, not after the backoff.
    ari.ws_refuse = 503
    run.stream._backoff_min = run.stream._backoff_max = 30.0
    await ari.ws_conns[-1].drop("1006")
    await until(lambda: not run.stream.connected, what="disconnect")
    started = time.monotonic()
    await run.stop()
    assert time.monotonic() - started < 1.0


async def test_bad_base_url_is_a_configuration_error():
    async def handler(event) -> None:
        pass

    stream = EventStream("ftp://127.0.0.1:1", USER, PASSWORD, APP, handler=handler)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(stream.run(asyncio.Event()), 2)
    assert "InvalidURI" in type(info.value).__name__


async def test_metrics_have_low_cardinality_labels(ari, rest):
    from prometheus_client import REGISTRY

    from shared import metrics

    metrics.register("controller")  # what the controller process does at start

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("va_ari_requests_total", method="hangup", status="404")
    ari.replies.append((404, {"message": "Channel not found"}))
    await rest.hangup("chan-123")
    assert value("va_ari_requests_total", method="hangup", status="404") == before + 1
    other_before = value("va_ari_events_total", type="other")
    start_before = value("va_ari_events_total", type="StasisStart")
    reconnects_before = value("va_ari_reconnects_total")

    async def handler(event) -> None:
        pass

    run = Run(ari, handler)
    conn = await asyncio.wait_for(ari.ws_opened.get(), 5)
    await until(lambda: run.stream.connected, what="connected")
    assert value("va_ari_connected") == 1
    await conn.send(first_event("01-inbound.json", "StasisStart"))
    await conn.send(first_event("01-inbound.json", "ChannelConnectedLine"))
    await until(lambda: run.stream.events_received == 2, what="2 events")
    assert value("va_ari_events_total", type="StasisStart") == start_before + 1
    assert value("va_ari_events_total", type="other") == other_before + 1
    assert value("va_ari_events_total", type="ChannelConnectedLine") == 0
    await conn.drop("1011")
    await until(lambda: run.stream.connects == 2, what="reconnect")
    assert value("va_ari_reconnects_total") == reconnects_before + 1
    await run.stop()
    assert value("va_ari_connected") == 0
    ids = [s.labels for metric in REGISTRY.collect() if metric.name.startswith("va_ari") for s in metric.samples]
    assert not any("chan-123" in v for labels in ids for v in labels.values())


def test_a_status_label_is_documented_or_a_class():
    assert [status_label(s) for s in (200, 404, 503, 299, 418, 599, 600, 0)] == [
        "200",
        "404",
        "503",
        "2xx",
        "4xx",
        "5xx",
        "invalid",
        "invalid",
    ]


async def test_an_odd_status_is_counted_by_its_class(ari, rest):
    from prometheus_client import REGISTRY

    from shared import metrics

    metrics.register("controller")
    before = REGISTRY.get_sample_value("va_ari_requests_total", {"method": "hangup", "status": "4xx"}) or 0.0
    for status in (418, 451, 499):
        ari.replies.append((status, {"message": "odd"}))
        with pytest.raises(AriError):
            await rest.hangup("chan-1")
    assert REGISTRY.get_sample_value("va_ari_requests_total", {"method": "hangup", "status": "4xx"}) == before + 3
    assert REGISTRY.get_sample_value("va_ari_requests_total", {"method": "hangup", "status": "418"}) is None


async def test_an_answer_over_the_body_limit_is_an_ari_error_not_held(ari):
    client = AriRest(ari.base_url, USER, PASSWORD, timeout=2.0, max_body_bytes=1000)
    try:
        ari.replies.append((200, [{"id": f"c{i}", "name": "PJSIP/x", "state": "Up"} for i in range(100)]))
        with pytest.raises(AriError, match="over the 1000-byte limit"):
            await client.list_channels()
        ari.replies.append((200, []))
        assert await client.list_channels() == []  # the client goes on
    finally:
        await client.close()
