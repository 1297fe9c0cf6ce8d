"""Record golden ARI traces from a real Asterisk: `python -m sim.real_asterisk.traces [--out DIR] [NAME ...]`
(scripts/record-ari-traces).

Each scenario gets a fresh Asterisk from the harness (so Local channel numbers start at 00000000), opens the
events WebSocket of the shipped app, acts the way the controller does (query parameters, pre-assigned
channel/bridge ids), places the caller with ARI originate of a Local channel into a test dialplan, listens
for media on loopback, and writes every REST exchange, event and media note with its time. Ids, times, the
Asterisk entity id and the listener ports are replaced by placeholders, so that a re-recording diffs cleanly.
The file format is described in tests/fixtures/ari-traces/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp

from sim.real_asterisk import RealAsterisk, start

APP = "asterisk-ai-voice-agent"
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ari-traces"
WAIT = 10.0  # the longest any single expected event may take
ID_TOKEN = r"(?<![\w.]){}(?![\w])"  # whole-token match of a raw id (also after "-" in channel names)

# The test dialplan, added to each fresh Asterisk with `dialplan add extension` and written into every file, so a
# simulator can replay the trace with the same plan. No spaces in app data: the CLI splits its arguments on them.
DIALPLAN: dict[str, dict[str, list[str]]] = {
    # where the caller's ;1 half enters our app, like the shipped contexts; the Wait lets a failed Stasis be seen
    "va-trace-agent": {
        "s": [
            "NoOp(trace-agent-entry)",
            "Set(AI_CONTEXT=support)",
            "Set(AI_PROVIDER=openai_realtime)",
            f"Stasis({APP})",
            "NoOp(stasis-status-${STASISSTATUS})",
            "Wait(2)",
            "Hangup()",
        ]
    },
    # the caller's own side (the ;2 half of Local/s@<context>)
    "va-trace-talker": {"s": ["Answer()", "Wait(1)", "Playback(hello-world)", "SendDTMF(1#)", "Wait(20)", "Hangup()"]},
    "va-trace-holder": {"s": ["Answer()", "Wait(30)", "Hangup()"]},
    "va-trace-leaver": {"s": ["Answer()", "Wait(2)", "Hangup()"]},
    "va-trace-xfer-caller": {"s": ["Answer()", "Wait(1)", "Playback(hello-world)", "Wait(6)", "Hangup()"]},
    "va-trace-vm-caller": {"s": ["Answer()", "Wait(6)", "Playback(hello-world&hello-world)", "Wait(1)", "Hangup()"]},
    # phones behind the PBX, and the targets a continue() points at
    "va-trace-phones": {
        "7001": ["NoOp(phone-7001-answers)", "Answer()", "Playback(beep)", "Wait(10)", "Hangup()"],
        "7002": ["NoOp(phone-7002-rings-forever)", "Ringing()", "Wait(60)", "Hangup()"],
        "7003": ["NoOp(phone-7003-answers-briefly)", "Answer()", "Playback(beep)", "Wait(2)", "Hangup()"],
    },
    "va-trace-targets": {
        "7003": ["Dial(Local/7003@va-trace-phones,20)", "Hangup()"],
        "vm100": ["VoiceMail(100@default,u)", "Hangup()"],
    },
}


def install_dialplan(ast: RealAsterisk) -> None:
    for context, extens in DIALPLAN.items():
        for exten, apps in extens.items():
            for prio, app in enumerate(apps, 1):
                ast.cli(f"dialplan add extension {exten},{prio},{app} into {context} replace")


# --- media listeners ------------------------------------------------------------------------------------------


class RtpListener(asyncio.DatagramProtocol):
    def __init__(self, rec: Recorder):
        self.rec = rec
        self.packets: list[tuple[bytes, int]] = []

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.packets:
            self.rec.note(
                f"first RTP packet from Asterisk: PT {data[1] & 0x7F}, {len(data) - 12}-byte payload, "
                f"RTP timestamp {int.from_bytes(data[4:8], 'big')}",
                source="listener",
            )
        self.packets.append((data, addr[1]))

    def summary(self, local_port: str | None) -> dict:
        if not self.packets:
            return {"packets": 0}
        heads = [
            (
                p[1] & 0x7F,
                int.from_bytes(p[2:4], "big"),
                int.from_bytes(p[4:8], "big"),
                p[8:12],
                len(p) - 12,
                p[1] & 0x80,
            )
            for p, _ in self.packets
        ]
        return {
            "packets": len(heads),
            "payload_types": sorted({h[0] for h in heads}),
            "payload_sizes": dict(sorted(Counter(str(h[4]) for h in heads).items())),
            "first_timestamp": heads[0][2],
            "timestamp_advances_by_previous_payload": all((b[2] - a[2]) % 2**32 == b[4] for a, b in pairwise(heads)),
            "seq_step_1": all((b[1] - a[1]) % 65536 == 1 for a, b in pairwise(heads)),
            "ssrcs": len({h[3] for h in heads}),
            "marker_bits": sum(1 for h in heads if h[5]),
            "source_port_is_local_port": {str(port) for _, port in self.packets} == {local_port},
        }


AUDIOSOCKET_KINDS = {
    0x00: "hangup",
    0x01: "uuid",
    0x03: "dtmf",
    0x10: "slin",
    0x11: "slin12",
    0x12: "slin16",
    0x13: "slin24",
    0x14: "slin32",
    0x15: "slin44",
    0x16: "slin48",
    0xFF: "error",
}


class AudioSocketListener:
    def __init__(self, rec: Recorder):
        self.rec = rec
        self.frames: list[tuple[int, bytes]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rec.note("AudioSocket TCP connection from Asterisk accepted", source="listener")
        self.writer = writer
        self.connected.set()
        try:
            while True:
                head = await reader.readexactly(3)
                payload = await reader.readexactly(int.from_bytes(head[1:3], "big"))
                kind = head[0]
                audio_seen = any(k >= 0x10 and k != 0xFF for k, _ in self.frames)
                if kind < 0x10 or kind == 0xFF or not audio_seen:  # every control message, and the first audio
                    shown = (
                        payload.decode()
                        if kind == 0x03
                        else str(uuid.UUID(bytes=payload))
                        if kind == 0x01
                        else f"{len(payload)} bytes"
                    )
                    self.rec.note(
                        f"AudioSocket message from Asterisk: kind 0x{kind:02x} "
                        f"({AUDIOSOCKET_KINDS.get(kind, '?')}), length {len(payload)}: {shown}",
                        source="listener",
                    )
                self.frames.append((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.rec.note("AudioSocket connection closed by Asterisk", source="listener")
            self.closed.set()

    async def send_audio_then_hangup(self, kind: int, size: int, frames: int) -> None:
        self.rec.note(
            f"listener starts sending {frames} frames of kind 0x{kind:02x} ({size} bytes) every 20 ms",
            source="listener",
        )
        for _ in range(frames):
            self.writer.write(bytes([kind]) + size.to_bytes(2, "big") + bytes(size))
            await self.writer.drain()
            await asyncio.sleep(0.02)
        self.writer.write(b"\x00\x00\x00")
        await self.writer.drain()
        self.rec.note("listener sent the hangup message 00 00 00", source="listener")

    def summary(self) -> dict:
        kinds = Counter(f"0x{k:02x}/{len(p)}" for k, p in self.frames)
        return {
            "messages": len(self.frames),
            "kinds": dict(sorted(kinds.items())),
            "dtmf": [p.decode() for k, p in self.frames if k == 0x03],
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()


# --- the recorder ---------------------------------------------------------------------------------------------


class Recorder:
    """Talks to one Asterisk like the controller does and keeps every exchange with its time."""

    def __init__(self, ast: RealAsterisk, name: str, description: str):
        self.ast, self.name, self.description = ast, name, description
        self.t0 = time.monotonic()
        self.steps: list[dict] = []
        self.events: list[dict] = []
        self.labels: dict[str, str] = {}  # raw id -> placeholder
        self.ports: dict[str, str] = {}  # "127.0.0.1:PORT" -> "127.0.0.1:<name>"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ws_query = ""
        self._reader: asyncio.Task | None = None
        self._new_event = asyncio.Event()
        self.auth = {"Authorization": aiohttp.encode_basic_auth(ast.user, ast.password)}

    def now(self) -> float:
        return round((time.monotonic() - self.t0) * 1000, 1)

    def note(self, text: str, source: str = "client", data: dict | None = None) -> None:
        step = {"t_ms": self.now(), "dir": "media", "source": source, "note": text}
        if data is not None:
            step["data"] = data
        self.steps.append(step)

    def phase(self, text: str) -> None:
        self.note(f"== {text}")

    def new_id(self, label: str) -> str:
        raw = str(uuid.uuid4())
        self.labels[raw] = label
        return raw

    def label(self, raw: str, label: str) -> str:
        self.labels[raw] = label
        return raw

    async def __aenter__(self) -> Recorder:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close_ws()
        await self.session.close()

    async def rest(
        self, method: str, path: str, query: dict[str, Any] | None = None, auth: bool = True, expect: int | None = None
    ) -> tuple[int, Any]:
        q = {k: str(v) for k, v in (query or {}).items() if v is not None} or None
        step = {"t_ms": self.now(), "dir": "rest", "method": method, "path": path, "query": q, "body": None}
        async with self.session.request(
            method,
            f"{self.ast.ari_url}/ari{path}",
            params=q,
            headers=self.auth if auth else None,
            timeout=aiohttp.ClientTimeout(total=WAIT),
        ) as resp:
            text = await resp.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        step.update(status=resp.status, response=body, t_done_ms=self.now())
        self.steps.append(step)
        if expect is not None and resp.status != expect:
            raise RuntimeError(f"{self.name}: {method} {path} {q} -> {resp.status} {body}, expected {expect}")
        return resp.status, body

    async def open_ws(self, subscribe_all: bool = False) -> None:
        self.ws_query = f"app={APP}" + ("&subscribeAll=true" if subscribe_all else "")
        self.ws = await self.session.ws_connect(
            f"{self.ast.ari_url}/ari/events?{self.ws_query}",
            headers=self.auth,
            timeout=aiohttp.ClientWSTimeout(ws_close=WAIT),
        )
        self.note(f"events WebSocket connected: /ari/events?{self.ws_query}")
        self._reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            self.steps.append({"t_ms": self.now(), "dir": "event", "event": event})
            self.events.append(event)
            self._new_event.set()

    async def close_ws(self) -> None:
        if self.ws is None:
            return
        await self.ws.close()
        await asyncio.wait_for(self._reader, WAIT)
        self.ws = self._reader = None
        self.note("events WebSocket closed by the client")

    async def event(
        self, type_: str, where: Callable[[dict], bool] = lambda e: True, after: int = 0, timeout: float = WAIT
    ) -> dict:
        """The first event of this type (from index `after` on) that satisfies `where`, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event["type"] == type_ and where(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {type_} within {timeout}s")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), left)
            except TimeoutError:
                pass

    async def sleep(self, seconds: float, why: str) -> None:
        self.note(f"client waits {seconds:g} s: {why}")
        await asyncio.sleep(seconds)

    # --- what the controller does --------------------------------------------------------------------------

    async def originate(
        self, caller_context: str, label: str = "<chan:caller>", name: str = "Alice", number: str = "5550100"
    ) -> str:
        """The caller: a Local channel whose ;1 half runs the agent context (our Stasis app) and ;2 half the
        caller's own context."""
        _, chan = await self.rest(
            "POST",
            "/channels",
            {
                "endpoint": f"Local/s@{caller_context}",
                "context": "va-trace-agent",
                "extension": "s",
                "priority": 1,
                "callerId": f"{name} <{number}>",
                "formats": "ulaw",
            },
            expect=200,
        )
        return self.label(chan["id"], label)

    async def stasis_start(self, cid: str, after: int = 0) -> dict:
        return await self.event("StasisStart", lambda e: e["channel"]["id"] == cid, after)

    async def inbound_setup(
        self,
        caller_context: str,
        transport: str = "rtp",
        fmt: str = "ulaw",
        rtp: RtpListener | None = None,
        audiosocket_port: int = 0,
    ) -> tuple[str, str, str]:
        """A call answered and bridged with its media channel, the media channel added only after its
        StasisStart (what the controller must do); (caller, media, bridge)."""
        caller = await self.originate(caller_context)
        await self.stasis_start(caller)
        await self.rest("GET", f"/channels/{caller}/variable", {"variable": "AI_CONTEXT"}, expect=200)
        await self.rest("POST", f"/channels/{caller}/answer", expect=204)
        bridge = self.new_id("<bridge:1>")
        await self.rest("POST", "/bridges", {"type": "mixing", "bridgeId": bridge}, expect=200)
        await self.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": caller}, expect=204)
        media = await self.external_media(transport, fmt, audiosocket_port)
        await self.stasis_start(media)
        await self.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": media}, expect=204)
        return caller, media, bridge

    async def external_media(
        self, transport: str, fmt: str, audiosocket_port: int = 0, label: str = "<chan:media>"
    ) -> str:
        media = self.new_id(label)
        if transport == "rtp":
            query = {
                "app": APP,
                "channelId": media,
                "external_host": self.port_of("rtp"),
                "format": fmt,
                "encapsulation": "rtp",
                "transport": "udp",
            }
        else:
            query = {
                "app": APP,
                "channelId": media,
                "external_host": self.port_of("audiosocket"),
                "format": fmt,
                "encapsulation": "audiosocket",
                "transport": "tcp",
                "data": self.new_id("<audiosocket-uuid>"),
            }
        self.last_external = await self.rest("POST", "/channels/externalMedia", query, expect=200)
        return media

    def port_of(self, name: str) -> str:
        return next(raw for raw, token in self.ports.items() if token.endswith(f"<{name}-listener>"))

    def listen_port(self, name: str, port: int) -> None:
        self.ports[f"127.0.0.1:{port}"] = f"127.0.0.1:<{name}-listener>"

    # --- writing ---------------------------------------------------------------------------------------------

    def document(self, entity_id: str, version: str) -> dict:
        self._label_local_halves()
        mapping = {**self.labels, entity_id: "<asterisk_id>"}
        pattern = re.compile(
            "|".join(ID_TOKEN.format(re.escape(raw)) for raw in sorted(mapping, key=len, reverse=True))
        )
        ports = re.compile("|".join(re.escape(p) + r"(?!\d)" for p in self.ports)) if self.ports else None
        leftovers: set[str] = set()

        def clean(value: Any, key: str | None = None) -> Any:
            if isinstance(value, dict):
                return {k: clean(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            if not isinstance(value, str):
                return value
            if key in ("timestamp", "creationtime"):
                return "<ts>"
            text = pattern.sub(lambda m: mapping[m.group(0)], value)
            if ports is not None:
                text = ports.sub(lambda m: self.ports[m.group(0)], text)
            leftovers.update(re.findall(r"(?<![\w.])\d{10}\.\d+(?![\w.])", text))
            return text

        steps = [clean(s) for s in sorted(self.steps, key=lambda s: s["t_ms"])]
        if leftovers:
            raise RuntimeError(f"{self.name}: unlabelled Asterisk ids {sorted(leftovers)}")
        placeholders = sorted(set(mapping.values()) - {"<asterisk_id>"}) + ["<asterisk_id>"]
        return {
            "scenario": self.name,
            "asterisk_version": version,
            "description": self.description,
            "events_websocket": f"/ari/events?{self.ws_query}" if self.ws_query else None,
            "placeholders": placeholders,
            "listeners": sorted(self.ports.values()),
            "dialplan": DIALPLAN,
            "steps": steps,
        }

    def _label_local_halves(self) -> None:
        """The ;2 half of a labelled Local channel gets the label with ';2' (seen with subscribeAll, in GET
        /channels, ...)."""
        names: dict[str, str] = {}
        channels = []

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                if isinstance(value.get("id"), str) and isinstance(value.get("name"), str):
                    channels.append((value["id"], value["name"]))
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.steps)
        for cid, name in channels:
            if cid in self.labels and name.endswith(";1"):
                names[name[:-2]] = self.labels[cid]
        for cid, name in channels:
            if cid not in self.labels and name.endswith(";2") and name[:-2] in names:
                self.labels[cid] = names[name[:-2]][:-1] + ";2>"


# --- scenarios ------------------------------------------------------------------------------------------------


async def cleanup(rec: Recorder, *ids: str, bridges: tuple[str, ...] = ()) -> None:
    """Hang up, then delete the bridges, one at a time: each request waits for the last event of the one before,
    so the order of events does not depend on how Asterisk's threads interleave (a stable trace)."""
    rec.phase("cleanup")
    for cid in ids:
        mark = len(rec.events)
        await rec.rest("DELETE", f"/channels/{cid}", {"reason": "normal"}, expect=204)
        # a channel made by ARI is destroyed; one that came from the dialplan only leaves Stasis (no subscribeAll)
        made_by_us = rec.labels.get(cid, "").startswith(("<chan:media", "<chan:agent"))
        await rec.event(
            "ChannelDestroyed" if made_by_us else "StasisEnd", lambda e, c=cid: e["channel"]["id"] == c, mark
        )
        await rec.sleep(0.2, "events that follow the hangup")
    for bid in bridges:
        await rec.rest("DELETE", f"/bridges/{bid}", expect=204)


async def inbound_rtp(rec: Recorder, subscribe_all: bool) -> None:
    rtp = RtpListener(rec)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: rtp, ("127.0.0.1", 0))
    rec.listen_port("rtp", transport.get_extra_info("sockname")[1])
    try:
        await rec.open_ws(subscribe_all)
        rec.phase("call setup: originate, answer, bridge, externalMedia RTP ulaw, add it after its StasisStart")
        caller, media, bridge = await rec.inbound_setup("va-trace-talker")
        await rec.sleep(4, "the caller says hello-world and sends DTMF 1#")
        local_port = rec.last_external[1]["channelvars"].get("UNICASTRTP_LOCAL_PORT")
        rec.note("RTP received by the listener", source="listener", data=rtp.summary(local_port))
        await cleanup(rec, caller, media, bridges=(bridge,))
        await rec.sleep(0.5, "the last events")
    finally:
        transport.close()


async def s01_inbound(rec: Recorder) -> None:
    await inbound_rtp(rec, False)


async def s01_inbound_subscribeall(rec: Recorder) -> None:
    await inbound_rtp(rec, True)


async def s02_remote_hangup(rec: Recorder) -> None:
    rtp = RtpListener(rec)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: rtp, ("127.0.0.1", 0))
    rec.listen_port("rtp", transport.get_extra_info("sockname")[1])
    try:
        await rec.open_ws()
        rec.phase("call setup; the caller hangs up by itself 2 s after answering")
        caller, media, bridge = await rec.inbound_setup("va-trace-leaver")
        await rec.event("StasisEnd", lambda e: e["channel"]["id"] == caller)
        await rec.sleep(1, "what Asterisk still holds after the caller left")
        rec.phase("queries after the remote hangup")
        await rec.rest("GET", "/asterisk/info", {"only": "system"}, expect=200)
        await rec.rest("GET", "/channels", expect=200)
        await rec.rest("GET", "/bridges", expect=200)
        await rec.rest("GET", f"/channels/{caller}", expect=404)
        rec.note("RTP received by the listener", source="listener", data=rtp.summary(None))
        await cleanup(rec, media, bridges=(bridge,))
        await rec.sleep(0.5, "the last events")
    finally:
        transport.close()


