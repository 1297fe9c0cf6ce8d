"""Map the guide's beta-era `providers.openai_realtime` keys to the GA Realtime session.

The beta API is shut down: its field names are rejected by the GA server (`Unknown parameter:
'session.temperature'`). The guide's config must keep working, so every beta key is translated here, in one
place, and each translation that changes or drops what the user asked for is reported with its key path.
`notes` are plain renames (same effect, GA spelling); `warnings` are settings that are replaced or ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.config.schema import OpenAIRealtime, TurnDetection
from shared.config.validate import Problem, Severity, suggest

PATH = "providers.openai_realtime"

GA_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")

# Models retired with the beta API, by prefix, and the GA model we use instead.
RETIRED_MODELS = {
    "gpt-4o-mini-realtime-preview": "gpt-realtime-2.1-mini",
    "gpt-4o-realtime-preview": "gpt-realtime-2.1",
}
# GA models with an announced shutdown date (OpenAI's deprecations page).
SUNSETTING_MODELS = {
    "gpt-realtime": ("2027-01-20", "gpt-realtime-2.1"),
    "gpt-realtime-mini": ("2027-01-20", "gpt-realtime-2.1-mini"),
}

_FORMATS = {
    "pcm16": "audio/pcm",
    "audio/pcm": "audio/pcm",
    "g711_ulaw": "audio/pcmu",
    "audio/pcmu": "audio/pcmu",
    "g711_alaw": "audio/pcma",
    "audio/pcma": "audio/pcma",
}


def effective_model(model: str) -> str:
    for prefix, replacement in RETIRED_MODELS.items():
        if model.startswith(prefix):
            return replacement
    return model


def ga_format(name: str) -> dict[str, Any]:
    """`pcm16` → `{type: audio/pcm, rate: 24000}`; G.711 formats have no rate."""
    kind = _FORMATS[name]
    return {"type": kind, "rate": 24000} if kind == "audio/pcm" else {"type": kind}


def turn_detection_type(p: OpenAIRealtime) -> str:
    return p.turn_detection.type or p.turn_detection_type or "server_vad"


def ga_turn_detection(p: OpenAIRealtime) -> dict[str, Any] | None:
    """`audio.input.turn_detection`, or None (VAD off: the client commits turns itself)."""
    kind = turn_detection_type(p)
    if not p.turn_detection_enabled or kind == "none":
        return None
    td: TurnDetection = p.turn_detection
    out: dict[str, Any] = {"type": kind}
    if kind == "server_vad":
        out.update(
            threshold=td.threshold,
            prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms,
        )
        if td.idle_timeout_ms is not None:
            out["idle_timeout_ms"] = td.idle_timeout_ms
    else:
        out["eagerness"] = td.eagerness
    out["create_response"] = td.create_response
    if td.interrupt_response is not None:
        out["interrupt_response"] = td.interrupt_response
    return out


def output_modalities(p: OpenAIRealtime) -> list[str]:
    # GA takes one output modality; audio output always carries its transcript, so "text" adds nothing.
    return ["audio"] if "audio" in p.modalities else ["text"]


def build_session(
    p: OpenAIRealtime,
    *,
    instructions: str,
    tools: Iterable[dict[str, Any]] = (),
    voice: str | None = None,
    input_format: str | None = None,
    output_format: str | None = None,
) -> dict[str, Any]:
    """The `session` object of a GA `session.update`. Formats default to the provider's own keys."""
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": output_modalities(p),
        "instructions": instructions,
        "audio": {
            "input": {
                "format": ga_format(input_format or p.input_audio_format),
                "turn_detection": ga_turn_detection(p),
            },
            "output": {
                "format": ga_format(output_format or p.output_audio_format),
                "voice": voice or p.voice,
            },
        },
        "tools": list(tools),
        "tool_choice": "auto",
    }
    if p.input_transcription_model:
        session["audio"]["input"]["transcription"] = {"model": p.input_transcription_model}
    if p.max_response_output_tokens is not None:
        session["max_output_tokens"] = p.max_response_output_tokens
    return session


