"""The GA server's input rules, with the error codes and message wording it answers with.

Three checks live here: the envelope of every client event (`check_event`), `session.update`
(`apply_session_update`) and the `response` of `response.create` (`check_response_params`). Any violation
raises `Rejected`, which the session turns into one `error` event; the rejected event changes nothing.
"""

from __future__ import annotations

import copy
import re
from typing import Any

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_METADATA_KEYS = 16

# Client events: allowed keys besides `type` and `event_id`, and the required ones.
CLIENT_EVENTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "session.update": (frozenset({"session"}), frozenset({"session"})),
    "input_audio_buffer.append": (frozenset({"audio"}), frozenset({"audio"})),
    "input_audio_buffer.commit": (frozenset(), frozenset()),
    "input_audio_buffer.clear": (frozenset(), frozenset()),
    "output_audio_buffer.clear": (frozenset(), frozenset()),
    "conversation.item.create": (frozenset({"item", "previous_item_id"}), frozenset({"item"})),
    "conversation.item.retrieve": (frozenset({"item_id"}), frozenset({"item_id"})),
    "conversation.item.truncate": (
        frozenset({"item_id", "content_index", "audio_end_ms"}),
        frozenset({"item_id", "content_index", "audio_end_ms"}),
    ),
    "conversation.item.delete": (frozenset({"item_id"}), frozenset({"item_id"})),
    "response.create": (frozenset({"response"}), frozenset()),
    "response.cancel": (frozenset({"response_id"}), frozenset()),
}

SESSION_KEYS = {
    "type",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "truncation",
    "prompt",
    "include",
    "reasoning",
    "parallel_tool_calls",
}
RESPONSE_KEYS = {
    "output_modalities",
    "instructions",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "conversation",
    "metadata",
    "input",
    "prompt",
    "reasoning",
    "parallel_tool_calls",
}
SERVER_VAD_KEYS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "idle_timeout_ms",
}
SEMANTIC_VAD_KEYS = {"type", "eagerness", "create_response", "interrupt_response"}
TRANSCRIPTION_KEYS = {"model", "language", "prompt", "languages", "keywords", "delay"}


