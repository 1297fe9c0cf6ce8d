"""The Realtime GA emulator (sim/realtime), driven over a real WebSocket on loopback with hand-written JSON
(no product code) and by the official SDK. Every event the emulator sends, and every event these tests send
in valid scenarios, is checked against the strict GA unions of openai 3.54.0 (tests/realtime_schema.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from sim.realtime import Emulator, Reply, Script, ToolCall
from sim.realtime import g711, session as session_module, voice
from sim.realtime.response import tokens
from sim.realtime.vad import EnergyVad, gate_dbfs
from tests.conftest import ROOT
from tests.realtime_schema import check_client_event, check_server_event

KEY = "sk-emulator-test"
HANGUP = {
    "type": "function",
    "name": "hangup_call",
    "description": "End the call.",
    "parameters": {"type": "object", "properties": {"farewell": {"type": "string"}}},
}
TRANSFER = {"type": "function", "name": "transfer", "parameters": {"type": "object", "properties": {}}}


class Raw:
    """A test client speaking raw JSON. Valid client events are checked on the way out, every server event
    on the way in."""

    def __init__(self, ws):
        self.ws = ws
        self.seen: list[dict] = []

    async def send(self, event: dict, valid: bool = True) -> None:
        if valid:
            check_client_event(event)
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout: float = 5.0) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        check_server_event(event)
        self.seen.append(event)
        return event

    async def until(self, kind: str, timeout: float = 5.0, where=lambda e: True) -> list[dict]:
        """Events up to the first of type `kind` matching `where`, that one last."""
        out = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv(timeout)
                out.append(event)
                if event["type"] == kind and where(event):
                    return out

    async def update(self, **session) -> dict:
        await self.send({"type": "session.update", "event_id": "evt_up", "session": {"type": "realtime", **session}})
        return await self.recv()

    async def respond(self, response: dict | None = None, timeout: float = 5.0) -> list[dict]:
        """A response.create; the events up to its response.done (the rate_limits.updated that follows is
        read too, into `seen`)."""
        await self.send({"type": "response.create", **({"response": response} if response else {})})
        events = await self.until("response.done", timeout)
        assert (await self.recv(timeout))["type"] == "rate_limits.updated"
        return events

    async def quiet(self, seconds: float = 0.1) -> list[dict]:
        """Whatever arrives in the next moment (nothing, usually)."""
        out = []
        try:
            while True:
                out.append(await self.recv(seconds))
        except (asyncio.TimeoutError, TimeoutError):
            return out


@pytest.fixture
async def emulator():
    made: list[Emulator] = []

    async def make(script: Script | None = None, **kwargs) -> Emulator:
        kwargs.setdefault("speed", 0)
        kwargs.setdefault("api_keys", {KEY})
        emu = Emulator(script=script or Script(), seed=3, **kwargs)
        await emu.start()
        made.append(emu)
        return emu

    yield make
    for emu in made:
        await emu.stop()


async def open_raw(emu: Emulator, query: str = "?model=gpt-realtime", headers: dict | None = None) -> Raw:
    ws = await connect(emu.url + query, additional_headers={"Authorization": f"Bearer {KEY}", **(headers or {})})
    raw = Raw(ws)
    assert (await raw.recv())["type"] == "session.created"
    return raw


def tone(ms: int, amplitude: float = 0.3, rate: int = 24000) -> np.ndarray:
    t = np.arange(ms * rate // 1000) / rate
    return (np.sin(2 * math.pi * 300 * t) * amplitude * 32767).astype(np.int16)


def pcm(ms: int, amplitude: float = 0.0) -> bytes:
    return tone(ms, amplitude).astype("<i2").tobytes()


async def append(raw: Raw, audio: bytes, frame_bytes: int = 960) -> None:
    for i in range(0, len(audio), frame_bytes):
        chunk = base64.b64encode(audio[i : i + frame_bytes]).decode()
        await raw.send({"type": "input_audio_buffer.append", "audio": chunk})


def kinds(events: list[dict], skip: tuple[str, ...] = ()) -> list[str]:
    return [e["type"] for e in events if not e["type"].startswith(skip)]


def transcript_of(events: list[dict]) -> str:
    return next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]


def audio_bytes(events: list[dict]) -> list[int]:
    return [len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta"]


# --- handshake ---------------------------------------------------------------------------------------------------


async def test_session_created_first_with_complete_ga_defaults(emulator):
    emu = await emulator()
    raw = await open_raw(emu, "?model=gpt-realtime-2.1&call_id=rtc_42", {"OpenAI-Organization": "org-1"})
    created = raw.seen[0]
    session = created["session"]
    assert created["event_id"].startswith("event_") and len(created["event_id"]) == 27
    assert session["id"].startswith("sess_") and len(session["id"]) == 26
    assert session["object"] == "realtime.session" and session["type"] == "realtime"
    assert session["model"] == "gpt-realtime-2.1"
    assert time.time() + 3500 < session["expires_at"] < time.time() + 3700
    assert (
        session["audio"]["input"]["format"]
        == session["audio"]["output"]["format"]
        == {"type": "audio/pcm", "rate": 24000}
    )
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["max_output_tokens"] == "inf" and session["tools"] == [] and session["tool_choice"] == "auto"
    assert session["instructions"].startswith("Your knowledge cutoff is 2023-10.")
    assert session["output_modalities"] == ["audio"]
    s = emu.sessions[0]
    assert s.query == {"model": "gpt-realtime-2.1", "call_id": "rtc_42"}
    assert s.headers["authorization"] == f"Bearer {KEY}" and s.headers["openai-organization"] == "org-1"
    assert s.config == session and s.id == session["id"]
    assert await raw.quiet() == []  # no conversation.created on GA
    await raw.ws.close()


@pytest.mark.parametrize(
    "headers, code, close, message",
    [
        ({"Authorization": "Bearer sk-wrong-key-123"}, "invalid_api_key", 3000, "Incorrect API key provided: sk-"),
        ({}, "invalid_api_key", 3000, "You didn't provide an API key."),
        (
            {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"},
            "beta_api_shape_disabled",
            4000,
            "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
        ),
    ],
)
async def test_rejected_connections(emulator, headers, code, close, message):
    emu = await emulator()
    async with connect(emu.url + "?model=gpt-realtime", additional_headers=headers) as ws:
        event = json.loads(await ws.recv())
        check_server_event(event)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
    assert event["error"]["type"] == "invalid_request_error" and event["error"]["code"] == code
    assert event["error"]["message"].startswith(message)
    assert "sk-wrong-key-123" not in event["error"]["message"]  # keys are masked
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (close, f"invalid_request_error.{code}")
    assert emu.sessions[0].closed and emu.sessions[0].close_code == close


async def test_any_key_is_accepted_without_a_key_list_and_a_wrong_path_is_404(emulator):
    emu = await emulator(api_keys=None)
    async with connect(emu.url, additional_headers={"Authorization": "Bearer anything"}) as ws:
        assert json.loads(await ws.recv())["session"]["model"] == "gpt-realtime"
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{emu.port}/v1/chat", additional_headers={"Authorization": f"Bearer {KEY}"})
    assert info.value.response.status_code == 404


async def test_each_connection_is_a_fresh_session(emulator):
    emu = await emulator(Script(default=Reply(text="Hi.")))
    first = await open_raw(emu)
    await first.update(tools=[HANGUP])
    await first.respond()
    await first.ws.close()
    second = await open_raw(emu)
    assert second.seen[0]["session"]["tools"] == []
    assert second.seen[0]["session"]["id"] != first.seen[0]["session"]["id"]
    assert emu.sessions[1].items == [] and len(emu.sessions[0].items) == 1
    await second.ws.close()


# --- session.update ----------------------------------------------------------------------------------------------


async def test_session_update_merges_and_replies_with_the_full_config(emulator):
    emu = await emulator()
    raw = await open_raw(emu)
    updated = await raw.update(instructions="Be brief.", audio={"output": {"voice": "cedar"}}, tools=[HANGUP])
    assert updated["type"] == "session.updated" and updated["event_id"] != "evt_up"
    session = updated["session"]
    assert session["instructions"] == "Be brief." and session["tools"] == [HANGUP]
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}  # untouched
    assert session["id"] == raw.seen[0]["session"]["id"] and "expires_at" in session
    # A partial turn_detection keeps the other fields; null turns VAD off; "" and [] clear.
    td = (await raw.update(audio={"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}}))[
        "session"
    ]["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 700 and td["threshold"] == 0.5 and td["create_response"] is True
    session = (await raw.update(audio={"input": {"turn_detection": None}}, instructions="", tools=[]))["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["instructions"] == "" and session["tools"] == [] and session["audio"]["output"]["voice"] == "cedar"
    td = (await raw.update(audio={"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}))[
        "session"
    ]["audio"]["input"]["turn_detection"]
    assert td == {"type": "semantic_vad", "eagerness": "high", "create_response": True, "interrupt_response": True}
    assert emu.sessions[0].config == (await raw.update())["session"]


@pytest.mark.parametrize(
    "session, code, message, param",
    [
        (
            {"type": "realtime", "temperature": 0.8},
            "unknown_parameter",
            "Unknown parameter: 'session.temperature'.",
            "session.temperature",
        ),
        (
            {"type": "realtime", "modalities": ["text", "audio"]},
            "unknown_parameter",
            "Unknown parameter: 'session.modalities'.",
            "session.modalities",
        ),
        (
            {"type": "realtime", "voice": "alloy"},
            "unknown_parameter",
            "Unknown parameter: 'session.voice'.",
            "session.voice",
        ),
        (
            {"type": "realtime", "input_audio_format": "pcm16"},
            "unknown_parameter",
            "Unknown parameter: 'session.input_audio_format'.",
            "session.input_audio_format",
        ),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}},
            "unknown_parameter",
            "Unknown parameter: 'session.audio.input.turn_detection.eagerness'.",
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            {"instructions": "x"},
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        ),
        (
            {"type": "realtime", "tools": [{"type": "function", "function": {"name": "hangup", "parameters": {}}}]},
            "missing_required_parameter",
            "Missing required parameter: 'session.tools[0].name'.",
            "session.tools[0].name",
        ),
        (
            {"type": "realtime", "tools": [{"name": "hangup"}]},
            "missing_required_parameter",
            "Missing required parameter: 'session.tools[0].type'.",
            "session.tools[0].type",
        ),
        (
            {"type": "realtime", "tools": [HANGUP, {"type": "function", "name": "hang.up"}]},
            "invalid_value",
            "Invalid 'session.tools[1].name': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
            "session.tools[1].name",
        ),
        (
            {"type": "realtime", "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "missing_required_parameter",
            "Missing required parameter: 'session.tool_choice.name'.",
            "session.tool_choice.name",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "invalid_value",
            "Invalid value: '16000'. Supported values are: '24000'.",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "realtime", "audio": {"output": {"format": "pcm16"}}},
            "invalid_type",
            "Invalid type for 'session.audio.output.format': expected an object, but got a string instead.",
            "session.audio.output.format",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
            "invalid_value",
            "Invalid value: 'g711_ulaw'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
            "session.audio.input.format.type",
        ),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
            "decimal_above_max_value",
            "Invalid 'session.audio.input.turn_detection.threshold': decimal above maximum "
            "value. Expected a value <= 1, but got 1.5 instead.",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"type": "realtime", "output_modalities": ["text", "audio"]},
            "invalid_value",
            None,
            "session.output_modalities",
        ),
        ({"type": "realtime", "max_output_tokens": 5000}, "integer_above_max_value", None, "session.max_output_tokens"),
        ({"type": "realtime", "model": "gpt-realtime-mini"}, "invalid_value", None, "session.model"),
    ],
)
async def test_session_update_rejections_change_nothing(emulator, session, code, message, param):
    emu = await emulator()
    raw = await open_raw(emu)
    before = json.dumps(emu.sessions[0].config, sort_keys=True)
    # A valid part (tools, instructions) in the same update must not be applied either.
    await raw.send(
        {"type": "session.update", "event_id": "evt_bad", "session": {**session, "instructions": "applied?"}},
        valid=False,
    )
    event = await raw.recv()
    error = event["error"]
    assert event["type"] == "error"
    assert (error["type"], error["code"], error["param"], error["event_id"]) == (
        "invalid_request_error",
        code,
        param,
        "evt_bad",
    )
    if message:
        assert error["message"] == message
    assert json.dumps(emu.sessions[0].config, sort_keys=True) == before
    assert await raw.quiet() == []  # no session.updated for a rejected update


async def test_voice_locks_after_audio_and_takes_the_whole_update_with_it(emulator):
    emu = await emulator(Script(default=Reply(text="Hello.")))
    raw = await open_raw(emu)
    assert (await raw.update(audio={"output": {"voice": "ash"}}))["type"] == "session.updated"  # before audio: fine
    await raw.respond()
    await raw.send(
        {
            "type": "session.update",
            "event_id": "evt_v",
            "session": {"type": "realtime", "tools": [HANGUP], "audio": {"output": {"voice": "echo"}}},
        }
    )
    error = (await raw.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        "cannot_update_voice",
        "session.audio.output.voice",
        "evt_v",
    )
    assert error["message"] == "Cannot update a conversation's voice if assistant audio is present."
    assert emu.sessions[0].config["tools"] == []  # the tools went down with the voice
    # The same voice again is not a change.
    assert (await raw.update(tools=[HANGUP], audio={"output": {"voice": "ash"}}))["type"] == "session.updated"


async def test_speed_changes_apply_from_the_next_response(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="x" * 20)), speed=4.0))
    await raw.send({"type": "response.create"})
    await raw.until("response.output_audio.delta")
    await raw.update(audio={"output": {"speed": 1.5}})
    first = await raw.until("response.done")
    assert sum(audio_bytes(raw.seen)) == 1400 * 48  # 20 characters × 70 ms at the speed it started with
    before = len(raw.seen)
    await raw.respond()
    assert sum(audio_bytes(raw.seen[before:])) == round(1400 / 1.5) * 48
    assert first[-1]["response"]["status"] == "completed"


# --- input audio and VAD -----------------------------------------------------------------------------------------


async def test_server_vad_turn_timing_and_event_order(emulator):
    emu = await emulator(Script(turns={1: Reply(text="Hi there, how can I help?")}, transcripts={1: "Hello agent."}))
    raw = await open_raw(emu)
    await raw.update(
        audio={
            "input": {
                "turn_detection": {"type": "server_vad", "prefix_padding_ms": 100, "silence_duration_ms": 300},
                "transcription": {"model": "gpt-4o-mini-transcribe"},
            }
        }
    )
    await append(raw, pcm(500) + pcm(400, 0.3) + pcm(800))
    events = await raw.until("response.done")
    started, stopped = events[0], events[1]
    assert started["type"] == "input_audio_buffer.speech_started"
    assert started["audio_start_ms"] == 400  # onset 500 − prefix padding 100
    assert stopped["type"] == "input_audio_buffer.speech_stopped"
    assert stopped["audio_end_ms"] == 1200  # last voiced 900 + silence 300
    user = started["item_id"]
    assert stopped["item_id"] == user and user.startswith("item_")
    assert kinds(events, ("response.output_audio", "conversation.item.input_audio_transcription")) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert events[2] == {**events[2], "item_id": user, "previous_item_id": None}
    item = events[3]["item"]
    assert (item["id"], item["role"], item["content"]) == (user, "user", [{"type": "input_audio", "transcript": None}])
    # Input transcription comes after response.created (asynchronous on the real server).
    order = kinds(events)
    created = order.index("response.created")
    first_delta = order.index("conversation.item.input_audio_transcription.delta")
    completed = order.index("conversation.item.input_audio_transcription.completed")
    assert created < first_delta < completed
    deltas = [e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas) == events[completed]["transcript"] == "Hello agent."
    assert emu.sessions[0].items[0]["content"][0]["transcript"] == "Hello agent."
    assert transcript_of(events) == "Hi there, how can I help?"
    # The committed item holds the turn's audio: audio_start_ms to audio_end_ms.
    assert len(emu.sessions[0].conversation.audio[user]) == (1200 - 400) * 48


async def test_semantic_vad_waits_by_eagerness(emulator):
    raw = await open_raw(await emulator())
    await raw.update(
        audio={"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high", "create_response": False}}}
    )
    await append(raw, pcm(200) + pcm(300, 0.3) + pcm(1900), frame_bytes=4800)
    assert [e["type"] for e in await raw.quiet()] == ["input_audio_buffer.speech_started"]
    await append(raw, pcm(200), frame_bytes=4800)  # the 2 s of silence that "high" waits for
    events = await raw.until("conversation.item.done")
    assert events[0]["audio_end_ms"] == 500 + 2000
    assert await raw.quiet() == []  # create_response false: no response


async def test_vad_threshold_is_an_rms_gate_in_dbfs(emulator):
    assert (gate_dbfs(0.0), gate_dbfs(0.5), gate_dbfs(1.0)) == (-70.0, -40.0, -10.0)
    raw = await open_raw(await emulator())
    amplitude = 10 ** (-45 / 20) * math.sqrt(2)  # a sine at -45 dBFS RMS
    await append(raw, pcm(300, amplitude))
    assert await raw.quiet() == []  # under the default -40 dBFS gate
    await raw.update(
        audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 0.4, "create_response": False}}}
    )  # -46 dBFS
    await append(raw, pcm(300, amplitude))
    assert (await raw.recv())["type"] == "input_audio_buffer.speech_started"


async def test_g711_input_runs_the_clock_at_8_bytes_per_ms(emulator):
    emu = await emulator()
    raw = await open_raw(emu)
    await raw.update(
        audio={
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {
                    "type": "server_vad",
                    "prefix_padding_ms": 0,
                    "silence_duration_ms": 200,
                    "create_response": False,
                },
            }
        }
    )
    ulaw = g711.encode(np.concatenate([tone(300, 0, 8000), tone(500, 0.3, 8000), tone(400, 0, 8000)]), "audio/pcmu")
    await append(raw, ulaw, frame_bytes=160)
    events = await raw.until("input_audio_buffer.committed")
    assert (events[0]["audio_start_ms"], events[1]["audio_end_ms"]) == (300, 1000)
    assert emu.sessions[0].input_ms == 1200  # 9600 bytes at 8 bytes a millisecond


async def test_manual_turns_commit_and_clear(emulator):
    emu = await emulator()
    raw = await open_raw(emu)
    await raw.update(audio={"input": {"turn_detection": None}})
    await append(raw, pcm(60, 0.3))
    await raw.send({"type": "input_audio_buffer.commit", "event_id": "evt_c"})
    error = (await raw.recv())["error"]
    assert (error["code"], error["event_id"], error["param"]) == ("input_audio_buffer_commit_empty", "evt_c", None)
    assert error["message"] == (
        "Error committing input audio buffer: buffer too small. Expected at least 100ms "
        "of audio, but buffer only has 60.00ms of audio."
    )
    assert await raw.quiet() == []  # no committed for a failed commit
    await append(raw, pcm(100, 0.3))
    await raw.send({"type": "input_audio_buffer.commit"})
    events = await raw.until("conversation.item.done")
    assert kinds(events) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert len(emu.sessions[0].conversation.audio[events[0]["item_id"]]) == 160 * 48  # both appends
    assert await raw.quiet() == []  # a commit does not start a response
    await append(raw, pcm(200, 0.3))
    await raw.send({"type": "input_audio_buffer.clear"})
    assert (await raw.recv())["type"] == "input_audio_buffer.cleared"
    await raw.send({"type": "input_audio_buffer.commit"})
    assert (await raw.recv())["error"]["message"].endswith("buffer only has 0.00ms of audio.")


async def test_idle_timeout_prompts_the_caller(emulator, monkeypatch):
    monkeypatch.setattr(session_module, "IDLE_TIME_SCALE", 0.02)  # 5 s of idle in 0.1 s of wall time
    emu = await emulator(
        Script(greeting=Reply(text="Hello."), idle=Reply(text="Still there?"), turns={1: Reply(text="Turn one.")})
    )
    raw = await open_raw(emu)
    await raw.update(audio={"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}})
    await raw.respond()
    await append(raw, pcm(400))  # the caller's line is silent
    events = await raw.until("response.done")
    timeout = events[0]
    assert timeout["type"] == "input_audio_buffer.timeout_triggered"
    assert timeout["audio_end_ms"] == 400 and 0 <= timeout["audio_start_ms"] <= 400
    assert kinds(events)[1:4] == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert events[2]["item"]["id"] == timeout["item_id"]
    assert transcript_of(events) == "Still there?"
    # The idle item is not a user turn: the caller's first words still get turn 1's reply.
    await append(raw, pcm(300, 0.3) + pcm(300))
    assert transcript_of(await raw.until("response.done")) == "Turn one."


# --- responses ---------------------------------------------------------------------------------------------------


def check_audio_item_order(events: list[dict], response_id: str) -> None:
    """The GA order of an assistant audio item's events (item added, content part, deltas, done) for every item."""
    by_item: dict[str, list[str]] = {}
    for e in events:
        item_id = e.get("item_id") or (e.get("item") or {}).get("id")
        if item_id and (e.get("response_id") == response_id or e["type"].startswith("conversation.item.")):
            by_item.setdefault(item_id, []).append(e["type"])
    for item_id, seen in by_item.items():
        if "response.content_part.added" not in seen:
            continue
        body = [k for k in seen if k not in ("response.output_audio_transcript.delta", "response.output_audio.delta")]
        assert body == [
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
        ], item_id


