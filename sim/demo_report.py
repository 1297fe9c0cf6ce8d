"""What the demo prints after its call: the transcript from the call log stream, the latencies and counters
from the call hash, and where the agent can be heard in the caller-side recording. Pure functions over
what Redis and the WAV hold, so they are tested without a cluster."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LATENCIES = (
    ("greeting_ms", "answer -> first greeting frame"),
    ("turn_ms", "end of caller speech -> first agent frame"),
    ("bargein_ms", "barge-in decided -> agent stopped (worker)"),
)
COUNTERS = ("gate_closures", "truncations", "audioless_responses", "underruns")
ROLE_NAMES = {"user": "caller", "assistant": "agent", "tool": "tool"}
VOICED_DBFS = -45.0  # a 50 ms window louder than this is speech (the agent's espeak voice sits near -20)


@dataclass(frozen=True)
class LogEntry:
    role: str
    text: str
    t_ms: int
    name: str = ""
    arguments: str = ""
    output: str = ""

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> LogEntry:
        return cls(
            role=fields.get("role", "?"),
            text=fields.get("text", ""),
            t_ms=_int(fields.get("t_ms")),
            name=fields.get("name", ""),
            arguments=fields.get("arguments", ""),
            output=fields.get("output", ""),
        )


def _int(value: str | None) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def numbers(value: str | None) -> list[float]:
    """A comma-separated list of ms from the call hash ('' or missing: none)."""
    out = []
    for part in (value or "").split(","):
        try:
            out.append(float(part))
        except ValueError:
            continue
    return out


def p50_max(values: list[float]) -> str:
    if not values:
        return "none"
    if len(values) == 1:
        return f"{values[0]:.0f} ms"
    return f"p50 {float(np.median(values)):.0f} ms, max {max(values):.0f} ms (n={len(values)})"


def transcript_lines(entries: list[LogEntry], full_texts: tuple[str, ...] = ()) -> list[str]:
    """One line per log entry, `  12.34s  agent   text`; an agent line that is the start of what it was
    scripted to say was cut by a barge-in, and says so."""
    lines = []
    for e in entries:
        who = ROLE_NAMES.get(e.role, e.role)
        if e.role == "tool":
            text = f"{e.name}({e.arguments}) -> {e.output}"
        else:
            text = e.text
            if e.role == "assistant" and cut_short(e.text, full_texts):
                text += "  [cut off by the caller]"
        lines.append(f"{e.t_ms / 1000:7.2f}s  {who:<7} {text}")
    return lines


def cut_short(heard: str, full_texts: tuple[str, ...]) -> bool:
    """Whether `heard` is the start of a longer scripted line (the worker may end a cut line with "…")."""
    head = heard.rstrip("…").rstrip(" ,.;:")
    return bool(head) and any(
        full != heard and full.startswith(head) and len(full) > len(head) + 1 for full in full_texts
    )


def latency_lines(call: dict[str, str]) -> list[str]:
    lines = [f"{'call setup (StasisStart -> media bridged)':<44} {p50_max(numbers(call.get('setup_ms')))}"]
    lines += [f"{label:<44} {p50_max(numbers(call.get(key)))}" for key, label in LATENCIES]
    lines.append("   ".join(f"{name} {call.get(name, '-')}" for name in COUNTERS))
    if call.get("cost_usd"):
        tokens = "  ".join(f"{k.removeprefix('tokens_')} {v}" for k, v in call.items() if k.startswith("tokens_"))
        lines.append(f"estimated Realtime cost ${float(call['cost_usd']):.4f}  (tokens: {tokens})")
    return lines


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as src:
        return np.frombuffer(src.readframes(src.getnframes()), dtype="<i2"), src.getframerate()


def window_dbfs(samples: np.ndarray, rate: int, window_ms: int = 50) -> np.ndarray:
    """RMS of consecutive windows in dBFS (-inf for digital silence)."""
    n = rate * window_ms // 1000
    whole = len(samples) // n * n
    frames = samples[:whole].astype(np.float64).reshape(-1, n)
    rms = np.sqrt(np.mean(frames * frames, axis=1)) / 32768
    with np.errstate(divide="ignore"):
        return 20 * np.log10(rms)


def voiced_spans(
    samples: np.ndarray, rate: int, merge_gap_ms: int = 600, window_ms: int = 50
) -> list[tuple[float, float]]:
    """(start s, end s) of speech in a recording; pauses shorter than `merge_gap_ms` (between words and
    sentences) do not split a span."""
    voiced = window_dbfs(samples, rate, window_ms) > VOICED_DBFS
    spans: list[list[float]] = []
    for i, v in enumerate(voiced.tolist()):
        if not v:
            continue
        start, end = i * window_ms / 1000, (i + 1) * window_ms / 1000
        if spans and start - spans[-1][1] < merge_gap_ms / 1000:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [(a, b) for a, b in spans]


def voiced_share(samples: np.ndarray, rate: int, start_s: float, end_s: float, window_ms: int = 50) -> float:
    """Share of the windows in [start_s, end_s) that hold speech."""
    db = window_dbfs(samples, rate, window_ms)
    a, b = int(start_s * 1000 / window_ms), int(end_s * 1000 / window_ms)
    part = db[a:b]
    return float(np.mean(part > VOICED_DBFS)) if len(part) else 0.0
