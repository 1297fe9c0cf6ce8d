"""What the emulated model says. It has no ASR and no LLM, so tests and the demo script its replies.

Which reply a `response.create` (or a VAD turn) gets:
  * the last conversation item is a `function_call_output` → `after_tool`;
  * no user turn yet → `greeting` (or `default`);
  * otherwise `turns[n]` for user turn n (see `conversation.py` for how turns are counted), or `default`;
  * the last item is a system message the client added (news such as a failed transfer) → `default`;
  * an idle timeout (`idle_timeout_ms`) → `idle`.
A scripted tool call is made only if the response may call that tool (it is in the effective `tools` and
`tool_choice` allows it), as a real model could not call a tool the client failed to declare.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ToolCall:
    name: str
    arguments: dict | str = field(default_factory=dict)  # JSON-encoded on the wire, split into uneven deltas


@dataclass
class Reply:
    text: str = ""  # what the agent says (the transcript); "{output}" becomes the latest function_call_output
    audio_ms: int | None = None  # length of the audio; None: from the text (about 70 ms a character, min 300)
    pcm: bytes | None = None  # PCM16 24 kHz mono to send instead of synthesized speech
    tool_calls: list[ToolCall] = field(default_factory=list)
    preamble: str = ""  # an audio item before the tool calls in the same response ("one moment…")
    items: int = 1  # assistant audio items in the response (gpt-realtime-2 sends several)
    text_only: bool = False  # the guide's "modalities bug": a transcript/text but no audio
    text_only_times: int = 0  # the first N responses with this reply in a session have no audio, later ones do
    status: str = "completed"  # completed | failed (status_details.error from `error`) | incomplete
    error: dict | None = None  # for status "failed": {type, code, message}
    server_error: dict | None = None  # an `error` event (e.g. type server_error) sent just before this response

    def __post_init__(self) -> None:
        if self.status not in ("completed", "failed", "incomplete"):
            raise ValueError(f"Reply.status must be completed, failed or incomplete, not {self.status!r}")
        if self.items < 1:
            raise ValueError("Reply.items must be at least 1")
        self.tool_calls = [c if isinstance(c, ToolCall) else ToolCall(**c) for c in self.tool_calls]


@dataclass
class Script:
    greeting: Reply | None = None  # reply to a response.create before any user turn
    turns: dict[int, Reply] = field(default_factory=dict)  # reply after user turn n (1-based)
    after_tool: Reply = field(default_factory=lambda: Reply(text="Done. {output}"))
    default: Reply = field(default_factory=lambda: Reply(text="I see."))
    transcripts: dict[int, str] = field(default_factory=dict)  # input transcription of user turn n
    idle: Reply = field(default_factory=lambda: Reply(text="Are you still there?"))

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
        _no_unknown(data, {f.name for f in fields(cls)}, "script")
        kwargs: dict[str, Any] = {}
        for key in ("greeting", "after_tool", "default", "idle"):
            if data.get(key) is not None:
                kwargs[key] = _reply(data[key], key)
        kwargs["turns"] = {int(k): _reply(v, f"turns.{k}") for k, v in (data.get("turns") or {}).items()}
        kwargs["transcripts"] = {int(k): str(v) for k, v in (data.get("transcripts") or {}).items()}
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Script":
        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


def _no_unknown(data: Any, known: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _reply(data: Any, where: str) -> Reply:
    if isinstance(data, str):  # shorthand: `greeting: Hello.`
        return Reply(text=data)
    _no_unknown(data, {f.name for f in fields(Reply)} - {"pcm"}, where)
    data = dict(data)
    calls = []
    for i, call in enumerate(data.pop("tool_calls", None) or []):
        _no_unknown(call, {"name", "arguments"}, f"{where}.tool_calls[{i}]")
        calls.append(ToolCall(call["name"], call.get("arguments", {})))
    return Reply(tool_calls=calls, **data)
