"""Two controller processes on the Asterisk simulator and the real Redis: one leads, the other stands by and takes
over when the leader dies; a leader that was only paused finds itself fenced and exits; a Redis restart mid-call
is followed by a reconcile. The workers are test listeners registered like media workers (tests/ari_harness.py)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.messages import ControlRequest, inbox_fields
from sim.cluster import LocalCluster, RoleProcess, leading
from tests.ari_harness import FakeWorker, start_controller, write_config
from tests.test_roles import status_json
from tests.test_controller_calls import (  # noqa: F401  (fixtures)
    aredis,
    call_record,
    keys,
    listener,
    nothing_left,
    no_active_calls,
    sim,
    state_is,
    until,
    workers,
)

pytestmark = pytest.mark.slow  # each runs several processes for a few seconds


@pytest.fixture
def controllers(tmp_path, cluster_env, sim):
    """`await controllers(n, env=…)`: n controller processes on one config, started one after the other (the
    first leads)."""
    clusters: list[LocalCluster] = []

    async def start(n: int = 2, env: dict[str, str] | None = None, extra: dict | None = None) -> list[RoleProcess]:
        config = write_config(tmp_path / "controller.yaml", sim.url, extra=extra)
        procs = []
        for i in range(n):
            _, proc = await start_controller(config, tmp_path, {**cluster_env, **(env or {})}, i + 1, clusters)
            procs.append(proc)
        await until(lambda: leadership(procs[0]) == "leading")
        for proc in procs[1:]:
            assert leadership(proc) == "standby"
        return procs

    yield start
    for cluster in clusters:
        cluster.stop_all()


def leadership(proc: RoleProcess) -> str:
    return proc.readiness().get("leadership", "") if proc.popen.poll() is None else "exited"


def leads(proc: RoleProcess):
    def check() -> bool:
        return "calls reconciled" in proc.log_text() and leadership(proc) == "leading" and proc.ready()

    check.__name__ = f"{proc.id} leads with ARI connected"
    return check


def mails_enqueued(procs: list[RoleProcess], call_id: str) -> int:
    """End-of-call email enqueues for the call, in every controller's log (CallEmails.call_ended's line)."""
    lines = [line for p in procs for line in p.log_text().splitlines()]
    return sum(1 for line in lines if f"call {call_id} ended" in line and "email job" in line)


async def up_calls(sim, listener, aredis, keys, names: list[str]) -> dict[str, tuple[object, str]]:
    """Callers by name -> (simulated call, call id), each active on the listener."""
    calls = {name: await sim.place_call(caller_name=name) for name in names}
    await listener.wait_for(len(names))
    by_channel = {}
    for conn in listener.connections.values():
        await until(await state_is(aredis, keys, conn.uuid, "active"))
        by_channel[(await call_record(aredis, keys, conn.uuid))["caller_channel"]] = conn.uuid
    return {name: (call, by_channel[call.channel_id]) for name, call in calls.items()}


def hangup_request(call_id: str, worker_id: str) -> dict:
    request = ControlRequest(request_id=f"{call_id}:1:hangup", call_id=call_id, worker_id=worker_id, action="hangup")
    return inbox_fields("control", request)


def status_leadership(env: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """`voice-agent status --json`: the leader, and each controller's leadership."""
    status = status_json(env)
    return status["leader"], {c["id"]: c["leadership"] for c in status["controllers"]}


