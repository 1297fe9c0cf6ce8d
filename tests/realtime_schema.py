"""Strict validation of Realtime events against the official `openai` package's GA types.

The SDK's unions are not strict on their own: the discriminator is
SDK-private, models accept unknown keys, and some required fields are Optional. This module re-wraps the
unions with a real discriminator and walks `model_extra` for unknown keys. Client events must have no
unknown key at all (the real server answers `unknown_parameter`); server events may carry the few keys the
real server sends that the SDK does not model.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union, get_args

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, Field, TypeAdapter

# Keys real servers send that the SDK does not model: tolerated in server events only.
SERVER_EXTRA_ALLOWED = {"$.session.id", "$.session.object", "$.session.expires_at", "$.obfuscation"}


def _strict(sdk_union: Any) -> TypeAdapter:
    members = get_args(get_args(sdk_union)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])


CLIENT = _strict(RealtimeClientEvent)
SERVER = _strict(RealtimeServerEvent)


def unknown_keys(model: Any, path: str = "$") -> list[str]:
    out: list[str] = []
    if isinstance(model, BaseModel):
        out += [f"{path}.{key}" for key in (model.model_extra or {})]
        for name in type(model).model_fields:
            out += unknown_keys(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            out += unknown_keys(item, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, item in model.items():
            out += unknown_keys(item, f"{path}.{key}")
    return out


def _load(event: str | bytes | dict) -> dict:
    return json.loads(event) if isinstance(event, (str, bytes)) else event


def check_client_event(event: str | bytes | dict) -> str:
    """Validate one client event; returns the SDK class name. Raises on any schema error or unknown key."""
    parsed = CLIENT.validate_python(_load(event))
    extra = unknown_keys(parsed)
    if extra:
        raise ValueError(f"unknown keys in client event {parsed.type}: {extra}")
    if parsed.type == "session.update":
        for i, tool in enumerate(parsed.session.tools or []):
            if getattr(tool, "type", None) == "function" and not getattr(tool, "name", None):
                raise ValueError(f"session.tools[{i}].name is required")
    return type(parsed).__name__


def check_server_event(event: str | bytes | dict) -> str:
    """Validate one server event; returns the SDK class name. Unknown keys beyond the known few are errors."""
    parsed = SERVER.validate_python(_load(event))
    extra = [key for key in unknown_keys(parsed) if key not in SERVER_EXTRA_ALLOWED]
    if extra:
        raise ValueError(f"unknown keys in server event {parsed.type}: {extra}")
    return type(parsed).__name__
