"""Prewarmed Realtime connections, so a new call skips the TLS and WebSocket handshake.

A pooled connection has received `session.created` and nothing else: the call's own `session.update` is
sent when a call takes it. Connections age on the server's clock from the moment they open, so idle ones
are replaced well before the session limit.

Every open of the worker goes through here (the pool's refills, and `take` for calls and their reconnects), so
the pool tells `KeyHealth` how each ended, and holds back while the key is refused (see key_health.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from media_worker.realtime.client import ClientSettings, Connection, RealtimeError
from media_worker.realtime.failures import Failure, FailureKind, advice
from media_worker.realtime.key_health import Backoff, KeyHealth
from shared.tasks import TaskSet
from shared.metrics import POOL_READY, POOL_TAKES

log = logging.getLogger("realtime.pool")


class SessionPool:
    def __init__(
        self, settings: ClientSettings, size: int, max_idle_s: float = 600.0, key_health: KeyHealth | None = None
    ):
        self.settings = settings
        self.size = size
        self.max_idle_s = max_idle_s
        self.key_health = key_health or KeyHealth()
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

    def use_settings(self, settings: ClientSettings) -> None:
        """A new key (SIGHUP): later opens use it, and the idle connections opened with the old one are closed
        (the key they were opened with may be revoked). Connections already taken by calls are left alone."""
        self.settings = settings
        self.key_health.rotated()
        stale, self._ready = self._ready, []
        for conn in stale:
            self._tasks.spawn(conn.close(), "realtime-pool-close")
        POOL_READY.set(0)
        self._wakeup.set()

    async def take(self) -> Connection:
        """A prewarmed connection if one is alive, else a new one. Raises RealtimeError at once, without
        trying, while the key is refused (the call's caller is better served by the fallback than by silence)."""
        now = time.monotonic()
        while self._ready:
            conn = self._ready.pop()
            POOL_READY.set(len(self._ready))
            self._wakeup.set()
            if conn.usable and now - conn.opened_at < self.max_idle_s:
                POOL_TAKES.labels("pool").inc()
                return conn
            self._tasks.spawn(conn.close(), "realtime-pool-close")
        blocked = self.key_health.blocked()
        if blocked is not None:
            raise RealtimeError(f"no Realtime session: {advice(blocked)}", blocked)
        POOL_TAKES.labels("new").inc()
        return await self._open()

    async def _open(self) -> Connection:
        """One open with the current key, its outcome told to KeyHealth."""
        generation = self.key_health.generation
        try:
            conn = await Connection.open(self.settings)
        except RealtimeError as exc:
            if exc.failure is not None:
                self.key_health.failed(exc.failure, generation)
            raise
        self.key_health.succeeded(generation)
        conn.key_generation = generation
        return conn

    def key_failed(self, failure: Failure, conn: Connection) -> None:
        """An open session met a failure of the key or the account (`insufficient_quota` mid-call): the next
        opens would fail the same way. Ignored for a connection of a key rotated away since."""
        self.key_health.failed(failure, conn.key_generation)

    async def _refill_forever(self) -> None:
        transient = Backoff(0.5, 30.0)
        while True:
            now = time.monotonic()
            for conn in [c for c in self._ready if not c.usable or now - c.opened_at >= self.max_idle_s]:
                self._ready.remove(conn)
                self._tasks.spawn(conn.close(), "realtime-pool-close")
            if self.key_health.blocked() is not None:
                # The key is refused: wait out its backoff (a rotation wakes us to try the new key at once).
                await self._sleep(self.key_health.retry_at - time.monotonic())
                continue
            if len(self._ready) < self.size:
                generation = self.key_health.generation
                try:
                    conn = await self._open()
                except Exception as exc:  # any failure (refused, timeout, HTTP error): wait, say it once per streak
                    failure = exc.failure if isinstance(exc, RealtimeError) else None
                    if failure is None or not failure.kind.blocks_the_key:  # KeyHealth logs its own
                        level = logging.WARNING if transient.attempts == 0 else logging.DEBUG
                        log.log(level, "cannot prewarm a Realtime connection: %s", exc)
                        if failure is not None and failure.kind in (FailureKind.RATE_LIMIT, FailureKind.SERVER):
                            log.log(level, "%s", advice(failure))
                        await self._sleep(transient.next())
                    POOL_READY.set(len(self._ready))
                    continue
                transient.reset()
                if generation == self.key_health.generation:
                    self._ready.append(conn)
                else:  # opened with the key just replaced
                    self._tasks.spawn(conn.close(), "realtime-pool-close")
                POOL_READY.set(len(self._ready))
                continue
            await self._sleep(30)  # a look at the idle connections' age now and then

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if a take or a key rotation wakes the refill loop."""
        self._wakeup.clear()
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._wakeup.wait()
        except TimeoutError:
            pass