async def audiosocket(rec: Recorder, fmt: str) -> None:
    listener = AudioSocketListener(rec)
    rec.listen_port("audiosocket", await listener.start())
    try:
        await rec.open_ws()
        rec.phase(f"call setup with externalMedia AudioSocket {fmt}")
        caller, media, bridge = await rec.inbound_setup("va-trace-talker", "audiosocket", fmt)
        await rec.sleep(4, "the caller says hello-world and sends DTMF 1#")
        kind, size = {"slin16": (0x12, 640), "slin24": (0x13, 960)}[fmt]
        rec.phase("the AudioSocket server sends 1 s of audio, then the hangup message")
        await listener.send_audio_then_hangup(kind, size, 50)
        await rec.event("ChannelDestroyed", lambda e: e["channel"]["id"] == media)
        await asyncio.wait_for(listener.closed.wait(), WAIT)
        rec.note("AudioSocket messages received by the listener", source="listener", data=listener.summary())
        await cleanup(rec, caller, bridges=(bridge,))
        await rec.sleep(0.5, "the last events")
    finally:
        listener.close()


async def s03_audiosocket_slin16(rec: Recorder) -> None:
    await audiosocket(rec, "slin16")


async def s03_audiosocket_slin24(rec: Recorder) -> None:
    await audiosocket(rec, "slin24")


