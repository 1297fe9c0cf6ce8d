"""A small HTTP/1.1 server for the health and metrics endpoints: GET and HEAD only, one request per connection,
every connection under a deadline and their number capped.

Why not aiohttp's server: it has no request-head timeout (a client that sent half a request line held its
connection for 75 s, in every role) and no connection cap, and it logs an ERROR with a traceback for each
malformed request. These endpoints need none of what a framework offers: the request head is parsed here
(`HeadReader`, sans-I/O), the answer is whole, and the connection is closed after it.

The bounds:
- the request head (request line and headers, at most MAX_HEAD_BYTES) must arrive within `head_timeout_s` of
  the connection; the answer must then be written within `response_timeout_s` (a client that does not read it
  is cut off). A request body is never read: the connection is closed after the answer.
- at most `max_connections` at once. At the cap, the connection that has waited longest for its request head
  is closed to make room (a proper client sends its head at once, so slow ones go first); when every
  connection already has its request, the new one is answered 503 and closed.
Each connection dropped is counted in `va_http_connections_dropped_total{reason}` and logged at most once a
minute per reason.
"""

from __future__ import annotations

import asyncio
from typing import cast
import enum
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import msgspec

from shared.logs import LogThrottle
from shared.metrics import HTTP_DROPPED

log = logging.getLogger("http")

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 5.0
RESPONSE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_METHOD = re.compile(r"[A-Z]{1,16}")


class Request(msgspec.Struct, frozen=True):
    method: str
    path: str  # the target without its query


class Response(msgspec.Struct, frozen=True):
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str) -> "Response":
        return cls(status, text.encode() + b"\n")

    def encode(self, *, with_body: bool = True) -> bytes:
        reason = HTTPStatus(self.status).phrase
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if with_body else head


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HeadReader:
    """Collects a request head from the bytes as they come; `feed` returns the Request once the blank line that
    ends the head has arrived, None before, and raises BadRequest for a head that is too long or malformed."""

    def __init__(self, max_bytes: int = MAX_HEAD_BYTES):
        self._buffer = bytearray()
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> Request | None:
        searched = max(len(self._buffer) - 3, 0)  # the end marker may straddle two pieces
        self._buffer += data
        end = _HEAD_END.search(self._buffer, searched)
        if end is None:
            if len(self._buffer) > self._max_bytes:
                raise BadRequest(431, "request head too large")
            return None
        if end.start() > self._max_bytes:
            raise BadRequest(431, "request head too large")
        return _parse_head(bytes(self._buffer[: end.start()]))


def _parse_head(head: bytes) -> Request:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    request_line, *header_lines = text.replace("\r\n", "\n").split("\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not parts[1].startswith("/"):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
    if any(":" not in line for line in header_lines):
        raise BadRequest(400, "malformed header line")
    return Request(method, target.partition("?")[0])


Handler = Callable[[], Awaitable[Response]]


class _State(enum.Enum):
    READING_HEAD = "reading head"
    ANSWERING = "answering"
    CLOSING = "closing"  # answered or dropped: the answer is flushed (within the deadline still running)
    CLOSED = "closed"


_dropped = LogThrottle(interval_s=60.0)


class _Connection(asyncio.Protocol):
    """One client connection: read the head, answer, close; the deadline of the current state aborts it."""

    def __init__(self, server: HttpServer):
        self._server = server
        self._reader = HeadReader()
        self.state = _State.READING_HEAD
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's implement it without subclassing it
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "?"
        if not self._server.admit(self):
            return
        self._arm(self._server.head_timeout_s, "head_timeout")

    def data_received(self, data: bytes) -> None:
        if self.state is not _State.READING_HEAD:
            return  # a body or a pipelined request: never read, the connection closes after the answer
        try:
            request = self._reader.feed(data)
        except BadRequest as exc:
            self.drop("bad_request", exc.reason, Response.text(exc.status, exc.reason))
            return
        if request is None:
            return
        self.state = _State.ANSWERING
        assert self._transport is not None
        self._transport.pause_reading()
        self._arm(self._server.response_timeout_s, "response_timeout")
        self._task = asyncio.get_running_loop().create_task(self._answer(request), name="http-answer")

    async def _answer(self, request: Request) -> None:
        try:
            response = await self._server.respond(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = Response.text(500, "internal error")
        self.finish(response, with_body=request.method != "HEAD")

    def finish(self, response: Response, *, with_body: bool = True) -> None:
        """Write the answer and close once it is flushed (the running deadline still bounds the flush)."""
        if self._transport is None or self.state in (_State.CLOSING, _State.CLOSED):
            return
        self.state = _State.CLOSING
        self._transport.write(response.encode(with_body=with_body))
        self._transport.close()

    def drop(self, reason: str, detail: str, response: Response | None = None) -> None:
        HTTP_DROPPED.labels(reason).inc()
        _dropped.log(log, logging.WARNING, reason, "HTTP connection from %s dropped: %s", self.peer, detail)
        if response is not None:
            self.finish(response)
        else:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None and self.state is not _State.CLOSED:
            self.state = _State.CLOSING
            self._transport.abort()

    def _arm(self, delay_s: float, reason: str) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(delay_s, self._expire, reason)

    def _expire(self, reason: str) -> None:
        if self.state is not _State.CLOSED:
            self.drop(reason, f"{reason.replace('_', ' ')} while {self.state.value}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _State.CLOSED
        if self._deadline is not None:
            self._deadline.cancel()
        if self._task is not None:
            self._task.cancel()  # the client is gone: its answer is not needed
        self._server.forget(self)


class HttpServer:
    def __init__(
        self,
        routes: dict[str, Handler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        response_timeout_s: float = RESPONSE_TIMEOUT_S,
    ):
        self.routes = routes
        self.max_connections = max_connections
        self.head_timeout_s = head_timeout_s
        self.response_timeout_s = response_timeout_s
        # Insertion order is arrival order: the first one still reading its head is the one evicted.
        self._connections: dict[_Connection, None] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); returns the bound port."""
        self._server = await asyncio.get_running_loop().create_server(lambda: _Connection(self), host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None

    def admit(self, connection: _Connection) -> bool:
        if len(self._connections) >= self.max_connections:
            waiting = next((c for c in self._connections if c.state is _State.READING_HEAD), None)
            if waiting is None:
                connection.drop("over_capacity", "too many connections", Response.text(503, "too many connections"))
                return False
            waiting.drop("evicted", "closed to make room for a new connection")
            self.forget(waiting)
        self._connections[connection] = None
        return True

    def forget(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)

    async def respond(self, request: Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            return Response.text(404, f"no such path: {request.path[:100]}")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", headers=(("Allow", "GET, HEAD"),))
        return await handler()
