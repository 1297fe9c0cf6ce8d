"""An RTP assignment the worker cannot take (issue 16: "a malformed RTP assignment leaks an admission slot").

RTP has no connection the worker could refuse, so before the fix the controller never learnt of it: the slot
and the port stayed reserved while the caller heard nothing (and an unusable format left a session behind
on the worker, its lease renewed for ever). Now the worker forgets the call and tells the controller
(`media_failed` in its inbox), whose setup attempt then fails: the slot and port are freed, and the call goes
to another worker, or the fallback. Worker side in this process; controller side through real processes.
"""

from __future__ import annotations

import asyncio
import socket

import msgspec
import pytest
import redis.asyncio as aioredis

from controller.admission import Admission, Queued, Reserved
from media_worker.audio.playout import PlayoutClock
from media_worker.calls import CallManager
from media_worker.context import WorkerContext
from media_worker.realtime.client import ClientSettings
from media_worker.realtime.pool import SessionPool
from shared import rtp_ports
from shared.config.schema import Config
from shared.keys import Keys
from shared.messages import Assignment, CallPlan, ControlRequest, inbox_fields
from sim.asterisk import AsteriskSim
from tests.ari_harness import (
    ARI_PASSWORD,
    ARI_USER,
    AudioSocketListener,
    FakeWorker,
    lease_holder,
    start_controller,
    write_config,
)
from tests.test_admission import add_worker
from tests.media_harness import until

pytestmark = pytest.mark.timeout(30)
RANGE = (31000, 31099)


@pytest.fixture
async def calls(redis_url, prefix):
    redis = aioredis.Redis.from_url(redis_url)
    settings = ClientSettings(url="ws://127.0.0.1:9/v1/realtime", model="gpt-realtime", api_key="sk-test")
    ctx = WorkerContext(Config(), redis, Keys(prefix), "worker-t", PlayoutClock(), SessionPool(settings, 0), settings)
    manager = CallManager(ctx, listen_host="127.0.0.1", allowed_hosts=["127.0.0.1"], rtp_ports=RANGE)
    yield manager
    await manager.stop_all("test_over")
    await redis.aclose()


def assignment(call_id: str, port: int, fmt: str = "ulaw") -> Assignment:
    plan = CallPlan(
        call_id=call_id,
        caller_channel="caller-1",
        context="t",
        provider="openai_realtime",
        profile="p",
        transport="rtp",
        format=fmt,
        provider_format="g711_ulaw",
    )
    return Assignment(call_id=call_id, epoch=1, rtp_port=port, plan=plan)


async def reports(calls: CallManager) -> list[ControlRequest]:
    entries = await calls.ctx.redis.xrange(calls.ctx.keys.controller_inbox)
    return [msgspec.json.decode(fields[b"data"], type=ControlRequest) for _, fields in entries]


@pytest.mark.parametrize("why", ["port_taken", "out_of_range", "zero", "not_an_rtp_format"])
async def test_the_worker_forgets_the_call_and_tells_the_controller(calls, why):
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    calls.rtp_ports = (taken, taken + 1)  # the port is in range, and someone else holds it
    port = {"port_taken": taken, "out_of_range": taken + 2, "zero": 0, "not_an_rtp_format": taken + 1}[why]
    try:
        await calls.handle(
            "assign",
            msgspec.json.encode(assignment("call-1", port, "slin16" if why == "not_an_rtp_format" else "ulaw")),
        )
    finally:
        holder.close()
    assert calls.sessions == {} and calls._rtp == {}
    await asyncio.wait_for(calls.wait_no_calls(), 1)  # a drain does not wait for it
    (report,) = await reports(calls)
    assert (report.action, report.call_id, report.worker_id) == ("media_failed", "call-1", "worker-t")
    assert report.request_id == "call-1:1:media_failed" and str(port) in report.reason


async def test_media_peer_latches_the_reported_address_or_lets_the_first_packet_latch(calls):
    from media_worker.transport.rtp_endpoint import Latch
    from shared.messages import MediaPeer

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    low = holder.getsockname()[1]
    holder.close()  # two free ports, most likely: the range is this one's and the next
    calls.rtp_ports = (low, low + 1)
    for call_id, port, host in (("call-r", low, "127.0.0.1"), ("call-u", low + 1, "")):
        await calls.handle("assign", msgspec.json.encode(assignment(call_id, port)))
        assert calls._rtp[call_id].latch is Latch.AWAITING_REPORT
        await calls.handle(
            "media_peer", msgspec.json.encode(MediaPeer(call_id=call_id, host=host, port=4000 if host else 0))
        )
    assert calls._rtp["call-r"].latch is Latch.REPORTED and calls._rtp["call-r"].latched == ("127.0.0.1", 4000)
    assert calls.sessions["call-r"].linked.is_set()  # the greeting goes out before any packet
    assert calls._rtp["call-u"].latch is Latch.AWAITING_FIRST and not calls.sessions["call-u"].linked.is_set()


