"""The Asterisk simulator against the golden traces of a real Asterisk 22.10.1 and the ARI swagger.

For each trace file (tests/fixtures/ari-traces, recorded by scripts/record-ari-traces) the client's REST steps
are replayed in order against the simulator, with the dialplan the recording used (kept in the file), on a
clock scaled down by SCALE (the trace's waits shrink; before every step the replay also waits for the events
that preceded it in the trace, so it acts on events, never on a fixed sleep). Placeholders
(`<chan:caller>`, `<bridge:1>`, `<ts>`, ...) are bound to the ids the simulator produced by unifying each
response and event with its recorded twin. Compared: status codes, full response bodies (message texts
included), and the complete sequence of events the app received - every key, in Asterisk's key order.
Values the README says change from run to run are matched loosely: the `0x...` address in UnicastRTP names,
UNICASTRTP_LOCAL_PORT, the order of list items (a bridge's `channels`, GET /channels), the order within a run of
events of one type (BRIDGEPEER, ConnectedLine on both channels), and with subscribeAll the interleaving of
different channels' events (each channel's, bridge's or device's own order must hold).

Every event the simulator sent and every 2xx response body is also validated against its swagger model
(required properties, no undeclared ones, basic types, enum values).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sim.asterisk import AsteriskSim

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "tests" / "fixtures" / "ari-traces"  # scripts/record-ari-traces
API_DOCS = ROOT / "tests" / "fixtures" / "ari-api-docs-22.10.1" / "api-docs"
APP = "asterisk-ai-voice-agent"
USER, PASSWORD = "aiagent", "secret"
SCALE = 0.1  # trace time -> replay time

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000"
CLIENT_CHOSEN = ("<bridge:", "<chan:media", "<chan:agent>", "<audiosocket-uuid>")


def load_trace(name: str) -> dict:
    return json.loads((TRACES / f"{name}.json").read_text())


# --- unification of recorded and simulated JSON ---------------------------------------------------------------


class Unifier:
    """Matches recorded JSON (with placeholders) against the simulator's, binding placeholders on the way."""

    def __init__(self, replacements: dict[str, str], placeholders: list[str]):
        self.bind: dict[str, str] = {}
        self.replacements = replacements
        self.placeholders = placeholders
        tokens = sorted(set(placeholders) | {"<ts>"}, key=len, reverse=True)
        self.token_re = re.compile("|".join(re.escape(t) for t in tokens))

    def _pattern(self, text: str, key: str | None) -> re.Pattern:
        for old, new in self.replacements.items():
            text = text.replace(old, new)
        out, pos, groups = [], 0, []
        for m in self.token_re.finditer(text):
            out.append(re.escape(text[pos : m.start()]))
            token = m.group(0)
            if token == "<ts>":
                out.append(TS)
            elif token in self.bind:
                out.append(re.escape(self.bind[token]))
            elif token in groups:
                out.append(f"(?P=g{groups.index(token)})")
            else:
                out.append(f"(?P<g{len(groups)}>.+?)")
                groups.append(token)
            pos = m.end()
        out.append(re.escape(text[pos:]))
        pattern = "".join(out)
        pattern = re.sub(r"\\-0x[0-9a-f]+", r"\\-0x[0-9a-f]+", pattern)  # UnicastRTP/host:port-0x7f52... names
        if key == "UNICASTRTP_LOCAL_PORT":
            pattern = r"\d+"
        self._groups = groups
        return re.compile(f"^{pattern}$", re.S)

    def unify(
        self, rec: Any, got: Any, path: str = "$", errors: list[str] | None = None, key: str | None = None
    ) -> list[str]:
        errors = [] if errors is None else errors
        if isinstance(rec, dict):
            self._unify_object(rec, got, path, errors)
        elif isinstance(rec, list):
            self._unify_list(rec, got, path, errors, key)
        elif isinstance(rec, str):
            self._unify_string(rec, got, path, errors, key)
        elif rec != got or type(rec) is not type(got):
            errors.append(f"{path}: {got!r} != recorded {rec!r}")
        return errors

    def _unify_object(self, rec: dict, got: Any, path: str, errors: list[str]) -> None:
        if not isinstance(got, dict):
            errors.append(f"{path}: expected an object, got {got!r}")
            return
        if list(rec) != list(got):
            errors.append(f"{path}: keys {list(got)} != recorded {list(rec)}")
        for k in rec:
            if k in got:
                self.unify(rec[k], got[k], f"{path}.{k}", errors, k)

    def _unify_list(self, rec: list, got: Any, path: str, errors: list[str], key: str | None) -> None:
        if not isinstance(got, list) or len(rec) != len(got):
            errors.append(f"{path}: {got!r} != recorded {rec!r}")
            return
        remaining = list(range(len(got)))
        for i, item in enumerate(rec):  # list order is not significant (README: varies run to run)
            for j in remaining:
                trial = Unifier(self.replacements, self.placeholders)
                trial.bind = dict(self.bind)
                if not trial.unify(item, got[j], f"{path}[{i}]", key=key):
                    self.bind = trial.bind
                    remaining.remove(j)
                    break
            else:
                errors.append(f"{path}[{i}]: no match for recorded {item!r} in {got!r}")

    def _unify_string(self, rec: str, got: Any, path: str, errors: list[str], key: str | None) -> None:
        if not isinstance(got, str):
            errors.append(f"{path}: {got!r} is not a string (recorded {rec!r})")
            return
        pattern = self._pattern(rec, key)
        groups = list(self._groups)
        m = pattern.match(got)
        if m is None:
            errors.append(f"{path}: {got!r} does not match recorded {rec!r}")
        else:
            for i, token in enumerate(groups):
                self.bind[token] = m.group(f"g{i}")

    def substitute(self, text: str) -> str:
        for old, new in self.replacements.items():
            text = text.replace(old, new)

        def repl(m: re.Match) -> str:
            token = m.group(0)
            if token not in self.bind:
                if not token.startswith(CLIENT_CHOSEN):
                    raise AssertionError(f"placeholder {token} used before it was seen")
                self.bind[token] = str(uuid.uuid4())  # the client pre-assigns these ids (random UUID4s)
            return self.bind[token]

        return self.token_re.sub(repl, text)


