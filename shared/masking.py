"""Keep secrets out of output: mask config values by key name, the credentials inside URLs (the userinfo
password and secret-looking query parameters such as `?api_key=`), and known secret values or key-shaped tokens
anywhere in a log line."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_KEYS = frozenset({"api_key", "password", "token", "secret", "smtp_password"})
MASK = "***"

# A query parameter whose name says it carries a credential: `api_key`, `key`, `token`, `access_token`,
# `X-Api-Key`, `client_secret`, `sig` … (any case; a prefix ends with `_`, `-` or `.`, so `monkey` is no key).
_SECRET_WORD = r"(?:api[_-]?key|key|token|password|passwd|pwd|secret|sig|signature|auth|authorization|credentials?)"
_SECRET_PARAM = rf"(?:[A-Za-z0-9]*[_.-])*{_SECRET_WORD}"
_SECRET_PARAM_NAME = re.compile(_SECRET_PARAM, re.IGNORECASE)

# Things that look like credentials whatever their source: OpenAI keys, bearer tokens, URL passwords.
_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"),  # not the "sk-ai-…" inside "asterisk-ai-…"
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)(basic\s+)[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(://[^:/@\s]*:)[^@/\s]+(@)"),
    re.compile(rf"(?i)([?&;]{_SECRET_PARAM}=)[^&#;\s\"'<>]+"),
)


def mask_secret(value: str) -> str:
    return MASK if value else ""


def _query_secrets(query: str) -> list[str]:
    """The values of the secret-looking parameters of a URL's query string, as written there."""
    found = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and _SECRET_PARAM_NAME.fullmatch(name):
            found.append(value)
    return found


def mask_url(url: str) -> str:
    """`redis://:pw@host:6379/0` → `redis://:***@host:6379/0`; `wss://h/v1?api_key=sk-1&model=m` →
    `wss://h/v1?api_key=***&model=m`. Anything that does not parse as a URL is masked as free text."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return redact_patterns(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if port is not None:
            host = f"{host}:{port}"
        parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
    if parts.query and _query_secrets(parts.query):
        pairs = [p.partition("=") for p in parts.query.split("&")]
        masked = [
            f"{n}={MASK}" if sep and v and _SECRET_PARAM_NAME.fullmatch(n) else n + sep + v for n, sep, v in pairs
        ]
        parts = parts._replace(query="&".join(masked))
    return urlunsplit(parts)


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
                parts = urlsplit(value)
            except ValueError:
                return found
            candidates = [parts.password or "", *_query_secrets(parts.query)]
            found.update(c for c in candidates if len(c) >= 4)
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
        return redact_patterns(text)


def redact_patterns(text: str) -> str:
    """`text` with every credential-shaped token masked (no knowledge of this deployment's secrets)."""
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(2) if m.lastindex == 2 else ""), text)
        else:
            text = pattern.sub(MASK, text)
    return text


redact = Redactor()