async def s04_errors(rec: Recorder) -> None:
    listener = AudioSocketListener(rec)
    rec.listen_port("audiosocket", await listener.start())
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        rec.listen_port("closed", s.getsockname()[1])
    try:
        await rec.open_ws()
        rec.phase("a caller in Stasis, in a bridge")
        caller = await rec.originate("va-trace-holder")
        await rec.stasis_start(caller)
        bridge = rec.new_id("<bridge:1>")
        await rec.rest("POST", "/bridges", {"type": "mixing", "bridgeId": bridge}, expect=200)
        await rec.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": caller}, expect=204)
        _, channels = await rec.rest("GET", "/channels", expect=200)
        half2 = next(c["id"] for c in channels if c["name"].endswith(";2"))
        rec.label(half2, "<chan:caller;2>")
        checks: list[tuple[str, str, str, dict | None, dict]] = [
            (
                "operations on a channel that is not in Stasis (the ;2 half)",
                "POST",
                f"/channels/{half2}/answer",
                None,
                {},
            ),
            ("", "POST", f"/channels/{half2}/continue", None, {}),
            ("", "GET", f"/channels/{half2}/variable", {"variable": "AI_CONTEXT"}, {}),
            ("", "POST", f"/bridges/{bridge}/addChannel", {"channel": half2}, {}),
            ("unknown channels and bridges", "DELETE", "/channels/no-such-channel", {"reason": "normal"}, {}),
            ("", "POST", "/channels/no-such-channel/answer", None, {}),
            ("", "GET", "/channels/no-such-channel/variable", {"variable": "AI_CONTEXT"}, {}),
            ("", "POST", "/bridges/no-such-bridge/addChannel", {"channel": caller}, {}),
            ("", "POST", f"/bridges/{bridge}/addChannel", {"channel": "no-such-channel"}, {}),
            ("", "DELETE", "/bridges/no-such-bridge", None, {}),
            ("variables", "GET", f"/channels/{caller}/variable", {"variable": "NOT_SET_ANYWHERE"}, {}),
            ("", "GET", f"/channels/{caller}/variable", None, {}),
            (
                "externalMedia parameters",
                "POST",
                "/channels/externalMedia",
                {
                    "channelId": "em-no-app",
                    "external_host": rec.port_of("audiosocket"),
                    "format": "slin16",
                    "encapsulation": "audiosocket",
                    "transport": "tcp",
                    "data": str(uuid.UUID(int=1)),
                },
                {},
            ),
            (
                "",
                "POST",
                "/channels/externalMedia",
                {
                    "app": APP,
                    "channelId": "em-no-data",
                    "external_host": rec.port_of("audiosocket"),
                    "format": "slin16",
                    "encapsulation": "audiosocket",
                    "transport": "tcp",
                },
                {},
            ),
            (
                "",
                "POST",
                "/channels/externalMedia",
                {"app": APP, "channelId": "em-no-host", "format": "ulaw", "encapsulation": "rtp", "transport": "udp"},
                {},
            ),
            (
                "",
                "POST",
                "/channels/externalMedia",
                {
                    "app": APP,
                    "channelId": "em-no-format",
                    "external_host": rec.port_of("audiosocket"),
                    "encapsulation": "rtp",
                    "transport": "udp",
                },
                {},
            ),
            (
                "",
                "POST",
                "/channels/externalMedia",
                {
                    "app": APP,
                    "channelId": "em-bogus",
                    "external_host": rec.port_of("audiosocket"),
                    "format": "ulaw",
                    "encapsulation": "bogus",
                    "transport": "udp",
                },
                {},
            ),
            (
                "AudioSocket to a port where nothing listens",
                "POST",
                "/channels/externalMedia",
                {
                    "app": APP,
                    "channelId": "em-refused",
                    "external_host": rec.port_of("closed"),
                    "format": "slin16",
                    "encapsulation": "audiosocket",
                    "transport": "tcp",
                    "data": str(uuid.UUID(int=2)),
                },
                {},
            ),
            (
                "creating channels",
                "POST",
                "/channels/create",
                {
                    "endpoint": "Local/7001@va-trace-phones",
                    "app": APP,
                    "channelId": "create-both",
                    "originator": caller,
                    "formats": "ulaw",
                },
                {},
            ),
            (
                "",
                "POST",
                "/channels/create",
                {"endpoint": "Local/7001@va-trace-phones", "app": APP, "channelId": caller},
                {},
            ),
            ("", "POST", "/channels/create", {"endpoint": "Bogus/7001", "app": APP, "channelId": "bogus-tech"}, {}),
            ("", "POST", "/channels", {"app": APP}, {}),
            ("bridges", "POST", "/bridges", {"type": "mixing", "bridgeId": bridge}, {}),
            ("", "POST", f"/bridges/{rec.new_id('<bridge:2>')}", None, {}),
            ("channel state", "POST", f"/channels/{caller}/dial", {"timeout": 5}, {}),
            ("", "DELETE", f"/channels/{caller}", {"reason": "bogus"}, {}),
            ("routes and authentication", "GET", "/no-such-resource", None, {}),
            ("", "PUT", "/channels", None, {}),
            ("", "GET", "/asterisk/info", None, {"auth": False}),
        ]
        for title, method, path, query, opts in checks:
            if title:
                rec.phase(title)
            await rec.rest(method, path, query, **opts)
        rec.phase("removeChannel of a channel that is not in that bridge")
        bridge2 = next(raw for raw, label in rec.labels.items() if label == "<bridge:2>")
        await rec.rest("POST", f"/bridges/{bridge2}/removeChannel", {"channel": caller})
        await cleanup(rec, caller, bridges=(bridge, bridge2))
        await rec.sleep(0.5, "the last events")
    finally:
        listener.close()


