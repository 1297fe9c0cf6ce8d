"""Poison entries in the inbox streams, through real processes (a controller and media workers on the real
Redis, the Asterisk simulator, the Realtime emulator): an entry no reader can use is dead-lettered, counted and
skipped, and the reader goes on; an assignment a worker cannot take is refused, and the call goes elsewhere."""

from __future__ import annotations

import socket
from functools import partial
import uuid

import msgspec
import pytest
import redis.asyncio as aioredis

from shared.messages import ControlRequest, inbox_fields
from sim.cluster import http_get
from sim.realtime import Reply, Script
from tests.media_harness import (  # noqa: F401  (fixtures)
    aredis,
    call_of,
    cluster_up,
    emulator,
    keys,
    log_entries,
    sim,
    until,
)

pytestmark = pytest.mark.slow  # each test runs a controller and media workers as processes

NOT_UTF8 = b"\xff\xfe\x80"


@pytest.fixture
async def raw(redis_url):
    """A bytes client: the entries written and read here are not all UTF-8."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def greeted(aredis, keys, call_id: str) -> bool:
    return any(e.get("role") == "assistant" for e in await log_entries(aredis, keys, call_id))


async def dead_letters(raw, keys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await raw.xrange(keys.dead_letters)]


def metrics_of(health_url: str) -> str:
    return http_get(health_url + "/metrics")[1].decode()


async def test_non_utf8_entries_in_a_worker_inbox_are_dead_lettered_and_the_next_calls_served(
    sim, emulator, cluster_up, aredis, raw, keys
):
    emu = await emulator(Script(greeting=Reply(text="Hello.", audio_ms=400)), speed=4.0)
    await cluster_up(emu)
    (wid,) = await aredis.zrange(keys.workers, 0, -1)
    inbox = keys.worker_inbox(wid)
    await raw.xadd(inbox, {b"type": b"end", b"data": b'{"call_id":"' + NOT_UTF8 + b'","reason":"x"}'})
    await raw.xadd(inbox, {b"type": NOT_UTF8, b"data": b"{}"})
    await raw.xadd(inbox, {b"kind": b"assign"})  # no type, no data
    for name in ("First", "Second"):
        call = await sim.place_call(caller_name=name)
        call_id = await call_of(aredis, keys, call.channel_id)
        await until(partial(greeted, aredis, keys, call_id), timeout=15)
        await call.hangup()
    await until(lambda: not sim.channels and not sim.bridges)

    letters = await dead_letters(raw, keys)
    assert [(f[b"stream"], f[b"reason"]) for f in letters] == [
        (inbox.encode(), b"undecodable"),
        (inbox.encode(), b"not_utf8"),
        (inbox.encode(), b"missing_field"),
    ]
    assert letters[1][b"field:type"] == NOT_UTF8  # the entry as it was
    text = metrics_of(await aredis.hget(keys.worker(wid), "health_url"))
    assert 'va_stream_dead_letters_total{reason="not_utf8",stream="worker_inbox"} 1.0' in text
    assert 'va_stream_dead_letters_total{reason="undecodable",stream="worker_inbox"} 1.0' in text


async def test_a_non_utf8_entry_in_the_controller_inbox_does_not_stop_the_next_hangup(
    sim, emulator, cluster_up, aredis, raw, keys
):
    emu = await emulator(Script(greeting=Reply(text="Hello.", audio_ms=400)), speed=4.0)
    cluster = await cluster_up(emu)
    (wid,) = await aredis.zrange(keys.workers, 0, -1)
    call = await sim.place_call()
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(partial(greeted, aredis, keys, call_id), timeout=15)

    await raw.xadd(keys.controller_inbox, {b"type": b"control", b"data": b'{"request_id":"' + NOT_UTF8 + b'"}'})
    await raw.xadd(keys.controller_inbox, {b"type": NOT_UTF8, b"data": b"{}"})
    request = ControlRequest(request_id=str(uuid.uuid4()), call_id=call_id, worker_id=wid, action="hangup")
    await raw.xadd(keys.controller_inbox, inbox_fields("control", request))

    async def ended():
        return await aredis.hget(keys.call(call_id), "end_reason") == "agent_hangup"

    await until(ended, timeout=10)
    letters = await dead_letters(raw, keys)
    # Each entry is handled by a task of its own: the order of their dead letters is not a promise.
    assert sorted(f[b"reason"] for f in letters) == [b"not_utf8", b"undecodable"]
    assert {f[b"stream"] for f in letters} == {keys.controller_inbox.encode()}
    # Acknowledged: nothing is left pending for a later claim to run again.
    assert (await raw.xpending(keys.controller_inbox, "controllers"))["pending"] == 0
    controller = next(p for p in cluster.processes if p.role == "controller")
    text = metrics_of(controller.health_url)
    assert 'va_stream_dead_letters_total{reason="not_utf8",stream="controller_inbox"} 1.0' in text


async def test_an_assignment_the_worker_cannot_take_is_refused_and_the_call_goes_to_another_worker(
    sim, emulator, cluster_up, aredis, raw, keys
):
    """The first worker cannot open any of its RTP ports (something else holds them): it refuses the call and
    the controller admits it on the other worker at once, instead of the caller hearing silence."""
    low = 31000 + 200 * 4  # the first worker's RTP range in cluster_up
    held = []
    for port in range(low, low + 100):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:  # held already (another test's process): the worker cannot bind it either
            s.close()
            continue
        held.append(s)
    try:
        emu = await emulator(Script(greeting=Reply(text="Hello.", audio_ms=400)), speed=4.0)
        await cluster_up(emu, contexts={"u": {"profile": "telephony_ulaw_8k", "prompt": "Hi"}}, workers=2)
        for name in ("First", "Second"):  # the least-loaded pick sends one of them to the first worker first
            call = await sim.place_call(caller_name=name, variables={"AI_CONTEXT": "u"})
            call_id = await call_of(aredis, keys, call.channel_id)
            await until(partial(greeted, aredis, keys, call_id), timeout=15)
            assert await aredis.hget(keys.call(call_id), "worker") == "worker-1-1"
            await call.hangup()
        await until(lambda: not sim.channels and not sim.bridges)
        requests = [
            msgspec.json.decode(f[b"data"], type=ControlRequest) for _, f in await raw.xrange(keys.controller_inbox)
        ]
        refusals = [r for r in requests if r.action == "media_failed"]
        assert refusals and all(r.worker_id == "worker-1-0" for r in refusals)
    finally:
        for s in held:
            s.close()
