"""The dialplan: contexts -> extensions -> priorities of `App(args)` strings, the default plan (the guide's
contexts plus transfer/queue/voicemail targets), YAML/dict loading, and `${VAR}` / `$[...]` expansion.

Shape (YAML or dict): {context: {extension: ["NoOp(x)", "Set(A=b)", "Stasis(app)", ...]}}. A priority may carry
a label: "(label)App(args)"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

APP = "asterisk-ai-voice-agent"

DEFAULT_DIALPLAN: dict[str, dict[str, list[str]]] = {
    "from-ai-agent-openai": {
        "s": [
            "NoOp(AI agent entry)",
            "Set(AI_CONTEXT=demo_openai)",
            "Set(AI_PROVIDER=openai_realtime)",
            f"Stasis({APP})",
            """GotoIf($["${STASISSTATUS}"="FAILED"]?ai-agent-fallback,s,1)""",
            "Hangup()",
        ]
    },
    "ai-agent-fallback": {"s": ["Playback(ss-noservice)", "Hangup()"]},
    # the phones behind the PBX: what a dialled agent does
    "agents": {
        "6001": [
            "NoOp(Agent 6001 answers after 1 s)",
            "Ringing()",
            "Wait(1)",
            "Answer()",
            "Playback(agent-greeting)",
            "Wait(60)",
            "Hangup()",
        ],
        "6002": ["NoOp(Agent 6002 never answers)", "Ringing()", "Wait(3600)", "Hangup()"],
        "6003": ["NoOp(Agent 6003 is busy)", "Busy()"],
    },
    # FreePBX-style transfer targets (what `continue` is pointed at)
    "from-internal": {
        "6001": ["Dial(Local/6001@agents,20)", "Hangup()"],
        "6002": ["Dial(Local/6002@agents,20)", "Hangup()"],
        "6003": ["Dial(Local/6003@agents,20)", "Hangup()"],
    },
    "ext-queues": {
        "support": ["Queue(support,,,,30)", "Hangup()"],
        "sales": ["Queue(sales,,,,30)", "Hangup()"],
    },
    "ext-group": {"600": ["Dial(Local/6002@agents&Local/6001@agents,20)", "Hangup()"]},
    "default": {"vm100": ["VoiceMail(100@default,u)", "Hangup()"]},
    "ext-local": {
        "vmu100": ["VoiceMail(100@default,u)", "Hangup()"],
        "vmb100": ["VoiceMail(100@default,b)", "Hangup()"],
    },
    # a queue member (Queue() dials one of these)
    "sim-queue-member": {"s": ["Ringing()", "Wait(1)", "Answer()", "Playback(agent-greeting)", "Wait(60)", "Hangup()"]},
    # a phone or trunk with no plan of its own: answers after 1 s
    "sim-phone": {"s": ["Ringing()", "Wait(1)", "Answer()", "Wait(3600)", "Hangup()"]},
}

_APP_RE = re.compile(
    r"^\s*(?:\((?P<label>[^)]*)\))?\s*(?P<app>[A-Za-z][A-Za-z0-9_]*)\s*(?:\((?P<data>.*)\))?\s*$", re.S
)


@dataclass(frozen=True)
class Step:
    app: str
    data: str
    label: str | None = None


class DialplanError(ValueError):
    pass


class Dialplan:
    def __init__(self, contexts: dict[str, dict[str, list[Step]]]):
        self.contexts = contexts

    @classmethod
    def load(cls, source: dict | str | Path | None = None) -> Dialplan:
        """None: the default plan; a dict or a YAML file of the same shape replaces it entirely."""
        if source is None:
            raw: Any = DEFAULT_DIALPLAN
        elif isinstance(source, dict):
            raw = source
        else:
            import yaml

            raw = yaml.safe_load(Path(source).read_text())
        if not isinstance(raw, dict):
            raise DialplanError("a dialplan is a mapping of contexts")
        contexts: dict[str, dict[str, list[Step]]] = {}
        for context, extensions in raw.items():
            if not isinstance(extensions, dict):
                raise DialplanError(f"context {context!r}: a mapping of extensions expected")
            contexts[str(context)] = {
                str(exten): [parse_step(s, context, exten) for s in steps] for exten, steps in extensions.items()
            }
        return cls(contexts)

    def steps(self, context: str, exten: str) -> list[Step] | None:
        return self.contexts.get(context, {}).get(exten)

    def exists(self, context: str, exten: str) -> bool:
        return self.steps(context, exten) is not None

    def find_label(self, context: str, exten: str, label: str) -> int | None:
        for index, step in enumerate(self.steps(context, exten) or []):
            if step.label == label:
                return index + 1
        return None


def parse_step(text: Any, context: str = "?", exten: str = "?") -> Step:
    match = _APP_RE.match(str(text))
    if not match:
        raise DialplanError(f"{context},{exten}: cannot parse {text!r}")
    return Step(match["app"], match["data"] or "", match["label"])


def split_args(data: str) -> list[str]:
    """Split application arguments on commas that are not inside (), [] or quotes."""
    out: list[str] = []
    cur: list[str] = []
    depth, quote = 0, False
    for c in data:
        if c == '"':
            quote = not quote
        elif not quote and c in "([":
            depth += 1
        elif not quote and c in ")]":
            depth -= 1
        elif c == "," and depth == 0 and not quote:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    out.append("".join(cur))
    return out


def expand(text: str, lookup: Callable[[str], str]) -> str:
    """Replace ${NAME} (innermost first) and evaluate $[expression] blocks."""
    for _ in range(20):
        start = text.rfind("${")
        if start < 0:
            break
        end = _matching(text, start + 1, "{", "}")
        if end < 0:
            break
        text = text[:start] + lookup(text[start + 2 : end]) + text[end + 1 :]
    for _ in range(20):
        start = text.rfind("$[")
        if start < 0:
            break
        end = _matching(text, start + 1, "[", "]")
        if end < 0:
            break
        text = text[:start] + evaluate(text[start + 2 : end]) + text[end + 1 :]
    return text


def _matching(text: str, open_at: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _unquote(s: str) -> str:
    s = s.strip()
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def evaluate(expr: str) -> str:
    """The comparisons dialplans use for STASISSTATUS / DIALSTATUS: =, != and plain truth values."""
    for op in ("!=", "="):
        if op in expr:
            left, right = expr.split(op, 1)
            equal = _unquote(left) == _unquote(right)
            return "1" if equal == (op == "=") else "0"
    return _unquote(expr)


def truthy(value: str) -> bool:
    value = value.strip()
    return bool(value) and value not in ("0",)


def parse_target(label: str, context: str, exten: str) -> tuple[str, str, str]:
    """Goto targets: 'ctx,ext,prio' | 'ext,prio' | 'prio' (prio may be a label)."""
    parts = [p.strip() for p in label.split(",")]
    if len(parts) >= 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return context, parts[0], parts[1]
    return context, exten, parts[0]