# --- swagger models ---------------------------------------------------------------------------------------------


class Swagger:
    """Models and operations of the ARI swagger (1.1) files, for validating what the simulator sends."""

    def __init__(self, docs: Path):
        self.models: dict[str, dict] = {}
        self.operations: list[tuple[str, re.Pattern, str]] = []
        for path in sorted(docs.glob("*.json")):
            doc = json.loads(path.read_text())
            self.models.update(doc.get("models", {}))
            for api in doc.get("apis", []):
                regex = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(api["path"])) + "$")
                for op in api["operations"]:
                    self.operations.append((op["httpMethod"], regex, op.get("responseClass", "void"), api["path"]))
        self.parents: dict[str, list[str]] = {}
        for name, model in self.models.items():
            for sub in model.get("subTypes", []):
                self.parents.setdefault(sub, []).append(name)

    def properties(self, name: str) -> dict[str, dict]:
        props = dict(self.models[name].get("properties", {}))
        for parent in self.parents.get(name, []):
            props = {**self.properties(parent), **props}
        return props

    def response_class(self, method: str, path: str) -> str | None:
        matches = [(op[3].count("{"), op[2]) for op in self.operations if op[0] == method and op[1].match(path)]
        return min(matches)[1] if matches else None

    def validate(self, value: Any, type_name: str, where: str = "$") -> list[str]:
        errors: list[str] = []
        if type_name.startswith("List[") and type_name.endswith("]"):
            if not isinstance(value, list):
                return [f"{where}: expected a list for {type_name}"]
            for i, item in enumerate(value):
                errors += self.validate(item, type_name[5:-1], f"{where}[{i}]")
            return errors
        basic = {
            "string": str,
            "Date": str,
            "int": int,
            "long": int,
            "double": (int, float),
            "boolean": bool,
            "object": dict,
        }
        if type_name in basic:
            ok = isinstance(value, basic[type_name]) and not (
                type_name in ("int", "long", "double") and isinstance(value, bool)
            )
            return [] if ok else [f"{where}: {value!r} is not a {type_name}"]
        if type_name not in self.models:
            return [f"{where}: unknown model {type_name}"]
        if not isinstance(value, dict):
            return [f"{where}: expected an object for {type_name}"]
        model_name = type_name
        if value.get("type") in self.models and type_name in ("Message", "Event"):
            model_name = value["type"]
        props = self.properties(model_name)
        for prop, spec in props.items():
            if spec.get("required") and prop not in value:
                errors.append(f"{where}: {model_name} lacks required {prop}")
        for prop, item in value.items():
            spec = props.get(prop)
            if spec is None:
                errors.append(f"{where}: {model_name} does not declare {prop}")
                continue
            errors += self.validate(item, spec["type"], f"{where}.{prop}")
            allowed = (spec.get("allowableValues") or {}).get("values")
            if allowed and isinstance(item, str) and item not in allowed:
                errors.append(f"{where}.{prop}: {item!r} not in {allowed}")
        return errors


