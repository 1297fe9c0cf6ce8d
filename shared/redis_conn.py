"""Connecting to Redis: one clear line and a retry with backoff while it is down, never a traceback.

Connection pools wait for a free connection instead of failing: redis-py's default pool raises
`MaxConnectionsError` as soon as more commands are in flight than it has connections (a burst of callers did
that), so every asyncio client here uses a `WaitingPool` (a BlockingConnectionPool) of a size the role
chooses (`AsyncRole.redis_pool_size`), whose waits are measured and whose timeout is a clear error.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis
import redis.asyncio as aioredis

from shared.masking import mask_url
from shared.metrics import REDIS_POOL_TIMEOUTS, REDIS_POOL_WAIT

log = logging.getLogger("redis")

# What "Redis is not there (yet)" looks like; anything else is a real bug and should surface.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0
# How long a command waits for a free pooled connection before it fails (as Redis being unreachable would).
POOL_WAIT_TIMEOUT_S = 5.0
# The bytes client of the stream readers: one blocking read per reader (the inbox, the controller's group read
# and claim) plus their acks and dead letters.
STREAM_POOL_SIZE = 8


class PoolExhausted(redis.ConnectionError):
    """No pooled connection became free within the wait timeout: the pool is too small for the load (or Redis
    answers too slowly). A ConnectionError, so callers treat it as Redis being unavailable for that command."""


class WaitingPool(aioredis.BlockingConnectionPool):
    """A BlockingConnectionPool that counts its waits (`va_redis_pool_wait_seconds`, only when no connection
    was free) and names the cause when a wait times out (`PoolExhausted`, `va_redis_pool_timeouts_total`)."""

    def __init__(self, *, kind: str, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind  # commands | streams: the metrics' label

    async def get_connection(self, *args, **kwargs):
        if self.can_get_connection():  # the common case: no wait, nothing to measure
            return await super().get_connection()
        started = time.monotonic()
        try:
            return await super().get_connection()
        except redis.ConnectionError as exc:
            if not isinstance(exc.__cause__, TimeoutError):
                raise  # connecting failed: Redis itself is the problem
            REDIS_POOL_TIMEOUTS.labels(self.kind).inc()
            raise PoolExhausted(
                f"no Redis connection free within {self.timeout:.0f} s: all {self.max_connections} connections of "
                f"the {self.kind} pool are busy (too many commands in flight, or Redis is slow)"
            ) from exc
        finally:
            REDIS_POOL_WAIT.labels(self.kind).observe(time.monotonic() - started)


def client(
    url: str,
    *,
    pool_size: int,
    decode_responses: bool = True,
    kind: str = "commands",
    wait_timeout_s: float = POOL_WAIT_TIMEOUT_S,
) -> aioredis.Redis:
    """An asyncio client over a `WaitingPool` of `pool_size` connections (not connected yet)."""
    pool = WaitingPool.from_url(
        url,
        kind=kind,
        max_connections=pool_size,
        timeout=wait_timeout_s,
        decode_responses=decode_responses,
        health_check_interval=10,
        socket_connect_timeout=2,
        socket_timeout=5,
    )
    return aioredis.Redis.from_pool(pool)


def stream_client(url: str) -> aioredis.Redis:
    """The stream readers' client: bytes, decoded field by field, so one entry that is not UTF-8 is that
    entry's problem and not every read's (a decoding client fails the whole XREAD, on every retry)."""
    return client(url, pool_size=STREAM_POOL_SIZE, decode_responses=False, kind="streams")


class _Retry:
    """Backoff and the one warning per outage: the line says what and where, never a traceback."""

    def __init__(self, url: str):
        self.url = mask_url(url)
        self.delay = BACKOFF_START_S
        self.failures = 0

    def failed(self, exc: Exception) -> float:
        """Log the failure (loudly only the first time); return how long to wait before the next try."""
        level = logging.WARNING if self.failures == 0 else logging.DEBUG
        log.log(level, "Redis at %s is unreachable (%s); retrying with backoff until it is up", self.url, exc)
        self.failures += 1
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF_MAX_S)
        return delay

    def connected(self) -> None:
        log.info("connected to Redis at %s", self.url)


async def connect(url: str, stop: asyncio.Event | None = None, *, pool_size: int = 32) -> aioredis.Redis | None:
    """An asyncio client (str replies, a pool of `pool_size` connections) that answered PING; waits for Redis
    as long as it takes, or None once `stop` is set."""
    redis_client = client(url, pool_size=pool_size)
    retry = _Retry(url)
    while True:
        try:
            await redis_client.ping()
            retry.connected()
            return redis_client
        except UNAVAILABLE as exc:
            delay = retry.failed(exc)
        if stop is None:
            await asyncio.sleep(delay)
            continue
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            continue
        await redis_client.aclose()
        return None


def connect_sync(url: str, should_stop=lambda: False) -> redis.Redis | None:
    """The blocking twin for RQ (which needs raw bytes, so no decode_responses)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10)
    retry = _Retry(url)
    while not should_stop():
        try:
            client.ping()
            retry.connected()
            return client
        except UNAVAILABLE as exc:
            time.sleep(retry.failed(exc))
    return None
