"""The controller inbox owns the task of each request: one whose handling raises something other than Redis
trouble (here a corrupt stored reply, which would fail every retry) is logged once, dead-lettered and acked,
and the reader goes on serving the next request."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis.asyncio as aioredis

from controller.call_control import GROUP, ControlInbox, request_key, reply_for
from shared.keys import Keys
from shared.messages import ControlRequest, inbox_fields
from tests.ari_harness import lease_holder


class Actions:
    def __init__(self) -> None:
        self.executed: list[str] = []

    async def execute(self, request: ControlRequest, send) -> None:
        self.executed.append(request.request_id)
        await send(reply_for(request, True, "done"))


@pytest.fixture
async def clients(redis_url):
    text = aioredis.Redis.from_url(redis_url, decode_responses=True)
    raw = aioredis.Redis.from_url(redis_url)
    yield text, raw
    await text.aclose()
    await raw.aclose()


def request(action: str = "hangup") -> ControlRequest:
    return ControlRequest(request_id=str(uuid.uuid4()), call_id="c1", worker_id="w1", action=action)


async def test_a_request_whose_handling_raises_is_dead_lettered_acked_and_the_reader_goes_on(clients, prefix, caplog):
    text, raw = clients
    keys = Keys(prefix)
    actions = Actions()
    inbox = ControlInbox(text, keys, "c", actions, fence=lease_holder(text, keys), streams=raw)  # type: ignore[arg-type]
    poisoned, good = request(), request()
    # Another controller's record of the first request, with a reply that is not JSON: reading it raises.
    await text.hset(request_key(keys, poisoned.request_id), mapping={"owner": "other:1", "reply": "{not json"})
    await raw.xadd(keys.controller_inbox, inbox_fields("control", poisoned))
    await raw.xadd(keys.controller_inbox, inbox_fields("control", good))
    await raw.xgroup_create(keys.controller_inbox, GROUP, id="0")
    stopping = asyncio.Event()
    reader = asyncio.create_task(inbox.run(stopping))
    try:
        async with asyncio.timeout(10):
            while True:
                pending = (await raw.xpending(keys.controller_inbox, GROUP))["pending"]
                if pending == 0 and actions.executed and await raw.xlen(keys.dead_letters) == 1:
                    break
                await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await asyncio.wait_for(reader, 5)
    assert actions.executed == [good.request_id]  # the next request was served
    letters = await raw.xrange(keys.dead_letters)
    assert letters[0][1][b"reason"] == b"undecodable"
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "dead-letters"]
    assert len(logged) == 1
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
