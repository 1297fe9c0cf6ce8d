"""The ARI events WebSocket (`/ari/events?app=…`): connect, decode, dispatch in order per key, reconnect.

Asterisk does not replay anything on reconnect (calls already in Stasis get no new StasisStart), so
`on_connect(first)` runs after every successful connect, once the previous connection's events are handled
and before any event of the new one is dispatched: the controller reconciles there (GET /channels,
/bridges). `first` stays True until an on_connect has succeeded. Events wait in the socket meanwhile, so
none is lost. An on_connect that fails reconnects (with backoff) to run again: one that raises `Reconnect`
has said why itself, anything else is logged with its traceback. Decoding never raises: a malformed message
is logged, counted and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

from controller.ari.event_types import KNOWN_TYPES, BadEvent, Event, decode_event, default_key, event_type
from controller.ari.ordered import KeyedDispatcher
from controller.ari.rest import ari_base, basic_auth
from shared.metrics import ARI_CONNECTED as CONNECTED
from shared.metrics import ARI_EVENTS as EVENTS
from shared.metrics import ARI_RECONNECTS as RECONNECTS

log = logging.getLogger("ari")

Handler = Callable[[Event], Awaitable[None]]
KeyFn = Callable[[Event], "str | None"]
OnConnect = Callable[[bool], Awaitable[None]]


class Reconnect(Exception):
    """Raised by an on_connect that failed for a passing reason it has logged: reconnect and run it again."""


BAD_LOG_FIRST = 10  # log the first malformed messages of a process, then one in BAD_LOG_EVERY
BAD_LOG_EVERY = 100
WARN_EVERY_S = 60.0  # while Asterisk stays unreachable


def events_url(base_url: str, app: str, subscribe_all: bool = False) -> str:
    """http(s)://host:port[/ari] → ws(s)://host:port/ari/events?app=<app>[&subscribeAll=true]."""
    parts = urlsplit(ari_base(base_url))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    params = {"app": app}
    if subscribe_all:
        params["subscribeAll"] = "true"
    return urlunsplit((scheme, parts.netloc, parts.path + "/events", urlencode(params), ""))


