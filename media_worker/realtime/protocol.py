"""The Realtime client protocol without I/O: feed it frames, read back events and frames to send.

Like `h11` or `websockets`' protocol layer, this holds every rule of the conversation (handshake order, one
active response, function outputs only after the calling response's `response.done`, truncation clamped to
the audio really received, error classes) and is tested with plain strings. `client.py` moves the bytes.
"""

from __future__ import annotations

import binascii
import enum
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from media_worker.realtime import events as ev

log = logging.getLogger("realtime")

# Errors that are expected in normal operation: races between our controls and the server's own progress.
BENIGN_CODES = frozenset(
    {
        "response_cancel_not_active",  # the response ended before our cancel arrived
        "conversation_already_has_active_response",  # the server responded on its own first (pipecat #3960)
        "input_audio_buffer_commit_empty",
        "session_expired",  # the 60-minute limit: the close that follows triggers a reconnect with replay
    }
)
# Errors after which the session cannot work and must not be retried.
FATAL_CODES = frozenset(
    {
        "invalid_api_key",
        "insufficient_quota",
        "account_deactivated",
        "billing_hard_limit_reached",
        "beta_api_shape_disabled",
        "model_not_found",
    }
)
# Close codes after which reconnecting is pointless: authentication failed, or the wrong API shape.
FATAL_CLOSE_CODES = frozenset({3000, 4000})

BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}
MAX_UNIX_TIME = 2**40  # seconds: year 36812; a session's `expires_at` beyond it is not a time
TRUNCATE_MARGIN_MS = 20  # the server's idea of an item's length runs a little short (pipecat #2106)

_APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = b'"}'
_encode = msgspec.json.Encoder().encode


class Phase(enum.Enum):
    CONNECTING = "connecting"  # waiting for session.created
    CONFIGURING = "configuring"  # session.update sent, waiting for session.updated
    READY = "ready"


# --- what the protocol tells the call session, besides the server events it passes through ---------------


class Ready(msgspec.Struct, frozen=True):
    session_id: str
    tools: int
    expires_at: float | None


class SessionRejected(msgspec.Struct, frozen=True):
    """The server refused our session.update: it keeps its defaults (no tools, its own instructions)."""

    code: str | None
    message: str
    param: str | None


class Fatal(msgspec.Struct, frozen=True):
    reason: str
    code: str | None = None  # the error event's code, when an error event was the cause
    error_type: str | None = None


class AudioChunk(msgspec.Struct, frozen=True):
    response_id: str
    item_id: str
    data: bytes


class FunctionCall(msgspec.Struct, frozen=True):
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


class ResponseRefused(msgspec.Struct, frozen=True):
    """Our `response.create` (by its event id) was refused: another response was active at the server."""

    event_id: str


class ServerError(msgspec.Struct, frozen=True):
    """An error that is neither benign nor fatal: logged and counted by the session."""

    code: str | None
    message: str
    param: str | None
    event_id: str | None


