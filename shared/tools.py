"""The agent's tools as the model sees them: the flat Realtime function schema (the guide's
`to_openai_realtime_schema()`), never the nested Chat Completions shape that the server rejects whole."""

from __future__ import annotations

from typing import Any

from shared.config.schema import Config

_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _transfer(config: Config) -> dict[str, Any]:
    destinations = config.tools.transfer.destinations
    names = sorted(destinations)
    lines = "; ".join(f"{n}: {d.description or d.type}" for n, d in sorted(destinations.items()))
    destination: dict[str, Any] = {"type": "string", "description": f"Where to transfer the caller. {lines}".strip()}
    if names:
        destination["enum"] = names
    return {
        "description": "Transfer the caller to a department, person or queue. Confirm with the caller first.",
        "parameters": {"type": "object", "properties": {"destination": destination},
                       "required": ["destination"], "additionalProperties": False},
    }


def _email_argument(description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"email": {"type": "string", "description": description}},
            "required": ["email"], "additionalProperties": False}


def definitions(config: Config) -> dict[str, dict[str, Any]]:
    return {
        "transfer": _transfer(config),
        "cancel_transfer": {
            "description": "Cancel a transfer that is still ringing and bring the caller back to you.",
            "parameters": _NO_ARGS,
        },
        "hangup_call": {
            "description": "End the call after you have said a brief farewell. Call it as soon as the caller "
                           "confirms they are done.",
            "parameters": {"type": "object", "properties": {"farewell": {
                "type": "string", "description": "The farewell you just said, if any."}},
                "additionalProperties": False},
        },
        "leave_voicemail": {
            "description": "Send the caller to voicemail to leave a message.",
            "parameters": _NO_ARGS,
        },
        "send_email_summary": {
            "description": "Email a summary of this call to the company's team after the call.",
            "parameters": _NO_ARGS,
        },
        "request_transcript": {
            "description": "Email the caller a transcript of this call. Spell the address back to the caller "
                           "and get their confirmation first.",
            "parameters": _email_argument("The caller's email address, as confirmed."),
        },
    }


def realtime_tools(config: Config, names: list[str]) -> list[dict[str, Any]]:
    """`session.tools` for the named tools, in the flat shape: `{type, name, description, parameters}`."""
    table = definitions(config)
    return [{"type": "function", "name": name, **table[name]} for name in names]
