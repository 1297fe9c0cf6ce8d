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


def _next_delay(delay: float) -> float:
    return min(delay * 2, BACKOFF_MAX_S)


async def connect(url: str, stop: asyncio.Event | None = None) -> aioredis.Redis | None:
    """An asyncio client that answered PING; waits for Redis as long as it takes, or None once `stop` is set."""
    client = aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=10,
                                     socket_connect_timeout=2, socket_timeout=5)
    delay = BACKOFF_START_S
    first = True
    while True:
        try:
            await client.ping()
            log.info("connected to Redis at %s", mask_url(url))
            return client
        except UNAVAILABLE as exc:
            # One warning per outage, then quiet retries: the line says what and where, not a traceback.
            level = logging.WARNING if first else logging.DEBUG
            log.log(level, "Redis at %s is unreachable (%s); retrying with backoff until it is up",
                    mask_url(url), exc)
            first = False
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                await client.aclose()
                return None
            except asyncio.TimeoutError:
                pass
        delay = _next_delay(delay)


def connect_sync(url: str, should_stop=lambda: False) -> redis.Redis | None:
    """The blocking twin for RQ (which needs raw bytes, so no decode_responses)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10)
    delay = BACKOFF_START_S
    first = True
    while not should_stop():
        try:
            client.ping()
            log.info("connected to Redis at %s", mask_url(url))
            return client
        except UNAVAILABLE as exc:
            level = logging.WARNING if first else logging.DEBUG
            log.log(level, "Redis at %s is unreachable (%s); retrying with backoff until it is up",
                    mask_url(url), exc)
            first = False
        time.sleep(delay)
        delay = _next_delay(delay)
    return None