async def transfer(rec: Recorder, phone: str) -> None:
    rtp = RtpListener(rec)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: rtp, ("127.0.0.1", 0))
    rec.listen_port("rtp", transport.get_extra_info("sockname")[1])
    try:
        await rec.open_ws()
        rec.phase("call setup")
        caller, media, bridge = await rec.inbound_setup("va-trace-xfer-caller")
        rec.phase(f"transfer to {phone}: hold music for the caller, a leg created and dialled after its StasisStart")
        await rec.rest("POST", f"/channels/{caller}/moh", expect=204)
        agent = rec.new_id("<chan:agent>")
        mark = len(rec.events)
        await rec.rest(
            "POST",
            "/channels/create",
            {
                "endpoint": f"Local/{phone}@va-trace-phones",
                "app": APP,
                "appArgs": f"transfer,{caller}",
                "channelId": agent,
            },
            expect=200,
        )
        await rec.stasis_start(agent, mark)
        await rec.rest("POST", f"/channels/{agent}/dial", {"timeout": 15}, expect=204)
        if phone == "7001":
            await rec.event("Dial", lambda e: e["peer"]["id"] == agent and e["dialstatus"] == "ANSWER", mark)
            rec.phase("answered: the agent replaces the AI in the bridge")
            await rec.rest("POST", f"/bridges/{bridge}/removeChannel", {"channel": media}, expect=204)
            mark = len(rec.events)
            await rec.rest("DELETE", f"/channels/{media}", {"reason": "normal"}, expect=204)
            await rec.event("ChannelDestroyed", lambda e: e["channel"]["id"] == media, mark)
            await rec.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": agent}, expect=204)
            await rec.rest("DELETE", f"/channels/{caller}/moh", expect=204)
            await rec.event("StasisEnd", lambda e: e["channel"]["id"] == caller)
            rec.phase("the caller hung up by itself")
            await cleanup(rec, agent, bridges=(bridge,))
        else:
            await rec.event("Dial", lambda e: e["peer"]["id"] == agent and e["dialstatus"] == "RINGING", mark)
            await rec.sleep(1, "the phone rings")
            rec.phase("cancel_transfer: hang up the ringing leg, the caller back with the AI")
            await rec.rest("DELETE", f"/channels/{agent}", {"reason": "normal"}, expect=204)
            await rec.event("ChannelDestroyed", lambda e: e["channel"]["id"] == agent)
            await rec.rest("DELETE", f"/channels/{caller}/moh", expect=204)
            await rec.rest("GET", f"/bridges/{bridge}", expect=200)
            await cleanup(rec, caller, media, bridges=(bridge,))
        await rec.sleep(0.5, "the last events")
    finally:
        transport.close()


