"""Contract test: every request the ARI client can send is valid for the Asterisk 22.10.1 swagger.

Each AriRest method is called (with its optional arguments) against a recording server on loopback; every
recorded request is then checked against `tests/fixtures/ari-api-docs-22.10.1/api-docs/*.json` (what a real
Asterisk 22.10.1 serves, recorded by `scripts/real-asterisk record-swagger`): the path matches an
`apis[].path` template with that `httpMethod`, every query parameter is declared for the operation as
`paramType: query`, required ones are present, values fit `dataType` and `allowableValues` (comma-separated
when `allowMultiple`), and a body is sent only where a body parameter exists.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller.ari.events import EventStream
from controller.ari.rest import AriRest

ROOT = Path(__file__).resolve().parent.parent
API_DOCS = ROOT / "tests" / "fixtures" / "ari-api-docs-22.10.1" / "api-docs"
APP = "asterisk-ai-voice-agent"


# --- the swagger validator ----------------------------------------------------------------------------------


@dataclass
class Operation:
    path: str
    method: str
    nickname: str
    params: dict[str, dict]
    response_class: str
    regex: re.Pattern[str]
    literal_segments: int


@dataclass
class Recorded:
    method: str
    path: str  # without the /ari prefix, decoded
    query: list[tuple[str, str]]
    body: bytes = b""
    content_type: str = ""
    websocket: bool = False


def _template_regex(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("(?P<%s>[^/]+)" % p[1:-1] if p.startswith("{") else re.escape(p) for p in parts) + "$")


class Swagger:
    def __init__(self, folder: Path):
        self.operations: list[Operation] = []
        for file in sorted(folder.glob("*.json")):
            for api in json.loads(file.read_text())["apis"]:
                literal = sum(1 for seg in api["path"].split("/") if seg and not seg.startswith("{"))
                for op in api["operations"]:
                    params = {p["name"]: p for p in op.get("parameters", [])}
                    self.operations.append(
                        Operation(
                            api["path"],
                            op["httpMethod"],
                            op["nickname"],
                            params,
                            op.get("responseClass", "void"),
                            _template_regex(api["path"]),
                            literal,
                        )
                    )
        # A literal route wins over a template (POST /channels/externalMedia vs POST /channels/{channelId}).
        self.operations.sort(key=lambda o: -o.literal_segments)

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for op in self.operations:
            if op.method == method and (match := op.regex.match(path)):
                return op, match.groupdict()
        return None

    def problems(self, req: Recorded) -> list[str]:
        found = self.find(req.method, req.path)
        if found is None:
            return [f"{req.method} {req.path}: no such operation in the swagger"]
        op, path_values = found
        where = f"{req.method} {op.path} ({op.nickname})"
        out: list[str] = []
        for name, value in path_values.items():
            if not value:
                out.append(f"{where}: empty path parameter {name}")
        seen: set[str] = set()
        for name, value in req.query:
            spec = op.params.get(name)
            if spec is None:
                out.append(f"{where}: unknown query parameter {name!r}")
                continue
            if spec["paramType"] != "query":
                out.append(f"{where}: {name!r} is a {spec['paramType']} parameter, sent in the query")
                continue
            if name in seen and not spec.get("allowMultiple"):
                out.append(f"{where}: {name!r} repeated")
            seen.add(name)
            out.extend(f"{where}: {problem}" for problem in _value_problems(name, value, spec))
        for name, spec in op.params.items():
            if spec.get("required") and spec["paramType"] == "query" and name not in seen:
                out.append(f"{where}: required query parameter {name!r} missing")
        body_params = {n: s for n, s in op.params.items() if s["paramType"] == "body"}
        if req.body:
            if not body_params:
                out.append(f"{where}: sends a body but the operation has no body parameter")
            else:
                out.extend(f"{where}: {problem}" for problem in _body_problems(req, body_params))
        elif any(s.get("required") for s in body_params.values()):
            out.append(f"{where}: required body missing")
        return out


def _value_problems(name: str, value: str, spec: dict) -> list[str]:
    values = value.split(",") if spec.get("allowMultiple") else [value]
    allowed = spec.get("allowableValues") or {}
    listed = allowed.get("values") if allowed.get("valueType") == "LIST" else None
    kind = spec["dataType"]
    out = []
    for item in values:
        if kind in ("int", "long") and not re.fullmatch(r"-?\d+", item):
            out.append(f"{name}={item!r} is not an {kind}")
        elif kind == "boolean" and item not in ("true", "false"):
            out.append(f"{name}={item!r} is not a boolean")
        elif kind == "string" and item == "" and spec.get("required"):
            out.append(f"{name} is required but empty")
        if listed is not None and item not in listed:
            out.append(f"{name}={item!r} not in {listed}")
    return out


def _body_problems(req: Recorded, body_params: dict[str, dict]) -> list[str]:
    if not req.content_type.startswith("application/json"):
        return [f"body sent as {req.content_type!r}, not JSON"]
    try:
        body = json.loads(req.body)
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    out = []
    for key, value in body.items():
        spec = body_params.get(key)
        if spec is None:
            out.append(f"unknown body field {key!r}")
        elif spec["dataType"] == "containers" and not (
            isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            out.append(f"body field {key!r} is not a string map")
    return out


@pytest.fixture(scope="module")
def swagger() -> Swagger:
    assert API_DOCS.is_dir(), f"swagger files missing under {API_DOCS}"
    return Swagger(API_DOCS)


# --- the recording server -------------------------------------------------------------------------------------

CHANNEL = {
    "id": "c1",
    "name": "PJSIP/100-00000001",
    "state": "Up",
    "protocol_id": "",
    "caller": {"name": "A", "number": "100"},
    "connected": {"name": "", "number": ""},
    "accountcode": "",
    "dialplan": {"context": "ai", "exten": "s", "priority": 1, "app_name": "Stasis", "app_data": APP},
    "creationtime": "2026-01-01T00:00:00.000+0000",
    "language": "en",
}
BRIDGE = {
    "id": "b1",
    "technology": "simple_bridge",
    "bridge_type": "mixing",
    "bridge_class": "stasis",
    "creator": "Stasis",
    "name": "",
    "channels": [],
    "creationtime": "2026-01-01T00:00:00.000+0000",
    "video_mode": "talker",
}
BODIES: dict[str, Any] = {
    "Channel": CHANNEL,
    "Bridge": BRIDGE,
    "List[Channel]": [CHANNEL],
    "List[Bridge]": [BRIDGE],
    "Playback": {
        "id": "pb1",
        "media_uri": "sound:beep",
        "target_uri": "channel:c1",
        "language": "en",
        "state": "queued",
    },
    "AsteriskInfo": {"system": {"version": "22.10.1", "entity_id": "02:00:00:00:00:01"}},
    "AsteriskPing": {"asterisk_id": "02:00:00:00:00:01", "ping": "pong", "timestamp": "t"},
    "Module": {
        "name": "chan_websocket.so",
        "description": "x",
        "use_count": 0,
        "status": "Running",
        "support_level": "core",
    },
    "Variable": {"value": "sales"},
}


class Recorder:
    """Answers like Asterisk would for a known operation (body shaped by its responseClass, 204 for void)
    and records every request."""

    def __init__(self, swagger: Swagger):
        self.swagger = swagger
        self.requests: list[Recorded] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> "Recorder":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]  # type: ignore
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/ari")
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        self.requests.append(
            Recorded(
                request.method,
                path,
                list(request.query.items()),
                await request.read(),
                request.headers.get("Content-Type", ""),
                is_ws,
            )
        )
        found = self.swagger.find(request.method, path)
        if found is None:
            return web.json_response({"message": "Resource not found"}, status=404)
        if is_ws:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws
        kind = found[0].response_class
        if kind == "void":
            return web.Response(status=204)
        return web.json_response(BODIES.get(kind, {}), status=201 if kind == "Playback" else 200)


@pytest.fixture
async def recorder(swagger):
    server = await Recorder(swagger).start()
    yield server
    await server.stop()


# --- the contract ---------------------------------------------------------------------------------------------


def every_call(rest: AriRest) -> dict[str, list[Any]]:
    """Typical calls of every public AriRest method, with the optional arguments filled in."""
    uid = str(uuid.uuid4())
    return {
        "ping": [rest.ping()],
        "info": [rest.info(), rest.info("system"), rest.info("system,build")],
        "module": [rest.module("chan_audiosocket.so")],
        "list_channels": [rest.list_channels()],
        "get_channel": [rest.get_channel("1795471578.0")],
        "get_variable": [
            rest.get_variable("1795471578.0", "AI_CONTEXT"),
            rest.get_variable("1795471578.0", "CALLERID(num)"),
        ],
        "set_variable": [rest.set_variable("c1", "AI_STATE", "active")],
        "answer": [rest.answer("c1")],
        "ring": [rest.ring("c1")],
        "ring_stop": [rest.ring_stop("c1")],
        "hangup": [rest.hangup("c1"), rest.hangup("c1", "busy"), rest.hangup("c1", "answered_elsewhere")],
        "continue_in_dialplan": [
            rest.continue_in_dialplan("c1", "transfers", "6001"),
            rest.continue_in_dialplan("c1", "transfers", "vm100", 2, label="start"),
        ],
        "start_moh": [rest.start_moh("c1"), rest.start_moh("c1", "default")],
        "stop_moh": [rest.stop_moh("c1")],
        "play": [
            rest.play("c1", "sound:hello-world"),
            rest.play("c1", "sound:hello-world,sound:beep", playback_id="pb1", lang="en"),
        ],
        "stop_playback": [rest.stop_playback("pb1")],
        "dial": [rest.dial("agent-1"), rest.dial("agent-1", caller="c1", timeout=15)],
        "external_media": [
            rest.external_media(app=APP, channel_id="em-1", external_host="127.0.0.1:40000", format="ulaw"),
            rest.external_media(
                app=APP,
                channel_id="em-2",
                external_host="127.0.0.1:40001",
                format="slin24",
                encapsulation="audiosocket",
                transport="tcp",
                data=uid,
                direction="both",
                variables={"VA_CALL": "c1"},
            ),
            rest.external_media(
                app=APP,
                channel_id="em-3",
                external_host="",
                format="slin24",
                encapsulation="none",
                transport="websocket",
                connection_type="server",
                transport_data="f(json)",
            ),
            rest.external_media(
                app=APP,
                channel_id="em-4",
                external_host="media-conn-1",
                format="ulaw",
                encapsulation="none",
                transport="websocket",
                connection_type="client",
            ),
        ],
        "create_channel": [
            rest.create_channel(
                endpoint="Local/6001@agents",
                app=APP,
                channel_id="agent-1",
                app_args="transfer,c1",
                originator="c1",
                variables={"VA_ROLE": "agent"},
            ),
            rest.create_channel(endpoint="PJSIP/6001", app=APP, channel_id="agent-2", formats="ulaw,alaw"),
        ],
        "originate": [
            rest.originate(
                endpoint="Local/s@caller-sim",
                context="ai-test",
                extension="s",
                priority=1,
                caller_id="Alice <5551234>",
                timeout=30,
                channel_id="o-1",
                formats="ulaw",
                variables={"AI_CONTEXT": "sales"},
            ),
            rest.originate(
                endpoint="Local/s@caller-sim", app=APP, app_args="test,1", channel_id="o-2", originator="c1"
            ),
            rest.originate(endpoint="Local/s@caller-sim", context="ai-test", extension="s", label="entry"),
        ],
        "list_bridges": [rest.list_bridges()],
        "get_bridge": [rest.get_bridge("b1")],
        "create_bridge": [rest.create_bridge("b1"), rest.create_bridge("b2", "mixing,dtmf_events", name="call c1")],
        "destroy_bridge": [rest.destroy_bridge("b1")],
        "add_channel": [
            rest.add_channel("b1", "c1"),
            rest.add_channel("b1", "c1", "em-1", role="participant", absorb_dtmf=True, mute=False),
        ],
        "remove_channel": [rest.remove_channel("b1", "em-1"), rest.remove_channel("b1", "c1", "em-1")],
    }


def public_methods() -> set[str]:
    return {
        name
        for name, fn in inspect.getmembers(AriRest, inspect.iscoroutinefunction)
        if not name.startswith("_") and name != "close"
    }


async def test_every_rest_method_matches_the_swagger(recorder, swagger):
    rest = AriRest(recorder.base_url, "aiagent", "pw")
    calls = every_call(rest)
    missing = public_methods() - set(calls)
    assert not missing, f"AriRest methods without a contract call: {sorted(missing)}"
    sent_by: dict[str, list[Recorded]] = {}
    for name, coros in calls.items():
        before = len(recorder.requests)
        for coro in coros:
            await coro
        sent_by[name] = recorder.requests[before:]
        assert len(sent_by[name]) == len(coros), name
    await rest.close()
    problems = [f"{name}: {p}" for name, reqs in sent_by.items() for req in reqs for p in swagger.problems(req)]
    assert problems == []
    # The requests really carry what was asked (the validator saw the optional parameters, too).
    em2 = dict(sent_by["external_media"][1].query)
    assert em2 == {
        "app": APP,
        "channelId": "em-2",
        "external_host": "127.0.0.1:40001",
        "format": "slin24",
        "encapsulation": "audiosocket",
        "transport": "tcp",
        "data": em2["data"],
        "direction": "both",
    }
    assert json.loads(sent_by["external_media"][1].body) == {"variables": {"VA_CALL": "c1"}}
    assert "external_host" not in dict(sent_by["external_media"][2].query)  # websocket server: no host
    assert dict(sent_by["add_channel"][1].query)["channel"] == "c1,em-1"
    ops = {swagger.find(r.method, r.path)[0].nickname for reqs in sent_by.values() for r in reqs}
    assert {
        "externalMedia",
        "create",
        "originate",
        "continueInDialplan",
        "addChannel",
        "hangup",
        "play",
        "getModule",
        "getInfo",
        "getChannelVar",
        "setChannelVar",
        "dial",
        "startMoh",
        "stop",
    } <= ops


async def test_events_websocket_matches_the_swagger(recorder, swagger):
    async def handler(event) -> None:
        pass

    for subscribe_all in (False, True):
        stopping = asyncio.Event()
        stream = EventStream(
            recorder.base_url, "aiagent", "pw", APP, handler=handler, subscribe_all=subscribe_all, backoff=(0.01, 0.02)
        )
        task = asyncio.create_task(stream.run(stopping))
        for _ in range(500):
            if stream.connects:
                break
            await asyncio.sleep(0.005)
        stopping.set()
        await asyncio.wait_for(task, 5)
        assert stream.connects >= 1
    upgrades = [r for r in recorder.requests if r.websocket]
    assert upgrades and all(swagger.problems(r) == [] for r in upgrades)
    assert swagger.find("GET", upgrades[0].path)[0].nickname == "eventWebsocket"
    assert any(dict(r.query).get("subscribeAll") == "true" for r in upgrades)


# --- the validator fails on bad requests ------------------------------------------------------------------


async def test_a_bad_request_on_the_wire_fails_the_check(recorder, swagger):
    rest = AriRest(recorder.base_url, "aiagent", "pw")
    # What a buggy method would send: an undeclared parameter (the swagger spells it `channelId`).
    await rest._call(
        "bad",
        "POST",
        "/channels/externalMedia",
        {"app": APP, "format": "ulaw", "external_host": "127.0.0.1:1", "channel_id": "x"},
    )
    await rest.close()
    problems = swagger.problems(recorder.requests[-1])
    assert problems == ["POST /channels/externalMedia (externalMedia): unknown query parameter 'channel_id'"]


@pytest.mark.parametrize(
    "req, expected",
    [
        (Recorded("POST", "/channels/c1/answer", [("bogus", "1")]), "unknown query parameter 'bogus'"),
        (Recorded("DELETE", "/channels/c1", [("reason", "bogus")]), "reason='bogus' not in"),
        (Recorded("POST", "/channels/c1/continue", [("priority", "one")]), "priority='one' is not an int"),
        (
            Recorded("POST", "/bridges/b1/addChannel", [("channel", "c1"), ("mute", "yes")]),
            "mute='yes' is not a boolean",
        ),
        (Recorded("POST", "/bridges/b1/addChannel", []), "required query parameter 'channel' missing"),
        (Recorded("GET", "/asterisk/info", [("only", "system,bogus")]), "only='bogus' not in"),
        (Recorded("POST", "/channels/c1/answer", [], b'{"variables": {}}', "application/json"), "no body parameter"),
        (
            Recorded("POST", "/channels", [("endpoint", "Local/x")], b'{"vars": {}}', "application/json"),
            "unknown body field 'vars'",
        ),
        (
            Recorded("POST", "/channels", [("endpoint", "Local/x")], b'{"variables": {"A": 1}}', "application/json"),
            "not a string map",
        ),
        (Recorded("POST", "/channels/c1/frobnicate", []), "no such operation"),
        (Recorded("PUT", "/channels", []), "no such operation"),
        (Recorded("POST", "/channels/externalMedia", [("app", APP)]), "required query parameter 'format' missing"),
        (Recorded("POST", "/channels/c1/variable", [("variable", "X"), ("value", "1"), ("variable", "Y")]), "repeated"),
    ],
)
def test_validator_rejects(swagger, req: Recorded, expected: str):
    problems = swagger.problems(req)
    assert any(expected in p for p in problems), problems


def test_literal_routes_win_over_templates(swagger):
    assert swagger.find("POST", "/channels/externalMedia")[0].nickname == "externalMedia"
    assert swagger.find("POST", "/channels/create")[0].nickname == "create"
    assert swagger.find("POST", "/channels/some-id")[0].nickname == "originateWithId"
    assert swagger.find("POST", "/bridges")[0].nickname == "create"
