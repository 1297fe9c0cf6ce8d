"""ARI JSON that carries lone UTF-16 surrogates.

Asterisk writes a channel variable or caller name holding bytes that are not UTF-8 as JSON escapes of lone
surrogates ("\\udc80"). JSON allows them; msgspec refuses them ("invalid utf-16 surrogate pair"), so such an
event (a StasisStart!) or REST answer would be dropped as malformed; and Python's json, which accepts them,
gives strings that no UTF-8 encoder (Redis, the logs) can write back. So they become U+FFFD here, once, at the
door: only a body that failed to decode pays for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # the escape of a surrogate, paired or not


def without_lone_surrogates(data: bytes | str) -> bytes | None:
    """`data` with every lone surrogate replaced by U+FFFD, or None when it has none to replace (or is not
    JSON at all: the caller's own error stands)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not _ESCAPE.search(raw):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return json.dumps(_scrub(value), ensure_ascii=False, separators=(",", ":")).encode()


def decode(decoder: Callable[[bytes], T], data: bytes | str) -> T:
    """`decoder(data)`, and once more without lone surrogates if that is why it failed."""
    try:
        return decoder(data)  # type: ignore[arg-type]
    except msgspec.DecodeError:
        cleaned = without_lone_surrogates(data)
        if cleaned is None:
            raise
        return decoder(cleaned)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value