class Rejected(Exception):
    """A client event the server refuses: becomes `error{type, code, message, param}`."""

    def __init__(self, code: str, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


# --- wording helpers (the API's own phrasing) ---------------------------------------------------------------


def _a(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _listing(values: tuple) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def missing(path: str) -> Rejected:
    return Rejected("missing_required_parameter", f"Missing required parameter: '{path}'.", path)


def unknown(path: str) -> Rejected:
    return Rejected("unknown_parameter", f"Unknown parameter: '{path}'.", path)


def wrong_type(path: str, expected: str, value: Any) -> Rejected:
    return Rejected(
        "invalid_type", f"Invalid type for '{path}': expected {expected}, but got {_a(value)} instead.", path
    )


def bad_value(path: str, value: Any, allowed: tuple) -> Rejected:
    return Rejected("invalid_value", f"Invalid value: '{value}'. Supported values are: {_listing(allowed)}.", path)


# --- primitive checks ------------------------------------------------------------------------------------------


def as_object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise wrong_type(path, "an object", value)
    return value


def as_array(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise wrong_type(path, "an array", value)
    return value


def as_string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise wrong_type(path, "a string", value)
    return value


def _boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise wrong_type(path, "a boolean", value)


def _keys(obj: dict, allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise unknown(f"{path}.{key}")


def _require(obj: dict, keys: tuple[str, ...], path: str) -> None:
    for key in keys:
        if key not in obj:
            raise missing(f"{path}.{key}")


def one_of(value: Any, allowed: tuple, path: str) -> None:
    if value not in allowed:
        raise bad_value(path, value, allowed)


def in_range(value: Any, low: float, high: float | None, path: str, integer: bool = False) -> None:
    kind = "integer" if integer else "decimal"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise wrong_type(path, f"an {kind}" if integer else f"a {kind}", value)
    if value < low:
        raise Rejected(
            f"{kind}_below_min_value",
            f"Invalid '{path}': {kind} below minimum value. Expected a value >= {low:g}, but got {value} instead.",
            path,
        )
    if high is not None and value > high:
        raise Rejected(
            f"{kind}_above_max_value",
            f"Invalid '{path}': {kind} above maximum value. Expected a value <= {high:g}, but got {value} instead.",
            path,
        )


# --- envelope --------------------------------------------------------------------------------------------------


def check_event(event: dict[str, Any]) -> None:
    """The keys of a client event (its `type` is present). Unknown event types are an `invalid_value`."""
    kind = event["type"]
    if not isinstance(kind, str) or kind not in CLIENT_EVENTS:
        raise bad_value("type", kind, tuple(CLIENT_EVENTS))
    if "event_id" in event and not isinstance(event["event_id"], str):
        raise wrong_type("event_id", "a string", event["event_id"])
    allowed, required = CLIENT_EVENTS[kind]
    for key in event:
        if key not in allowed and key not in ("type", "event_id"):
            raise unknown(key)
    for key in sorted(required):
        if key not in event:
            raise missing(key)


# --- shared pieces of session and response -----------------------------------------------------------------


def _format(value: Any, path: str) -> None:
    fmt = as_object(value, path)
    _keys(fmt, {"type", "rate"}, path)
    _require(fmt, ("type",), path)
    one_of(fmt["type"], FORMATS, f"{path}.type")
    if "rate" in fmt:
        if fmt["type"] != "audio/pcm":
            raise unknown(f"{path}.rate")
        one_of(fmt["rate"], (24000,), f"{path}.rate")


def _voice(value: Any, path: str) -> None:
    if isinstance(value, dict):
        _keys(value, {"id"}, path)
        _require(value, ("id",), path)
        as_string(value["id"], f"{path}.id")
    elif isinstance(value, str):
        one_of(value, VOICES, path)
    else:
        raise wrong_type(path, "a string", value)


def _tools(value: Any, path: str) -> None:
    for i, tool in enumerate(as_array(value, path)):
        here = f"{path}[{i}]"
        tool = as_object(tool, here)
        # Required keys before unknown ones: a nested Chat Completions tool fails on its name (as the GA server does).
        _require(tool, ("type",), here)
        one_of(tool["type"], ("function",), f"{here}.type")  # MCP tools are not emulated
        _require(tool, ("name",), here)
        _keys(tool, {"type", "name", "description", "parameters"}, here)
        if not isinstance(tool["name"], str) or not TOOL_NAME.match(tool["name"]):
            raise Rejected(
                "invalid_value",
                f"Invalid '{here}.name': string does not match pattern. Expected a "
                "string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"{here}.name",
            )
        if "description" in tool:
            as_string(tool["description"], f"{here}.description")
        if "parameters" in tool:
            as_object(tool["parameters"], f"{here}.parameters")


def _tool_choice(value: Any, path: str) -> None:
    if isinstance(value, str):
        one_of(value, ("auto", "none", "required"), path)
        return
    choice = as_object(value, path)
    _require(choice, ("type",), path)
    one_of(choice["type"], ("function",), f"{path}.type")
    _require(choice, ("name",), path)  # `{type, function: {name}}` (Chat Completions) fails here
    _keys(choice, {"type", "name"}, path)
    as_string(choice["name"], f"{path}.name")


def _modalities(value: Any, path: str) -> None:
    if value not in (["audio"], ["text"]):
        raise Rejected(
            "invalid_value",
            f"Invalid value for '{path}': expected ['audio'] or ['text'] (one modality), but got " + repr(value) + ".",
            path,
        )


def _max_tokens(value: Any, path: str) -> None:
    if value != "inf":
        in_range(value, 1, 4096, path, integer=True)


def _prompt(value: Any, path: str) -> None:
    if value is None:
        return
    prompt = as_object(value, path)
    _keys(prompt, {"id", "variables", "version"}, path)
    _require(prompt, ("id",), path)


def _reasoning(value: Any, path: str) -> None:
    if value is not None:
        _keys(as_object(value, path), {"effort"}, path)


# --- session.update --------------------------------------------------------------------------------------------


def _turn_detection(value: Any, path: str) -> None:
    if value is None:
        return
    td = as_object(value, path)
    _require(td, ("type",), path)
    one_of(td["type"], ("server_vad", "semantic_vad"), f"{path}.type")
    _keys(td, SERVER_VAD_KEYS if td["type"] == "server_vad" else SEMANTIC_VAD_KEYS, path)
    if "threshold" in td:
        in_range(td["threshold"], 0, 1, f"{path}.threshold")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in td:
            in_range(td[key], 0, None, f"{path}.{key}", integer=True)
    if td.get("idle_timeout_ms") is not None:
        in_range(td["idle_timeout_ms"], 5000, 30_000, f"{path}.idle_timeout_ms", integer=True)
    if "eagerness" in td:
        one_of(td["eagerness"], ("low", "medium", "high", "auto"), f"{path}.eagerness")
    for key in ("create_response", "interrupt_response"):
        if key in td:
            _boolean(td[key], f"{path}.{key}")


def _audio(value: Any, current: dict, audio_present: bool) -> None:
    audio = as_object(value, "session.audio")
    _keys(audio, {"input", "output"}, "session.audio")
    if "input" in audio:
        inp = as_object(audio["input"], "session.audio.input")
        path = "session.audio.input"
        _keys(inp, {"format", "transcription", "noise_reduction", "turn_detection"}, path)
        if "format" in inp:
            _format(inp["format"], f"{path}.format")
        if "turn_detection" in inp:
            _turn_detection(inp["turn_detection"], f"{path}.turn_detection")
        if inp.get("transcription") is not None:
            tr = as_object(inp["transcription"], f"{path}.transcription")
            _keys(tr, TRANSCRIPTION_KEYS, f"{path}.transcription")
        if inp.get("noise_reduction") is not None:
            nr = as_object(inp["noise_reduction"], f"{path}.noise_reduction")
            _keys(nr, {"type", "strength"}, f"{path}.noise_reduction")
            if "type" in nr:
                one_of(nr["type"], ("near_field", "far_field"), f"{path}.noise_reduction.type")
    if "output" in audio:
        out = as_object(audio["output"], "session.audio.output")
        path = "session.audio.output"
        _keys(out, {"format", "voice", "speed"}, path)
        if "format" in out:
            _format(out["format"], f"{path}.format")
        if "speed" in out:
            in_range(out["speed"], 0.25, 1.5, f"{path}.speed")
        if "voice" in out:
            _voice(out["voice"], f"{path}.voice")
            if audio_present and out["voice"] != current["audio"]["output"]["voice"]:
                raise Rejected(
                    "cannot_update_voice",
                    "Cannot update a conversation's voice if assistant audio is present.",
                    f"{path}.voice",
                )


def apply_session_update(update: Any, current: dict[str, Any], audio_present: bool) -> dict[str, Any]:
    """The effective session after `update` (a new dict; `current` is untouched), or `Rejected`."""
    session = as_object(update, "session")
    if "type" not in session:
        raise missing("session.type")
    one_of(session["type"], ("realtime",), "session.type")  # transcription sessions are not emulated
    _keys(session, SESSION_KEYS, "session")
    if "model" in session and session["model"] != current["model"]:
        raise Rejected("invalid_value", "Cannot update a session's model after it has been created.", "session.model")
    if "output_modalities" in session:
        _modalities(session["output_modalities"], "session.output_modalities")
    if "instructions" in session:
        as_string(session["instructions"], "session.instructions")
    if "max_output_tokens" in session:
        _max_tokens(session["max_output_tokens"], "session.max_output_tokens")
    if "tools" in session:
        _tools(session["tools"], "session.tools")
    if "tool_choice" in session:
        _tool_choice(session["tool_choice"], "session.tool_choice")
    if "tracing" in session:
        _tracing(session["tracing"], current.get("tracing"))
    if "truncation" in session:
        _truncation(session["truncation"])
    if "include" in session:
        _include(session["include"])
    if "prompt" in session:
        _prompt(session["prompt"], "session.prompt")
    if "reasoning" in session:
        _reasoning(session["reasoning"], "session.reasoning")
    if "parallel_tool_calls" in session:
        _boolean(session["parallel_tool_calls"], "session.parallel_tool_calls")
    if "audio" in session:
        _audio(session["audio"], current, audio_present)
    merged = copy.deepcopy(current)
    _merge(merged, {k: v for k, v in session.items() if k != "type"})
    return merged


def _tracing(tracing: Any, current: Any) -> None:
    if tracing not in (None, "auto"):
        _keys(as_object(tracing, "session.tracing"), {"group_id", "metadata", "workflow_name"}, "session.tracing")
    if current is not None and tracing != current:
        raise Rejected(
            "invalid_value", "Tracing configuration cannot be modified once it has been enabled.", "session.tracing"
        )


def _include(include: Any) -> None:
    if include is None:
        return
    for i, value in enumerate(as_array(include, "session.include")):
        one_of(value, ("item.input_audio_transcription.logprobs",), f"session.include[{i}]")


def _truncation(truncation: Any) -> None:
    if truncation in ("auto", "disabled"):
        return
    trunc = as_object(truncation, "session.truncation")
    _keys(trunc, {"type", "retention_ratio", "token_limits"}, "session.truncation")
    _require(trunc, ("type", "retention_ratio"), "session.truncation")
    one_of(trunc["type"], ("retention_ratio",), "session.truncation.type")
    in_range(trunc["retention_ratio"], 0, 1, "session.truncation.retention_ratio")


def _merge(target: dict, update: dict) -> None:
    """Only the fields present change; a format or a turn detection of another type is replaced whole."""
    for key, value in update.items():
        old = target.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and key not in ("format", "voice")
            and (key != "turn_detection" or value.get("type") == old.get("type"))
        ):
            _merge(old, value)
        else:
            target[key] = copy.deepcopy(value)


# --- response.create -------------------------------------------------------------------------------------------


def check_response_params(params: Any, item_exists) -> dict[str, Any]:
    """`response.create.response`; returns it (an empty dict when absent). `item_exists(id)` resolves
    `item_reference`s in `input`."""
    if params is None:
        return {}
    params = as_object(params, "response")
    _keys(params, RESPONSE_KEYS, "response")
    if "output_modalities" in params:
        _modalities(params["output_modalities"], "response.output_modalities")
    if "instructions" in params:
        as_string(params["instructions"], "response.instructions")
    if "max_output_tokens" in params:
        _max_tokens(params["max_output_tokens"], "response.max_output_tokens")
    if "tools" in params:
        _tools(params["tools"], "response.tools")
    if "tool_choice" in params:
        _tool_choice(params["tool_choice"], "response.tool_choice")
    if "conversation" in params:
        one_of(params["conversation"], ("auto", "none"), "response.conversation")
    if params.get("metadata") is not None:
        _metadata(params["metadata"])
    if "input" in params:
        _response_input(params["input"], item_exists)
    if "audio" in params:
        _response_audio(params["audio"])
    if "prompt" in params:
        _prompt(params["prompt"], "response.prompt")
    if "reasoning" in params:
        _reasoning(params["reasoning"], "response.reasoning")
    if "parallel_tool_calls" in params:
        _boolean(params["parallel_tool_calls"], "response.parallel_tool_calls")
    return params


def _metadata(raw: Any) -> None:
    """`response.metadata`: at most 16 string values (echoed on response.created and response.done)."""
    metadata = as_object(raw, "response.metadata")
    if len(metadata) > MAX_METADATA_KEYS:
        raise Rejected(
            "object_above_max_properties",
            "Invalid 'response.metadata': too many properties. "
            f"Expected an object with at most {MAX_METADATA_KEYS} properties, but got "
            f"{len(metadata)} properties instead.",
            "response.metadata",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise Rejected(
                "invalid_value",
                "Invalid 'response.metadata': keys must be at most 64 characters long.",
                "response.metadata",
            )
        if not isinstance(value, str) or len(value) > 512:
            raise Rejected(
                "invalid_value",
                f"Invalid 'response.metadata.{key}': values must be strings of at most 512 characters.",
                f"response.metadata.{key}",
            )


def _response_input(raw: Any, item_exists) -> None:
    for i, item in enumerate(as_array(raw, "response.input")):
        item = as_object(item, f"response.input[{i}]")
        _require(item, ("type",), f"response.input[{i}]")
        if item["type"] == "item_reference" and not item_exists(item.get("id")):
            raise Rejected(
                "invalid_value",
                f"Invalid 'response.input[{i}].id': item with id '{item.get('id')}' not found in the conversation.",
                f"response.input[{i}].id",
            )


def _response_audio(raw: Any) -> None:
    audio = as_object(raw, "response.audio")
    _keys(audio, {"output"}, "response.audio")
    out = as_object(audio.get("output", {}), "response.audio.output")
    _keys(out, {"format", "voice"}, "response.audio.output")
    if "format" in out:
        _format(out["format"], "response.audio.output.format")
    if "voice" in out:
        _voice(out["voice"], "response.audio.output.voice")
