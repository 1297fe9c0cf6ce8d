"""What a failed Realtime open or session means, without I/O: one typed answer for every form the API uses.

The Realtime API refuses a key in two ways: an `error` event (`invalid_api_key`, then close 3000) after the
WebSocket opened, or an HTTP status at the handshake (401, or 403 for a key without Realtime access). Quota and
billing problems come as `insufficient_quota` / `billing_hard_limit_reached` events or as a 429 whose body names
that code; a 429 without it is a rate limit. Everything here is decided from plain codes, statuses and bodies,
so the rules are tested without a server.
"""

from __future__ import annotations

import enum
import json

import msgspec


class FailureKind(enum.Enum):
    AUTH = "auth"  # the key is wrong, revoked or has no access: nothing works until an operator changes it
    QUOTA = "quota"  # the account cannot pay: nothing works until billing is fixed
    RATE_LIMIT = "rate_limit"  # too many requests right now: passes by itself
    SERVER = "server"  # the API's own fault (5xx, server_error): passes by itself
    OTHER = "other"  # anything else (network, a bad request of ours): the caller's usual handling

    @property
    def blocks_the_key(self) -> bool:
        """Retrying soon cannot help and every call would fail the same way."""
        return self in (FailureKind.AUTH, FailureKind.QUOTA)


class Failure(msgspec.Struct, frozen=True):
    kind: FailureKind
    reason: str  # a short code, safe as a metric label: invalid_api_key, http_401, insufficient_quota, …
    detail: str = ""  # the server's message, for people (never holds the key: the server masks it)


AUTH_CODES = frozenset({"invalid_api_key", "account_deactivated", "invalid_organization", "unauthorized"})
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "rate_limit_error"})
AUTH_CLOSE_CODE = 3000  # the Realtime API's close code for a refused key

_MAX_DETAIL = 300


def from_error(code: str | None, error_type: str | None = None, message: str = "") -> Failure:
    """An `error` event's `error{code, type, message}`."""
    name = code or error_type or "unknown"
    detail = message[:_MAX_DETAIL]
    # A known code is its own reason; a match on the type alone takes the type, so reasons stay a short list.
    if name in AUTH_CODES:
        return Failure(FailureKind.AUTH, name, detail)
    if error_type == "authentication_error":
        return Failure(FailureKind.AUTH, error_type, detail)
    if name in QUOTA_CODES:
        return Failure(FailureKind.QUOTA, name, detail)
    if error_type in QUOTA_CODES:
        return Failure(FailureKind.QUOTA, error_type, detail)
    if name in RATE_LIMIT_CODES or error_type in RATE_LIMIT_CODES:
        return Failure(FailureKind.RATE_LIMIT, "rate_limit_exceeded", detail)
    if error_type == "server_error" or name == "server_error":
        return Failure(FailureKind.SERVER, "server_error", detail)
    return Failure(FailureKind.OTHER, name, detail)


def from_status(status: int, body: bytes = b"") -> Failure:
    """An HTTP status at the WebSocket handshake, with the body the API sent (`{"error": {...}}` when JSON)."""
    code, error_type, message = _error_in_body(body)
    if status == 429:
        # The same status means "slow down" or "no money left": only the body's code tells them apart.
        named = from_error(code, error_type, message)
        if named.kind is FailureKind.QUOTA:
            return named
        return Failure(FailureKind.RATE_LIMIT, "http_429", message[:_MAX_DETAIL])
    if status in (401, 403):
        named = from_error(code, error_type, message)
        if named.kind in (FailureKind.AUTH, FailureKind.QUOTA):
            return named
        return Failure(FailureKind.AUTH, f"http_{status}", message[:_MAX_DETAIL])
    if status >= 500:
        return Failure(FailureKind.SERVER, f"http_{status}", message[:_MAX_DETAIL])
    return Failure(FailureKind.OTHER, f"http_{status}", message[:_MAX_DETAIL])


def from_close(code: int, reason: str) -> Failure | None:
    """A close that came before any event: the reason is `type.code` (`invalid_request_error.invalid_api_key`).
    None when the close says nothing about the key or the account."""
    error_code = reason.rpartition(".")[2] if reason else ""
    named = from_error(error_code) if error_code else None
    if named is not None and named.kind is not FailureKind.OTHER:
        return named
    if code == AUTH_CLOSE_CODE:
        return Failure(FailureKind.AUTH, "close_3000", reason[:_MAX_DETAIL])
    return None


def _error_in_body(body: bytes) -> tuple[str | None, str | None, str]:
    try:
        doc = json.loads(body[:65536]) if body else None
    except (ValueError, UnicodeDecodeError):
        return None, None, ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None, None, ""
    code, error_type, message = error.get("code"), error.get("type"), error.get("message")
    return (
        code if isinstance(code, str) else None,
        error_type if isinstance(error_type, str) else None,
        message if isinstance(message, str) else "",
    )


def advice(failure: Failure) -> str:
    """One line for the operator: what is wrong and what to do."""
    if failure.kind is FailureKind.AUTH:
        return (
            f"the OpenAI key is rejected ({failure.reason}): set OPENAI_API_KEY (or the file OPENAI_API_KEY_FILE "
            "names) to a valid key with Realtime access, then send SIGHUP to the media workers (no restart needed)"
        )
    if failure.kind is FailureKind.QUOTA:
        return (
            f"the OpenAI account has no quota left ({failure.reason}): add credit or raise the limit at "
            "https://platform.openai.com/settings/organization/billing, or rotate to another key with SIGHUP"
        )
    if failure.kind is FailureKind.RATE_LIMIT:
        return f"the OpenAI API rate-limits this key ({failure.reason}): retrying with backoff"
    if failure.kind is FailureKind.SERVER:
        return f"the OpenAI API has a server fault ({failure.reason}): retrying with backoff"
    return f"the Realtime API refused the session ({failure.reason})"