async def test_audio_response_follows_the_ga_order_exactly(emulator):
    emu = await emulator(Script(turns={1: Reply(text="Hello, thanks for calling. How can I help you today?")}))
    raw = await open_raw(emu)
    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        }
    )
    user = (await raw.until("conversation.item.done"))[-1]["item"]["id"]
    events = await raw.respond({"metadata": {"call": "42"}})
    rate = raw.seen[-1]
    response = events[-1]["response"]
    assert kinds(events, ("response.output_audio.delta", "response.output_audio_transcript.delta")) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    check_audio_item_order(events, response["id"])
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == response["id"] and response["id"].startswith("resp_")
    assert created["conversation_id"].startswith("conv_") and created["metadata"] == {"call": "42"}
    item_id = events[1]["item"]["id"]
    assert events[1]["item"] == {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert events[2]["previous_item_id"] == user  # the chain: user item, then the answer
    for e in events[1:-1]:
        if "output_index" in e:
            assert e["output_index"] == 0
        if "content_index" in e:
            assert e["content_index"] == 0
    # The transcript deltas add up to the transcript, and run ahead of the audio.
    deltas = [
        e for e in events if e["type"] in ("response.output_audio_transcript.delta", "response.output_audio.delta")
    ]
    assert deltas[0]["type"] == "response.output_audio_transcript.delta"
    total_audio = sum(audio_bytes(events))
    text = transcript_of(events)
    said, heard = 0, 0
    for e in deltas:
        if e["type"] == "response.output_audio_transcript.delta":
            said += len(e["delta"])
        else:
            heard += len(base64.b64decode(e["delta"]))
            assert said / len(text) >= heard / total_audio - 1e-9
    assert "".join(e["delta"] for e in deltas if "transcript" in e["type"]) == text
    assert text == "Hello, thanks for calling. How can I help you today?"
    # response.done: completed, the item without audio bytes, usage, metadata; then rate limits.
    assert response["status"] == "completed" and response["status_details"] is None
    assert response["output"] == [
        {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": text}],
        }
    ]
    usage = response["usage"]
    assert usage["output_token_details"]["audio_tokens"] > 0 and usage["total_tokens"] == (
        usage["input_tokens"] + usage["output_tokens"]
    )
    assert response["metadata"] == {"call": "42"}
    assert rate["type"] == "rate_limits.updated" and [r["name"] for r in rate["rate_limits"]] == ["requests", "tokens"]
    ids = [e["event_id"] for e in raw.seen]
    assert len(set(ids)) == len(ids) and all(i.startswith("event_") for i in ids)
    s = emu.sessions[0]
    assert [i["id"] for i in s.items] == [user, item_id]
    assert s.audio_emitted_ms(item_id) == total_audio / 48 == voice.default_ms(text)


async def test_audio_is_paced_in_uneven_chunks(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Paced.", audio_ms=1500)), speed=3.0))
    started = time.monotonic()
    events = await raw.respond()
    elapsed = time.monotonic() - started
    sizes = audio_bytes(events)
    assert sum(sizes) == 1500 * 48
    assert 0.45 <= elapsed < 1.5  # 1.5 s of audio at 3× real time: about 0.5 s
    assert len(set(sizes)) > 3 and all(s % 2 == 0 for s in sizes)
    assert not any(s % 960 == 0 for s in sizes[:-1])  # never whole 20 ms frames


async def test_jitter_keeps_the_average_pace(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Jittery.", audio_ms=1200)), speed=4.0, jitter_ms=60))
    started = time.monotonic()
    await raw.send({"type": "response.create"})
    arrivals = []
    async with asyncio.timeout(5):
        while (event := await raw.recv())["type"] != "response.done":
            if event["type"] == "response.output_audio.delta":
                arrivals.append(time.monotonic() - started)
    gaps = np.diff(arrivals)
    assert 0.28 <= arrivals[-1] < 0.8  # 1.2 s at 4× is 0.3 s; jitter delays chunks, not the whole stream
    assert gaps.std() > 0.01


async def test_rate_limits_placement_and_counts(emulator):
    raw = await open_raw(
        await emulator(
            Script(default=Reply(text="Hi.")), rate_limits={"placement": "created", "requests": 100, "tokens": 1000}
        )
    )
    await raw.send({"type": "response.create"})
    events = await raw.until("response.done")
    assert kinds(events)[:2] == ["response.created", "rate_limits.updated"]
    limits = {r["name"]: r for r in events[1]["rate_limits"]}
    assert (limits["requests"]["limit"], limits["requests"]["remaining"], limits["tokens"]["limit"]) == (100, 99, 1000)
    assert await raw.quiet() == []  # nothing after response.done


async def test_burst_mode_and_first_audio_delay(emulator):
    raw = await open_raw(
        await emulator(Script(default=Reply(text="Quick.", audio_ms=3000)), speed=0, first_audio_delay_ms=300)
    )
    started = time.monotonic()
    await raw.send({"type": "response.create"})
    await raw.until("response.created")
    await raw.until("response.output_audio.delta")
    first = time.monotonic() - started
    await raw.until("response.done")
    total = time.monotonic() - started
    assert 0.28 <= first < 1.0 and total - first < 0.5  # the delay, then 3 s of audio at once


async def test_g711_output_is_encoded_by_the_emulator(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Hello there.", audio_ms=1000))))
    await raw.update(audio={"output": {"format": {"type": "audio/pcmu"}}})
    events = await raw.respond()
    sizes = audio_bytes(events)
    assert sum(sizes) == 8000 and len(set(sizes)) > 3
    assert events[-1]["response"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    ulaw = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert np.abs(g711.decode(ulaw, "audio/pcmu").astype(np.int32)).max() > 1000  # not silence


async def test_scripted_pcm_is_sent_as_given_or_converted(emulator):
    given = pcm(500, 0.25)
    emu = await emulator(Script(default=Reply(text="Recorded.", pcm=given)))
    raw = await open_raw(emu)
    events = await raw.respond()
    sent = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert sent == given and transcript_of(events) == "Recorded."
    await raw.update(audio={"output": {"format": {"type": "audio/pcma"}}})
    events = await raw.respond()
    assert sum(audio_bytes(events)) == 500 * 8  # resampled to 8 kHz, A-law


async def test_text_only_responses(emulator):
    emu = await emulator(Script(default=Reply(text="Only words, no sound.")))
    raw = await open_raw(emu)
    events = await raw.respond({"output_modalities": ["text"]})
    assert kinds(events, ("response.output_text.delta",)) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == "Only words, no sound."
    assert events[3]["part"] == {"type": "text", "text": ""}
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "Only words, no sound."}]
    assert events[-1]["response"]["output_modalities"] == ["text"]
    # The guide's "modalities bug": audio asked for, text delivered.
    emu.script.default = Reply(text="No audio here.", text_only=True)
    events = await raw.respond()
    assert "response.output_audio.delta" not in kinds(events) and "response.output_text.done" in kinds(events)


async def test_multi_item_responses_failures_and_server_errors(emulator):
    script = Script(
        turns={
            1: Reply(text="First part. Second part.", items=2),
            2: Reply(
                status="failed",
                error={
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                    "message": "You exceeded your current quota.",
                },
            ),
            3: Reply(text="After a hiccup.", server_error={"type": "server_error"}),
        }
    )
    raw = await open_raw(await emulator(script))
    for n in (1, 2, 3):
        await raw.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"turn {n}"}]},
            }
        )
        await raw.until("conversation.item.done")
        events = await raw.respond()
        response = events[-1]["response"]
        if n == 1:
            assert [o["content"][0]["transcript"] for o in response["output"]] == ["First part.", "Second part."]
            assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1]
            check_audio_item_order(events, response["id"])
        elif n == 2:
            assert (response["status"], response["output"]) == ("failed", [])
            assert response["status_details"] == {
                "type": "failed",
                "error": {
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                    "message": "You exceeded your current quota.",
                },
            }
        else:
            error = events[0]["error"]
            assert events[0]["type"] == "error" and error["type"] == "server_error"
            assert error["message"].startswith("The server had an error while processing your request.")
            assert events[1]["type"] == "response.created" and transcript_of(events) == "After a hiccup."


