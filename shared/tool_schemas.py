"""The agent's tools as the model sees them: the flat Realtime function schema (the guide's
`to_openai_realtime_schema()`), never the nested Chat Completions shape that the server rejects whole."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.config.schema import Config


# The arguments each tool takes, checked with msgspec before anything runs; they mirror the schemas below
# (tests/test_tools.py keeps the two in step). Bad arguments go back to the model as an error, never raise.
class TransferArgs(msgspec.Struct, forbid_unknown_fields=True):
    destination: str


class HangupArgs(msgspec.Struct, forbid_unknown_fields=True):
    farewell: str = ""


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


class TranscriptArgs(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    confirmed: bool = False


ARGS: dict[str, type[msgspec.Struct]] = {
    "transfer": TransferArgs,
    "cancel_transfer": NoArgs,
    "hangup_call": HangupArgs,
    "leave_voicemail": NoArgs,
    "send_email_summary": NoArgs,
    "request_transcript": TranscriptArgs,
}


def parse_arguments(name: str, arguments: str) -> msgspec.Struct:
    """The model's JSON arguments as the tool's struct; raises ValueError with a message for the model."""
    kind = ARGS.get(name)
    if kind is None:
        raise ValueError(f"there is no tool named {name!r}")
    try:
        return msgspec.json.decode(arguments or "{}", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"invalid arguments for {name}: {exc}") from None


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
        "parameters": {
            "type": "object",
            "properties": {"destination": destination},
            "required": ["destination"],
            "additionalProperties": False,
        },
    }


def _email_argument(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "email": {"type": "string", "description": description},
            "confirmed": {
                "type": "boolean",
                "description": "True only after you read the spelling back and the caller said it is right.",
            },
        },
        "required": ["email"],
        "additionalProperties": False,
    }


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
            "parameters": {
                "type": "object",
                "properties": {"farewell": {"type": "string", "description": "The farewell you just said, if any."}},
                "additionalProperties": False,
            },
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
            "description": "Email the caller a transcript of this call after it ends, to at most "
            f"{config.tools.request_transcript.max_addresses} address(es) per call. Call it first with the "
            "address as the caller said it (e.g. 'john dot smith at example dot com'); read back "
            "the spelling it returns and ask the caller. Only after the caller says it is right, call it "
            "again with confirmed true: a confirmation before the caller answered is not accepted.",
            "parameters": _email_argument("The caller's email address, as they said or spelled it."),
        },
    }


def realtime_tools(config: Config, names: list[str]) -> list[dict[str, Any]]:
    """`session.tools` for the named tools, in the flat shape: `{type, name, description, parameters}`."""
    table = definitions(config)
    return [{"type": "function", "name": name, **table[name]} for name in names]
