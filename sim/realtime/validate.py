"""The GA server's rules for `session.update`, with its error codes and messages (reference §1.2, §2, §4).

Any violation rejects the whole update: the caller gets `SessionError` and the session stays as it was.
"""

from __future__ import annotations

import copy
import re
from typing import Any

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")

SESSION_KEYS = {"type", "output_modalities", "instructions", "audio", "tools", "tool_choice", "max_output_tokens",
                "tracing", "truncation", "prompt", "include", "model"}
AUDIO_KEYS = {"input", "output"}
INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
OUTPUT_KEYS = {"format", "voice", "speed"}
FORMAT_KEYS = {"type", "rate"}
TRANSCRIPTION_KEYS = {"model", "language", "prompt"}
NOISE_KEYS = {"type"}
SERVER_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                   "interrupt_response", "idle_timeout_ms"}
SEMANTIC_VAD_KEYS = {"type", "eagerness", "create_response", "interrupt_response"}
FUNCTION_TOOL_KEYS = {"type", "name", "description", "parameters"}


class SessionError(Exception):
    def __init__(self, code: str, message: str, param: str | None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _unknown(obj: dict, allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise SessionError("unknown_parameter", f"Unknown parameter: '{path}.{key}'.", f"{path}.{key}")


def _object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise SessionError("invalid_type", f"Invalid type for '{path}': expected an object, but got "
                           f"{type(value).__name__} instead.", path)
    return value


def _value(value: Any, allowed: tuple, path: str) -> None:
    if value not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed)
        raise SessionError("invalid_value", f"Invalid value: '{value}'. Supported values are: {listed}.", path)


def _number(value: Any, low: float, high: float, path: str, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an integer" if integer else "a decimal"
        raise SessionError("invalid_type", f"Invalid type for '{path}': expected {expected}, but got "
                           f"{type(value).__name__} instead.", path)
    if not low <= value <= high:
        raise SessionError("decimal_above_max_value" if value > high else "decimal_below_min_value",
                           f"Invalid '{path}': {value} is out of range; expected a value between {low:g} and "
                           f"{high:g}.", path)


def _format(value: Any, path: str) -> None:
    fmt = _object(value, path)
    _unknown(fmt, FORMAT_KEYS, path)
    if "type" not in fmt:
        raise SessionError("missing_required_parameter", f"Missing required parameter: '{path}.type'.", f"{path}.type")
    _value(fmt["type"], FORMATS, f"{path}.type")
    if "rate" in fmt:
        if fmt["type"] != "audio/pcm":
            raise SessionError("unknown_parameter", f"Unknown parameter: '{path}.rate'.", f"{path}.rate")
        _value(fmt["rate"], (24000,), f"{path}.rate")


def _turn_detection(value: Any, path: str) -> None:
    if value is None:
        return
    td = _object(value, path)
    if "type" not in td:
        raise SessionError("missing_required_parameter", f"Missing required parameter: '{path}.type'.", f"{path}.type")
    _value(td["type"], ("server_vad", "semantic_vad"), f"{path}.type")
    _unknown(td, SERVER_VAD_KEYS if td["type"] == "server_vad" else SEMANTIC_VAD_KEYS, path)
    if "threshold" in td:
        _number(td["threshold"], 0, 1, f"{path}.threshold")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in td:
            _number(td[key], 0, 10_000, f"{path}.{key}", integer=True)
    if td.get("idle_timeout_ms") is not None:
        _number(td["idle_timeout_ms"], 5000, 30_000, f"{path}.idle_timeout_ms", integer=True)
    if "eagerness" in td:
        _value(td["eagerness"], ("low", "medium", "high", "auto"), f"{path}.eagerness")


def _tools(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise SessionError("invalid_type", f"Invalid type for '{path}': expected an array, but got "
                           f"{type(value).__name__} instead.", path)
    for i, tool in enumerate(value):
        here = f"{path}[{i}]"
        tool = _object(tool, here)
        # Required keys first: a nested Chat Completions tool fails on its missing name (reference §2).
        for key in ("type", "name"):
            if key not in tool:
                raise SessionError("missing_required_parameter", f"Missing required parameter: '{here}.{key}'.",
                                   f"{here}.{key}")
        _value(tool["type"], ("function",), f"{here}.type")
        _unknown(tool, FUNCTION_TOOL_KEYS, here)
        if not isinstance(tool["name"], str) or not TOOL_NAME.match(tool["name"]):
            raise SessionError("invalid_value", f"Invalid '{here}.name': string does not match pattern. Expected "
                               "a string that matches the pattern '^[a-zA-Z0-9_-]+$'.", f"{here}.name")


def _tool_choice(value: Any, path: str) -> None:
    if isinstance(value, str):
        _value(value, ("auto", "none", "required"), path)
        return
    choice = _object(value, path)
    if "name" not in choice:
        raise SessionError("missing_required_parameter", f"Missing required parameter: '{path}.name'.", f"{path}.name")
    _unknown(choice, {"type", "name"}, path)


def validate_update(update: Any, current: dict[str, Any], audio_sent: bool) -> dict[str, Any]:
    """The effective session after `update`, or SessionError. `current` is not modified."""
    session = _object(update, "session")
    if "type" not in session:
        raise SessionError("missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type")
    _value(session["type"], ("realtime",), "session.type")
    _unknown(session, SESSION_KEYS, "session")
    if "output_modalities" in session and session["output_modalities"] not in (["audio"], ["text"]):
        raise SessionError("invalid_value", f"Invalid value: {session['output_modalities']}. Supported values "
                           "are: ['audio'], ['text'].", "session.output_modalities")
    if "instructions" in session and not isinstance(session["instructions"], str):
        raise SessionError("invalid_type", "Invalid type for 'session.instructions': expected a string.",
                           "session.instructions")
    if "max_output_tokens" in session and session["max_output_tokens"] != "inf":
        _number(session["max_output_tokens"], 1, 4096, "session.max_output_tokens", integer=True)
    if "tools" in session:
        _tools(session["tools"], "session.tools")
    if "tool_choice" in session:
        _tool_choice(session["tool_choice"], "session.tool_choice")
    if "model" in session and session["model"] != current.get("model"):
        raise SessionError("invalid_value", "Cannot update a session's model.", "session.model")
    audio = _object(session.get("audio", {}), "session.audio")
    _unknown(audio, AUDIO_KEYS, "session.audio")
    inp = _object(audio.get("input", {}), "session.audio.input")
    _unknown(inp, INPUT_KEYS, "session.audio.input")
    if "format" in inp:
        _format(inp["format"], "session.audio.input.format")
    if "turn_detection" in inp:
        _turn_detection(inp["turn_detection"], "session.audio.input.turn_detection")
    if inp.get("transcription") is not None:
        _unknown(_object(inp["transcription"], "session.audio.input.transcription"), TRANSCRIPTION_KEYS,
                 "session.audio.input.transcription")
    if inp.get("noise_reduction") is not None:
        _unknown(_object(inp["noise_reduction"], "session.audio.input.noise_reduction"), NOISE_KEYS,
                 "session.audio.input.noise_reduction")
    out = _object(audio.get("output", {}), "session.audio.output")
    _unknown(out, OUTPUT_KEYS, "session.audio.output")
    if "format" in out:
        _format(out["format"], "session.audio.output.format")
    if "speed" in out:
        _number(out["speed"], 0.25, 1.5, "session.audio.output.speed")
    if "voice" in out:
        voice = out["voice"]
        if not (isinstance(voice, str) or (isinstance(voice, dict) and set(voice) == {"id"})):
            raise SessionError("invalid_type", "Invalid type for 'session.audio.output.voice'.",
                               "session.audio.output.voice")
        if audio_sent and voice != current["audio"]["output"]["voice"]:
            raise SessionError("cannot_update_voice",
                               "Cannot update a conversation's voice if assistant audio is present.",
                               "session.audio.output.voice")
    merged = copy.deepcopy(current)
    _merge(merged, session)
    return merged


def _merge(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key not in ("format", "turn_detection"):
            _merge(target[key], value)
        elif key == "turn_detection" and isinstance(value, dict) and isinstance(target.get(key), dict) \
                and value.get("type") == target[key].get("type"):
            target[key].update(value)
        else:
            target[key] = copy.deepcopy(value)