async def test_per_response_overrides(emulator):
    emu = await emulator(Script(default=Reply(text="A rather long answer that will not fit in the budget.")))
    raw = await open_raw(emu)
    await raw.update(tools=[HANGUP])
    events = await raw.respond(
        {
            "instructions": "Say goodbye.",
            "max_output_tokens": 10,
            "tools": [TRANSFER],
            "tool_choice": "none",
            "audio": {"output": {"format": {"type": "audio/pcma"}, "voice": "cedar"}},
        }
    )
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert 0 < len(transcript_of(events)) < len("A rather long answer that will not fit in the budget.")
    assert response["audio"]["output"] == {"format": {"type": "audio/pcma"}, "voice": "cedar"}
    assert response["max_output_tokens"] == 10
    record = emu.sessions[0].responses[-1]
    assert record["instructions"] == "Say goodbye." and record["tools"] == ["transfer"]
    assert record["tool_choice"] == "none" and record["status"] == "incomplete"
    assert emu.sessions[0].config["instructions"] != "Say goodbye."  # the session's are untouched
    # A bad override rejects the response.create: nothing starts.
    await raw.send({"type": "response.create", "event_id": "evt_r", "response": {"modalities": ["audio"]}}, valid=False)
    error = (await raw.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == ("unknown_parameter", "response.modalities", "evt_r")
    # (item_reference is in the reference's list but not in the SDK's GA types, hence valid=False)
    await raw.send(
        {"type": "response.create", "response": {"input": [{"type": "item_reference", "id": "item_x"}]}}, valid=False
    )
    assert (await raw.recv())["error"]["param"] == "response.input[0].id"
    assert await raw.quiet() == []


async def test_scripted_incomplete_reply(emulator):
    script = Script(default=Reply(text="Cut off in the middle of it.", status="incomplete"))
    raw = await open_raw(await emulator(script))
    response = (await raw.respond())[-1]["response"]
    assert response["status"] == "incomplete" and response["status_details"]["reason"] == "max_output_tokens"


# --- function calls ----------------------------------------------------------------------------------------------


async def test_function_call_flow_and_output(emulator):
    call = ToolCall("hangup_call", {"farewell": "Bye now"})
    script = Script(default=Reply(preamble="One moment.", tool_calls=[call]), after_tool=Reply(text="Result: {output}"))
    emu = await emulator(script)
    raw = await open_raw(emu)
    await raw.update(tools=[HANGUP])
    events = await raw.respond()
    response = events[-1]["response"]
    assert [o["type"] for o in response["output"]] == ["message", "function_call"]
    check_audio_item_order(events, response["id"])
    call_item = response["output"][1]["id"]
    fc = [e for e in events if e.get("item_id") == call_item or (e.get("item") or {}).get("id") == call_item]
    assert kinds(fc, ("response.function_call_arguments.delta",)) == [
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
    ]
    assert kinds(events)[-1] == "response.done" and kinds(events)[-2] == "conversation.item.done"
    added = fc[0]["item"]
    assert (added["status"], added["arguments"], added["name"]) == ("in_progress", "", "hangup_call")
    deltas = [e["delta"] for e in fc if e["type"] == "response.function_call_arguments.delta"]
    done = next(e for e in fc if e["type"] == "response.function_call_arguments.done")
    assert len(deltas) > 1 and "".join(deltas) == done["arguments"] == '{"farewell": "Bye now"}'
    assert done["name"] == "hangup_call" and done["call_id"].startswith("call_") and done["output_index"] == 1
    assert all(e["output_index"] == 1 for e in fc if "output_index" in e)
    assert response["output"][1]["status"] == "completed" and response["output"][1]["call_id"] == done["call_id"]
    assert await raw.quiet() == []  # then it waits for the output

    await raw.send(
        {
            "type": "conversation.item.create",
            "event_id": "evt_bad_call",
            "item": {"type": "function_call_output", "call_id": "call_nope", "output": "{}"},
        }
    )
    error = (await raw.until("error"))[-1]["error"]
    assert (error["code"], error["event_id"], error["param"]) == (
        "invalid_tool_call_id",
        "evt_bad_call",
        "item.call_id",
    )
    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": done["call_id"], "output": '{"ok": true}'},
        }
    )
    added = await raw.until("conversation.item.done")
    assert added[-2]["type"] == "conversation.item.added" and added[-2]["previous_item_id"] == call_item
    events = await raw.respond()
    assert transcript_of(events) == 'Result: {"ok": true}'
    assert emu.sessions[0].function_outputs == [{"call_id": done["call_id"], "output": '{"ok": true}'}]


