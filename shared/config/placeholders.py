"""Secrets left at an example's value: `your_api_key_here` from .env.example, `changeme`, `<password>` …

Only whether a value looks like a placeholder is ever said, never the value: it may be a real secret."""

from __future__ import annotations

import re

# Compared with letters and digits only, lower case: `change-me`, `CHANGE_ME` and `changeme` are one word.
_WORDS = frozenset(
    {
        "changeme",
        "changethis",
        "replaceme",
        "password",
        "passw0rd",
        "secret",
        "apikey",
        "openaiapikey",
        "yourkey",
        "todo",
        "fixme",
        "placeholder",
        "example",
        "xxx",
    }
)
_SHAPES = (
    re.compile(r"<[^<>]*>"),  # <password>, <your key>
    re.compile(r"(?i)your[_\- ].*"),  # your_api_key_here, your-password
    re.compile(r"(?i).*[_\- ]here"),  # insert_key_here, key-here
    re.compile(r"[xX*.]+"),  # xxxxxxxx, ********, ...
    re.compile(r"(?i)sk-(?:[x*.]+|\.\.\..*|your.*|proj-[x*.]+)"),  # sk-xxxx, sk-..., sk-your-key
)


def is_placeholder(value: str) -> bool:
    """True for a secret that is still an example's placeholder, not a credential anyone chose."""
    text = value.strip()
    if not text:
        return False
    if re.sub(r"[^a-z0-9]", "", text.lower()) in _WORDS:
        return True
    return any(shape.fullmatch(text) for shape in _SHAPES)
