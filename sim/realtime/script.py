"""What the emulated model says: it has no ASR and no LLM, so tests and the demo script its replies."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ToolCall:
    name: str
    arguments: dict | str = field(default_factory=dict)


@dataclass
class Reply:
    text: str = ""  # what the agent says; "{output}" becomes the latest function_call_output
    audio_ms: int | None = None  # length of the audio; None: from the text (about 70 ms a character)
    pcm: bytes | None = None  # PCM16 24 kHz mono to send instead of synthesized speech
    tool_calls: list[ToolCall] = field(default_factory=list)
    preamble: str = ""  # an audio item before the tool calls in the same response ("one moment…")
    items: int = 1  # assistant audio items in the response (gpt-realtime-2 sends several)
    text_only: bool = False  # the "modalities bug": text but no audio
    status: str = "completed"  # completed | failed | incomplete
    error: dict | None = None  # status_details.error of a failed response
    server_error: dict | None = None  # an `error` event sent just before this response


@dataclass
class Script:
    greeting: Reply | None = None
    turns: dict[int, Reply] = field(default_factory=dict)  # reply after the n-th user message (1-based)
    after_tool: Reply = field(default_factory=lambda: Reply(text="Done. {output}"))
    default: Reply = field(default_factory=lambda: Reply(text="I see."))
    transcripts: dict[int, str] = field(default_factory=dict)  # input transcription of user turn n

    def reply_for(self, user_turns: int, after_tool: bool) -> Reply:
        if after_tool:
            return self.after_tool
        if user_turns == 0:
            return self.greeting or self.default
        return self.turns.get(user_turns, self.default)

    def transcript_for(self, turn: int) -> str:
        return self.transcripts.get(turn, f"user turn {turn}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Script":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown script keys: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key in ("greeting", "after_tool", "default"):
            if data.get(key) is not None:
                kwargs[key] = _reply(data[key])
        kwargs["turns"] = {int(k): _reply(v) for k, v in (data.get("turns") or {}).items()}
        kwargs["transcripts"] = {int(k): str(v) for k, v in (data.get("transcripts") or {}).items()}
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Script":
        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


def _reply(data: dict[str, Any]) -> Reply:
    data = dict(data)
    calls = [ToolCall(c["name"], c.get("arguments", {})) for c in data.pop("tool_calls", []) or []]
    return Reply(tool_calls=calls, **data)
