"""ARI error responses: every error body is `{"message": ...}` with Asterisk's own wording."""

from __future__ import annotations

GENERIC_500 = "An internal error prevented this request from being handled"


class AriError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(message: str) -> AriError:
    return AriError(404, message)


def bad_request(message: str) -> AriError:
    return AriError(400, message)


def conflict(message: str) -> AriError:
    return AriError(409, message)


def internal() -> AriError:
    return AriError(500, GENERIC_500)
