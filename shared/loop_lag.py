"""Event-loop health, sampled on one tick: how late a timer fires (a blocked loop delays every call's audio, so
each process reports it) and how many tasks the loop holds (one that keeps growing is a leak)."""

from __future__ import annotations

import asyncio

from shared.metrics import ASYNCIO_TASKS, LOOP_LAG

INTERVAL_S = 0.5


async def watch() -> None:
    """Runs until cancelled; one observation of each every INTERVAL_S."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(INTERVAL_S)
        LOOP_LAG.observe(max(loop.time() - started - INTERVAL_S, 0.0))
        ASYNCIO_TASKS.set(len(asyncio.all_tasks(loop)))
