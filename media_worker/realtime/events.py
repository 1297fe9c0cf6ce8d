"""Typed server events of the GA Realtime protocol, decoded with msgspec.

Only the fields the call session uses are declared; msgspec skips the rest without building them, which
keeps the audio-delta path cheap. Events the worker does not act on decode to `Other` (type only).
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Event(msgspec.Struct, tag_field="type", frozen=True):
    pass


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str = ""
    type: str = ""
    code: str | None = None
    param: str | None = None
    event_id: str | None = None


class Error(_Event, tag="error", frozen=True):
    error: ErrorDetail


class SessionCreated(_Event, tag="session.created", frozen=True):
    session: dict[str, Any]


class SessionUpdated(_Event, tag="session.updated", frozen=True):
    session: dict[str, Any]


class SpeechStarted(_Event, tag="input_audio_buffer.speech_started", frozen=True):
    audio_start_ms: int
    item_id: str


class SpeechStopped(_Event, tag="input_audio_buffer.speech_stopped", frozen=True):
    audio_end_ms: int
    item_id: str


class Committed(_Event, tag="input_audio_buffer.committed", frozen=True):
    item_id: str
    previous_item_id: str | None = None


class TimeoutTriggered(_Event, tag="input_audio_buffer.timeout_triggered", frozen=True):
    item_id: str
    audio_start_ms: int = 0
    audio_end_ms: int = 0


class InputTranscript(_Event, tag="conversation.item.input_audio_transcription.completed", frozen=True):
    item_id: str
    transcript: str
    content_index: int = 0


class InputTranscriptFailed(_Event, tag="conversation.item.input_audio_transcription.failed", frozen=True):
    item_id: str
    error: ErrorDetail


class ResponseInfo(msgspec.Struct, frozen=True):
    id: str
    status: str = "in_progress"
    status_details: dict[str, Any] | None = None
    output: list[dict[str, Any]] = []
    metadata: dict[str, Any] | None = None  # echoed from our response.create: tells our responses apart
    usage: dict[str, Any] | None = None  # only on response.done


class ResponseCreated(_Event, tag="response.created", frozen=True):
    response: ResponseInfo


class ResponseDone(_Event, tag="response.done", frozen=True):
    response: ResponseInfo


class OutputItemAdded(_Event, tag="response.output_item.added", frozen=True):
    response_id: str
    output_index: int
    item: dict[str, Any]


class OutputItemDone(_Event, tag="response.output_item.done", frozen=True):
    response_id: str
    output_index: int
    item: dict[str, Any]


class AudioDelta(_Event, tag="response.output_audio.delta", frozen=True):
    response_id: str
    item_id: str
    delta: bytes  # msgspec decodes the base64 in C, straight from the frame
    output_index: int = 0
    content_index: int = 0


class AudioDone(_Event, tag="response.output_audio.done", frozen=True):
    response_id: str
    item_id: str


class TranscriptDelta(_Event, tag="response.output_audio_transcript.delta", frozen=True):
    response_id: str
    item_id: str
    delta: str


class TranscriptDone(_Event, tag="response.output_audio_transcript.done", frozen=True):
    response_id: str
    item_id: str
    transcript: str


class TextDone(_Event, tag="response.output_text.done", frozen=True):
    response_id: str
    item_id: str
    text: str


class FunctionArgumentsDone(_Event, tag="response.function_call_arguments.done", frozen=True):
    response_id: str
    item_id: str
    call_id: str
    arguments: str
    name: str | None = None


class ItemTruncated(_Event, tag="conversation.item.truncated", frozen=True):
    item_id: str
    audio_end_ms: int
    content_index: int = 0


class ItemDeleted(_Event, tag="conversation.item.deleted", frozen=True):
    item_id: str


class ItemAdded(_Event, tag="conversation.item.added", frozen=True):
    item: dict[str, Any]
    previous_item_id: str | None = None


class InputCleared(_Event, tag="input_audio_buffer.cleared", frozen=True):
    pass


class RateLimits(_Event, tag="rate_limits.updated", frozen=True):
    rate_limits: list[dict[str, Any]] = []


ServerEvent = (
    Error
    | SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | Committed
    | TimeoutTriggered
    | InputTranscript
    | InputTranscriptFailed
    | ResponseCreated
    | ResponseDone
    | OutputItemAdded
    | OutputItemDone
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | TextDone
    | FunctionArgumentsDone
    | ItemTruncated
    | ItemDeleted
    | ItemAdded
    | InputCleared
    | RateLimits
)

KNOWN_TYPES = frozenset(cls.__struct_config__.tag for cls in ServerEvent.__args__)


class Other(msgspec.Struct, frozen=True):
    """An event the worker does not act on (deltas of input transcripts, item done, …)."""

    type: str


class Malformed(msgspec.Struct, frozen=True):
    """A frame that is not a valid event: bad JSON, no type, or a known type with missing or wrong fields."""

    reason: str
    type: str | None = None


_decode_known = msgspec.json.Decoder(ServerEvent).decode
_decode_type = msgspec.json.Decoder(Other).decode


def decode(frame: str | bytes) -> ServerEvent | Other | Malformed:
    try:
        return _decode_known(frame)
    except msgspec.ValidationError as exc:
        try:
            head = _decode_type(frame)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return Malformed(f"no event type: {exc}")
        if head.type in KNOWN_TYPES:
            return Malformed(str(exc), head.type)
        return head
    except msgspec.DecodeError as exc:
        return Malformed(f"not JSON: {exc}")
    except RecursionError:  # msgspec's depth guard (skipping an unknown field recurses too)
        return Malformed("nested too deeply")
