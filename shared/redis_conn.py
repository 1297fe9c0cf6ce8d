"""Connecting to Redis: one clear line and a retry with backoff while it is down, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import time

import redis
import redis.asyncio as aioredis

from shared.masking import mask_url

log = logging.getLogger("redis")

# What "Redis is not there (yet)" looks like; anything else is a real bug and should surface.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0


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


async def connect(url: str, stop: asyncio.Event | None = None) -> aioredis.Redis | None:
    """An asyncio client that answered PING; waits for Redis as long as it takes, or None once `stop` is set."""
    client = aioredis.Redis.from_url(
        url, decode_responses=True, health_check_interval=10, socket_connect_timeout=2, socket_timeout=5
    )
    retry = _Retry(url)
    while True:
        try:
            await client.ping()
            retry.connected()
            return client
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
        await client.aclose()
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
