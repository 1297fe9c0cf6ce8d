"""The worker watch against the real Redis: a worker whose last heartbeat is older than stale_after_ms (by
Redis's clock) is declared dead once, taken out of the live set, and handed to the callback; a worker that
beats is left alone, and one that beats again after its death is back in the set."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from controller.worker_watch import DeadWorker, WorkerWatch
from shared.keys import Keys
from shared.registry import redis_now_ms
from tests.test_admission import add_worker


@pytest.fixture
async def env(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    yield client, Keys(prefix)
    await client.aclose()


async def test_a_silent_worker_is_declared_dead_once_and_a_beating_one_is_not(env):
    client, keys = env
    silent = await add_worker(client, keys, "silent", 4)
    beating = await add_worker(client, keys, "beating", 4)
    await client.hset(keys.worker("silent"), "active", 2)
    told: list[DeadWorker] = []
    watch = WorkerWatch(client, keys, stale_after_ms=300, on_death=lambda dead: told.append(dead) or 2)
    assert await watch.check() == []  # both beat just now
    last_beat = await redis_now_ms(client)
    for _ in range(5):  # 500 ms: only `beating` beats
        await asyncio.sleep(0.1)
        await beating.heartbeat()
    (dead,) = await watch.check()
    assert dead.worker_id == "silent" and dead.active == 2 and abs(dead.last_beat_ms - last_beat) < 50
    assert told == [dead]
    assert await client.zscore(keys.workers, "silent") is None  # admission no longer sees it
    assert await client.hget(keys.worker("silent"), "dead_ms") is not None
    assert await watch.check() == []  # once: a second controller's script would find nothing either
    # A wedged worker that wakes up beats again: it is back in the set, and live.
    await silent.heartbeat()
    assert await client.zscore(keys.workers, "silent") is not None
    assert await watch.check() == []


async def test_run_waits_for_the_first_reconcile_and_stops(env):
    client, keys = env
    await add_worker(client, keys, "gone", 1)
    told: list[DeadWorker] = []
    watch = WorkerWatch(client, keys, stale_after_ms=100, on_death=lambda dead: told.append(dead) or 0, poll_s=0.02)
    stopping, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watch.run(stopping, ready))
    await asyncio.sleep(0.3)
    assert told == []  # not before the controller has adopted its calls
    ready.set()
    async with asyncio.timeout(5):
        while not told:
            await asyncio.sleep(0.02)
    assert [d.worker_id for d in told] == ["gone"]
    stopping.set()
    async with asyncio.timeout(5):
        await task