async def s05_transfer_answer(rec: Recorder) -> None:
    await transfer(rec, "7001")


async def s05b_transfer_cancel(rec: Recorder) -> None:
    await transfer(rec, "7002")


async def continue_to(rec: Recorder, target: str, caller_context: str, wait: float) -> None:
    rtp = RtpListener(rec)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: rtp, ("127.0.0.1", 0))
    rec.listen_port("rtp", transport.get_extra_info("sockname")[1])
    try:
        await rec.open_ws()
        rec.phase("call setup")
        caller, media, bridge = await rec.inbound_setup(caller_context)
        rec.phase(f"continue the caller in the dialplan at va-trace-targets,{target},1")
        await rec.rest(
            "POST",
            f"/channels/{caller}/continue",
            {"context": "va-trace-targets", "extension": target, "priority": 1},
            expect=204,
        )
        await rec.event("StasisEnd", lambda e: e["channel"]["id"] == caller)
        await rec.rest(
            "POST", f"/channels/{caller}/continue", {"context": "va-trace-targets", "extension": target, "priority": 1}
        )
        await rec.sleep(0.5, "the caller runs the target's dialplan")
        await rec.rest("GET", f"/channels/{caller}", expect=200)
        await rec.sleep(wait, "until the caller's dialplan has ended")
        await rec.rest("GET", f"/channels/{caller}", expect=404)
        rec.phase("the media channel and the bridge are still ours")
        await rec.rest("GET", "/bridges", expect=200)
        await cleanup(rec, media, bridges=(bridge,))
        await rec.sleep(0.5, "the last events")
    finally:
        transport.close()


