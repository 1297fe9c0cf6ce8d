"""Redis under stress and bad data, through a controller process, the Asterisk simulator and test listeners
standing in for the workers: a burst of callers larger than a connection pool, a caller name that is not UTF-8,
a worker refusing a call it was given; and the pool's own waits."""

from __future__ import annotations

import asyncio

import pytest

from shared.messages import ControlRequest, inbox_fields
from sim.cluster import http_get
from tests.ari_harness import AudioSocketListener
from tests.test_controller_calls import (  # noqa: F401  (fixtures)
    aredis,
    call_record,
    controller,
    keys,
    listener,
    nothing_left,
    no_active_calls,
    sim,
    state_is,
    until,
    workers,
)


@pytest.mark.slow  # measured 9 s
async def test_a_burst_of_150_callers_with_capacity_for_all_gets_no_fallback(
    sim, listener, workers, controller, aredis, keys
):
    """150 StasisStarts within a few ms mean more Redis commands in flight than redis-py's default pool of 100
    connections: they must wait for a connection, not fail the call into the fallback."""
    await workers(listener.port, capacity=200)
    _, proc = await controller(extra={"providers": {"openai_realtime": {"max_concurrent_sessions": 200}}})
    calls = await asyncio.gather(
        *(
            sim.place_call(caller_name=f"Caller {i}", caller_number=str(1000 + i), send_silence=False)
            for i in range(150)
        )
    )

    def fallbacks() -> list[str]:
        return [c.channel_id for c in calls if any("ss-noservice" in step for step in c.trail)]

    def settled() -> bool:  # each caller reached the worker or the fallback
        return len(listener.connections) + len(fallbacks()) >= len(calls)

    await until(settled, timeout=60)
    assert (len(fallbacks()), len(listener.connections)) == (0, 150)
    metrics = http_get(proc.health_url + "/metrics")[1].decode()
    assert "va_calls_admitted_total 150.0" in metrics
    await asyncio.gather(*(c.hangup() for c in calls))
    await until(nothing_left(sim), timeout=60)
    await until(no_active_calls(aredis, keys), timeout=30)


@pytest.mark.slow  # measured 3 s
async def test_a_caller_name_that_is_not_utf8_still_reaches_the_agent(sim, listener, workers, controller, aredis, keys):
    """The simulator, like Asterisk, sends the name's lone surrogate as a JSON escape ("\\udc80"): the StasisStart
    was dropped as malformed, and the caller waited in silence."""
    await workers(listener.port)
    await controller()
    call = await sim.place_call(caller_name="Al\udc80ice")
    await listener.wait_for(1)
    (conn,) = listener.connections.values()
    record = await until(await state_is(aredis, keys, conn.uuid, "active"))
    assert record
    assert (await call_record(aredis, keys, conn.uuid))["caller_name"] == "Al\ufffdice"
    await call.hangup()
    await until(nothing_left(sim))


async def test_a_command_waits_for_a_free_connection_and_is_counted(redis_url):
    from shared import metrics
    from shared.redis_conn import client

    waits = metrics.REDIS_POOL_WAIT.labels("commands")
    before = waits._sum.get(), sum(b.get() for b in waits._buckets)
    redis = client(redis_url, pool_size=1)
    try:
        assert await asyncio.gather(redis.ping(), redis.ping()) == [True, True]  # the second waited for the first
    finally:
        await redis.aclose()
    assert sum(b.get() for b in waits._buckets) == before[1] + 1


async def test_a_pool_wait_that_times_out_names_the_cause(redis_url, prefix):
    from shared import metrics
    from shared.redis_conn import PoolExhausted, client

    timeouts = metrics.REDIS_POOL_TIMEOUTS.labels("commands")
    before = timeouts._value.get()
    redis = client(redis_url, pool_size=1, wait_timeout_s=0.1)
    try:
        holder = asyncio.create_task(redis.blpop([f"{prefix}nothing"], timeout=1))  # holds the one connection
        for _ in range(200):  # bounded: until the blocking read has the connection
            if redis.connection_pool._in_use_connections:
                break
            await asyncio.sleep(0.005)
        with pytest.raises(PoolExhausted, match="all 1 connections of the commands pool are busy"):
            await redis.ping()
        await holder
    finally:
        await redis.aclose()
    assert timeouts._value.get() == before + 1


@pytest.mark.slow  # measured 3 s
async def test_a_call_refused_by_its_worker_once_up_moves_to_another_worker(
    sim, listener, workers, controller, aredis, keys
):
    """The refusal can come after the call was bridged (AudioSocket connects, and the bridge is made, before the
    worker reads the assignment): the call is moved, not left with a worker that will never speak."""
    first = await workers(listener.port, capacity=10, wid="first")
    await controller()
    call = await sim.place_call()
    await listener.wait_for(1)
    (conn,) = listener.connections.values()
    call_id = conn.uuid
    await until(await state_is(aredis, keys, call_id, "active"))
    assert (await call_record(aredis, keys, call_id))["worker"] == "first"

    other = AudioSocketListener()
    await other.start()
    try:
        second = await workers(other.port, capacity=10, wid="second")
        refusal = ControlRequest(
            request_id=f"{call_id}:1:media_failed",
            call_id=call_id,
            worker_id="first",
            action="media_failed",
            reason="the assignment could not be used (handler_failed)",
        )
        await aredis.xadd(keys.controller_inbox, inbox_fields("control", refusal))
        await other.wait_for(1)
        assert call_id in other.connections
        await until(await state_is(aredis, keys, call_id, "active"))
        record = await call_record(aredis, keys, call_id)
        assert (record["worker"], record["epoch"]) == ("second", "2")
        assert await first.active() == 0 and await second.active() == 1
        assert {c.id for c in sim.bridges[f"{call_id}-br"].members} == {call.channel_id, f"{call_id}-em1"}
        await call.hangup()
        await until(nothing_left(sim))
        assert await second.active() == 0
    finally:
        await other.stop()
