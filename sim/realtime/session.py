"""One emulated Realtime session: the state of one WebSocket connection and the server's side of the
conversation (reference/openai-realtime.md §1.5, §2, §3, §4 and the checklist of §8)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sim.realtime import g711, voice
from sim.realtime.script import Reply
from sim.realtime.vad import EnergyVad
from sim.realtime.validate import SessionError, validate_update

if TYPE_CHECKING:
    from sim.realtime.server import Emulator

BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}
MAX_APPEND = 15 * 1024 * 1024
DEFAULT_INSTRUCTIONS = ("Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. Act like a "
                        "human, but remember that you aren't a human.")
SEMANTIC_SILENCE_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
CLIENT_KEYS = {
    "session.update": ({"session"}, {"session"}),
    "input_audio_buffer.append": ({"audio"}, {"audio"}),
    "input_audio_buffer.commit": (set(), set()),
    "input_audio_buffer.clear": (set(), set()),
    "conversation.item.create": ({"item", "previous_item_id"}, {"item"}),
    "conversation.item.retrieve": ({"item_id"}, {"item_id"}),
    "conversation.item.truncate": ({"item_id", "content_index", "audio_end_ms"},
                                   {"item_id", "content_index", "audio_end_ms"}),
    "conversation.item.delete": ({"item_id"}, {"item_id"}),
    "response.create": ({"response"}, set()),
    "response.cancel": ({"response_id"}, set()),
    "output_audio_buffer.clear": (set(), set()),
}
RESPONSE_KEYS = {"output_modalities", "instructions", "audio", "tools", "tool_choice", "max_output_tokens",
                 "conversation", "metadata", "input", "prompt"}


def default_turn_detection(kind: str) -> dict[str, Any]:
    if kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    return {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
            "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}


class _Cancelled(Exception):
    pass


@dataclass
class ActiveResponse:
    id: str
    in_conversation: bool
    params: dict[str, Any]
    cancel_reason: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    audio_ms: float = 0.0


class EmulatedSession:
    def __init__(self, emu: "Emulator", ws: ServerConnection, headers: dict[str, str], query: dict[str, str]):
        self.emu = emu
        self.ws = ws
        self.headers = headers
        self.query = query
        self.ids = emu.ids
        self.id = self.ids.new("sess")
        self.conversation_id = self.ids.new("conv")
        self.started = emu.clock()
        model = query.get("model", "gpt-realtime")
        self.config: dict[str, Any] = {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": model,
            "expires_at": int(time.time() + emu.max_session_s), "output_modalities": ["audio"],
            "instructions": DEFAULT_INSTRUCTIONS, "tools": [], "tool_choice": "auto", "max_output_tokens": "inf",
            "tracing": None, "truncation": "auto", "prompt": None,
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                          "noise_reduction": None, "turn_detection": default_turn_detection("server_vad")},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
            },
        }
        self.items: list[dict[str, Any]] = []
        self.item_audio: dict[str, bytearray] = {}
        self.emitted_bytes: dict[str, int] = {}
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.truncations: list[dict[str, Any]] = []
        self.function_outputs: list[dict[str, Any]] = []
        self.closed = False
        self.close_code: int | None = None
        self.audio_sent = False
        self.user_turns = 0
        self.input_ms = 0.0
        self._input = bytearray()  # uncommitted input audio
        self._input_start_ms = 0.0
        self._pending_user_item: str | None = None
        self.active: ActiveResponse | None = None
        self._out_of_band: set[asyncio.Task] = set()
        self._stalled_until = 0.0
        self._idle_timer: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        self._rng = random.Random(emu.seed ^ len(emu.sessions))
        self._vad = self._make_vad()

    # --- wire -------------------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        event = {"type": event["type"], "event_id": self.ids.new("event"), **event}
        text = json.dumps(event, separators=(",", ":"))
        if self.emu.record:
            self.sent.append(event)
        self.emu.wire.write(self.id, "out", text)
        await self._wait_stall()
        async with self._send_lock:
            await self.ws.send(text)

    async def error(self, code: str | None, message: str, param: str | None = None,
                    client_event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        event = {"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                            "event_id": client_event_id}}
        if self.emu.error_delay_ms:
            async def later() -> None:
                await asyncio.sleep(self.emu.error_delay_ms / 1000)
                await self._send_quietly(event)
            self._spawn(later())
        else:
            await self.send(event)

    async def _send_quietly(self, event: dict[str, Any]) -> None:
        try:
            await self.send(event)
        except ConnectionClosed:
            pass

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._out_of_band.add(task)
        task.add_done_callback(self._out_of_band.discard)
        return task

    async def _wait_stall(self) -> None:
        while (left := self._stalled_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    # --- fault hooks for tests ------------------------------------------------------------------------
    async def send_raw(self, text: str) -> None:
        self.emu.wire.write(self.id, "out", text)
        await self.ws.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code
        await self.ws.close(code, reason)

    async def drop(self) -> None:
        """Abort the TCP connection without a close frame: the client sees 1006."""
        self.close_code = 1006
        self.ws.transport.abort()

    def stall(self, seconds: float) -> None:
        """Stop reading and sending for a while (pings are still answered by the WebSocket layer)."""
        self._stalled_until = time.monotonic() + seconds

    def audio_emitted_ms(self, item_id: str) -> float:
        return self.emitted_bytes.get(item_id, 0) / self._out_bpm

    # --- lifecycle ------------------------------------------------------------------------------------
    async def run(self) -> None:
        expiry = asyncio.create_task(self._expire())
        try:
            await self.send({"type": "session.created", "session": copy.deepcopy(self.config)})
            async for frame in self.ws:
                await self._wait_stall()
                await self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            if self.close_code is None:
                self.close_code = self.ws.close_code or 1006
            expiry.cancel()
            for task in [self._idle_timer, self.active.task if self.active else None, *self._out_of_band]:
                if task is not None:
                    task.cancel()

    async def _expire(self) -> None:
        await asyncio.sleep(self.emu.max_session_s)
        minutes = f"{self.emu.max_session_s / 60:g}"
        reason = f"Your session hit the maximum duration of {minutes} minutes."
        await self._send_quietly({"type": "error", "error": {"type": "invalid_request_error",
                                  "code": "session_expired", "message": reason, "param": None, "event_id": None}})
        self.close_code = 1001
        await self.ws.close(1001, reason)

    # --- client events --------------------------------------------------------------------------------
    async def _on_frame(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self.emu.wire.write(self.id, "in", frame.decode("utf-8", "replace"))
            await self.error("invalid_event", "Binary frames are not supported; send JSON text frames.")
            return
        self.emu.wire.write(self.id, "in", frame)
        try:
            event = json.loads(frame)
        except ValueError:
            await self.error("invalid_event", "We could not parse the JSON body of your request. (HINT: This "
                             "likely means you aren't using your HTTP library correctly.)")
            return
        if not isinstance(event, dict) or "type" not in event:
            await self.error("invalid_event", "The 'type' field is missing.")
            return
        if self.emu.record:
            self.received.append(event)
        kind, eid = event["type"], event.get("event_id")
        if kind not in CLIENT_KEYS:
            listed = ", ".join(f"'{k}'" for k in CLIENT_KEYS)
            await self.error("invalid_value", f"Invalid value: '{kind}'. Supported values are: {listed}.", "type", eid)
            return
        allowed, required = CLIENT_KEYS[kind]
        for key in event:
            if key not in allowed and key not in ("type", "event_id"):
                await self.error("unknown_parameter", f"Unknown parameter: '{key}'.", key, eid)
                return
        for key in required:
            if key not in event:
                await self.error("missing_required_parameter", f"Missing required parameter: '{key}'.", key, eid)
                return
        handler = getattr(self, "_on_" + kind.replace(".", "_"))
        await handler(event, eid)

    async def _on_session_update(self, event: dict, eid: str | None) -> None:
        try:
            merged = validate_update(event["session"], self.config, self.audio_sent)
        except SessionError as exc:
            await self.error(exc.code, exc.message, exc.param, eid)
            return
        td = merged["audio"]["input"]["turn_detection"]
        if td is not None:
            merged["audio"]["input"]["turn_detection"] = {**default_turn_detection(td["type"]), **td}
        if merged["audio"]["input"]["format"] != self.config["audio"]["input"]["format"] or \
                merged["audio"]["input"]["turn_detection"] != self.config["audio"]["input"]["turn_detection"]:
            self.config = merged
            self._vad = self._make_vad()
        self.config = merged
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.config)})

    @property
    def _in_format(self) -> str:
        return self.config["audio"]["input"]["format"]["type"]

    @property
    def _out_format(self) -> str:
        return self.config["audio"]["output"]["format"]["type"]

    @property
    def _out_bpm(self) -> int:
        return BYTES_PER_MS[self._out_format]

    def _make_vad(self) -> EnergyVad | None:
        td = self.config["audio"]["input"]["turn_detection"]
        if td is None:
            return None
        rate = 24000 if self._in_format == "audio/pcm" else 8000
        silence = td.get("silence_duration_ms", 200) if td["type"] == "server_vad" else \
            SEMANTIC_SILENCE_MS[td.get("eagerness", "auto")]
        return EnergyVad(td.get("threshold", 0.5), td.get("prefix_padding_ms", 300), silence, rate,
                         start_ms=int(self.input_ms))

    async def _on_input_audio_buffer_append(self, event: dict, eid: str | None) -> None:
        audio = event["audio"]
        if not isinstance(audio, str) or len(audio) > MAX_APPEND * 4 // 3 + 4:
            await self.error("invalid_value", "Audio payload exceeds the 15 MiB limit per event.", "audio", eid)
            return
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            await self.error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio", eid)
            return
        fmt = self._in_format
        if fmt == "audio/pcm":
            if len(data) % 2:
                await self.error("invalid_value", "Invalid 'audio': pcm16 audio must have an even byte count.",
                                 "audio", eid)
                return
            samples = np.frombuffer(data, dtype="<i2")
        else:
            samples = g711.decode(data, fmt)
        if not self._input:
            self._input_start_ms = self.input_ms
        self._input += data
        self.input_ms += len(data) / BYTES_PER_MS[fmt]
        if self._vad is None:
            return
        for vad_event in self._vad.feed(samples):
            if vad_event.kind == "started":
                await self._speech_started(vad_event.ms)
            else:
                await self._speech_stopped(vad_event.ms)

    async def _speech_started(self, start_ms: int) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._pending_user_item = self.ids.new("item")
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms,
                         "item_id": self._pending_user_item})
        td = self.config["audio"]["input"]["turn_detection"] or {}
        if self.active is not None and self.active.in_conversation and td.get("interrupt_response", True):
            await self._cancel(self.active, "turn_detected")

    async def _speech_stopped(self, end_ms: int) -> None:
        item_id = self._pending_user_item or self.ids.new("item")
        self._pending_user_item = None
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id})
        await self._commit(item_id, eid=None)
        td = self.config["audio"]["input"]["turn_detection"] or {}
        if td.get("create_response", True):
            await self._start_response({}, eid=None)

    async def _commit(self, item_id: str, eid: str | None) -> None:
        previous = self.items[-1]["id"] if self.items else None
        audio, self._input = bytes(self._input), bytearray()
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.item_audio[item_id] = bytearray(audio)
        await self._add_item(item, previous)
        if self.config["audio"]["input"]["transcription"] is not None:
            self._spawn(self._transcribe(item_id, self.emu.script.transcript_for(self.user_turns)))

    async def _transcribe(self, item_id: str, text: str) -> None:
        await asyncio.sleep(0.01)  # asynchronous, as on the real server: may land after response.created
        words = text.split(" ")
        for i, word in enumerate(words):
            await self._send_quietly({"type": "conversation.item.input_audio_transcription.delta",
                                      "item_id": item_id, "content_index": 0,
                                      "delta": word if i == 0 else " " + word})
        await self._send_quietly({"type": "conversation.item.input_audio_transcription.completed",
                                  "item_id": item_id, "content_index": 0, "transcript": text,
                                  "usage": {"type": "duration", "seconds": 1}})
        for item in self.items:
            if item["id"] == item_id:
                item["content"][0]["transcript"] = text

    async def _add_item(self, item: dict[str, Any], previous: str | None) -> None:
        if item["type"] == "message" and item["role"] == "user":
            self.user_turns += 1
        self.items.append(item)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def _on_input_audio_buffer_commit(self, event: dict, eid: str | None) -> None:
        buffered_ms = len(self._input) / BYTES_PER_MS[self._in_format]
        if buffered_ms < 100:
            await self.error("input_audio_buffer_commit_empty", "Error committing input audio buffer: buffer too "
                             f"small. Expected at least 100ms of audio, but buffer only has {buffered_ms:.2f}ms of "
                             "audio.", None, eid)
            return
        await self._commit(self._pending_user_item or self.ids.new("item"), eid)
        self._pending_user_item = None

    async def _on_input_audio_buffer_clear(self, event: dict, eid: str | None) -> None:
        self._input = bytearray()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, event: dict, eid: str | None) -> None:
        await self.error("invalid_value", "output_audio_buffer.clear is only supported for WebRTC and SIP "
                         "sessions.", "type", eid)

    def _find(self, item_id: str) -> dict[str, Any] | None:
        return next((i for i in self.items if i["id"] == item_id), None)

    async def _on_conversation_item_create(self, event: dict, eid: str | None) -> None:
        item = event["item"]
        if not isinstance(item, dict) or item.get("type") not in ("message", "function_call", "function_call_output"):
            await self.error("invalid_value", "Invalid value for 'item.type'. Supported values are: 'message', "
                             "'function_call', 'function_call_output'.", "item.type", eid)
            return
        item = {"id": item.get("id") or self.ids.new("item"), "object": "realtime.item", "status": "completed",
                **{k: v for k, v in item.items() if k != "id"}}
        if item["type"] == "function_call_output":
            known = {i.get("call_id") for i in self.items if i["type"] == "function_call"}
            if item.get("call_id") not in known:
                await self.error("invalid_tool_call_id", f"Tool call ID '{item.get('call_id')}' not found in "
                                 "conversation.", "item.call_id", eid)
                return
            self.function_outputs.append({"call_id": item["call_id"], "output": item.get("output")})
        elif item["type"] == "message":
            role = item.get("role")
            kinds = {"user": ("input_text", "input_audio", "input_image"), "system": ("input_text",),
                     "assistant": ("output_text", "output_audio")}.get(role)
            if kinds is None:
                await self.error("invalid_value", f"Invalid value: '{role}'. Supported values are: 'user', "
                                 "'assistant', 'system'.", "item.role", eid)
                return
            for part in item.get("content", []):
                if part.get("type") not in kinds:
                    await self.error("invalid_value", f"Invalid value: '{part.get('type')}' for a {role} message.",
                                     "item.content", eid)
                    return
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and self._find(previous) is None:
            await self.error("item_create_invalid_previous_item_id", f"Previous item with id '{previous}' not "
                             "found.", "previous_item_id", eid)
            return
        await self._add_item(item, self.items[-1]["id"] if self.items else None)
        if item["type"] == "function_call_output" and self.emu.auto_respond_after_tool_output and self.active is None:
            await self._start_response({}, eid=None)

    async def _on_conversation_item_retrieve(self, event: dict, eid: str | None) -> None:
        item = self._find(event["item_id"])
        if item is None:
            await self.error("item_retrieve_invalid_item_id", f"Item with item_id not found: {event['item_id']}",
                             "item_id", eid)
            return
        item = copy.deepcopy(item)
        audio = self.item_audio.get(item["id"])
        if audio is not None:
            for part in item.get("content", []):
                if part["type"] in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(bytes(audio)).decode()
        await self.send({"type": "conversation.item.retrieved", "item": item})

    async def _on_conversation_item_delete(self, event: dict, eid: str | None) -> None:
        item = self._find(event["item_id"])
        if item is None:
            await self.error("item_delete_invalid_item_id", f"Item with item_id not found: {event['item_id']}",
                             "item_id", eid)
            return
        self.items.remove(item)
        self.item_audio.pop(item["id"], None)
        await self.send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def _on_conversation_item_truncate(self, event: dict, eid: str | None) -> None:
        item = self._find(event["item_id"])
        if item is None:
            await self.error("item_truncate_invalid_item_id", f"Item with item_id not found: {event['item_id']}",
                             "item_id", eid)
            return
        is_audio = item["type"] == "message" and item.get("role") == "assistant" and any(
            p["type"] == "output_audio" for p in item.get("content", []))
        if not is_audio:
            await self.error("invalid_value", "Only model output audio messages can be truncated", "item_id", eid)
            return
        end = event["audio_end_ms"]
        emitted = self.audio_emitted_ms(item["id"])
        known = int(max(0.0, emitted - self.emu.truncate_shortfall_ms))
        if not isinstance(end, int) or isinstance(end, bool) or end < 0:
            await self.error("invalid_type", "Invalid type for 'audio_end_ms': expected an integer.",
                             "audio_end_ms", eid)
            return
        if end > known:
            await self.error("invalid_value", f"Audio content of {known}ms is already shorter than {end}ms",
                             None, eid)
            return
        for part in item["content"]:
            if part["type"] == "output_audio":
                part["transcript"] = ""  # the server drops the transcript of a truncated item
        audio = self.item_audio.get(item["id"])
        if audio is not None:
            del audio[end * self._out_bpm:]
        self.truncations.append({"item_id": item["id"], "content_index": event["content_index"],
                                 "audio_end_ms": end, "emitted_ms": emitted})
        await self.send({"type": "conversation.item.truncated", "item_id": item["id"],
                         "content_index": event["content_index"], "audio_end_ms": end})

    async def _on_response_cancel(self, event: dict, eid: str | None) -> None:
        target = event.get("response_id")
        if self.active is None or (target is not None and target != self.active.id):
            await self.error("response_cancel_not_active", "Cancellation failed: no active response found",
                             None, eid)
            return
        await self._cancel(self.active, "client_cancelled")

    async def _cancel(self, response: ActiveResponse, reason: str) -> None:
        """Stop a response and wait until its closing events are out, as the server does before it reads
        on: a turn that ends right after the interruption must find no active response."""
        if response.cancel_reason is None:
            response.cancel_reason = reason
            response.cancelled.set()
        if response.task is not None:
            await asyncio.wait({response.task})

    async def _on_response_create(self, event: dict, eid: str | None) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            await self.error("invalid_type", "Invalid type for 'response': expected an object.", "response", eid)
            return
        for key in params:
            if key not in RESPONSE_KEYS:
                await self.error("unknown_parameter", f"Unknown parameter: 'response.{key}'.", f"response.{key}", eid)
                return
        await self._start_response(params, eid)

    # --- responses ------------------------------------------------------------------------------------
    async def _start_response(self, params: dict[str, Any], eid: str | None) -> None:
        in_conversation = params.get("conversation", "auto") != "none"
        if in_conversation and self.active is not None:
            await self.error("conversation_already_has_active_response", "Conversation already has an active "
                             f"response in progress: {self.active.id}. Wait until the response is finished before "
                             "creating a new one.", None, eid)
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        last = self.items[-1] if self.items else None
        reply = self.emu.script.reply_for(self.user_turns, last is not None and last["type"] == "function_call_output")
        response = ActiveResponse(self.ids.new("resp"), in_conversation, params)
        if in_conversation:
            self.active = response
        response.task = asyncio.create_task(self._respond(response, reply))
        if not in_conversation:
            self._out_of_band.add(response.task)
            response.task.add_done_callback(self._out_of_band.discard)

    def _latest_output(self) -> str:
        return next((o["output"] for o in reversed(self.function_outputs)), "")

    def _response_object(self, r: ActiveResponse, status: str, output: list, details: dict | None,
                         usage: dict | None) -> dict[str, Any]:
        p = r.params
        return {
            "object": "realtime.response", "id": r.id, "status": status, "status_details": details,
            "output": output, "conversation_id": self.conversation_id if r.in_conversation else None,
            "output_modalities": p.get("output_modalities", self.config["output_modalities"]),
            "max_output_tokens": p.get("max_output_tokens", self.config["max_output_tokens"]),
            "audio": {"output": {"format": self.config["audio"]["output"]["format"],
                                 "voice": (p.get("audio") or {}).get("output", {}).get(
                                     "voice", self.config["audio"]["output"]["voice"])}},
            "usage": usage, "metadata": p.get("metadata"),
        }

    async def _respond(self, r: ActiveResponse, reply: Reply) -> None:
        output: list[dict[str, Any]] = []
        try:
            if reply.server_error:
                err = {"type": "server_error", "code": None, "param": None, "event_id": None, **reply.server_error}
                await self.send({"type": "error", "error": err})
            await self.send({"type": "response.created",
                             "response": self._response_object(r, "in_progress", [], None, None)})
            if reply.status == "failed":
                error = reply.error or {"type": "server_error", "code": "server_error", "message": "failed"}
                await self._done(r, "failed", output, {"type": "failed", "error": error})
                return
            modalities = r.params.get("output_modalities", self.config["output_modalities"])
            text = reply.text.replace("{output}", self._latest_output())
            status, details = "completed", None
            cap = r.params.get("max_output_tokens", self.config["max_output_tokens"])
            if cap != "inf" and len(text) // 4 > cap:
                text = text[: cap * 4]
                status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
            parts: list[tuple[str, int | None, bytes | None]] = []
            if reply.tool_calls and reply.preamble:
                parts.append((reply.preamble, None, None))
            if text or reply.pcm is not None or not reply.tool_calls:
                parts += _split(text, reply.items, reply.audio_ms, reply.pcm)
            for text_part, ms, pcm in parts:
                if reply.text_only or modalities == ["text"]:
                    await self._text_item(r, output, text_part)
                else:
                    await self._audio_item(r, output, text_part, ms, pcm)
            for call in reply.tool_calls:
                await self._function_call(r, output, call.name, call.arguments)
            await self._done(r, status, output, details)
        except _Cancelled:
            await self._done(r, "cancelled", output, {"type": "cancelled", "reason": r.cancel_reason})
        except (ConnectionClosed, asyncio.CancelledError):
            pass
        finally:
            if self.active is r:
                self.active = None

    async def _done(self, r: ActiveResponse, status: str, output: list, details: dict | None) -> None:
        if self.active is r:
            self.active = None
        text_tokens = sum(len(json.dumps(o)) for o in output) // 16
        audio_tokens = int(r.audio_ms / 50)
        usage = {"total_tokens": 20 + text_tokens + audio_tokens, "input_tokens": 20,
                 "output_tokens": text_tokens + audio_tokens,
                 "input_token_details": {"text_tokens": 20, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0,
                                         "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                                   "image_tokens": 0}},
                 "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens}}
        await self.send({"type": "response.done",
                         "response": self._response_object(r, status, output, details, usage)})
        await self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": 40000 - usage["total_tokens"], "reset_seconds": 0.3}]})
        td = self.config["audio"]["input"]["turn_detection"]
        if r.in_conversation and td and td.get("type") == "server_vad" and td.get("idle_timeout_ms"):
            self._idle_timer = asyncio.create_task(self._idle(td["idle_timeout_ms"] + r.audio_ms))

    async def _idle(self, wait_ms: float) -> None:
        await asyncio.sleep(wait_ms / 1000)
        item_id = self.ids.new("item")
        start = int(self.input_ms)
        await self._send_quietly({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": start,
                                  "audio_end_ms": start, "item_id": item_id})
        try:
            await self._commit(item_id, None)
            await self._start_response({}, None)
        except ConnectionClosed:
            pass

    def _new_item(self, r: ActiveResponse, output: list, item: dict[str, Any]) -> tuple[int, str | None]:
        index = len(output)
        previous = self.items[-1]["id"] if self.items and r.in_conversation else None
        output.append(item)
        if r.in_conversation:
            self.items.append(item)
        return index, previous

    async def _item_added(self, r: ActiveResponse, index: int, item: dict, previous: str | None) -> None:
        await self.send({"type": "response.output_item.added", "response_id": r.id, "output_index": index,
                         "item": copy.deepcopy(item)})
        if r.in_conversation:
            await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                             "item": copy.deepcopy(item)})

    async def _item_done(self, r: ActiveResponse, index: int, item: dict, previous: str | None) -> None:
        await self.send({"type": "response.output_item.done", "response_id": r.id, "output_index": index,
                         "item": copy.deepcopy(item)})
        if r.in_conversation:
            await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                             "item": copy.deepcopy(item)})

    async def _pause(self, r: ActiveResponse, seconds: float) -> None:
        """Wait (paced output), but wake at once on cancellation; stalls hold the stream too."""
        if r.cancelled.is_set():
            raise _Cancelled
        if seconds > 0:
            try:
                await asyncio.wait_for(r.cancelled.wait(), seconds)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0)
        await self._wait_stall()
        if r.cancelled.is_set():
            raise _Cancelled

    async def _audio_item(self, r: ActiveResponse, output: list, text: str, ms: int | None,
                          pcm: bytes | None) -> None:
        item_id = self.ids.new("item")
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "in_progress",
                "role": "assistant", "content": []}
        index, previous = self._new_item(r, output, item)
        await self._item_added(r, index, item, previous)
        await self.send({"type": "response.content_part.added", "response_id": r.id, "item_id": item_id,
                         "output_index": index, "content_index": 0, "part": {"type": "audio", "transcript": ""}})
        audio = self._render(text, ms, pcm)
        self.audio_sent = True
        self.item_audio[item_id] = bytearray()
        bpm = self._out_bpm
        speed = self.emu.speed
        sent_text = 0
        emitted = 0
        started = time.monotonic()
        status = "completed"
        try:
            if self.emu.first_audio_delay_ms:
                await self._pause(r, self.emu.first_audio_delay_ms / 1000)
            while emitted < len(audio):
                # The transcript runs ahead of the audio (reference §1.5 step 10).
                ahead = min(len(text), int(len(text) * (emitted / len(audio) + 0.25)) + 1)
                if ahead > sent_text:
                    await self.send({"type": "response.output_audio_transcript.delta", "response_id": r.id,
                                     "item_id": item_id, "output_index": index, "content_index": 0,
                                     "delta": text[sent_text:ahead]})
                    sent_text = ahead
                chunk_ms = self._rng.uniform(27.0, 133.0)  # uneven, never a multiple of 20 ms on purpose
                size = max(2, int(chunk_ms * bpm) // 2 * 2)
                chunk = audio[emitted:emitted + size]
                await self.send({"type": "response.output_audio.delta", "response_id": r.id, "item_id": item_id,
                                 "output_index": index, "content_index": 0,
                                 "delta": base64.b64encode(chunk).decode()})
                emitted += len(chunk)
                self.emitted_bytes[item_id] = emitted
                self.item_audio[item_id] += chunk
                r.audio_ms += len(chunk) / bpm
                if speed > 0:
                    await self._pause(r, started + emitted / bpm / 1000 / speed - time.monotonic())
                else:
                    await self._pause(r, 0)
        except _Cancelled:
            status = "incomplete"
        spoken = text if status == "completed" else text[:sent_text]
        if status == "completed" and sent_text < len(text):
            await self.send({"type": "response.output_audio_transcript.delta", "response_id": r.id,
                             "item_id": item_id, "output_index": index, "content_index": 0,
                             "delta": text[sent_text:]})
        common = {"response_id": r.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self.send({"type": "response.output_audio.done", **common})
        await self.send({"type": "response.output_audio_transcript.done", **common, "transcript": spoken})
        await self.send({"type": "response.content_part.done", **common,
                         "part": {"type": "audio", "transcript": spoken}})
        item["status"] = status
        item["content"] = [{"type": "output_audio", "transcript": spoken}]
        await self._item_done(r, index, item, previous)
        if status != "completed":
            raise _Cancelled

    def _render(self, text: str, ms: int | None, pcm: bytes | None) -> bytes:
        audio = pcm if pcm is not None else voice.speech(text, ms, self.emu.seed)
        fmt = self._out_format
        if fmt == "audio/pcm":
            return audio
        samples = np.frombuffer(audio, dtype="<i2")
        down = samples[: len(samples) // 3 * 3].reshape(-1, 3).mean(axis=1).astype(np.int16)  # 24k → 8k, crude
        return g711.encode(down, fmt)

    async def _text_item(self, r: ActiveResponse, output: list, text: str) -> None:
        item_id = self.ids.new("item")
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "in_progress",
                "role": "assistant", "content": []}
        index, previous = self._new_item(r, output, item)
        await self._item_added(r, index, item, previous)
        common = {"response_id": r.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self.send({"type": "response.content_part.added", **common, "part": {"type": "text", "text": ""}})
        for word in _words(text):
            await self._pause(r, 0)
            await self.send({"type": "response.output_text.delta", **common, "delta": word})
        await self.send({"type": "response.output_text.done", **common, "text": text})
        await self.send({"type": "response.content_part.done", **common, "part": {"type": "text", "text": text}})
        item["status"] = "completed"
        item["content"] = [{"type": "output_text", "text": text}]
        await self._item_done(r, index, item, previous)

    async def _function_call(self, r: ActiveResponse, output: list, name: str, arguments: dict | str) -> None:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        item_id, call_id = self.ids.new("item"), self.ids.new("call")
        item = {"id": item_id, "type": "function_call", "object": "realtime.item", "status": "in_progress",
                "call_id": call_id, "name": name, "arguments": ""}
        index, previous = self._new_item(r, output, item)
        await self._item_added(r, index, item, previous)
        common = {"response_id": r.id, "item_id": item_id, "output_index": index, "call_id": call_id}
        cut = 0
        while cut < len(args):
            step = self._rng.randint(1, 9)
            await self._pause(r, 0)
            await self.send({"type": "response.function_call_arguments.delta", **common,
                             "delta": args[cut:cut + step]})
            cut += step
        await self.send({"type": "response.function_call_arguments.done", **common, "name": name,
                         "arguments": args})
        item["status"] = "completed"
        item["arguments"] = args
        await self._item_done(r, index, item, previous)


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def _split(text: str, items: int, ms: int | None, pcm: bytes | None) -> list[tuple[str, int | None, bytes | None]]:
    """A reply's text (and length) shared across `items` audio items."""
    if items <= 1 or pcm is not None:
        return [(text, ms, pcm)]
    words = text.split(" ")
    per = max(1, -(-len(words) // items))
    chunks = [" ".join(words[i:i + per]) for i in range(0, len(words), per)][:items]
    return [(chunk, None if ms is None else ms // len(chunks), None) for chunk in chunks]
