"""Admission and context resolution, against the real Redis: least-loaded choice, capacity, the provider's
session limit, FIFO queue, RTP ports, exactly-once release, stale workers; template filling and routing."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import redis.asyncio as aioredis

from controller.admission import Admission, Queued, Reserved, Unavailable
from controller.contexts import Unroutable, resolve
from shared.config import load_config
from shared.keys import Keys
from shared.messages import CallPlan, WorkerInfo
from shared.registry import Registration
from tests.ari_harness import decode_assignment, lease_holder
from tests.conftest import CONFIG


@pytest.fixture
async def env(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    yield client, keys
    await client.aclose()


async def add_worker(
    client, keys, wid: str, capacity: int, *, draining: bool = False, port: int = 9000, rtp=(20000, 20002)
) -> Registration:
    info = WorkerInfo(
        id=wid,
        role="media-worker",
        hostname="h",
        pid=1,
        version="t",
        started_ms=0,
        media_host="127.0.0.1",
        audiosocket_port=port,
        rtp_port_min=rtp[0],
        rtp_port_max=rtp[1],
        capacity=capacity,
        draining=draining,
    )
    reg = Registration(client, keys, info, record_ttl_ms=60_000)
    await reg.heartbeat()
    return reg


def plan(call_id: str, transport: str = "audiosocket", provider: str = "openai_realtime") -> CallPlan:
    return CallPlan(
        call_id=call_id,
        caller_channel="c-" + call_id,
        context="demo",
        provider=provider,
        profile="p",
        transport=transport,
        format="slin24",
        provider_format="pcm16",
        tools=[],
    )


def admission(client, keys, limit: int = 100) -> Admission:
    return Admission(
        client,
        keys,
        stale_after_ms=3000,
        provider_limit=limit,
        queue_timeout_ms=30_000,
        retention_ms=60_000,
        fence=lease_holder(client, keys),
    )


async def test_reservations_go_to_the_least_loaded_worker(env):
    client, keys = env
    await add_worker(client, keys, "w1", 4)
    await add_worker(client, keys, "w2", 2)
    adm = admission(client, keys)
    got = [(await adm.reserve(plan(f"c{i}"), {})).worker_id for i in range(3)]
    # By load ratio: after one call each, w1 (1/4) is less loaded than w2 (1/2); first-fit would give w1 all three.
    assert sorted(got) == ["w1", "w1", "w2"]


async def test_least_loaded_worker_and_assignment_in_its_inbox(env):
    client, keys = env
    await add_worker(client, keys, "w1", 4, port=9001)
    await add_worker(client, keys, "w2", 2, port=9002)
    adm = admission(client, keys)
    got = [await adm.reserve(plan(f"call-{i}"), {"context": "demo"}) for i in range(6)]
    assert all(isinstance(r, Reserved) for r in got)
    # Load ratio decides: w1 takes 4 of 6 (4/4 vs 2/2 when full), never above capacity.
    assert sorted(r.worker_id for r in got) == ["w1"] * 4 + ["w2"] * 2
    assert {r.audiosocket_port for r in got if r.worker_id == "w2"} == {9002}
    assert int(await client.hget(keys.worker("w1"), "active")) == 4
    full = await adm.reserve(plan("call-7"), {})
    assert full == Queued("no_capacity", 0)
    entries = await client.xrange(keys.worker_inbox("w2"))
    assignments = [decode_assignment(fields) for _, fields in entries]
    assert {a.call_id for a in assignments} == {
        r_id for r_id in [f"call-{i}" for i, r in enumerate(got) if r.worker_id == "w2"]
    }
    assert all(a.epoch == 1 and a.plan.tools == [] and a.plan.format == "slin24" for a in assignments)
    record = await client.hgetall(keys.call("call-0"))
    assert record[b"state"] == b"admitted" and record[b"context"] == b"demo"
    assert await client.scard(keys.calls_active) == 6


async def test_release_is_exactly_once_and_frees_the_slot(env):
    client, keys = env
    await add_worker(client, keys, "w1", 1)
    adm = admission(client, keys)
    assert isinstance(await adm.reserve(plan("a"), {}), Reserved)
    assert isinstance(await adm.reserve(plan("b"), {}), Queued)
    assert await adm.release("a", "openai_realtime", "caller_hangup") is True
    assert await adm.release("a", "openai_realtime", "caller_hangup") is False
    assert int(await client.hget(keys.worker("w1"), "active")) == 0
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 0
    assert (await client.hget(keys.call("a"), "end_reason")) == b"caller_hangup"
    assert 0 < await client.pttl(keys.call("a")) <= 60_000
    kinds = [fields[b"type"] for _, fields in await client.xrange(keys.worker_inbox("w1"))]
    assert kinds == [b"assign", b"end"]
    assert isinstance(await adm.reserve(plan("b"), {}), Reserved)  # the waiting call gets the slot


async def test_fifo_queue_no_overtaking(env):
    client, keys = env
    await add_worker(client, keys, "w1", 1)
    adm = admission(client, keys)
    assert isinstance(await adm.reserve(plan("first"), {}), Reserved)
    assert await adm.reserve(plan("second"), {}) == Queued("no_capacity", 0)
    assert await adm.reserve(plan("third"), {}) == Queued("behind", 1)
    await adm.release("first", "openai_realtime", "x")
    assert await adm.reserve(plan("third"), {}) == Queued("behind", 1)  # not its turn yet
    assert isinstance(await adm.reserve(plan("second"), {}), Reserved)
    await adm.leave_queue("third")
    assert await client.zcard(keys.admission_queue) == 0


async def test_provider_limit_queues_even_with_free_slots(env):
    client, keys = env
    await add_worker(client, keys, "w1", 10)
    adm = admission(client, keys, limit=2)
    assert isinstance(await adm.reserve(plan("a"), {}), Reserved)
    assert isinstance(await adm.reserve(plan("b"), {}), Reserved)
    assert await adm.reserve(plan("c"), {}) == Queued("provider_limit", 0)


async def test_draining_stale_and_excluded_workers_get_nothing(env):
    client, keys = env
    await add_worker(client, keys, "drain", 5, draining=True)
    await add_worker(client, keys, "stale", 5)
    await client.zadd(keys.workers, {"stale": 1})  # a heartbeat from 1970
    await add_worker(client, keys, "ok", 5)
    adm = admission(client, keys)
    r = await adm.reserve(plan("a"), {})
    assert isinstance(r, Reserved) and r.worker_id == "ok"
    # A retry that leaves its failed worker out finds none: it does not wait in the line (see below).
    assert await adm.reserve(plan("b"), {}, exclude=("ok",)) == Unavailable("no_capacity")


async def test_a_retry_never_waits_in_the_line_nor_holds_up_the_calls_behind_it(env):
    """Real Asterisk, 100-call RTP ramps (issue 19): a worker failed one call's setup (an RTP port another
    process held); the retry, leaving that worker out, found no other and queued at the head of the line, where
    only the head may take a slot: every new call after it waited behind it, ringing, until its caller gave up
    (56 and 65 of 100 callers never answered, no call record). Now the retry goes to the fallback at once."""
    client, keys = env
    await add_worker(client, keys, "w1", 10)
    adm = admission(client, keys)
    assert isinstance(await adm.reserve(plan("failed"), {}), Reserved)
    await adm.release("failed", "openai_realtime", "setup_failed")
    assert await adm.reserve(plan("failed"), {}, exclude=("w1",)) == Unavailable("no_capacity")
    assert await client.zcard(keys.admission_queue) == 0
    after = await adm.reserve(plan("next"), {})
    assert isinstance(after, Reserved) and after.worker_id == "w1"


async def test_a_retry_skips_the_line_it_already_waited_in(env):
    """Admitted once already, the retry is not put behind calls that came after it."""
    client, keys = env
    await add_worker(client, keys, "w1", 1)
    await add_worker(client, keys, "w2", 1)
    adm = admission(client, keys)
    assert (await adm.reserve(plan("a"), {})).worker_id == "w1"
    assert (await adm.reserve(plan("b"), {})).worker_id == "w2"
    assert await adm.reserve(plan("c"), {}) == Queued("no_capacity", 0)
    await adm.release("b", "openai_realtime", "setup_failed")  # w2 failed b's setup: b retries, leaving w2 out
    await adm.release("a", "openai_realtime", "caller_hangup")  # w1 is free, and c waits at the head
    retry = await adm.reserve(plan("b"), {}, exclude=("w2",))
    assert isinstance(retry, Reserved) and retry.worker_id == "w1"
    assert await client.zrange(keys.admission_queue, 0, -1) == [b"c"]


async def test_rtp_ports_are_unique_and_recycled(env):
    client, keys = env
    await add_worker(client, keys, "w1", 10, rtp=(20000, 20001))
    adm = admission(client, keys)
    a = await adm.reserve(plan("a", "rtp"), {})
    b = await adm.reserve(plan("b", "rtp"), {})
    assert {a.rtp_port, b.rtp_port} == {20000, 20001}
    assert await adm.reserve(plan("c", "rtp"), {}) == Queued("no_rtp_port", 0)
    await adm.release("a", "openai_realtime", "x")
    c = await adm.reserve(plan("c", "rtp"), {})
    assert c.rtp_port == a.rtp_port


async def test_concurrent_reservations_never_exceed_capacity(env):
    client, keys = env
    await add_worker(client, keys, "w1", 7)
    await add_worker(client, keys, "w2", 5)
    adm = admission(client, keys)
    results = await asyncio.gather(*(adm.reserve(plan(f"c{i}"), {}) for i in range(40)))
    reserved = [r for r in results if isinstance(r, Reserved)]
    assert len(reserved) == 12
    assert sum(r.worker_id == "w1" for r in reserved) == 7


# --- routing and templates --------------------------------------------------------------------------------


@pytest.fixture
def config(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("COMPANY_NAME", "Acme")
    return load_config(CONFIG).config


def test_route_fills_the_template_variables(config):
    route = resolve(config, "demo_openai", "openai_realtime", "Alice", "5551234")
    assert route.greeting.startswith("Hi Alice,")
    assert "assistant for Acme." in route.instructions
    assert route.profile.format == "slin24" and "transfer" in route.tools
    assert resolve(config, "", None, "", "").greeting.startswith("Hi there,")  # default_context, no name


@pytest.mark.parametrize(
    "ctx,provider,reason",
    [
        ("nope", "openai_realtime", "unknown_context"),
        ("demo_openai", "deepgram", "unknown_provider"),
    ],
)
def test_unroutable_calls_name_the_cause(config, ctx, provider, reason):
    with pytest.raises(Unroutable) as info:
        resolve(config, ctx, provider, "A", "1")
    assert info.value.reason == reason and (ctx if reason == "unknown_context" else provider) in str(info.value)


def test_templates_leave_unknown_braces_alone(config):
    base = config.contexts["demo_openai"]
    odd = msgspec.structs.replace(
        base, prompt='Reply as {"ok": true} for {who}', greeting="{caller_number} {company_name"
    )
    config = msgspec.structs.replace(config, contexts={"x": odd})
    route = resolve(config, "x", None, "A", "555")
    assert route.instructions == 'Reply as {"ok": true} for {who}'
    assert route.greeting == "{caller_number} {company_name"


async def test_a_transferred_call_frees_its_worker_at_once_and_ends_once(env):
    client, keys = env
    await add_worker(client, keys, "w1", 1, rtp=(20000, 20000))
    adm = admission(client, keys, limit=1)
    assert isinstance(await adm.reserve(plan("a", "rtp"), {}), Reserved)
    assert await adm.release_worker("a", "openai_realtime", "transferred") is True
    assert await adm.release_worker("a", "openai_realtime", "transferred") is False
    assert int(await client.hget(keys.worker("w1"), "active")) == 0
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 0
    b = await adm.reserve(plan("b", "rtp"), {})  # the slot, the port and the session are free for the next call
    assert isinstance(b, Reserved) and b.rtp_port == 20000
    assert await adm.release("a", "openai_realtime", "transferred") is True  # the call itself ends later
    assert int(await client.hget(keys.worker("w1"), "active")) == 1  # b's slot is untouched
    assert await client.smembers(keys.worker_rtp_ports("w1")) == {b"20000"}
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 1
    kinds = [f[b"type"] for _, f in await client.xrange(keys.worker_inbox("w1"))]
    assert kinds == [b"assign", b"end", b"assign"]  # one end for a, sent at the transfer


async def test_a_move_never_queues_keeps_its_provider_session_and_frees_the_lost_worker(env):
    client, keys = env
    await add_worker(client, keys, "w1", 1, rtp=(20000, 20000))
    await add_worker(client, keys, "w2", 1, rtp=(21000, 21000))
    adm = admission(client, keys, limit=2)
    first = await adm.reserve(plan("a", "rtp"), {})
    assert isinstance(first, Reserved) and first.worker_id == "w1"
    assert isinstance(await adm.reserve(plan("b", "rtp"), {}), Reserved)  # w2 now full, the provider at its limit
    assert await adm.reserve(plan("c"), {}) == Queued("provider_limit", 0)  # a new call waits in line
    # w1 dies: call a moves. Its slot and port on w1 are freed, w1 told; the provider session stays counted.
    assert await adm.drop_worker("a")
    assert not await adm.drop_worker("a")  # once
    assert int(await client.hget(keys.worker("w1"), "active")) == 0
    assert await client.scard(keys.worker_rtp_ports("w1")) == 0
    (end,) = [f for _, f in await client.xrange(keys.worker_inbox("w1")) if f[b"type"] == b"end"]
    assert b'"moved"' in end[b"data"]
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 2
    # The only other worker is full: no place in the line (c is waiting at its head), the fallback at once.
    moved = await adm.reserve(plan("a", "rtp"), {}, exclude=("w1",), moves=1, lost_at_ms=1234)
    assert moved == Unavailable("no_capacity")
    assert await client.zrank(keys.admission_queue, "a") is None
    # With a worker free (w1 back, say), the move takes it ahead of the queue, without counting a session twice.
    again = await adm.reserve(plan("a", "rtp"), {}, moves=1, lost_at_ms=1234)
    assert isinstance(again, Reserved) and again.epoch == 2 and again.rtp_port == 20000
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 2
    assignment = decode_assignment([f for _, f in await client.xrange(keys.worker_inbox("w1"))][-1])
    assert assignment.moves == 1 and assignment.lost_at_ms == 1234 and assignment.epoch == 2
    # Its release frees the new worker and the session once.
    assert await adm.release("a", "openai_realtime", "caller_hangup")
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 1
    assert int(await client.hget(keys.worker("w1"), "active")) == 0


async def test_a_move_after_a_release_counts_the_provider_session_again(env):
    client, keys = env
    await add_worker(client, keys, "w1", 2)
    adm = admission(client, keys, limit=1)
    assert isinstance(await adm.reserve(plan("a"), {}), Reserved)
    await adm.release("a", "openai_realtime", "setup_failed")  # the call's record ended (a failed setup attempt)
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 0
    assert isinstance(await adm.reserve(plan("a"), {}, moves=1), Reserved)
    assert int(await client.get(keys.provider_sessions("openai_realtime"))) == 1
    assert await adm.reserve(plan("b"), {}, moves=1) == Unavailable("provider_limit")


async def test_move_options_tell_a_lost_worker_beating_again_from_another_worker_being_free(env):
    """What a call whose worker was declared dead may do (Call._await_worker): wait while the lost worker is not
    live and no other worker has a slot; resume when it beats again (its process's start tells a restart under
    the same id apart); move once another live, non-draining worker has a free slot."""
    client, keys = env
    adm = admission(client, keys)
    lost = await add_worker(client, keys, "lost", 2)
    await client.zrem(keys.workers, "lost")  # as the worker watch declares it dead
    await add_worker(client, keys, "full", 1)
    assert isinstance(await adm.reserve(plan("a"), {}, exclude=("lost",)), Reserved)  # "full" has no slot now
    await add_worker(client, keys, "leaving", 4, draining=True)
    options = await adm.move_options("lost")
    assert (options.lost_is_live, options.lost_started_ms, options.other_free) == (False, "0", False)

    await lost.heartbeat()  # it wakes up and beats
    assert (await adm.move_options("lost")).lost_is_live

    await add_worker(client, keys, "spare", 1)
    assert (await adm.move_options("lost")).other_free
