"""The Realtime emulator, driven by hand-written JSON over a real WebSocket (no product code), and by the
official SDK. Every event it sends is validated against the SDK's strict GA server union."""

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
from tests.conftest import ROOT
from tests.realtime_schema import check_client_event, check_server_event

KEY = "sk-emulator-test"


class Raw:
    """A test client speaking raw JSON; valid client events are checked on the way out, all server
    events on the way in."""

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

    async def until(self, kind: str, timeout: float = 5.0) -> list[dict]:
        out = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv()
                out.append(event)
                if event["type"] == kind:
                    return out

    async def update(self, **session) -> dict:
        await self.send({"type": "session.update", "event_id": "evt_up", "session": {"type": "realtime", **session}})
        return await self.recv()


@pytest.fixture
async def emulator():
    made: list[Emulator] = []

    async def make(script: Script | None = None, **kwargs) -> Emulator:
        kwargs.setdefault("speed", 0)
        emu = Emulator(script=script or Script(), api_keys={KEY}, seed=3, **kwargs)
        await emu.start()
        made.append(emu)
        return emu

    yield make
    for emu in made:
        await emu.stop()


async def open_raw(emu: Emulator, headers: dict | None = None) -> Raw:
    ws = await connect(emu.url + "?model=gpt-realtime", additional_headers={
        "Authorization": f"Bearer {KEY}", **(headers or {})})
    raw = Raw(ws)
    created = await raw.recv()
    assert created["type"] == "session.created"
    return raw


def pcm(ms: int, amplitude: float = 0.0) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (np.sin(2 * math.pi * 300 * t) * amplitude * 32767).astype("<i2").tobytes()


async def append(raw: Raw, audio: bytes, frame_ms: int = 20) -> None:
    step = frame_ms * 48
    for i in range(0, len(audio), step):
        await raw.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[i:i + step]).decode()})


# --- handshake -------------------------------------------------------------------------------------------


async def test_session_created_first_with_complete_ga_defaults(emulator):
    emu = await emulator()
    raw = await open_raw(emu)
    session = raw.seen[0]["session"]
    assert session["id"].startswith("sess_") and len(session["id"]) == 26
    assert session["object"] == "realtime.session" and session["expires_at"] > time.time() + 3500
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
        "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}
    assert session["max_output_tokens"] == "inf" and session["tools"] == []
    assert emu.sessions[0].query == {"model": "gpt-realtime"}
    await raw.ws.close()