SWAGGER = Swagger(API_DOCS)


# --- the replay -------------------------------------------------------------------------------------------------


class Listeners:
    """The recording's media listeners: UDP for RTP, TCP for AudioSocket, plus a port where nothing listens."""

    def __init__(self):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.rtp_port = self.udp.getsockname()[1]
        self.rtp_packets: list[tuple[bytes, tuple]] = []
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        self.closed_port = closed.getsockname()[1]
        closed.close()
        self.as_frames: list[tuple[int, bytes]] = []
        self.as_writer: asyncio.StreamWriter | None = None
        self.as_eof = asyncio.Event()
        self.as_server: asyncio.AbstractServer | None = None
        self.as_port = 0

    async def start(self) -> None:
        self.as_server = await asyncio.start_server(self._audiosocket, "127.0.0.1", 0)
        self.as_port = self.as_server.sockets[0].getsockname()[1]

    async def _audiosocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.as_writer = writer
        try:
            while True:
                header = await reader.readexactly(3)
                length = int.from_bytes(header[1:3], "big")
                self.as_frames.append((header[0], await reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.as_eof.set()

    def drain_rtp(self) -> None:
        while True:
            try:
                self.rtp_packets.append(self.udp.recvfrom(4096))
            except BlockingIOError:
                return

    async def close(self) -> None:
        self.udp.close()
        if self.as_writer is not None:
            self.as_writer.close()
        if self.as_server is not None:
            self.as_server.close()


class Replay:
    def __init__(self, name: str, scale: float = SCALE, **sim_options: Any):
        self.trace = load_trace(name)
        self.name = name
        self.scale = scale
        # the version string the recorded Asterisk reported (Debian's package: "22.10.1+dfsg+...")
        self.sim = AsteriskSim(
            users={USER: PASSWORD},
            dialplan=self.trace["dialplan"],
            time_scale=scale,
            version=self.trace["asterisk_version"],
            **sim_options,
        )
        self.listeners = Listeners()
        self.events: list[dict] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task | None = None
        self.errors: list[str] = []
        self.rest_errors: list[str] = []
        self.created: dict[str, Any] = {}  # placeholder -> the simulator's Channel object

    async def __aenter__(self) -> Replay:
        await self.listeners.start()
        await self.sim.start("127.0.0.1", 0)
        self.session = aiohttp.ClientSession()
        self.unifier = Unifier(
            {
                "127.0.0.1:<rtp-listener>": f"127.0.0.1:{self.listeners.rtp_port}",
                "127.0.0.1:<audiosocket-listener>": f"127.0.0.1:{self.listeners.as_port}",
                "127.0.0.1:<closed-listener>": f"127.0.0.1:{self.listeners.closed_port}",
            },
            self.trace["placeholders"],
        )
        self.unifier.bind["<asterisk_id>"] = self.sim.entity_id
        register = self.sim.pbx.register
        self.all_channels: dict[str, Any] = {}

        def capture(ch):  # keep every channel, also those gone before the test looks
            self.all_channels[ch.id] = ch
            return register(ch)

        self.sim.pbx.register = capture  # type: ignore[method-assign]
        return self

    async def __aexit__(self, *exc) -> None:
        await self._close_ws()
        await self.session.close()
        await self.sim.stop()
        await self.listeners.close()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}

    async def _open_ws(self, query: str) -> None:
        self.ws = await self.session.ws_connect(self.sim.url + "/ari/events?" + query, headers=self.auth)
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    async def _read(self, ws) -> None:
        async for msg in ws:
            self.events.append(json.loads(msg.data))

    async def _close_ws(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=2)
            self.reader = None

    async def _wait_events(self, n: int, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def run(self) -> None:
        t0 = time.monotonic()
        seen = 0  # recorded events before the current step
        for step in self.trace["steps"]:
            if step["dir"] == "event":
                seen += 1
                continue
            if step["dir"] == "media" and step.get("source") not in ("client", "listener"):
                continue
            await self._wait_events(seen)
            delay = t0 + step["t_ms"] / 1000 * self.scale - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if step["dir"] == "rest":
                await self._rest(step)
            else:
                await self._media(step)
        await self._wait_events(seen)
        await asyncio.sleep(0.05)  # anything the simulator sends beyond the recording shows up here
        await self._close_ws()
        self.listeners.drain_rtp()

    async def _media(self, step: dict) -> None:
        note = step["note"]
        if note.startswith("events WebSocket connected"):
            await self._open_ws(note.split("?", 1)[1].split(" ")[0])
        elif note.startswith("events WebSocket closed"):
            await self._close_ws()
        elif note.startswith("listener starts sending") and self.listeners.as_writer is not None:
            kind = self.listeners.as_frames[1][0] if len(self.listeners.as_frames) > 1 else 0x10
            size = {0x10: 320, 0x12: 640, 0x13: 960}[kind]
            for _ in range(5):
                self.listeners.as_writer.write(bytes([kind]) + size.to_bytes(2, "big") + bytes(size))
        elif note.startswith("listener sent the hangup message") and self.listeners.as_writer is not None:
            self.listeners.as_writer.write(b"\x00\x00\x00")

    async def _rest(self, step: dict) -> None:
        u = self.unifier
        path = u.substitute(step["path"])
        query = {k: u.substitute(v) for k, v in (step["query"] or {}).items()}
        headers = {} if step["status"] == 401 else self.auth  # the 401 rows were sent without credentials
        async with self.session.request(
            step["method"], self.sim.url + "/ari" + path, params=query, headers=headers
        ) as resp:
            text = await resp.text()
            body = json.loads(text) if text else None
        where = f"{step['method']} {step['path']} (t={step['t_ms']})"
        if resp.status != step["status"]:
            self.rest_errors.append(f"{where}: status {resp.status} != recorded {step['status']} ({body})")
            return
        for e in u.unify(step["response"], body, where):
            self.rest_errors.append(e)
        if step["method"] == "POST" and step["path"] == "/channels" and resp.status == 200:
            token = step["response"]["id"]
            self.created[token] = self.all_channels.get(u.bind.get(token, ""))

    def compare_events(self) -> list[str]:
        if "subscribeAll=true" in (self.trace.get("events_websocket") or ""):
            return self.compare_events_per_entity()
        return self.compare_events_in_order()

    def compare_events_per_entity(self) -> list[str]:
        """With subscribeAll the real PBX interleaves the events of different channels (the two halves of a Local
        channel, device states) differently from run to run; only each entity's own order is stable. Every
        recorded event must match a distinct simulated one (the first that unifies, in recorded order), nothing
        may be left over, and for each entity the matched events must come in the recorded order."""
        recorded = [s["event"] for s in self.trace["steps"] if s["dir"] == "event"]
        errors, used, matched = [], set(), []
        for i, rec in enumerate(recorded):
            for j, got in enumerate(self.events):
                if j in used or got["type"] != rec["type"]:
                    continue
                if rec.get("variable") == "UNICASTRTP_LOCAL_PORT" and str(got.get("value", "")).isdigit():
                    rec = {**rec, "value": got["value"]}  # the port varies run to run (README)
                trial = Unifier(self.unifier.replacements, self.unifier.placeholders)
                trial.bind = dict(self.unifier.bind)
                if not trial.unify(rec, got):
                    self.unifier.bind = trial.bind
                    used.add(j)
                    matched.append((i, j))
                    break
            else:
                errors.append(f"event[{i}] {rec['type']}: no simulated event matches {json.dumps(rec)[:400]}")
        extra = [self.events[j]["type"] for j in range(len(self.events)) if j not in used]
        if extra:
            errors.append(f"simulated events beyond the recording: {extra}")

        def entity(event: dict) -> str:
            thing = event.get("channel") or event.get("peer") or event.get("bridge") or {}
            return thing.get("id") or (event.get("device_state") or {}).get("name", "")

        last: dict[str, int] = {}
        for i, j in sorted(matched, key=lambda m: m[1]):  # in the simulator's order
            key = entity(self.events[j])
            if last.get(key, -1) > i:
                errors.append(
                    f"event[{i}] {recorded[i]['type']}: the simulator sent it for {key} before an "
                    f"event the real PBX sent first (recorded #{last[key]})"
                )
            last[key] = max(last.get(key, -1), i)
        return errors

    def compare_events_in_order(self) -> list[str]:
        """The same sequence of event types; within a run of consecutive events of one type (ConnectedLine or
        BRIDGEPEER on both channels of a bridge, ...) the real PBX's order varies from run to run, so a run is
        matched as a set."""
        recorded = [s["event"] for s in self.trace["steps"] if s["dir"] == "event"]
        errors = []
        got_types = [e["type"] for e in self.events]
        rec_types = [e["type"] for e in recorded]
        if got_types != rec_types:
            errors.append(f"event types differ:\n  sim:      {got_types}\n  recorded: {rec_types}")
        start = 0
        while start < min(len(recorded), len(self.events)):
            end = start + 1
            while end < len(recorded) and rec_types[end] == rec_types[start]:
                end += 1
            rec_run = []
            # The sim may have sent fewer events than were recorded: that is reported above, not here.
            for rec, got in zip(recorded[start:end], self.events[start:end], strict=False):
                if rec.get("variable") == "UNICASTRTP_LOCAL_PORT" and str(got.get("value", "")).isdigit():
                    rec = {**rec, "value": got["value"]}  # the port varies run to run (README)
                rec_run.append(rec)
            where = f"event[{start}] {rec_types[start]}" + (f" (run of {end - start})" if end - start > 1 else "")
            if end - start == 1:
                errors += self.unifier.unify(rec_run[0], self.events[start], where)
            else:
                errors += self.unifier.unify(rec_run, self.events[start:end], where)
            start = end
        return errors

    def swagger_errors(self) -> list[str]:
        errors = []
        for event in self.sim.sent_events.get(APP, []):
            errors += SWAGGER.validate(event, "Message", f"event {event['type']}")
        for record in self.sim.rest_log:
            if 200 <= record.status < 300 and record.response is not None:
                cls = SWAGGER.response_class(record.method, record.path)
                assert cls is not None, f"no swagger operation for {record.method} {record.path}"
                errors += SWAGGER.validate(record.response, cls, f"{record.method} {record.path}")
            elif record.status >= 400:
                if list(record.response or {}) != ["message"]:
                    errors.append(f"{record.method} {record.path}: error body {record.response!r}")
        return errors


async def replay(name: str, scale: float = SCALE, **sim_options: Any) -> Replay:
    async with Replay(name, scale, **sim_options) as r:
        await r.run()
    return r


def check(r: Replay) -> None:
    problems = r.rest_errors + r.compare_events() + r.swagger_errors()
    assert not problems, f"{r.name}:\n" + "\n".join(problems[:40])


# --- the traces -------------------------------------------------------------------------------------------------


async def test_01_inbound():
    r = await replay("01-inbound")
    check(r)
    # RTP toward the listener: PT 0, 160-byte payloads, first timestamp 160, seq +1, one SSRC, from the
    # UNICASTRTP_LOCAL_PORT the answer announced; DTMF is not sent as RFC 4733 (no PT 101)
    packets = r.listeners.rtp_packets
    assert len(packets) >= 5
    headers = [
        (
            p[0][1] & 0x7F,
            int.from_bytes(p[0][2:4], "big"),
            int.from_bytes(p[0][4:8], "big"),
            p[0][8:12],
            len(p[0]) - 12,
            p[1][1],
        )
        for p in packets
    ]
    assert {h[0] for h in headers} == {0}
    assert headers[0][2] == 160
    assert all((b[1] - a[1]) % 65536 == 1 for a, b in itertools.pairwise(headers))
    assert len({h[3] for h in headers}) == 1
    assert {h[4] for h in headers[:-1]} == {160}
    em = next(rec for rec in r.sim.rest_log if rec.path == "/channels/externalMedia")
    assert {h[5] for h in headers} == {int(em.response["channelvars"]["UNICASTRTP_LOCAL_PORT"])}
    assert all(p[0][1] & 0x80 == 0 for p in packets)  # marker bit never set


@pytest.mark.slow  # measured 2.5 s
async def test_01_inbound_subscribe_all():
    # with subscribeAll the app also sees the ;2 half, ChannelCreated/Dialplan/CallerId, DeviceStateChanged,
    # BridgeCreated, and ChannelDestroyed for both halves of the caller
    # At SCALE the ;2 half's Answer() (500 ms real, 50 ms here) can end before the replayed call setup has
    # bridged the caller (7 ms real, 20-60 ms of REST here), and its next ChannelDialplan then still shows the
    # old caller id; half speed keeps the recorded order.
    check(await replay("01-inbound-subscribeall", scale=0.5))


async def test_02_remote_hangup():
    check(await replay("02-remote-hangup"))


@pytest.mark.parametrize("fmt", ["slin16", "slin24"])
async def test_03_audiosocket(fmt):
    r = await replay(f"03-audiosocket-{fmt}")
    check(r)
    frames = r.listeners.as_frames
    uuid_frame = frames[0]
    assert uuid_frame[0] == 0x01 and uuid.UUID(bytes=uuid_frame[1]) == uuid.UUID(r.unifier.bind["<audiosocket-uuid>"])
    kind, size = {"slin16": (0x12, 640), "slin24": (0x13, 960)}[fmt]
    audio = [f for f in frames[1:] if f[0] != 0x03]
    assert audio and {f[0] for f in audio} == {kind}
    assert {len(f[1]) for f in audio[:-1]} == {size}
    assert [f[1] for f in frames if f[0] == 0x03] == [b"1", b"#"]
    await asyncio.wait_for(r.listeners.as_eof.wait(), 1)  # Asterisk closed TCP after our 0x00


async def test_04_errors():
    check(await replay("04-errors"))


async def test_05_transfer_answer():
    check(await replay("05-transfer-answer"))


async def test_05b_transfer_cancel():
    check(await replay("05b-transfer-cancel"))


@pytest.mark.parametrize("target", ["7003", "vm100"])
async def test_06_continue(target):
    r = await replay(f"06-continue-{target}")
    check(r)
    caller = r.created["<chan:caller>"]
    assert caller is not None and caller.destroyed  # the dialplan ran on after continue and hung up
    if target == "vm100":
        assert [v.mailbox for v in r.sim.voicemails] == ["100"]
        assert r.sim.voicemails[0].duration_ms > 0  # hello-world x3 recorded from the caller
    else:
        assert "Dial(Local/7003@va-trace-phones,20)" in caller.trail


async def test_07_stasis_failed():
    r = await replay("07-stasis-failed")
    check(r)
    statuses = {token: ch.stasis_status for token, ch in r.created.items()}
    assert statuses == {
        "<chan:caller-A>": "FAILED",
        "<chan:caller-B>": "FAILED",
        "<chan:caller-C-orphan>": "SUCCESS",
        "<chan:caller-C>": "FAILED",
    }
    assert all(
        "NoOp(stasis-status-FAILED)" in r.created[t].trail
        for t in ("<chan:caller-A>", "<chan:caller-B>", "<chan:caller-C>")
    )


async def test_08_bridge_destroyed_visibility():
    check(await replay("08-bridge-destroyed-visibility"))


async def test_09_media_stasis_race():
    """The media channel is added to the bridge the moment externalMedia answers: the real PBX answered 422 (its
    StasisStart had not arrived), and 204 after the StasisStart. The simulator's Stasis entry is held for 20 ms
    so that the replay loses the race as the recording did."""
    r = await replay("09-media-stasis-race", stasis_delay_ms=(20.0, 20.0))
    check(r)
    adds = [rec.status for rec in r.sim.rest_log if rec.path.endswith("/addChannel")]
    assert adds == [204, 422, 204]
