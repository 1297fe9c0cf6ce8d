"""Errors of ARI REST calls: the HTTP status and Asterisk's `{"message": …}`, with the call that failed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Collection

log = logging.getLogger("ari")


class AriError(Exception):
    """A REST call answered with a status the method does not map to a return value."""

    def __init__(self, status: int, message: str, method: str, path: str):
        super().__init__(status, message, method, path)
        self.status = status
        self.message = message
        self.method = method
        self.path = path

    def __str__(self) -> str:
        return f"ARI {self.method} {self.path} -> {self.status}: {self.message}"

    def __reduce__(self):  # keep pickling (e.g. into an RQ job result) working with the 4-arg init
        return (type(self), (self.status, self.message, self.method, self.path))

    @property
    def bad_request(self) -> bool:
        return self.status == 400

    @property
    def unauthorized(self) -> bool:
        return self.status in (401, 403)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: e.g. `Channel not in Stasis application` (the channel left our app), or an id in use."""
        return self.status == 409

    @property
    def unprocessable(self) -> bool:
        """422: e.g. addChannel of a channel not in Stasis, removeChannel of a channel not in the bridge."""
        return self.status == 422

    @property
    def server_error(self) -> bool:
        """5xx: Asterisk's generic 500 (AudioSocket server not listening, bad format, duplicate id) or 501."""
        return self.status >= 500

    @property
    def gone(self) -> bool:
        """The object is not (or no longer) ours to control: not found, or out of Stasis."""
        return self.status in (404, 409)


class AriUnavailable(AriError):
    """Asterisk could not be reached: connection refused or reset, or no answer within the timeout.

    Same arguments as `AriError`, with status 0.
    """


async def quietly(op: Awaitable, *, what: str = "cleanup step", expected: Collection[int] = (404, 409)) -> None:
    """Run an ARI step whose object may already be gone (404), or out of Stasis (409): those statuses are
    expected and silent, any other error is logged; none stops the steps after it."""
    try:
        await op
    except AriError as exc:
        if exc.status not in expected:
            log.warning("%s failed: %s", what, exc)