async def test_a_tool_the_session_lacks_is_never_called(emulator):
    """The nested-schema trap: the update was rejected, the tools never arrived, the model cannot call them."""
    emu = await emulator(Script(greeting=Reply(tool_calls=[ToolCall("hangup_call")])))
    raw = await open_raw(emu)
    events = await raw.respond()
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["message"]
    assert transcript_of(events) == "I see."  # the script's default words instead
    await raw.update(tools=[HANGUP], tool_choice="none")
    assert [o["type"] for o in (await raw.respond())[-1]["response"]["output"]] == ["message"]
    await raw.update(tool_choice={"type": "function", "name": "hangup_call"})
    assert [o["type"] for o in (await raw.respond())[-1]["response"]["output"]] == ["function_call"]


async def test_auto_respond_after_tool_output_race(emulator):
    script = Script(default=Reply(tool_calls=[ToolCall("hangup_call", '{"farewell":"bye"}')]))
    raw = await open_raw(await emulator(script, auto_respond_after_tool_output=True, speed=1.0))
    await raw.update(tools=[HANGUP])
    call = (await raw.respond())[-1]["response"]["output"][0]
    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"},
        }
    )
    await raw.send({"type": "response.create", "event_id": "evt_late"})
    events = await raw.until("error")
    assert "response.created" in kinds(events)  # the server answered on its own first
    assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
    assert events[-1]["error"]["event_id"] == "evt_late"


