"""Keep secrets out of output: mask config values by key name, passwords inside URLs, and known secret
values or key-shaped tokens anywhere in a log line."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_KEYS = frozenset({"api_key", "password", "token", "secret", "smtp_password"})
MASK = "***"

# Things that look like credentials whatever their source: OpenAI keys, bearer tokens, URL passwords.
_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"),  # not the "sk-ai-…" inside "asterisk-ai-…"
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)(basic\s+)[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(://[^:/@\s]*:)[^@/\s]+(@)"),
)


def mask_secret(value: str) -> str:
    return MASK if value else ""


def mask_url(url: str) -> str:
    """`redis://:pw@host:6379/0` → `redis://:***@host:6379/0`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def mask_tree(value: Any, key: str = "") -> Any:
    """A copy of a plain config tree with secret keys masked and URL passwords hidden."""
    if isinstance(value, dict):
        return {k: mask_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tree(v, key) for v in value]
    if isinstance(value, str):
        if key in SECRET_KEYS:
            return mask_secret(value)
        if "://" in value:
            return mask_url(value)
    return value


def secret_values(value: Any, key: str = "") -> set[str]:
    """Every secret string in a plain config tree, for the log redactor."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found |= secret_values(v, str(k))
    elif isinstance(value, list):
        for v in value:
            found |= secret_values(v, key)
    elif isinstance(value, str):
        if key in SECRET_KEYS and len(value) >= 4:
            found.add(value)
        elif "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password and len(password) >= 4:
                found.add(password)
    return found


class Redactor:
    """Replaces registered secret values and credential-shaped tokens in text."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def register(self, secrets: set[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = tuple(sorted(set(self._secrets) | secrets, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            if pattern.groups:
                text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(2) if m.lastindex == 2 else ""), text)
            else:
                text = pattern.sub(MASK, text)
        return text


redact = Redactor()
