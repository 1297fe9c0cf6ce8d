"""Token usage of one call, from each `response.done`'s `usage`, and its estimated cost at configured prices.

Cached input tokens are billed at the cached price and are part of (not added to) the input token counts.
Pure bookkeeping, tested with plain dicts.
"""

from __future__ import annotations

from typing import Any

from shared.config.schema import Pricing

KINDS = ("input_text", "input_audio", "input_cached", "output_text", "output_audio")


# A response is billed a few thousand tokens; a count beyond this is a malformed event, not usage (and a count
# beyond a float would raise on the way to the price and the counters).
MAX_TOKENS = 10**9


def _int(d: Any, key: str) -> int:
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, int) and 0 < value <= MAX_TOKENS else 0


def tokens(usage: dict[str, Any] | None) -> dict[str, int]:
    """One response's billed tokens by kind (KINDS); missing or malformed fields count as 0."""
    usage = usage if isinstance(usage, dict) else {}
    inp, out = usage.get("input_token_details"), usage.get("output_token_details")
    return {
        "input_text": _int(inp, "text_tokens"),
        "input_audio": _int(inp, "audio_tokens"),
        "input_cached": _int(inp, "cached_tokens"),
        "output_text": _int(out, "text_tokens"),
        "output_audio": _int(out, "audio_tokens"),
    }


def charge(usage: dict[str, Any] | None, prices: Pricing) -> tuple[dict[str, int], float]:
    """One response's billed tokens by kind and its estimated price in USD."""
    t = tokens(usage)
    inp = usage.get("input_token_details") if isinstance(usage, dict) else None
    cached = inp.get("cached_tokens_details") if isinstance(inp, dict) else None
    if isinstance(cached, dict):
        cached_text, cached_audio = _int(cached, "text_tokens"), _int(cached, "audio_tokens")
    else:  # no split given: the cache holds the prompt's text first
        cached_text = min(t["input_cached"], t["input_text"])
        cached_audio = min(t["input_cached"] - cached_text, t["input_audio"])
    cached_text, cached_audio = min(cached_text, t["input_text"]), min(cached_audio, t["input_audio"])
    per_token = (
        (t["input_text"] - cached_text) * prices.text_input
        + cached_text * prices.text_cached_input
        + (t["input_audio"] - cached_audio) * prices.audio_input
        + cached_audio * prices.audio_cached_input
        + t["output_text"] * prices.text_output
        + t["output_audio"] * prices.audio_output
    )
    return t, per_token / 1_000_000


class CallUsage:
    """Running totals of one call."""

    def __init__(self, prices: Pricing):
        self.prices = prices
        self.totals = dict.fromkeys(KINDS, 0)
        self.cost = 0.0
        self.responses = 0

    def add(self, usage: dict[str, Any] | None) -> tuple[dict[str, int], float]:
        """Count one response; returns its tokens and cost (for the cluster-wide counters)."""
        t, c = charge(usage, self.prices)
        for kind, n in t.items():
            self.totals[kind] += n
        self.cost += c
        self.responses += 1
        return t, c