class _Findings:
    """The warnings and notes of one review, in the order they were found."""

    def __init__(self) -> None:
        self.warnings: list[Problem] = []
        self.notes: list[Problem] = []

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(f"{PATH}.{key}", message, severity=Severity.WARNING))

    def note(self, key: str, message: str) -> None:
        self.notes.append(Problem(f"{PATH}.{key}", message, severity=Severity.NOTE))


def review(p: OpenAIRealtime, present: set[str], present_td: set[str]) -> tuple[list[Problem], list[Problem]]:
    """(warnings, notes) for the beta-era keys the user wrote; `present` are the keys set in the YAML,
    `present_td` those of the turn_detection block."""
    found = _Findings()
    _review_model(p, found)
    _review_audio(p, present, found)
    if "max_response_output_tokens" in present:
        found.note("max_response_output_tokens", "sent as max_output_tokens")
    _review_voice(p, present, found)
    _review_turn_detection(p, present, present_td, found)
    return found.warnings, found.notes


def _review_model(p: OpenAIRealtime, found: _Findings) -> None:
    model = effective_model(p.model)
    if model != p.model:
        found.warn(
            "model",
            f"'{p.model}' was retired with the beta Realtime API; using '{model}' instead "
            f"(set model: {model} to silence this warning)",
        )
    elif p.model in SUNSETTING_MODELS:
        date, successor = SUNSETTING_MODELS[p.model]
        found.warn("model", f"'{p.model}' is scheduled to shut down on {date}; consider '{successor}'")
    if p.temperature is not None:
        found.warn("temperature", "GA Realtime sessions have no temperature setting; the value is ignored")


def _review_audio(p: OpenAIRealtime, present: set[str], found: _Findings) -> None:
    """Modalities, formats and sample rates."""
    if "modalities" in present:
        if "audio" not in p.modalities:
            found.warn(
                "modalities",
                'no \'audio\': the agent will answer in text only and callers will hear silence; use ["text", "audio"]',
            )
        else:
            found.note(
                "modalities",
                'sent as output_modalities: ["audio"] (GA allows one output modality; '
                "audio replies always carry their transcript)",
            )
    for key in ("input_audio_format", "output_audio_format"):
        if key in present:
            target = "audio.input.format" if key.startswith("input") else "audio.output.format"
            found.note(key, f"sent as {target}: {ga_format(getattr(p, key))}")
    for key in ("input_audio_sample_rate", "output_audio_sample_rate"):
        fmt = getattr(p, key.replace("sample_rate", "format"))
        rate = getattr(p, key)
        if key in present and _FORMATS[fmt] != "audio/pcm" and rate != 8000:
            found.warn(key, f"{fmt} is always 8000 Hz; {rate} is ignored")


def _review_voice(p: OpenAIRealtime, present: set[str], found: _Findings) -> None:
    if "voice" not in present:
        return
    if p.voice not in GA_VOICES:
        found.warn(
            "voice",
            f"'{p.voice}' is not a known Realtime voice{suggest(p.voice, GA_VOICES)}; "
            f"known voices: {', '.join(GA_VOICES)}",
        )
    found.note("voice", "sent as audio.output.voice")


def _review_turn_detection(p: OpenAIRealtime, present: set[str], present_td: set[str], found: _Findings) -> None:
    if "turn_detection_enabled" in present and not p.turn_detection_enabled:
        found.note(
            "turn_detection_enabled", "false: sent as audio.input.turn_detection: null (the worker commits turns)"
        )
    if "turn_detection_type" in present:
        if p.turn_detection.type and p.turn_detection.type != p.turn_detection_type:
            found.warn(
                "turn_detection_type",
                f"'{p.turn_detection_type}' conflicts with turn_detection.type "
                f"'{p.turn_detection.type}'; the turn_detection block wins",
            )
        else:
            found.note("turn_detection_type", "sent as audio.input.turn_detection.type")
    if "turn_detection" in present:
        found.note("turn_detection", "sent as audio.input.turn_detection")
        if turn_detection_type(p) == "semantic_vad":
            ignored = sorted(present_td & {"threshold", "silence_duration_ms", "prefix_padding_ms", "idle_timeout_ms"})
            for key in ignored:
                found.warn(f"turn_detection.{key}", "applies to server_vad only; semantic_vad ignores it")
