"""The worker's inbox stream (`va:worker:{wid}:inbox`): assignments and controller commands, in order.

The stream is the worker's own (its id is new each start), so it is read from the beginning; a Redis outage
only pauses reading: the position is kept and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

log = logging.getLogger("inbox")

Handler = Callable[[str, str], Awaitable[None]]


async def consume(
    redis: aioredis.Redis, key: str, handler: Handler, stopping: asyncio.Event, block_ms: int = 1000
) -> None:
    last = "0-0"
    failing = False
    while not stopping.is_set():
        try:
            batches = await redis.xread({key: last}, count=100, block=block_ms)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            if not failing:
                log.warning("cannot read the inbox (%s); retrying", exc)
            failing = True
            try:
                async with asyncio.timeout(0.5):  # the retry's pause, cut short by a stop
                    await stopping.wait()
            except TimeoutError:
                pass
            continue
        if failing:
            log.info("reading the inbox again")
            failing = False
        if batches is None:
            continue  # nothing new within block_ms
        if not isinstance(batches, list):  # RESP2, the connection's protocol: [[stream, [(id, fields), ...]]]
            raise TypeError(f"XREAD answered a {type(batches).__name__}, not RESP2's list")
        for _, entries in batches:
            for entry_id, fields in entries:
                last = entry_id
                try:
                    await handler(fields.get("type", ""), fields.get("data", ""))
                except Exception:
                    log.exception("inbox message %s failed", entry_id)