class _RedactingLogger(logging.LoggerAdapter):
    """websockets logs the handshake headers at DEBUG; the Authorization value must not reach any log."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if args and any(isinstance(a, str) and a.lower() == "authorization" for a in args):
            args = tuple("***" if i == len(args) - 1 else a for i, a in enumerate(args))
        super().log(level, msg, *args, **kwargs)


_ws_logger = _RedactingLogger(logging.getLogger("ari.ws"), {})


class EventStream:
    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        app: str,
        *,
        handler: Handler,
        key: KeyFn | None = None,
        on_connect: OnConnect | None = None,
        subscribe_all: bool = False,
        backoff: tuple[float, float] = (0.2, 5.0),
        max_pending: int = 10_000,
        open_timeout: float = 10.0,
        ping_interval: float = 20.0,
        drain_timeout: float = 5.0,
        stable_after: float = 2.0,
    ):
        self.url = events_url(base_url, app, subscribe_all)
        self.app = app
        self._headers = {"Authorization": basic_auth(username, password)}
        self._handler = handler
        self._key = key or default_key
        self._on_connect = on_connect
        self._backoff_min, self._backoff_max = backoff
        self._max_pending = max_pending
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._drain_timeout = drain_timeout
        self._stable_after = stable_after  # a connection that lasted this long resets the backoff
        self._dispatcher: KeyedDispatcher[Event] | None = None
        self._settled = False
        self.connected = False
        self.connects = 0
        self.events_received = 0
        self.bad_events = 0
        self.last_delays: list[float] = []  # the recent backoff sleeps (for tests and status)

    def __repr__(self) -> str:
        return f"EventStream({self.url!r})"

    async def drained(self) -> None:
        """Wait until every key's queue is empty (tests; shutdown)."""
        if self._dispatcher is not None:
            await self._dispatcher.drained()

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, read, dispatch and reconnect until `stopping` is set; then close the socket and let
        running handlers finish for up to `drain_timeout` seconds."""
        self._dispatcher = KeyedDispatcher(self._handler, max_pending=self._max_pending, describe=event_type)
        delay = self._backoff_min
        failures = 0
        down_since: float | None = None
        last_warning = 0.0
        try:
            while not stopping.is_set():
                try:
                    ws = await self._open()
                except websockets.InvalidURI:
                    raise  # a configuration error: retrying cannot help
                except Exception as exc:  # refused, reset, DNS, timeout, HTTP 401 …: all mean "try again"
                    failures += 1
                    now = time.monotonic()
                    if down_since is None:
                        down_since = now
                    if failures == 1 or now - last_warning >= WARN_EVERY_S:  # once, then a reminder a minute
                        last_warning = now
                        log.warning(
                            "ARI events: cannot connect to %s: %s; retrying (attempt %d)",
                            self.url,
                            _describe(exc),
                            failures,
                        )
                    else:
                        log.debug("ARI events: connect attempt %d failed: %s", failures, _describe(exc))
                    await self._sleep(delay, stopping)
                    delay = min(delay * 2, self._backoff_max)
                    continue
                if down_since is not None and self.connects:
                    log.info(
                        "ARI events reconnected after %.1fs (%d failed attempts)",
                        time.monotonic() - down_since,
                        failures,
                    )
                first = not self._settled  # True until an on_connect has succeeded once
                if self.connects:
                    RECONNECTS.inc()
                self.connects += 1
                failures = 0
                down_since = None
                up_at = time.monotonic()
                reason = await self._serve(ws, first, stopping)
                if stopping.is_set():
                    break
                down_since = time.monotonic()
                if down_since - up_at >= self._stable_after:
                    delay = self._backoff_min
                log.warning("ARI events connection lost (%s); reconnecting", reason)
                await self._sleep(delay, stopping)
                delay = min(delay * 2, self._backoff_max)
        finally:
            self.connected = False
            CONNECTED.set(0)
            await self._dispatcher.close(grace=self._drain_timeout)

    async def _open(self) -> ClientConnection:
        return await connect(
            self.url,
            additional_headers=self._headers,
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval,
            close_timeout=2,
            max_size=16 * 1024 * 1024,
            compression=None,
            proxy=None,
            logger=_ws_logger,
            user_agent_header="asterisk-ai-voice-agent",
        )

    async def _serve(self, ws: ClientConnection, first: bool, stopping: asyncio.Event) -> str:
        """One connection: reconcile, then read until it closes. Returns why it ended."""
        assert self._dispatcher is not None
        self.connected = True
        CONNECTED.set(1)
        closer = asyncio.create_task(self._close_on(stopping, ws))
        try:
            if self._on_connect is not None:
                if not first:  # the previous connection's events first, so the reconcile sees settled state
                    try:
                        async with asyncio.timeout(self._drain_timeout):
                            await self._dispatcher.drained()
                    except TimeoutError:
                        log.warning(
                            "ARI events: %d events of the previous connection still pending", self._dispatcher.pending
                        )
                try:
                    await self._on_connect(first)
                except Reconnect:
                    await ws.close(1011, "on_connect failed")
                    return "on_connect failed"
                except Exception:
                    log.exception("ARI events: on_connect failed; reconnecting")
                    await ws.close(1011, "on_connect failed")
                    return "on_connect failed"
            self._settled = True
            async for message in ws:
                await self._dispatch(message)
            return _close_text(ws)
        except websockets.ConnectionClosed:
            return _close_text(ws)
        except OSError as exc:
            return f"socket error: {exc}"
        finally:
            closer.cancel()
            await asyncio.gather(closer, return_exceptions=True)  # owned: never left pending past its connection
            self.connected = False
            CONNECTED.set(0)

    @staticmethod
    async def _close_on(stopping: asyncio.Event, ws: ClientConnection) -> None:
        await stopping.wait()
        await ws.close(1000, "controller stopping")

    async def _dispatch(self, message: str | bytes) -> None:
        assert self._dispatcher is not None
        self.events_received += 1
        event = decode_event(message)
        if isinstance(event, BadEvent):
            self.bad_events += 1
            EVENTS.labels("bad").inc()
            if self.bad_events <= BAD_LOG_FIRST or self.bad_events % BAD_LOG_EVERY == 0:
                log.warning(
                    "ARI events: malformed message #%d (type %s): %s", self.bad_events, event.type or "?", event.reason
                )
            return
        kind = event_type(event)
        EVENTS.labels(kind if kind in KNOWN_TYPES else "other").inc()
        try:
            key = self._key(event) or "global"
        except Exception:
            log.exception("ARI events: key function failed on %s", kind)
            key = "global"
        await self._dispatcher.put(key, event)

    def _next_delay(self, delay: float) -> float:
        return random.uniform(delay / 2, delay)  # jitter: many controllers must not reconnect in lockstep

    async def _sleep(self, delay: float, stopping: asyncio.Event) -> None:
        pause = self._next_delay(delay)
        self.last_delays = (self.last_delays + [pause])[-20:]
        try:
            async with asyncio.timeout(pause):
                await stopping.wait()
        except TimeoutError:
            pass


def _close_text(ws: ClientConnection) -> str:
    code = ws.close_code
    if code is None or code == 1006:
        return "closed without a close frame (1006)"
    return f"close code {code} {ws.close_reason!r}" if ws.close_reason else f"close code {code}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        hint = " (check the ARI user and password)" if status in (401, 403) else ""
        return f"HTTP {status}{hint}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