# --- one response at a time, cancel, barge-in ---------------------------------------------------------------------


async def test_one_active_response_per_conversation(emulator):
    emu = await emulator(Script(default=Reply(text="A long answer.", audio_ms=4000)), speed=2.0)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    active = (await raw.until("response.created"))[-1]["response"]["id"]
    await raw.send({"type": "response.create", "event_id": "evt_second"})
    error = (await raw.until("error"))[-1]["error"]
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", "evt_second")
    assert error["message"] == (
        f"Conversation already has an active response in progress: {active}. Wait until "
        "the response is finished before creating a new one."
    )
    # Out of band is allowed alongside: no conversation events, nothing added, no conversation id.
    await raw.send(
        {
            "type": "response.create",
            "response": {"conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "summary"}},
        }
    )
    oob = await raw.until("response.done", where=lambda e: e["response"]["id"] != active)
    mine = [
        e
        for e in oob
        if e.get("response_id") == oob[-1]["response"]["id"]
        or (e.get("response") or {}).get("id") == oob[-1]["response"]["id"]
    ]
    assert oob[-1]["response"]["conversation_id"] is None
    assert oob[-1]["response"]["metadata"] == {"purpose": "summary"}
    item = oob[-1]["response"]["output"][0]["id"]
    assert not any(e["type"].startswith("conversation.item") and e["item"]["id"] == item for e in oob)
    assert mine[0]["type"] == "response.created" and item not in [i["id"] for i in emu.sessions[0].items]
    await raw.until("response.done", timeout=10)


async def test_response_cancel_both_ways(emulator):
    emu = await emulator(Script(default=Reply(text="A long answer.", audio_ms=5000)), speed=1.0)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    await raw.until("response.output_audio.delta")
    await raw.send({"type": "response.cancel", "event_id": "evt_cancel"})
    events = await raw.until("response.done")
    assert kinds(events, ("response.output_audio.delta", "response.output_audio_transcript.delta")) == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    response = events[-1]["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert response["output"][0]["status"] == "incomplete"
    emitted = emu.sessions[0].audio_emitted_ms(response["output"][0]["id"])
    assert 0 < emitted < 2000
    await raw.recv()  # rate_limits.updated
    await raw.send({"type": "response.cancel", "event_id": "evt_late"})
    error = (await raw.recv())["error"]
    assert (error["code"], error["message"], error["event_id"]) == (
        "response_cancel_not_active",
        "Cancellation failed: no active response found",
        "evt_late",
    )
    await raw.send({"type": "response.create"})
    created = (await raw.until("response.created"))[-1]["response"]["id"]
    await raw.send({"type": "response.cancel", "response_id": "resp_other"})
    assert (await raw.until("error"))[-1]["error"]["code"] == "response_cancel_not_active"
    await raw.send({"type": "response.cancel", "response_id": created})
    assert (await raw.until("response.done"))[-1]["response"]["status"] == "cancelled"


async def test_barge_in_cancels_with_turn_detected_and_does_not_truncate(emulator):
    emu = await emulator(
        Script(
            default=Reply(text="A long answer that goes on.", audio_ms=6000),
            turns={1: Reply(text="You interrupted me.")},
        ),
        speed=1.0,
    )
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    await raw.until("response.output_audio.delta")
    await append(raw, pcm(300, 0.3))
    events = await raw.until("response.done")
    started = kinds(events).index("input_audio_buffer.speech_started")
    assert kinds(events[started:], ("response.output_audio.delta", "response.output_audio_transcript.delta")) == [
        "input_audio_buffer.speech_started",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert not any(e["type"] == "response.output_audio.delta" for e in events[started:])
    response = events[-1]["response"]
    assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert response["output"][0]["status"] == "incomplete"
    answer = response["output"][0]["id"]
    assert emu.sessions[0].truncations == []  # the server never truncates on its own over WebSocket
    assert emu.sessions[0].conversation.audio_ms[answer] == emu.sessions[0].audio_emitted_ms(answer)
    await append(raw, pcm(400))
    events = await raw.until("response.done")
    assert transcript_of(events) == "You interrupted me."


async def test_truncate_delete_retrieve(emulator):
    emu = await emulator(Script(default=Reply(text="Hello there.", audio_ms=1000)), truncate_shortfall_ms=85)
    raw = await open_raw(emu)
    events = await raw.respond()
    item_id = events[-1]["response"]["output"][0]["id"]
    await raw.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_t",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 950,
        }
    )
    error = (await raw.recv())["error"]
    assert (error["code"], error["event_id"], error["param"]) == ("invalid_value", "evt_t", None)
    assert error["message"] == "Audio content of 915ms is already shorter than 950ms"  # 1000 − 85 shortfall
    await raw.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 400})
    truncated = await raw.recv()
    assert {k: v for k, v in truncated.items() if k != "event_id"} == {
        "type": "conversation.item.truncated",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 400,
    }
    assert emu.sessions[0].truncations == [
        {"item_id": item_id, "content_index": 0, "audio_end_ms": 400, "emitted_ms": 1000.0}
    ]
    await raw.send({"type": "conversation.item.retrieve", "item_id": item_id})
    retrieved = (await raw.recv())["item"]
    assert retrieved["content"][0]["transcript"] == ""  # dropped by the truncation
    assert len(base64.b64decode(retrieved["content"][0]["audio"])) == 400 * 48
    # Truncated audio is now 400 ms long: a later, longer truncation fails.
    await raw.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 350})
    assert (await raw.recv())["error"]["message"] == "Audio content of 315ms is already shorter than 350ms"

    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        }
    )
    user = (await raw.until("conversation.item.done"))[-1]["item"]["id"]
    await raw.send({"type": "conversation.item.truncate", "item_id": user, "content_index": 0, "audio_end_ms": 0})
    assert (await raw.recv())["error"]["message"] == "Only model output audio messages can be truncated"
    await raw.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_nx",
            "item_id": "item_nope",
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    assert (await raw.recv())["error"]["event_id"] == "evt_nx"
    await raw.send({"type": "conversation.item.retrieve", "item_id": user})
    assert (await raw.recv())["item"]["content"] == [{"type": "input_text", "text": "hi"}]
    await raw.send({"type": "conversation.item.delete", "item_id": item_id})
    deleted = await raw.recv()
    assert deleted["type"] == "conversation.item.deleted" and deleted["item_id"] == item_id
    assert [i["id"] for i in emu.sessions[0].items] == [user]
    await raw.send({"type": "conversation.item.retrieve", "event_id": "evt_gone", "item_id": item_id})
    error = (await raw.recv())["error"]
    assert (error["code"], error["event_id"]) == ("item_retrieve_invalid_item_id", "evt_gone")
    await raw.send({"type": "conversation.item.delete", "item_id": item_id})
    assert (await raw.recv())["error"]["code"] == "item_delete_invalid_item_id"