async def test_the_standby_takes_over_a_killed_leader_and_carries_the_calls_on(
    sim, listener, workers, controllers, aredis, keys, cluster_env
):
    worker = await workers(listener.port)
    leader, standby = await controllers(2)
    shown = await asyncio.to_thread(status_leadership, cluster_env)
    assert shown == (leader.id, {leader.id: "leading", standby.id: "standby"})
    assert leading([standby, leader]) is leader
    calls = await up_calls(sim, listener, aredis, keys, ["Stays", "Leaves", "Tool"])

    leader.popen.kill()  # kill -9: no cleanup, the lease stays until its TTL
    killed = time.monotonic()
    # The model's hangup_call while nobody leads: the request waits in the controller inbox.
    await aredis.xadd(keys.controller_inbox, hangup_request(calls["Tool"][1], worker.id))
    await until(leads(standby), timeout=15)
    took = time.monotonic() - killed
    print(f"\nkill -9 of the leader -> the standby leads, ARI connected and calls reconciled: {took * 1000:.0f} ms")
    leader_now, rows = await asyncio.to_thread(status_leadership, cluster_env)
    assert leader_now == standby.id and rows[standby.id] == "leading"
    assert leading([leader, standby]) is standby

    # The tool call is carried out by the new leader: the caller is hung up after the farewell.
    tool_call, tool_id = calls["Tool"]
    await until(await state_is(aredis, keys, tool_id, "ended"))
    assert (await call_record(aredis, keys, tool_id))["end_reason"] == "agent_hangup"
    await until(lambda: tool_call.channel_id not in sim.channels)

    # A caller hanging up after the takeover is torn down by the new leader, with one mail.
    leaves_call, leaves_id = calls["Leaves"]
    await leaves_call.hangup()
    await until(await state_is(aredis, keys, leaves_id, "ended"))
    assert (await call_record(aredis, keys, leaves_id))["end_reason"] == "caller_hangup"
    await until(lambda: f"{leaves_id}-br" not in sim.bridges and f"{leaves_id}-em" not in sim.channels)
    await until(lambda: mails_enqueued([leader, standby], leaves_id) == 1)

    # The call that stays is still bridged with its media leg, and ends cleanly.
    stays_call, stays_id = calls["Stays"]
    assert {c.id for c in sim.bridges[f"{stays_id}-br"].members} == {stays_call.channel_id, f"{stays_id}-em"}
    await stays_call.hangup()
    await until(nothing_left(sim))
    await until(no_active_calls(aredis, keys))
    assert await worker.active() == 0
    for call_id in (tool_id, leaves_id, stays_id):
        assert mails_enqueued([leader, standby], call_id) == 1


async def test_an_answered_transfer_is_carried_on_by_the_new_leader(sim, listener, workers, controllers, aredis, keys):
    """The caller talks to a person (the AI has left) when the leader dies: the new leader adopts the transferred
    call, and the caller's hangup is torn down by it (the agent's leg hung up, the bridge deleted), with one mail."""
    worker = await workers(listener.port)
    sales = {"sales": {"type": "extension", "target": "6001", "dialplan_context": "from-internal", "description": "x"}}
    leader, standby = await controllers(2, extra={"tools": {"transfer": {"destinations": sales}}})
    calls = await up_calls(sim, listener, aredis, keys, ["Transferred"])
    call, call_id = calls["Transferred"]
    request = ControlRequest(
        request_id=f"{call_id}:1:transfer", call_id=call_id, worker_id=worker.id, action="transfer", destination="sales"
    )
    await aredis.xadd(keys.controller_inbox, inbox_fields("control", request))
    await until(await state_is(aredis, keys, call_id, "transferred"))
    leg = f"{call_id}-xfer1"
    await until(lambda: {c.id for c in sim.bridges[f"{call_id}-br"].members} == {call.channel_id, leg})

    leader.popen.kill()
    await until(leads(standby), timeout=15)
    assert f"adopted call {call_id}" in standby.log_text()
    await call.hangup()
    await until(nothing_left(sim))  # the agent's leg and the bridge, deleted by the new leader
    await until(await state_is(aredis, keys, call_id, "ended"))
    assert (await call_record(aredis, keys, call_id))["end_reason"] == "transferred"
    await until(lambda: mails_enqueued([leader, standby], call_id) == 1)
    assert await worker.active() == 0


async def test_a_paused_leader_that_wakes_up_after_the_takeover_is_fenced_and_exits(
    sim, listener, workers, controllers, aredis, keys
):
    await workers(listener.port)
    old, new = await controllers(2)
    calls = await up_calls(sim, listener, aredis, keys, ["Leaves", "Stays"])

    old.popen.send_signal(signal.SIGSTOP)  # a long pause (GC, a VM migration): its lease runs out
    paused = time.monotonic()
    leaves_call, leaves_id = calls["Leaves"]
    await leaves_call.hangup()  # its StasisEnd waits in the paused leader's socket
    await until(leads(new), timeout=15)
    print(f"\nSIGSTOP of the leader -> the standby leads: {(time.monotonic() - paused) * 1000:.0f} ms")
    await until(await state_is(aredis, keys, leaves_id, "ended"))  # the new leader's reconcile
    assert (await call_record(aredis, keys, leaves_id))["end_reason"] == "reconciled"

    woke = time.monotonic()
    old.popen.send_signal(signal.SIGCONT)
    code = await asyncio.to_thread(old.popen.wait, 15)
    assert code == 3, old.log_text()[-3000:]
    log = old.log_text()
    assert "deposed" in log and "exiting to restart as a standby" in log
    # It sent Asterisk nothing after waking (its requests carry its id in the User-Agent) …
    after = [r for r in sim.rest.log if r.t >= woke and old.id in r.client]
    assert after == [], [(r.method, r.path) for r in after]
    # … enqueued no mail, and the call it would have torn down was released once, by the new leader.
    assert mails_enqueued([old], leaves_id) == 0 and mails_enqueued([new], leaves_id) == 1
    assert leadership(new) == "leading"

    stays_call, stays_id = calls["Stays"]
    await stays_call.hangup()
    await until(nothing_left(sim))
    await until(no_active_calls(aredis, keys))
    assert mails_enqueued([old, new], stays_id) == 1


