"""The media worker's inbox reader (media_worker/inbox.py) on the real Redis: poison entries are dead-lettered and
skipped, an assignment it could not use is reported to the controller, and a restarted reader resumes where
the last one stopped."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import redis.asyncio as aioredis

from media_worker.inbox import Inbox
from shared.keys import Keys
from shared.messages import Assignment


@pytest.fixture
async def raw(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Worker:
    """Records what the reader hands on; an `end` for call "boom" raises, as a handler bug would."""

    def __init__(self):
        self.handled: list[tuple[str, bytes]] = []
        self.refused: list[tuple[str, int, str]] = []

    async def handle(self, kind: str, data: bytes) -> None:
        if kind == "assign":
            msgspec.json.decode(data, type=Assignment)  # as CallManager.handle does
        if b"boom" in data:
            raise RuntimeError("a bug in a handler")
        self.handled.append((kind, data))

    async def refuse(self, call_id: str, epoch: int, why: str) -> None:
        self.refused.append((call_id, epoch, why))


async def read_all(inbox: Inbox, raw, expected: int) -> None:
    """Run the reader until it has passed `expected` entries, then stop it (bounded)."""
    stopping = asyncio.Event()
    task = asyncio.create_task(inbox.consume(stopping, block_ms=50))
    try:
        async with asyncio.timeout(5):
            while True:
                entries = await raw.xrange(inbox.key)
                if len(entries) >= expected and inbox.last in (
                    entries[expected - 1][0],
                    entries[expected - 1][0].decode(),
                ):
                    break
                await asyncio.sleep(0.01)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)


async def test_poison_is_dead_lettered_and_an_unusable_assignment_reported(raw, prefix):
    keys, worker = Keys(prefix), Worker()
    inbox = Inbox(raw, keys, "w1", worker.handle, worker.refuse)
    key = keys.worker_inbox("w1")
    await raw.xadd(key, {b"type": b"assign", b"data": b'{"call_id":"c1","epoch":3,"plan":{}}'})  # no usable plan
    await raw.xadd(key, {b"type": b"assign", b"data": b"\xff not json"})  # no call id to report
    await raw.xadd(key, {b"type": b"end", b"data": b'{"call_id":"boom","reason":"x"}'})  # the handler raises
    await raw.xadd(key, {b"type": b"end", b"data": b'{"call_id":"c2","reason":"x"}'})
    await read_all(inbox, raw, 4)

    assert worker.handled == [("end", b'{"call_id":"c2","reason":"x"}')]  # the reader went on
    ((call_id, epoch, why),) = worker.refused
    assert (call_id, epoch) == ("c1", 3) and "undecodable" in why
    letters = [f for _, f in await raw.xrange(keys.dead_letters)]
    assert [f[b"reason"] for f in letters] == [b"undecodable", b"undecodable", b"handler_failed"]

    # A restarted reader (the supervisor's) goes on from the same position: nothing is handled twice.
    await raw.xadd(key, {b"type": b"end", b"data": b'{"call_id":"c3","reason":"x"}'})
    await read_all(inbox, raw, 5)
    assert [d for _, d in worker.handled] == [b'{"call_id":"c2","reason":"x"}', b'{"call_id":"c3","reason":"x"}']