async def test_a_truncation_during_the_stream_sticks(emulator):
    """Client-side barge-in: truncate first, cancel after; the item stays cut at what was played."""
    emu = await emulator(Script(default=Reply(text="A long answer.", audio_ms=4000)), speed=2.0)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    item_id = (await raw.until("response.output_audio.delta"))[-1]["item_id"]
    await raw.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 10})
    await raw.until("conversation.item.truncated")
    await raw.until("response.output_audio.delta")  # the stream goes on until cancelled
    await raw.send({"type": "response.cancel"})
    response = (await raw.until("response.done"))[-1]["response"]
    assert response["status"] == "cancelled" and response["output"][0]["content"][0]["transcript"] == ""
    s = emu.sessions[0]
    assert s.conversation.audio_ms[item_id] == 10 and len(s.conversation.audio[item_id]) == 10 * 48
    assert s.audio_emitted_ms(item_id) > 10


async def test_items_are_placed_and_checked_and_count_as_turns(emulator):
    script = Script(turns={1: Reply(text="One."), 2: Reply(text="Two.")}, greeting=Reply(text="Hello."))
    emu = await emulator(script)
    raw = await open_raw(emu)
    assert transcript_of(await raw.respond()) == "Hello."
    greeting = emu.sessions[0].items[0]["id"]
    # A reconnecting client replays history with items: they count as user turns.
    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_replayed_1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}],
            },
        }
    )
    added = (await raw.until("conversation.item.done"))[0]
    assert (added["item"]["id"], added["previous_item_id"]) == ("item_replayed_1", greeting)
    assert transcript_of(await raw.respond()) == "One."
    await raw.send(
        {
            "type": "conversation.item.create",
            "previous_item_id": "root",
            "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be nice."}]},
        }
    )
    added = (await raw.until("conversation.item.done"))[0]
    assert added["previous_item_id"] is None and emu.sessions[0].items[0]["role"] == "system"
    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Earlier answer."}],
            },
        }
    )
    await raw.until("conversation.item.done")
    audio = base64.b64encode(pcm(200)).decode()
    await raw.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]},
        }
    )
    content = (await raw.until("conversation.item.done"))[-1]["item"]["content"]
    assert content == [{"type": "input_audio", "transcript": None}]
    assert transcript_of(await raw.respond()) == "Two."
    for item, param in [
        (
            {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": "x"}]},
            "item.content[0].type",
        ),
        ({"type": "message", "role": "robot", "content": []}, "item.role"),
        ({"type": "message", "role": "user"}, "item.content"),
        ({"type": "message", "id": "item_replayed_1", "role": "user", "content": []}, "item.id"),
        ({"type": "function_call_output", "call_id": "call_x", "output": "x"}, "item.call_id"),
    ]:
        await raw.send({"type": "conversation.item.create", "event_id": "evt_i", "item": item}, valid=False)
        error = (await raw.recv())["error"]
        assert (error["param"], error["event_id"]) == (param, "evt_i"), error
    await raw.send(
        {
            "type": "conversation.item.create",
            "previous_item_id": "item_nope",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
        }
    )
    assert (await raw.recv())["error"]["param"] == "previous_item_id"
    assert emu.sessions[0].conversation.user_turns == 2


# --- errors, faults, lifetime ------------------------------------------------------------------------------------


async def test_bad_frames_get_errors_and_the_socket_stays_open(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Still here."))))
    await raw.ws.send("{not json")
    error = (await raw.recv())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_event")
    await raw.ws.send(json.dumps({"event_id": "evt_x"}))
    error = (await raw.recv())["error"]
    assert (error["code"], error["message"], error["event_id"]) == (
        "invalid_event",
        "The 'type' field is missing.",
        "evt_x",
    )
    await raw.send({"type": "response.explode", "event_id": "evt_y"}, valid=False)
    error = (await raw.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "type", "evt_y")
    assert error["message"].startswith("Invalid value: 'response.explode'. Supported values are: 'session.update',")
    await raw.send({"type": "input_audio_buffer.append", "event_id": "evt_b64", "audio": "%%%"})
    error = (await raw.recv())["error"]
    assert (error["param"], error["event_id"]) == ("audio", "evt_b64")
    await raw.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()})
    assert (await raw.recv())["error"]["param"] == "audio"  # an odd byte count is not pcm16
    await raw.send({"type": "response.create", "extra": 1}, valid=False)
    assert (await raw.recv())["error"]["message"] == "Unknown parameter: 'extra'."
    await raw.send({"type": "conversation.item.delete"}, valid=False)
    assert (await raw.recv())["error"]["message"] == "Missing required parameter: 'item_id'."
    await raw.ws.send(b"\x00\x01")
    assert (await raw.recv())["error"]["code"] == "invalid_event"
    assert (await raw.respond())[-1]["response"]["status"] == "completed"