class RealtimeProtocol:
    def __init__(self, session: dict[str, Any]):
        self.session = session
        self.phase = Phase.CONNECTING
        self.outbox: list[bytes] = []
        self.session_id = ""
        self.active_response: str | None = None
        self.user_speaking = False
        self.errors: Counter[str] = Counter()
        self.malformed = 0
        self._seq = 0
        self._update_event_id: str | None = None
        self._item_bytes: dict[str, int] = {}
        self._item_done: set[str] = set()
        self._calls: dict[str, str] = {}  # call_id -> response_id
        self._response_calls: dict[str, list[str]] = {}  # response_id -> its call ids
        self._finished: set[str] = set()  # responses whose response.done arrived
        self._outputs: dict[str, str] = {}  # call_id -> output not sent yet
        self._answered: set[str] = set()  # call ids whose output was sent
        self._out_bpm = BYTES_PER_MS[session["audio"]["output"]["format"]["type"]]

    # --- sending ---------------------------------------------------------------------------------------
    def _event_id(self) -> str:
        self._seq += 1
        return f"evt_client_{self._seq}"

    def _send(self, event: dict[str, Any], event_id: str | None = None) -> str:
        event_id = event_id or self._event_id()
        self.outbox.append(_encode({"event_id": event_id, **event}))
        return event_id

    def take_outbox(self) -> list[bytes]:
        frames, self.outbox = self.outbox, []
        return frames

    @staticmethod
    def append_frame(pcm: bytes) -> bytes:
        """One `input_audio_buffer.append` frame; the per-frame path, so no JSON encoder and no event id."""
        return b"".join((_APPEND_HEAD, binascii.b2a_base64(pcm, newline=False), _APPEND_TAIL))

    def update_session(self, session: dict[str, Any] | None = None) -> None:
        if session is not None:
            self.session = session
        self._update_event_id = self._send({"type": "session.update", "session": self.session})

    def create_response(self, *, event_id: str | None = None, **response: Any) -> None:
        """`response.create`; a refusal because another response is active comes back as ResponseRefused with
        this `event_id`."""
        event = {"type": "response.create", "response": response} if response else {"type": "response.create"}
        self._send(event, event_id)

    def cancel_response(self) -> bool:
        """Cancel the active response, if there is one (a cancel with none active only earns an error)."""
        if self.active_response is None:
            return False
        self._send({"type": "response.cancel", "response_id": self.active_response})
        return True

    def received_ms(self, item_id: str) -> float:
        return self._item_bytes.get(item_id, 0) / self._out_bpm

    def truncate(self, item_id: str, played_ms: float) -> int | None:
        """Tell the server how much of an item the caller heard. Returns the `audio_end_ms` sent; None when
        nothing needed sending (all of it was heard) or the item was deleted (none of it was heard)."""
        received = self.received_ms(item_id)
        if played_ms <= 0:
            self._send({"type": "conversation.item.delete", "item_id": item_id})
            return None
        if item_id in self._item_done and played_ms >= received - 1:
            return None  # the caller heard it all: nothing to correct
        end = int(min(played_ms, max(received - TRUNCATE_MARGIN_MS, 0)))
        self._send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": end})
        return end

    def delete_item(self, item_id: str) -> None:
        self._send({"type": "conversation.item.delete", "item_id": item_id})

    def add_user_text(self, text: str) -> None:
        """A user message as text (keypad digits): the model sees it in the conversation."""
        self._send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
            }
        )

    def add_system_text(self, text: str) -> None:
        """A system message: what happened outside the conversation (a transfer that failed)."""
        self._send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]},
            }
        )

    def commit(self) -> None:
        self._send({"type": "input_audio_buffer.commit"})

    def clear_input(self) -> None:
        self._send({"type": "input_audio_buffer.clear"})

    def function_output(self, call_id: str, output: str) -> None:
        """Send a tool's result; it goes out once the calling response is done (the server rejects it while
        that response is active). Whether a reply follows is the caller's choice (`create_response`)."""
        if call_id not in self._calls:
            raise KeyError(f"unknown function call id {call_id!r}")
        if call_id in self._answered or call_id in self._outputs:
            return
        self._outputs[call_id] = output
        self._flush_outputs(self._calls[call_id])

    def _flush_outputs(self, response_id: str) -> None:
        if response_id not in self._finished:
            return
        for call_id in self._response_calls.get(response_id, []):
            output = self._outputs.pop(call_id, None)
            if output is None:
                continue
            self._send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": output},
                }
            )
            self._answered.add(call_id)

    def replay(self, items: list[dict[str, Any]]) -> None:
        """Rebuild the conversation on a new session (after a reconnect or a rotation) from the call's log.
        Each entry is `{role, text}` or a tool call `{call_id, name, arguments, output}`."""
        for item in items:
            if "call_id" in item:
                self._send(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "function_call",
                            "call_id": item["call_id"],
                            "name": item["name"],
                            "arguments": item.get("arguments", "{}"),
                        },
                    }
                )
                if item.get("output") is not None:
                    self._send(
                        {
                            "type": "conversation.item.create",
                            "item": {
                                "type": "function_call_output",
                                "call_id": item["call_id"],
                                "output": item["output"],
                            },
                        }
                    )
                continue
            role, text = item["role"], item["text"]
            kind = "output_text" if role == "assistant" else "input_text"
            self._send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "message", "role": role, "content": [{"type": kind, "text": text}]},
                }
            )

    # --- receiving -------------------------------------------------------------------------------------
    def receive(self, frame: str | bytes) -> list[Any]:
        """Decode one frame, update the state, and return what the call session should see."""
        event = ev.decode(frame)
        if type(event) is ev.AudioDelta:  # the hot path first
            return self._on_audio(event)
        if type(event) is ev.Malformed:
            self.malformed += 1
            return [event]
        handler = _HANDLERS.get(type(event))
        return handler(self, event) if handler is not None else [event]

    def _on_audio(self, event: ev.AudioDelta) -> list[Any]:
        data = event.delta
        self._item_bytes[event.item_id] = self._item_bytes.get(event.item_id, 0) + len(data)
        return [AudioChunk(event.response_id, event.item_id, data)]

    def _on_session_created(self, event: ev.SessionCreated) -> list[Any]:
        if self.phase is not Phase.CONNECTING:
            return [event]
        self.session_id = str(event.session.get("id", ""))
        self.phase = Phase.CONFIGURING
        self.update_session()
        return [event]

    def _on_session_updated(self, event: ev.SessionUpdated) -> list[Any]:
        if self.phase is Phase.READY:
            return [event]
        if self.phase is Phase.CONNECTING:
            self.malformed += 1
            return [ev.Malformed("session.updated before session.created", "session.updated")]
        self.phase = Phase.READY
        tools = event.session.get("tools")
        count = len(tools) if isinstance(tools, list) else 0
        return [Ready(self.session_id, count, _unix_time(event.session.get("expires_at")))]

    def _on_error(self, event: ev.Error) -> list[Any]:
        err = event.error
        code = err.code or err.type or "unknown"
        self.errors[code] += 1
        if err.event_id is not None and err.event_id == self._update_event_id:
            return [SessionRejected(err.code, err.message, err.param)]
        if code == "conversation_already_has_active_response" and err.event_id is not None:
            return [ResponseRefused(err.event_id)]
        if code in BENIGN_CODES or (code == "invalid_value" and "already shorter" in err.message):
            log.debug("benign Realtime error %s: %s", code, err.message)
            return []
        if code in FATAL_CODES:
            return [Fatal(f"{code}: {err.message}", err.code, err.type)]
        return [ServerError(err.code, err.message, err.param, err.event_id)]

    def _on_response_created(self, event: ev.ResponseCreated) -> list[Any]:
        self.active_response = event.response.id
        return [event]

    def _on_response_done(self, event: ev.ResponseDone) -> list[Any]:
        rid = event.response.id
        if self.active_response == rid:
            self.active_response = None
        self._finished.add(rid)
        self._flush_outputs(rid)
        return [event]

    def _on_output_item_done(self, event: ev.OutputItemDone) -> list[Any]:
        item = event.item
        if item.get("type") != "function_call":
            return [event]
        call_id = str(item.get("call_id", ""))
        if not call_id or call_id in self._calls:
            return [event]  # a repeat: run each call once
        self._calls[call_id] = event.response_id
        self._response_calls.setdefault(event.response_id, []).append(call_id)
        return [
            event,
            FunctionCall(
                event.response_id,
                str(item.get("id", "")),
                call_id,
                str(item.get("name", "")),
                str(item.get("arguments", "")),
            ),
        ]

    def _on_audio_done(self, event: ev.AudioDone) -> list[Any]:
        self._item_done.add(event.item_id)
        return [event]

    def _on_speech_started(self, event: ev.SpeechStarted) -> list[Any]:
        self.user_speaking = True
        return [event]

    def _on_speech_stopped(self, event: ev.SpeechStopped) -> list[Any]:
        self.user_speaking = False
        return [event]

    def _on_item_deleted(self, event: ev.ItemDeleted) -> list[Any]:
        self._item_bytes.pop(event.item_id, None)
        self._item_done.discard(event.item_id)
        return [event]

    @property
    def quiet(self) -> bool:
        """No response generating and the caller not mid-utterance: a safe moment to rotate the session."""
        return self.phase is Phase.READY and self.active_response is None and not self.user_speaking


def _unix_time(value: Any) -> float | None:
    """A Unix time in seconds, or None for what cannot be one: not a number, or out of range (JSON carries
    integers of any size, and float() of one beyond 1e308 raises)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < MAX_UNIX_TIME else None


_HANDLERS: dict[type, Callable[[RealtimeProtocol, Any], list[Any]]] = {
    ev.SessionCreated: RealtimeProtocol._on_session_created,
    ev.SessionUpdated: RealtimeProtocol._on_session_updated,
    ev.Error: RealtimeProtocol._on_error,
    ev.ResponseCreated: RealtimeProtocol._on_response_created,
    ev.ResponseDone: RealtimeProtocol._on_response_done,
    ev.OutputItemDone: RealtimeProtocol._on_output_item_done,
    ev.AudioDone: RealtimeProtocol._on_audio_done,
    ev.SpeechStarted: RealtimeProtocol._on_speech_started,
    ev.SpeechStopped: RealtimeProtocol._on_speech_stopped,
    ev.ItemDeleted: RealtimeProtocol._on_item_deleted,
}