async def s06_continue_7003(rec: Recorder) -> None:
    await continue_to(rec, "7003", "va-trace-holder", 5)


async def s06_continue_vm100(rec: Recorder) -> None:
    await continue_to(rec, "vm100", "va-trace-vm-caller", 11)


async def s07_stasis_failed(rec: Recorder) -> None:
    async def stasis_status(cid: str) -> None:
        await rec.sleep(0.5, "the dialplan runs past Stasis()")
        await rec.rest("GET", f"/channels/{cid}/variable", {"variable": "STASISSTATUS"}, expect=200)

    rec.phase("A: the app never connected")
    await rec.rest("GET", "/applications", expect=200)
    await stasis_status(await rec.originate("va-trace-holder", "<chan:caller-A>"))
    rec.phase("B: the app connected and left, owning nothing")
    await rec.open_ws()
    await rec.sleep(0.3, "connected")
    await rec.close_ws()
    await rec.sleep(0.3, "disconnected")
    await rec.rest("GET", "/applications", expect=200)
    await rec.rest("GET", f"/applications/{APP}")
    await stasis_status(await rec.originate("va-trace-holder", "<chan:caller-B>"))
    rec.phase("C: the app left while one of its calls was in Stasis")
    await rec.open_ws()
    orphan = await rec.originate("va-trace-holder", "<chan:caller-C-orphan>")
    await rec.stasis_start(orphan)
    await rec.close_ws()
    await rec.sleep(0.3, "disconnected")
    await rec.rest("GET", "/applications", expect=200)
    await stasis_status(await rec.originate("va-trace-holder", "<chan:caller-C>"))
    await rec.rest("DELETE", f"/channels/{orphan}", {"reason": "normal"}, expect=204)
    await rec.sleep(0.3, "the orphan is gone")
    await rec.rest("GET", "/applications", expect=200)
    await rec.sleep(2.5, "the failed callers' dialplans end")


