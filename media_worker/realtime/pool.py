"""Prewarmed Realtime connections, so a new call skips the TLS and WebSocket handshake.

A pooled connection has received `session.created` and nothing else: the call's own `session.update` is
sent when a call takes it. Connections age on the server's clock from the moment they open, so idle ones
are replaced well before the session limit.
"""

from __future__ import annotations

import asyncio
import logging
import time

from media_worker.realtime.client import ClientSettings, Connection
from shared.tasks import TaskSet
from shared.metrics import POOL_READY, POOL_TAKES

log = logging.getLogger("realtime.pool")


class SessionPool:
    def __init__(self, settings: ClientSettings, size: int, max_idle_s: float = 600.0):
        self.settings = settings
        self.size = size
        self.max_idle_s = max_idle_s
        self._ready: list[Connection] = []
        self._wakeup = asyncio.Event()
        self._tasks = TaskSet("realtime pool")  # the refill loop and the closes of stale connections

    def start(self) -> None:
        if self.size > 0:
            self._tasks.spawn(self._refill_forever(), "realtime-pool", essential=True)

    async def stop(self) -> None:
        await self._tasks.close()
        ready, self._ready = self._ready, []
        await asyncio.gather(*(c.close() for c in ready), return_exceptions=True)
        POOL_READY.set(0)

    @property
    def failure(self) -> str | None:
        """None while the refill loop runs (a ready check)."""
        return self._tasks.failure

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def take(self) -> Connection:
        """A prewarmed connection if one is alive, else a new one."""
        now = time.monotonic()
        while self._ready:
            conn = self._ready.pop()
            POOL_READY.set(len(self._ready))
            self._wakeup.set()
            if conn.usable and now - conn.opened_at < self.max_idle_s:
                POOL_TAKES.labels("pool").inc()
                return conn
            self._tasks.spawn(conn.close(), "realtime-pool-close")
        POOL_TAKES.labels("new").inc()
        return await Connection.open(self.settings)

    async def _refill_forever(self) -> None:
        delay = 0.5
        while True:
            now = time.monotonic()
            for conn in [c for c in self._ready if not c.usable or now - c.opened_at >= self.max_idle_s]:
                self._ready.remove(conn)
                self._tasks.spawn(conn.close(), "realtime-pool-close")
            if len(self._ready) < self.size:
                try:
                    self._ready.append(await Connection.open(self.settings))
                    delay = 0.5
                except Exception as exc:  # any failure (refused, timeout, HTTP error): wait, say it once per streak
                    level = logging.WARNING if delay == 0.5 else logging.DEBUG
                    log.log(level, "cannot prewarm a Realtime connection: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                POOL_READY.set(len(self._ready))
                continue
            self._wakeup.clear()
            try:
                async with asyncio.timeout(30):  # a look at the idle connections' age now and then
                    await self._wakeup.wait()
            except TimeoutError:
                pass