async def test_errors_can_arrive_late_and_correlate_by_event_id(emulator):
    raw = await open_raw(await emulator(error_delay_ms=200))
    await raw.update(audio={"input": {"turn_detection": None}})
    await raw.send({"type": "input_audio_buffer.commit", "event_id": "evt_early"})
    await append(raw, pcm(200, 0.3))
    await raw.send({"type": "input_audio_buffer.commit", "event_id": "evt_later"})
    events = await raw.until("error")
    assert kinds(events)[0] == "input_audio_buffer.committed"  # the later commit's success comes first
    assert events[-1]["error"]["event_id"] == "evt_early"


async def test_session_expiry(emulator):
    emu = await emulator(max_session_s=0.3)
    raw = await open_raw(emu)
    error = (await raw.recv(2))["error"]
    assert error["code"] == "session_expired"
    assert error["message"] == "Your session hit the maximum duration of 0.005 minutes."
    with pytest.raises(websockets.ConnectionClosed) as info:
        await raw.recv()
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, error["message"])
    assert emu.sessions[0].close_code == 1001
    assert session_module.minutes(3600) == "60" and session_module.minutes(1) == "0.0167"


async def test_expiry_follows_the_injected_clock(emulator):
    now = [1000.0]
    emu = await emulator(max_session_s=60, clock=lambda: now[0])
    raw = await open_raw(emu)
    await raw.update(instructions="fine")
    now[0] += 61  # a minute passes on the test's clock
    await raw.send({"type": "response.create"})
    error = (await raw.recv())["error"]
    assert (error["code"], error["message"]) == (
        "session_expired",
        "Your session hit the maximum duration of 1 minutes.",
    )
    with pytest.raises(websockets.ConnectionClosed):
        await raw.recv()


async def test_fault_hooks(emulator):
    emu = await emulator(Script(default=Reply(text="Slow.", audio_ms=2000)), speed=1.0)
    raw = await open_raw(emu)
    s = emu.sessions[0]
    await s.send_raw('{"type": "response.future_event"')
    assert await asyncio.wait_for(raw.ws.recv(), 2) == '{"type": "response.future_event"'
    await raw.send({"type": "response.create"})
    await raw.until("response.output_audio.delta")
    s.stall(0.5)
    await asyncio.sleep(0.1)
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await raw.recv(0.3)  # nothing while stalled
    await raw.recv(1.0)  # then it goes on
    await s.close(1012, "restarting")
    with pytest.raises(websockets.ConnectionClosed) as info:
        await raw.until("never")
    assert info.value.rcvd.code == 1012 and s.close_code == 1012
    raw = await open_raw(emu)
    await emu.sessions[1].drop()
    with pytest.raises(websockets.ConnectionClosed) as info:
        await raw.recv()
    assert info.value.rcvd is None  # no close frame: 1006 for the client
    assert raw.ws.close_code == 1006
    await asyncio.sleep(0.05)
    assert emu.sessions[1].closed and emu.sessions[1].close_code == 1006
    raw = await open_raw(emu)
    await emu.close_all(1011, "boom")
    with pytest.raises(websockets.ConnectionClosed) as info:
        await raw.recv()
    assert info.value.rcvd.code == 1011


async def test_wire_log_records_both_directions(emulator, tmp_path):
    log = tmp_path / "wire.jsonl"
    emu = await emulator(Script(default=Reply(text="Logged.")), wire_log=log)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    await raw.until("response.done")
    await raw.ws.send("{broken")
    await raw.recv()
    await raw.ws.close()
    await emu.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {line["dir"] for line in lines} == {"in", "out"}
    assert all(line["session"] == emu.sessions[0].id for line in lines)
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines) and lines[0]["t"] >= 0
    assert [line["raw"] for line in lines if "raw" in line] == ["{broken"]
    events = [line for line in lines if "event" in line]
    for line in events:
        (check_client_event if line["dir"] == "in" else check_server_event)(line["event"])
    assert [line["event"] for line in events if line["dir"] == "out"] == emu.sessions[0].sent
    assert events[0]["event"]["type"] == "session.created"


async def test_many_concurrent_sessions(emulator):
    """A small load: 40 conversations at once on one emulator, each a VAD turn and a paced answer."""
    emu = await emulator(Script(turns={1: Reply(text="Fine, thanks.", audio_ms=600)}), speed=20.0, record=False)

    async def call() -> str:
        raw = await open_raw(emu)
        await append(raw, pcm(300, 0.3) + pcm(400), frame_bytes=4800)
        text = transcript_of(await raw.until("response.done", timeout=20))
        await raw.ws.close()
        return text

    started = time.monotonic()
    assert await asyncio.gather(*(call() for _ in range(40))) == ["Fine, thanks."] * 40
    assert time.monotonic() - started < 10
    assert len({s.id for s in emu.sessions}) == 40 and all(s.sent == [] for s in emu.sessions)