async def s08_bridge_destroyed_visibility(rec: Recorder) -> None:
    await rec.open_ws()
    caller = await rec.originate("va-trace-holder")
    await rec.stasis_start(caller)
    bridges = []

    async def make(label: str) -> str:
        bid = rec.new_id(label)
        bridges.append(bid)
        await rec.rest("POST", "/bridges", {"type": "mixing", "bridgeId": bid}, expect=200)
        return bid

    rec.phase("A: a bridge never used, deleted")
    await rec.rest("DELETE", f"/bridges/{await make('<bridge:A>')}", expect=204)
    await rec.sleep(0.5, "case A")
    rec.phase("B: emptied with removeChannel, deleted 1 s later")
    bid = await make("<bridge:B>")
    await rec.rest("POST", f"/bridges/{bid}/addChannel", {"channel": caller}, expect=204)
    await rec.rest("POST", f"/bridges/{bid}/removeChannel", {"channel": caller}, expect=204)
    await rec.sleep(1, "the bridge is empty")
    await rec.rest("DELETE", f"/bridges/{bid}", expect=204)
    await rec.sleep(0.5, "case B")
    rec.phase("C: removeChannel and delete at once")
    bid = await make("<bridge:C>")
    await rec.rest("POST", f"/bridges/{bid}/addChannel", {"channel": caller}, expect=204)
    await rec.rest("POST", f"/bridges/{bid}/removeChannel", {"channel": caller}, expect=204)
    await rec.rest("DELETE", f"/bridges/{bid}", expect=204)
    await rec.sleep(0.5, "case C")
    rec.phase("D: deleted with the caller inside")
    bid = await make("<bridge:D>")
    await rec.rest("POST", f"/bridges/{bid}/addChannel", {"channel": caller}, expect=204)
    await rec.rest("DELETE", f"/bridges/{bid}", expect=204)
    await rec.sleep(0.5, "case D")
    await rec.rest("DELETE", f"/channels/{caller}", {"reason": "normal"}, expect=204)
    rec.phase("E: the last channel hangs up inside the bridge, deleted 1 s later")
    leaver = await rec.originate("va-trace-leaver", "<chan:caller-E>")
    await rec.stasis_start(leaver)
    bid = await make("<bridge:E>")
    await rec.rest("POST", f"/bridges/{bid}/addChannel", {"channel": leaver}, expect=204)
    await rec.event("StasisEnd", lambda e: e["channel"]["id"] == leaver)
    await rec.sleep(1, "the bridge is empty")
    await rec.rest("DELETE", f"/bridges/{bid}", expect=204)
    await rec.sleep(0.5, "case E")


