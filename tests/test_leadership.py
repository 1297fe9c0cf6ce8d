"""The leadership lease and its fence on the real Redis (controller/leadership.py): who may acquire, renew, take a
lease back and write; what deposes a controller. A lease running out is its key deleted (what PX does), so no
test waits on a clock."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from controller.admission import Admission
from controller.leadership import AriGated, Fenced, LeaderState, Leadership
from controller.service import Controller
from shared.config import load_config
from shared.keys import Keys
from shared.metrics import FENCED_WRITES
from tests.conftest import CONFIG, TEST_API_KEY, TEST_ARI_PASSWORD

LEASE_MS = 60_000  # long: nothing here expires unless the test deletes the key


@pytest.fixture
async def env(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    yield client, Keys(prefix)
    await client.aclose()


def controller(env, name: str) -> Leadership:
    client, keys = env
    return Leadership(client, keys, name, LEASE_MS)


async def test_one_controller_acquires_the_other_stands_by_and_the_token_grows(env):
    client, keys = env
    a, b = controller(env, "a"), controller(env, "b")
    # Before its first attempt a controller neither leads nor stands by: its /readyz must not say ready yet.
    assert a.state is LeaderState.STARTING and b.state is LeaderState.STARTING
    assert await a.try_acquire() and a.state is LeaderState.LEADING and a.token == 1
    assert not await b.try_acquire() and b.state is LeaderState.STANDBY
    assert await client.get(keys.leader) == b"1:a"
    await client.delete(keys.leader)  # a's lease ran out
    assert await b.try_acquire() and b.token == 2 and b.value == "2:b"


async def test_a_controller_is_ready_as_a_standby_only_once_its_first_attempt_lost(env):
    """Ready while it had not yet asked for the lease, a lone controller let the first callers in before it
    had connected ARI (CI: 150 callers sent to the fallback, "Stasis app doesn't exist")."""
    client, keys = env
    env_vars = {"OPENAI_API_KEY": TEST_API_KEY, "ASTERISK_ARI_PASSWORD": TEST_ARI_PASSWORD}
    ctl = Controller(load_config(CONFIG, env=env_vars), instance_id="b", health_host="127.0.0.1", health_port=0)
    ctl.redis_ok, ctl.registered = True, True
    ctl.leadership = controller(env, "b")

    def failing() -> dict[str, str]:
        return {name: problem for name, check in ctl.ready_checks().items() if (problem := check())}

    assert failing().get("ari") == "starting: has not asked for the leadership lease yet"
    assert await controller(env, "a").try_acquire()
    assert not await ctl.leadership.try_acquire()
    assert failing() == {}  # a standby: ready to take over, without ARI


async def test_a_write_checks_the_lease_and_a_refused_one_deposes(env):
    client, keys = env
    a, b = controller(env, "a"), controller(env, "b")
    await a.try_acquire()
    assert await a.write(("HSET", keys.call("c1"), "state", "active"), ("HGET", keys.call("c1"), "state")) == [
        1,
        b"active",
    ]
    await client.delete(keys.leader)  # a paused past its TTL …
    await b.try_acquire()  # … and b took over
    refused = FENCED_WRITES._value.get()
    with pytest.raises(Fenced):
        await a.write(("HSET", keys.call("c1"), "state", "ended"))
    assert await client.hget(keys.call("c1"), "state") == b"active"  # nothing written
    assert a.state is LeaderState.DEPOSED and a.deposed.is_set()
    assert FENCED_WRITES._value.get() == refused + 1
    with pytest.raises(AriGated):
        await a.may_act()  # and no ARI request either
    await b.may_act()


async def test_the_admission_scripts_are_fenced_too(env):
    client, keys = env
    a, b = controller(env, "a"), controller(env, "b")
    await a.try_acquire()
    admission = Admission(
        client, keys, stale_after_ms=3000, provider_limit=10, queue_timeout_ms=30_000, retention_ms=60_000, fence=a
    )
    await client.hset(keys.call("c1"), mapping={"state": "active", "provider": "openai_realtime"})
    await client.sadd(keys.calls_active, "c1")
    await client.delete(keys.leader)
    await b.try_acquire()
    with pytest.raises(Fenced):
        await admission.release("c1", "openai_realtime", "caller_hangup", emails=True)
    assert await client.hget(keys.call("c1"), "state") == b"active"
    assert await client.sismember(keys.calls_active, "c1") and not await client.exists(keys.mail_pending)


async def test_a_renewal_finds_the_lease_taken_and_deposes(env):
    client, keys = env
    a, b = controller(env, "a"), controller(env, "b")
    await a.try_acquire()
    assert await a.confirm(force=True)
    await client.delete(keys.leader)
    await b.try_acquire()
    assert not await a.confirm(force=True) and a.state is LeaderState.DEPOSED
    assert "held by another controller" in a.why_deposed


async def test_a_lease_that_ran_out_is_taken_back_only_if_nobody_acquired_one_since(env):
    client, keys = env
    a, b = controller(env, "a"), controller(env, "b")
    await a.try_acquire()
    await client.delete(keys.leader)  # a paused past its TTL; no standby took it
    assert await a.confirm(force=True) and await client.get(keys.leader) == b"1:a"

    await client.delete(keys.leader, keys.leader_token)  # Redis restarted without its data
    assert await a.confirm(force=True) and await client.get(keys.leader) == b"1:a"
    assert await client.get(keys.leader_token) == b"1"  # later acquisitions count on from a's token

    await client.delete(keys.leader)
    await b.try_acquire()  # b led (token 2) …
    await client.delete(keys.leader)  # … and its lease ran out too
    with pytest.raises(Fenced):  # the counter moved: a missed a leader, whatever it did
        await a.write(("SET", keys.call("x"), "1"))
    assert a.state is LeaderState.DEPOSED and not await client.exists(keys.leader)


async def test_a_clean_stop_frees_the_lease_and_only_its_own(env):
    client, keys = env
    a, b = controller(env, "a"), controller(env, "b")
    await a.try_acquire()
    await a.resign()
    assert not await client.exists(keys.leader)
    assert await b.try_acquire()
    await a.resign()  # no longer leading: touches nothing
    assert await client.get(keys.leader) == b"2:b"
