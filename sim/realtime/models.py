"""`GET /v1/models` as OpenAI answers it: the guide's key test (`curl -H "Authorization: Bearer $KEY"
https://api.openai.com/v1/models`). A list object of `openai.types.Model`, or 401 with OpenAI's error body."""

from __future__ import annotations

import json

PATH = "/v1/models"
# What the emulator offers: the GA Realtime models and the transcription model a session may name.
MODELS = (
    "gpt-realtime",
    "gpt-realtime-mini",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
    "gpt-4o-mini-transcribe",
    "whisper-1",
)
CREATED = 1_756_000_000  # a fixed creation time: the listing is the same on every run


def listing() -> str:
    data = [{"id": name, "object": "model", "created": CREATED, "owned_by": "system"} for name in MODELS]
    return json.dumps({"object": "list", "data": data})


def error(message: str, code: str | None) -> str:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
