"""Calls that end while their session is still starting leave nothing behind: no Realtime socket open on the
emulator, no session counted on the worker (`va_worker_calls_active`), through real processes (a controller and
a media worker) against the Asterisk simulator and the Realtime emulator."""

from __future__ import annotations

import asyncio
import random

import pytest

from sim.asterisk.audio import CallerAudio
from sim.cluster import http_get
from sim.realtime import Reply, Script
from tests.media_harness import cluster_up, emulator, sim, until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

CALLS = 40


def calls_active(worker) -> float | None:
    """The worker's `va_worker_calls_active` gauge, read from its /metrics (None if it cannot be read)."""
    status, body = http_get(worker.health_url + "/metrics")
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("va_worker_calls_active "):
            return float(line.split()[1])
    return None


PREWARM = 1  # cluster_up's prewarm pool: this many idle connections may stay open


@pytest.mark.parametrize("opening_ms", [0, 1000])
async def test_calls_hung_up_right_after_admission_leave_no_session(sim, emulator, cluster_up, opening_ms):
    """opening_ms: how long a new Realtime connection waits for its session.created (the real service takes a
    few hundred ms). 0: the stops land while the greeting streams in, as fast as the emulator can send it.
    1000: they land while the session is still being opened (the pool is empty after the first call)."""
    script = Script(greeting=Reply(text="Hello, how can I help?", audio_ms=3000))
    emu = await emulator(script, speed=0, session_created_delay_ms=opening_ms)
    cluster = await cluster_up(emu)
    worker = next(p for p in cluster.processes if p.role == "media-worker")
    rng = random.Random(16)

    async def short_call(delay_s: float) -> None:
        call = await sim.place_call(audio=CallerAudio.silence(5000))
        # The controller answers the caller right after admission: that is the moment we measure from.
        async with asyncio.timeout(15):
            await call.channel.flag("answered").wait()
        await asyncio.sleep(delay_s)
        await call.hangup()

    await asyncio.gather(*(short_call(rng.uniform(0, 0.05)) for _ in range(CALLS)))

    def settled() -> bool:
        return len(emu.open_sessions()) <= PREWARM and calls_active(worker) == 0

    try:
        await until(settled, timeout=10)
    except BaseException:
        pytest.fail(
            f"{len(emu.open_sessions())} Realtime connections open (the pool keeps {PREWARM}) and "
            f"va_worker_calls_active={calls_active(worker)} 10 s after {CALLS} calls hung up 0-50 ms after admission"
        )
