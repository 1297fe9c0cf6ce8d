"""Event-loop lag: how late a timer fires. A blocked loop delays every call's audio, so each process reports it."""

from __future__ import annotations

import asyncio

from shared.metrics import LOOP_LAG

INTERVAL_S = 0.5


async def watch() -> None:
    """Runs until cancelled; one observation every INTERVAL_S."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(INTERVAL_S)
        LOOP_LAG.observe(max(loop.time() - started - INTERVAL_S, 0.0))