async def test_a_port_given_again_is_taken_from_the_call_that_ended_for_the_controller(calls):
    """The controller frees a call's RTP port when the call ends, while its session here may still be winding
    down with the socket bound: the next call given that port failed to bind (EADDRINUSE), was refused and, with
    no other worker, sent to the fallback (real Asterisk, callers hanging up right after the answer: 2 runs in 5)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    calls.rtp_ports = (port, port)
    await calls.handle("assign", msgspec.json.encode(assignment("call-old", port)))
    old = calls._rtp["call-old"]
    assert "call-old" in calls.sessions  # still winding down here, its socket bound
    await calls.handle("assign", msgspec.json.encode(assignment("call-new", port)))
    assert await reports(calls) == []  # no media_failed
    assert calls._rtp["call-new"].local_port == port and "call-old" not in calls._rtp
    assert old.local_port == port and old._udp is None  # the old endpoint was stopped: its socket closed


def free_udp_run(n: int) -> int:
    """The first of `n` consecutive UDP ports free on 127.0.0.1 now (below the ephemeral range)."""
    for base in range(21000, 32000, 97):
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free UDP ports")


async def test_a_port_another_process_holds_is_not_given_to_the_calls_after_it(calls, prefix):
    """Real Asterisk, 100-call RTP ramps (issue 19): a worker port in the ephemeral range was held by a socket of
    another process; admission gave that same port (the first free one by its books) to one call after another,
    and each failed. Now the worker sets the port aside and admission skips it. Worker, admission and Redis real."""
    low = free_udp_run(3)
    calls.rtp_ports = (low, low + 2)
    redis, keys = calls.ctx.redis, calls.ctx.keys
    await add_worker(redis, keys, calls.ctx.worker_id, 10, rtp=(low, low + 2))
    adm = Admission(
        redis,
        keys,
        stale_after_ms=3000,
        provider_limit=100,
        queue_timeout_ms=30_000,
        retention_ms=60_000,
        fence=lease_holder(redis, keys),
    )
    inbox = keys.worker_inbox(calls.ctx.worker_id)

    async def admit_and_assign(call_id: str) -> int:
        reserved = await adm.reserve(assignment(call_id, 0).plan, {})
        assert isinstance(reserved, Reserved), reserved
        (_, fields), *_ = await redis.xrevrange(inbox, count=1)
        await calls.handle("assign", fields[b"data"])
        return reserved.rtp_port

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", low))  # another process's socket, on the first port of the worker's range
    try:
        assert await admit_and_assign("call-1") == low
        assert "call-1" not in calls.sessions  # refused: the controller is told, and releases the call
        assert [r.action for r in await reports(calls)] == ["media_failed"]
        await adm.release("call-1", "openai_realtime", "setup_failed")
        given = [await admit_and_assign(f"call-{n}") for n in (2, 3)]
        assert given == [low + 1, low + 2]
        assert set(calls._rtp) == {"call-2", "call-3"}  # both opened
        assert [r.action for r in await reports(calls)] == ["media_failed"]  # no new failure
        # The range's other ports are taken: the held one is still not given, the next call waits.
        assert await adm.reserve(assignment("call-4", 0).plan, {}) == Queued("no_rtp_port", 0)
    finally:
        holder.close()
    blocked = await redis.zrange(keys.worker_rtp_blocked(calls.ctx.worker_id), 0, -1, withscores=True)
    assert [int(port) for port, _ in blocked] == [low]
    assert 0 < await redis.pttl(keys.worker_rtp_blocked(calls.ctx.worker_id)) <= rtp_ports.BLOCKED_FOR_MS


# ------------------------------------------------------------------------------------------------------------
# The controller's side, through a controller process and the Asterisk simulator; the workers are
# registrations (FakeWorker), and the test answers for the refusing one as its worker would.


@pytest.fixture
async def sim(tmp_path):
    # The media leg enters Stasis 300 ms after externalMedia: the refusal arrives while the setup waits for it.
    s = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=tmp_path / "sim", stasis_delay_ms=(300, 300))
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


async def refuse_assignments(aredis: aioredis.Redis, keys: Keys, worker_id: str, stop: asyncio.Event) -> None:
    """What a worker whose RTP ports will not open does: media_failed for each call assigned to it."""
    last = "0-0"
    while not stop.is_set():
        got = await aredis.xread({keys.worker_inbox(worker_id): last}, block=100)
        for _, entries in got or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields[b"type"] != b"assign":
                    continue
                a = msgspec.json.decode(fields[b"data"], type=Assignment)
                request = ControlRequest(
                    request_id=f"{a.call_id}:{a.epoch}:media_failed",
                    call_id=a.call_id,
                    worker_id=worker_id,
                    action="media_failed",
                    reason=f"RTP port {a.rtp_port}: address already in use",
                )
                await aredis.xadd(keys.controller_inbox, inbox_fields("control", request))


@pytest.mark.slow
async def test_the_controller_frees_the_slot_and_port_and_tries_another_worker(
    sim, tmp_path, cluster_env, redis_url, prefix
):
    aredis, keys = aioredis.Redis.from_url(redis_url), Keys(prefix)
    listener = AudioSocketListener()
    await listener.start()
    bad = FakeWorker(aredis, keys, "refusing", listener.port, capacity=100)
    good = FakeWorker(aredis, keys, "good", listener.port, capacity=10)
    await bad.start()
    await good.start()
    stop = asyncio.Event()
    refuser = asyncio.create_task(refuse_assignments(aredis, keys, "refusing", stop))
    clusters: list = []
    try:
        config = write_config(
            tmp_path / "controller.yaml", sim.url, contexts={"ulaw": {"profile": "telephony_ulaw_8k", "prompt": "Hi"}}
        )
        await start_controller(config, tmp_path, cluster_env, 1, clusters)
        call = await sim.place_call(variables={"AI_CONTEXT": "ulaw"})

        async def on_good():
            ids = [m.decode() for m in await aredis.smembers(keys.calls_active)]
            return ids and (await aredis.hget(keys.call(ids[0]), "state")) == b"active" and ids[0]

        call_id = await until(on_good, timeout=15)
        record = await aredis.hgetall(keys.call(call_id))
        assert record[b"worker"] == b"good"
        assert await bad.active() == 0 and await aredis.smembers(keys.worker_rtp_ports("refusing")) == set()
        assert await good.active() == 1
        await call.hangup()
        await until(lambda: not sim.channels and not sim.bridges)
    finally:
        stop.set()
        await refuser
        for cluster in clusters:
            cluster.stop_all()
        await bad.stop()
        await good.stop()
        await listener.stop()
        await aredis.aclose()


@pytest.mark.slow
async def test_a_failed_setup_with_no_other_worker_goes_to_the_fallback_not_the_head_of_the_line(
    sim, tmp_path, cluster_env, redis_url, prefix
):
    """Real Asterisk, 100-call RTP ramps (issue 19): the only worker could not open one call's RTP port; the
    retry, leaving that worker out, queued at the head of the admission line, and every call after it waited
    behind it until its caller gave up. Now that call goes to the fallback with a warning, and the next is served."""
    aredis, keys = aioredis.Redis.from_url(redis_url), Keys(prefix)
    listener = AudioSocketListener()
    await listener.start()
    only = FakeWorker(aredis, keys, "only", listener.port, capacity=10)
    await only.start()
    refused = asyncio.Event()
    clusters: list = []

    async def refuse_the_first() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(refuse_assignments(aredis, keys, "only", stop))
        await until(lambda: aredis.xlen(keys.controller_inbox), timeout=15)  # the first refusal is sent
        stop.set()
        await task
        refused.set()

    refuser = asyncio.create_task(refuse_the_first())
    try:
        config = write_config(
            tmp_path / "controller.yaml", sim.url, contexts={"ulaw": {"profile": "telephony_ulaw_8k", "prompt": "Hi"}}
        )
        _, proc = await start_controller(config, tmp_path, cluster_env, 1, clusters)
        first = await sim.place_call(variables={"AI_CONTEXT": "ulaw"})
        await asyncio.wait_for(refused.wait(), 15)

        # The fallback at once (the shipped fallback: the dialplan's announcement), not after the queue timeout.
        await until(lambda: any("ss-noservice" in step for step in first.trail), timeout=10)
        warning = "media setup failed on worker only and no other worker can take the call (no_capacity): fallback"
        assert warning in proc.log_text()
        second = await sim.place_call(variables={"AI_CONTEXT": "ulaw"})

        async def second_active():
            ids = [m.decode() for m in await aredis.smembers(keys.calls_active)]
            for call_id in ids:
                record = await aredis.hgetall(keys.call(call_id))
                if record.get(b"caller_channel") == second.channel_id.encode() and record.get(b"state") == b"active":
                    return call_id
            return None

        await until(second_active, timeout=15)
        assert await aredis.zcard(keys.admission_queue) == 0
        await second.hangup()
        await until(lambda: not sim.channels and not sim.bridges)
    finally:
        refuser.cancel()
        await asyncio.gather(refuser, return_exceptions=True)
        for cluster in clusters:
            cluster.stop_all()
        await only.stop()
        await listener.stop()
        await aredis.aclose()