async def test_a_long_running_emulator_forgets_closed_sessions(emulator):
    """`voice-agent sim realtime` (keep_closed off) holds only its open sessions: each closed one kept its
    conversation's audio, and a soak's emulator grew by ~300 KB a call."""
    kept, forgetful = await emulator(record=False), await emulator(record=False, keep_closed=False)
    for emu in (kept, forgetful):
        raws = [await open_raw(emu) for _ in range(3)]
        assert len(emu.sessions) == 3
        first_ids = {s.id for s in emu.sessions}
        for raw in raws:
            await raw.ws.close()
        async with asyncio.timeout(10):
            while len(emu.sessions) > (3 if emu is kept else 0) or emu.open_sessions():
                await asyncio.sleep(0.01)
    assert len(kept.sessions) == 3 and forgetful.sessions == []
    await open_raw(forgetful)
    assert forgetful.sessions[0].id not in first_ids  # each session still seeded by its own index


# --- scripting, voice ------------------------------------------------------------------------------------------


def test_script_from_yaml(tmp_path):
    path = tmp_path / "script.yaml"
    path.write_text(
        "greeting: Hello!\nturns:\n  1:\n    text: Let me check.\n    tool_calls:\n"
        "      - name: transfer\n        arguments: {destination: sales}\n"
        "after_tool:\n  text: 'Done: {output}'\ntranscripts:\n  1: I want sales.\n"
    )
    script = Script.from_yaml(path)
    assert script.greeting == Reply(text="Hello!")
    assert script.turns[1].tool_calls == [ToolCall("transfer", {"destination": "sales"})]
    assert script.after_tool.text == "Done: {output}" and script.transcript_for(1) == "I want sales."
    assert script.reply_for(0, False).text == "Hello!" and script.reply_for(5, False).text == "I see."
    path.write_text("turns:\n  1:\n    txt: typo\n")
    with pytest.raises(ValueError, match="unknown keys: txt"):
        Script.from_yaml(path)


def test_transcript_tokens_concatenate_back():
    for text in ["Hello, thanks for calling. How can I help you today?", "don't  stop ", "", "Ünïcode ok!"]:
        assert "".join(tokens(text)) == text


@pytest.mark.parametrize("espeak", [True, False])
def test_agent_voice_is_speech_like_exact_and_deterministic(espeak, monkeypatch):
    if espeak and not voice.espeak_available():
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it)")
    if not espeak:
        monkeypatch.setattr(voice, "espeak_available", lambda: False)
    text = "Thank you for calling. How can I help?"
    samples = voice.speech(text, 2500, "marin", seed=1)
    assert len(samples) == 2500 * 24
    assert np.array_equal(samples, voice.speech(text, 2500, "marin", seed=1))
    frames = samples[: len(samples) // 480 * 480].astype(np.float64).reshape(-1, 480)
    rms = np.sqrt((frames**2).mean(axis=1))
    voiced = rms > 300
    assert 0.3 < voiced.mean() < 0.99  # speech has pauses, and is mostly sound
    assert np.abs(np.diff(voiced.astype(int))).sum() >= 4  # syllables or words, not one long tone
    ulaw = voice.render(text, 2500, "audio/pcmu", "marin", 1)
    assert len(ulaw) == 2500 * 8


def test_g711_tables_round_trip():
    samples = np.arange(-32768, 32768, 7, dtype=np.int32).astype(np.int16)
    for law in ("audio/pcmu", "audio/pcma"):
        decoded = g711.decode(g711.encode(samples, law), law).astype(np.int32)
        error = np.abs(decoded - samples.astype(np.int32))
        assert (error <= np.maximum(16, np.abs(samples.astype(np.int32)) // 16)).all()
        levels = g711.decode(np.arange(256, dtype=np.uint8).tobytes(), law)
        assert np.array_equal(g711.decode(g711.encode(levels, law), law), levels)  # every level is exact
    assert g711.encode(np.zeros(1, np.int16), "audio/pcmu") == b"\xff"  # μ-law silence


# --- other clients ---------------------------------------------------------------------------------------------


async def test_the_official_sdk_drives_the_emulator(emulator):
    from openai import AsyncOpenAI

    emu = await emulator(Script(greeting=Reply(text="Hello from the emulator.")))
    client = AsyncOpenAI(api_key=KEY, websocket_base_url=emu.base_url)
    seen = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "tools": [HANGUP],
                "audio": {"output": {"voice": "marin"}},
            }
        )
        async with asyncio.timeout(10):
            async for event in conn:
                seen.append(event)
                if event.type == "session.updated":
                    assert event.session.audio.output.voice == "marin" and event.session.tools[0].name == "hangup_call"
                    await conn.response.create()
                if event.type == "response.done":
                    break
    assert [e.type for e in seen[:2]] == ["session.created", "session.updated"]
    assert (
        next(e for e in seen if e.type == "response.output_audio_transcript.done").transcript
        == "Hello from the emulator."
    )
    assert seen[-1].response.status == "completed"
    s = emu.sessions[0]
    assert s.headers["authorization"] == f"Bearer {KEY}" and s.query["model"] == "gpt-realtime"
    for event in s.received:
        check_client_event(event)  # what the SDK sent conforms too


def test_cli_serves_and_stops_on_sigterm(tmp_path):
    script = tmp_path / "script.yaml"
    script.write_text("greeting:\n  text: Hello from the CLI.\nturns:\n  1:\n    text: Noted.\n")
    wire = tmp_path / "wire.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voice_agent.cli",
            "sim",
            "realtime",
            "--port",
            "0",
            "--speed",
            "0",
            "--script",
            str(script),
            "--api-key",
            KEY,
            "--wire-log",
            str(wire),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on ws://127.0.0.1:") and line.endswith("/v1/realtime")
        url = line.split(" ", 2)[2]

        async def talk() -> str:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with connect(url + "?model=gpt-realtime", additional_headers=headers) as ws:
                raw = Raw(ws)
                await raw.recv()
                return transcript_of(await raw.respond())

        assert asyncio.run(talk()) == "Hello from the CLI."
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert "Traceback" not in proc.stderr.read()
    assert any('"response.done"' in line for line in wire.read_text().splitlines())


def test_vad_events_do_not_depend_on_how_the_audio_is_chunked():
    """The quiet-chunk shortcut (a chunk whose whole energy is under one window's gate) decides as the
    window-by-window rule does: 20 ms appends, odd sizes and single 10 ms windows give the same events."""
    rng = np.random.default_rng(7)
    gate = 10 ** (gate_dbfs(0.5) / 20) * 32768  # RMS at the gate
    levels = [0.2, 0.6, 0.9, 1.1, 3.0, 0.0, 0.95, 1.05, 0.3]  # x gate, 300 ms each: near and across it
    audio = np.concatenate([rng.normal(0, level * gate, 7200) for level in levels]).clip(-32768, 32767)
    samples = audio.astype(np.int16)

    def events(sizes) -> list[tuple[str, int]]:
        vad = EnergyVad(0.5, 300, 200, 24000)
        out, at = [], 0
        for size in sizes:
            out += [(e.kind, e.ms) for e in vad.feed(samples[at : at + size])]
            at += size
        return out

    by_frame = events([480] * (len(samples) // 480))
    assert by_frame == events([240] * (len(samples) // 240))
    odd = [int(n) for n in rng.integers(1, 1500, 200)]  # more than the whole signal: the last ones are empty
    assert events(odd) == by_frame
    assert [kind for kind, _ in by_frame].count("started") >= 2  # the signal does cross the gate