@pytest.mark.parametrize("n", [1, 2], ids=["one-controller", "leader-and-standby"])
async def test_a_caller_who_hangs_up_while_redis_restarts_is_torn_down_once_it_is_back(
    sim, listener, controllers, private_redis, prefix, n
):
    """One controller: its lease could not be confirmed, then is again (nobody took it), and it reconciles. Two:
    the standby gives the leader one lease TTL after Redis is back to confirm its lease, so the same one leads."""
    server = private_redis(persist=True)
    server.start()
    client = aioredis.Redis.from_url(server.url)
    keys = Keys(prefix)
    worker = FakeWorker(client, keys, "worker-1", listener.port, 10)
    await worker.start()
    try:
        procs = await controllers(n, env={"REDIS_URL": server.url})
        calls = await up_calls(sim, listener, client, keys, ["Leaves", "Stays"])
        leaves_call, leaves_id = calls["Leaves"]
        assert await worker.active() == 2
        leader_before = next(p.id for p in procs if leadership(p) == "leading")

        server.stop()  # kill -9 of redis-server
        await leaves_call.hangup()  # while Redis is down
        await asyncio.sleep(2)
        # Its release could not reach Redis: the call is still active there (and its slot held).
        server.start()  # its append-only file brings the calls back; the lease has expired meanwhile

        await until(await state_is(client, keys, leaves_id, "ended"), timeout=20)
        record = await call_record(client, keys, leaves_id)
        states = {p.id: leadership(p) for p in procs}
        print(f"\nended after the Redis restart: {record['end_reason']}; leadership now {states}")
        await until(lambda: f"{leaves_id}-br" not in sim.bridges and f"{leaves_id}-em" not in sim.channels)
        assert await worker.active() == 1  # its slot released
        assert not await client.sismember(keys.calls_active, leaves_id)
        ends = [f for _, f in await client.xrange(keys.worker_inbox(worker.id)) if f[b"type"] == b"end"]
        assert len(ends) == 1  # the worker is told to stop the session (and its call lease) once
        await until(lambda: mails_enqueued(procs, leaves_id) == 1)
        assert sum(leadership(p) == "leading" for p in procs) == 1
        # The outage was Redis's, not the leader's: the standby let it confirm its lease again (no takeover).
        assert leadership(next(p for p in procs if p.id == leader_before)) == "leading"

        stays_call, stays_id = calls["Stays"]
        assert {c.id for c in sim.bridges[f"{stays_id}-br"].members} == {stays_call.channel_id, f"{stays_id}-em"}
        await stays_call.hangup()
        await until(nothing_left(sim))
        await until(no_active_calls(client, keys))
        assert mails_enqueued(procs, leaves_id) == 1 and mails_enqueued(procs, stays_id) == 1
    finally:
        await worker.stop()
        await client.aclose()


async def test_emails_a_dead_leader_left_pending_are_enqueued_by_the_next_leader(sim, controllers, aredis, keys):
    """The window between a call's release and the enqueueing of its emails: a leader killed there left the call
    ended and its emails unsent. The release marks them pending in the same script; the next leader's reconcile
    enqueues them, once."""
    call_id = "7b0c2a8e-0000-4000-8000-00000000e1a1"
    await aredis.hset(keys.call(call_id), mapping={"state": "ended", "end_reason": "caller_hangup", "worker": "w"})
    await aredis.sadd(keys.mail_pending, call_id)
    (leader,) = await controllers(1)
    await until(lambda: mails_enqueued([leader], call_id) == 1)
    await until(lambda: _not_pending(aredis, keys, call_id))
    assert await aredis.exists(f"rq:job:send_email_summary-{call_id}")
    assert "left pending" in leader.log_text()


async def _not_pending(aredis, keys, call_id: str) -> bool:
    return not await aredis.sismember(keys.mail_pending, call_id)