async def s09_media_stasis_race(rec: Recorder) -> None:
    """addChannel of the media channel sent the moment externalMedia answers: 422 while its StasisStart has not
    arrived yet. Raises Retry when this run of the race did not show it."""
    rtp = RtpListener(rec)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: rtp, ("127.0.0.1", 0))
    rec.listen_port("rtp", transport.get_extra_info("sockname")[1])
    try:
        await rec.open_ws()
        rec.phase("call setup up to the externalMedia channel")
        caller = await rec.originate("va-trace-holder")
        await rec.stasis_start(caller)
        await rec.rest("POST", f"/channels/{caller}/answer", expect=204)
        bridge = rec.new_id("<bridge:1>")
        await rec.rest("POST", "/bridges", {"type": "mixing", "bridgeId": bridge}, expect=200)
        await rec.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": caller}, expect=204)
        mark = len(rec.events)
        rec.phase("addChannel of the media channel right after the externalMedia answer")
        media = await rec.external_media("rtp", "ulaw")
        early = any(e["type"] == "StasisStart" and e["channel"]["id"] == media for e in rec.events[mark:])
        status, _ = await rec.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": media})
        if early or status != 422:
            raise Retry(f"StasisStart {'before' if early else 'after'} the answer, addChannel {status}")
        rec.phase("after the media channel's StasisStart, addChannel again")
        await rec.stasis_start(media, mark)
        await rec.rest("POST", f"/bridges/{bridge}/addChannel", {"channel": media}, expect=204)
        await rec.sleep(0.5, "the bridge settles (the caller's ConnectedLine can come after a quick hangup)")
        await cleanup(rec, caller, media, bridges=(bridge,))
        await rec.sleep(0.5, "the last events")
    finally:
        transport.close()


class Retry(Exception):
    """This run did not show what the scenario is about; record it again on a fresh Asterisk."""


SCENARIOS: dict[str, tuple[Callable, str]] = {
    "01-inbound": (s01_inbound, "Inbound call, ExternalMedia RTP ulaw, the app hangs up everything."),
    "01-inbound-subscribeall": (s01_inbound_subscribeall, "01-inbound with subscribeAll=true on the WebSocket."),
    "02-remote-hangup": (s02_remote_hangup, "The caller hangs up by itself; what ARI still shows afterwards."),
    "03-audiosocket-slin16": (s03_audiosocket_slin16, "ExternalMedia AudioSocket slin16; the server ends it."),
    "03-audiosocket-slin24": (s03_audiosocket_slin24, "ExternalMedia AudioSocket slin24; the server ends it."),
    "04-errors": (s04_errors, "Error answers of the requests the controller makes, and a few more."),
    "05-transfer-answer": (s05_transfer_answer, "A transfer leg created, dialled, answered and bridged."),
    "05b-transfer-cancel": (s05b_transfer_cancel, "A ringing transfer leg hung up by the app."),
    "06-continue-7003": (s06_continue_7003, "continue to a Dial() of a phone that answers and hangs up."),
    "06-continue-vm100": (s06_continue_vm100, "continue to VoiceMail(100); the caller leaves a message."),
    "07-stasis-failed": (s07_stasis_failed, "Stasis() when the app is absent, gone, or gone with a call left."),
    "08-bridge-destroyed-visibility": (
        s08_bridge_destroyed_visibility,
        "When an app without subscribeAll gets BridgeDestroyed.",
    ),
    "09-media-stasis-race": (
        s09_media_stasis_race,
        "addChannel of the media channel before its StasisStart: 422, then 204 after it.",
    ),
}
MAX_ATTEMPTS = 40  # for scenarios that need a race to go one way


def _save(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


async def record(name: str, out: Path, log=print) -> dict:
    run, description = SCENARIOS[name]
    for attempt in range(1, MAX_ATTEMPTS + 1):
        ast = start(log=lambda *_: None)  # a fresh Asterisk: channel numbers start at 0 in every file
        try:
            install_dialplan(ast)
            _, info = ast.ari("GET", "/asterisk/info?only=system")
            async with Recorder(ast, name, description) as rec:
                try:
                    await asyncio.wait_for(run(rec), 60)
                except Retry as why:
                    log(f"{name}: attempt {attempt}: {why}; again")
                    continue
            doc = rec.document(info["system"]["entity_id"], ast.version)
        finally:
            ast.stop()
        await asyncio.to_thread(_save, out / f"{name}.json", doc)
        log(
            f"{name}: {sum(s['dir'] == 'rest' for s in doc['steps'])} requests, "
            f"{sum(s['dir'] == 'event' for s in doc['steps'])} events"
            + (f" (attempt {attempt})" if attempt > 1 else "")
        )
        return doc
    raise RuntimeError(f"{name}: not shown in {MAX_ATTEMPTS} attempts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="record-ari-traces", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the traces go (default {OUT})")
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    for name in args.scenarios or SCENARIOS:
        asyncio.run(record(name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