@pytest.mark.parametrize("headers, code, close", [
    ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key", 3000),
    ({}, "invalid_api_key", 3000),
    ({"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}, "beta_api_shape_disabled", 4000),
])
async def test_rejected_connections(emulator, headers, code, close):
    emu = await emulator()
    async with connect(emu.url + "?model=gpt-realtime", additional_headers=headers) as ws:
        event = json.loads(await ws.recv())
        check_server_event(event)
        assert event["error"]["code"] == code
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == close
    assert info.value.rcvd.reason == f"invalid_request_error.{code}"
    if code == "beta_api_shape_disabled":
        assert event["error"]["message"] == ("The Realtime Beta API is no longer supported. Please use "
                                             "/v1/realtime for the GA API.")


async def test_wrong_path_is_404(emulator):
    emu = await emulator()
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{emu.port}/v1/chat", additional_headers={"Authorization": f"Bearer {KEY}"})
    assert info.value.response.status_code == 404


# --- session.update --------------------------------------------------------------------------------------


async def test_session_update_merges_and_replies_with_the_full_config(emulator):
    raw = await open_raw(await emulator())
    updated = await raw.update(instructions="Be brief.", audio={"output": {"voice": "marin"}})
    assert updated["type"] == "session.updated"
    assert updated["event_id"] != "evt_up"  # the server's own event id, not the client's
    session = updated["session"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}  # untouched
    updated = await raw.update(audio={"input": {"turn_detection": None}})
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert updated["session"]["audio"]["output"]["voice"] == "marin"


@pytest.mark.parametrize("session, code, message, param", [
    ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "Unknown parameter: 'session.temperature'.",
     "session.temperature"),
    ({"type": "realtime", "modalities": ["text", "audio"]}, "unknown_parameter",
     "Unknown parameter: 'session.modalities'.", "session.modalities"),
    ({"instructions": "x"}, "missing_required_parameter", "Missing required parameter: 'session.type'.",
     "session.type"),
    ({"type": "realtime", "tools": [{"type": "function", "function": {"name": "hangup", "parameters": {}}}]},
     "missing_required_parameter", "Missing required parameter: 'session.tools[0].name'.", "session.tools[0].name"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "invalid_value", None, "session.audio.input.format.rate"),
    ({"type": "realtime", "tools": [{"type": "function", "name": "hang.up"}]}, "invalid_value", None,
     "session.tools[0].name"),
    ({"type": "realtime", "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "missing_required_parameter", "Missing required parameter: 'session.tool_choice.name'.",
     "session.tool_choice.name"),
])
async def test_session_update_rejections_leave_the_session_unchanged(emulator, session, code, message, param):
    emu = await emulator()
    raw = await open_raw(emu)
    before = json.dumps(emu.sessions[0].config, sort_keys=True)
    await raw.send({"type": "session.update", "event_id": "evt_bad", "session": session}, valid=False)
    error = (await raw.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_bad")
    if message:
        assert error["message"] == message
    assert json.dumps(emu.sessions[0].config, sort_keys=True) == before


async def test_voice_is_locked_once_audio_was_sent(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Hello."))))
    await raw.send({"type": "response.create"})
    await raw.until("response.done")
    await raw.send({"type": "session.update", "event_id": "evt_v",
                    "session": {"type": "realtime", "tools": [], "audio": {"output": {"voice": "echo"}}}})
    error = (await raw.until("error"))[-1]["error"]
    assert error["code"] == "cannot_update_voice"
    assert error["message"] == "Cannot update a conversation's voice if assistant audio is present."
    assert error["param"] == "session.audio.output.voice"


# --- input audio and VAD ---------------------------------------------------------------------------------


async def test_server_vad_turn_timing_and_event_order(emulator):
    raw = await open_raw(await emulator(Script(turns={1: Reply(text="Hi there.")})))
    await raw.update(audio={"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 100,
                                                         "silence_duration_ms": 300},
                                      "transcription": {"model": "gpt-4o-mini-transcribe"}}})
    await append(raw, pcm(500) + pcm(400, 0.3) + pcm(800))
    events = await raw.until("response.done")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert started["audio_start_ms"] == 400  # onset 500 − prefix padding 100
    assert stopped["audio_end_ms"] == 1200  # last voiced 900 + silence 300
    assert started["item_id"] == stopped["item_id"]
    kinds = [e["type"] for e in events if not e["type"].startswith(("response.output_audio",
                                                                    "conversation.item.input_audio_transcription"))]
    assert kinds == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.added", "conversation.item.done", "response.created", "response.output_item.added",
        "conversation.item.added", "response.content_part.added", "response.content_part.done",
        "response.output_item.done", "conversation.item.done", "response.done"]
    user_item = events[3]["item"]
    assert user_item["id"] == started["item_id"] and user_item["role"] == "user"
    deltas = [e for e in events if e["type"] == "response.output_audio_transcript.delta"]
    done = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert "".join(d["delta"] for d in deltas) == done["transcript"] == "Hi there."
    transcribed = await raw.until("conversation.item.input_audio_transcription.completed")
    assert transcribed[-1]["transcript"] == "user turn 1"


async def test_manual_turns_commit_and_clear(emulator):
    raw = await open_raw(await emulator())
    await raw.update(audio={"input": {"turn_detection": None}})
    await append(raw, pcm(60, 0.3))
    await raw.send({"type": "input_audio_buffer.commit", "event_id": "evt_c"})
    error = (await raw.recv())["error"]
    assert error["code"] == "input_audio_buffer_commit_empty"
    assert error["message"] == ("Error committing input audio buffer: buffer too small. Expected at least 100ms "
                                "of audio, but buffer only has 60.00ms of audio.")
    assert error["event_id"] == "evt_c"
    await append(raw, pcm(100, 0.3))
    await raw.send({"type": "input_audio_buffer.commit"})
    assert [e["type"] for e in await raw.until("conversation.item.done")] == [
        "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    await raw.send({"type": "input_audio_buffer.clear"})
    assert (await raw.recv())["type"] == "input_audio_buffer.cleared"


# --- responses -------------------------------------------------------------------------------------------


async def test_audio_is_paced_in_uneven_chunks(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Paced.", audio_ms=1500)), speed=3.0))
    started = time.monotonic()
    await raw.send({"type": "response.create"})
    events = await raw.until("response.done")
    elapsed = time.monotonic() - started
    sizes = [len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta"]
    assert sum(sizes) == 1500 * 48
    assert elapsed >= 0.45  # 1.5 s of audio at 3x cannot arrive sooner than 0.5 s (less one chunk)
    assert len(set(sizes[:-1])) > 3 and all(s % 2 == 0 for s in sizes)
    assert not all(s % 960 == 0 for s in sizes)  # not aligned with 20 ms frames


async def test_text_only_response(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Only words."))))
    await raw.send({"type": "response.create", "response": {"output_modalities": ["text"], "metadata": {"k": "v"}}})
    events = await raw.until("response.done")
    kinds = [e["type"] for e in events]
    assert "response.output_audio.delta" not in kinds
    assert next(e for e in events if e["type"] == "response.output_text.done")["text"] == "Only words."
    assert events[-1]["response"]["metadata"] == {"k": "v"}


async def test_function_call_flow_and_output(emulator):
    script = Script(default=Reply(preamble="One moment.", tool_calls=[ToolCall("transfer", {"destination": "sales"})]),
                    after_tool=Reply(text="Result: {output}"))
    emu = await emulator(script)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    events = await raw.until("response.done")
    fc = [e for e in events if e["type"].startswith("response.function_call_arguments")
          or (e["type"].endswith(("item.added", "item.done")) and e["item"]["type"] == "function_call")]
    kinds = [e["type"] for e in fc]
    assert kinds[:2] == ["response.output_item.added", "conversation.item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "conversation.item.done"]
    deltas = [e["delta"] for e in fc if e["type"] == "response.function_call_arguments.delta"]
    done = next(e for e in fc if e["type"] == "response.function_call_arguments.done")
    assert "".join(deltas) == done["arguments"] == '{"destination": "sales"}' and done["name"] == "transfer"
    assert done["call_id"].startswith("call_")
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["message", "function_call"]

    await raw.send({"type": "conversation.item.create", "event_id": "evt_bad_call", "item": {
        "type": "function_call_output", "call_id": "call_nope", "output": "{}"}})
    assert (await raw.until("error"))[-1]["error"]["event_id"] == "evt_bad_call"
    await raw.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": done["call_id"], "output": '{"ok": true}'}})
    await raw.until("conversation.item.done")
    await raw.send({"type": "response.create"})
    events = await raw.until("response.done")
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert transcript == 'Result: {"ok": true}'
    assert emu.sessions[0].function_outputs == [{"call_id": done["call_id"], "output": '{"ok": true}'}]


async def test_one_active_response_and_cancel(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="A long answer.", audio_ms=5000)), speed=1.0))
    await raw.send({"type": "response.create"})
    created = (await raw.until("response.created"))[-1]["response"]["id"]
    await raw.send({"type": "response.create", "event_id": "evt_second"})
    error = (await raw.until("error"))[-1]["error"]
    assert error["code"] == "conversation_already_has_active_response"
    assert error["message"] == (f"Conversation already has an active response in progress: {created}. Wait until "
                                "the response is finished before creating a new one.")
    await raw.send({"type": "response.create", "response": {"conversation": "none"}})  # out of band: allowed
    await raw.send({"type": "response.cancel"})
    events = await raw.until("response.done")
    while events[-1]["response"]["id"] != created:
        events = await raw.until("response.done")
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    incomplete = [e for e in events if e["type"] == "response.output_item.done"]
    assert incomplete[-1]["item"]["status"] == "incomplete"
    await asyncio.sleep(0.05)
    await raw.send({"type": "response.cancel", "event_id": "evt_late"})
    error = (await raw.until("error"))[-1]["error"]
    assert (error["code"], error["message"]) == ("response_cancel_not_active",
                                                 "Cancellation failed: no active response found")


async def test_barge_in_cancels_with_turn_detected_and_does_not_truncate(emulator):
    emu = await emulator(Script(default=Reply(text="Long.", audio_ms=6000)), speed=1.0)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    await raw.until("response.output_audio.delta")
    await append(raw, pcm(300, 0.3))
    events = await raw.until("response.done")
    assert events[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert [e["type"] for e in events].index("input_audio_buffer.speech_started") < len(events) - 1
    assert emu.sessions[0].truncations == []


async def test_truncate_delete_retrieve(emulator):
    emu = await emulator(Script(default=Reply(text="Hello.", audio_ms=1000)), truncate_shortfall_ms=85)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    events = await raw.until("response.done")
    item_id = events[-1]["response"]["output"][0]["id"]
    await raw.send({"type": "conversation.item.truncate", "event_id": "evt_t", "item_id": item_id,
                    "content_index": 0, "audio_end_ms": 950})
    error = (await raw.until("error"))[-1]["error"]
    assert error["message"] == "Audio content of 915ms is already shorter than 950ms"  # 1000 − 85 shortfall
    await raw.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                    "audio_end_ms": 400})
    assert (await raw.recv()) | {"event_id": "x"} == {"type": "conversation.item.truncated", "event_id": "x",
                                                     "item_id": item_id, "content_index": 0, "audio_end_ms": 400}
    assert emu.sessions[0].truncations == [{"item_id": item_id, "content_index": 0, "audio_end_ms": 400,
                                            "emitted_ms": 1000.0}]
    await raw.send({"type": "conversation.item.retrieve", "item_id": item_id})
    retrieved = (await raw.recv())["item"]
    assert retrieved["content"][0]["transcript"] == ""  # dropped by the truncation
    assert len(base64.b64decode(retrieved["content"][0]["audio"])) == 400 * 48
    await raw.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
    user = (await raw.until("conversation.item.done"))[-1]["item"]["id"]
    await raw.send({"type": "conversation.item.truncate", "item_id": user, "content_index": 0, "audio_end_ms": 0})
    assert (await raw.recv())["error"]["message"] == "Only model output audio messages can be truncated"
    await raw.send({"type": "conversation.item.delete", "item_id": item_id})
    assert (await raw.recv())["type"] == "conversation.item.deleted"
    await raw.send({"type": "conversation.item.retrieve", "item_id": item_id})
    assert (await raw.recv())["error"]["code"] == "item_retrieve_invalid_item_id"


async def test_bad_frames_get_errors_and_the_socket_stays_open(emulator):
    raw = await open_raw(await emulator(Script(default=Reply(text="Still here."))))
    await raw.ws.send("{not json")
    assert (await raw.recv())["error"]["code"] == "invalid_event"
    await raw.ws.send(json.dumps({"event_id": "evt_x"}))
    assert (await raw.recv())["error"]["message"] == "The 'type' field is missing."
    await raw.send({"type": "response.explode", "event_id": "evt_y"}, valid=False)
    error = (await raw.recv())["error"]
    assert error["event_id"] == "evt_y" and "response.explode" in error["message"]
    await raw.send({"type": "input_audio_buffer.append", "audio": "%%%"})
    assert (await raw.recv())["error"]["param"] == "audio"
    await raw.send({"type": "response.create"})
    assert (await raw.until("response.done"))[-1]["response"]["status"] == "completed"


async def test_session_expiry(emulator):
    raw = await open_raw(await emulator(max_session_s=0.3))
    error = (await raw.recv())["error"]
    assert error["code"] == "session_expired"
    assert error["message"] == "Your session hit the maximum duration of 0.005 minutes."
    with pytest.raises(websockets.ConnectionClosed) as info:
        await raw.recv()
    assert info.value.rcvd.code == 1001 and info.value.rcvd.reason == error["message"]


async def test_wire_log_records_both_directions(emulator, tmp_path):
    log = tmp_path / "wire.jsonl"
    emu = await emulator(Script(default=Reply(text="Logged.")), wire_log=log)
    raw = await open_raw(emu)
    await raw.send({"type": "response.create"})
    await raw.until("response.done")
    await raw.ws.close()
    await emu.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {line["dir"] for line in lines} == {"in", "out"}
    assert all(line["session"] == emu.sessions[0].id and line["t"] >= 0 for line in lines)
    for line in lines:
        (check_client_event if line["dir"] == "in" else check_server_event)(line["event"])


async def test_the_official_sdk_drives_the_emulator(emulator):
    from openai import AsyncOpenAI

    emu = await emulator(Script(greeting=Reply(text="Hello from the emulator.")))
    client = AsyncOpenAI(api_key=KEY, websocket_base_url=emu.base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"],
                                           "audio": {"output": {"voice": "marin"}}})
        kinds = []
        async for event in conn:
            kinds.append(event.type)
            if event.type == "session.updated":
                assert event.session.audio.output.voice == "marin"
                await conn.response.create()
            if event.type == "response.output_audio_transcript.done":
                assert event.transcript == "Hello from the emulator."
            if event.type == "response.done":
                break
    assert kinds[:2] == ["session.created", "session.updated"]
    assert emu.sessions[0].headers["authorization"] == f"Bearer {KEY}"


def test_cli_serves_and_stops_on_sigterm(tmp_path):
    script = tmp_path / "script.yaml"
    script.write_text("greeting:\n  text: Hello from the CLI.\nturns:\n  1:\n    text: Noted.\n")
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "sim", "realtime", "--port", "0", "--speed", "0",
                             "--script", str(script), "--api-key", KEY], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on ws://127.0.0.1:")
        url = line.split(" ", 2)[2]

        async def talk() -> str:
            async with connect(url + "?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
                raw = Raw(ws)
                await raw.recv()
                await raw.send({"type": "response.create"})
                events = await raw.until("response.done")
                return next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]

        assert asyncio.run(talk()) == "Hello from the CLI."
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert "Traceback" not in proc.stderr.read()
