"""The three roles as real processes on a real Redis: start, register, health, metrics, stop, outages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from rq import Queue, Worker

from shared.keys import Keys
from sim.cluster import LocalCluster, http_get
from tests.conftest import CONFIG, OFFLINE, ROOT, TEST_API_KEY, attach_asterisk, wait_for

ROLES = ["controller", "media-worker", "tool-worker"]


def status_json(env: dict[str, str]) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "--config", str(CONFIG), "status", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def rq_worker_names(url: str, queue_name: str) -> set[str]:
    conn = redis.Redis.from_url(url)
    try:
        return {w.name for w in Worker.all(queue=Queue(queue_name, connection=conn))}
    finally:
        conn.close()


# Not slow, although it takes 2.7 s: the fast tier's one start of every role, read back by `voice-agent status`.
def test_roles_start_register_serve_health_and_stop_cleanly(cluster, cluster_env, rclient, prefix, redis_url):
    keys = Keys(prefix)
    controller, worker, tools = (cluster.start(role) for role in ROLES)
    assert cluster.wait_ready(timeout=30), [p.log_text() for p in cluster.processes]

    # Registered in Redis, with the record shared/messages.py describes.
    assert rclient.zscore(keys.controllers, controller.id) is not None
    assert rclient.zscore(keys.workers, worker.id) is not None
    record = rclient.hgetall(keys.worker(worker.id))
    assert record["capacity"] == "200"
    assert record["media_host"] == "127.0.0.1"
    assert record["audiosocket_port"] == "8090"
    assert record["active"] == "0"
    assert record["draining"] == "0"
    assert record["health_url"] == worker.health_url
    assert tools.id in rq_worker_names(redis_url, keys.queue("tools"))
    assert tools.id in rq_worker_names(redis_url, keys.queue("email"))

    for proc in (controller, worker, tools):
        code, body = http_get(proc.health_url + "/healthz")
        assert code == 200 and json.loads(body) == {"status": "ok", "role": proc.role, "id": proc.id}
        leads = {"leadership": "leading"} if proc is controller else {}  # the only controller: it leads
        assert proc.readiness() == {"ready": True, "role": proc.role, "id": proc.id, "failing": {}, **leads}
        code, body = http_get(proc.health_url + "/metrics")
        text = body.decode()
        assert code == 200
        assert "va_registered 1.0" in text
        assert f'role="{proc.role}"' in text and "va_build_info{" in text
    assert "va_worker_capacity 200.0" in http_get(worker.health_url + "/metrics")[1].decode()

    status = status_json(cluster_env)
    assert [c["id"] for c in status["controllers"]] == [controller.id]
    assert [(w["id"], w["live"], w["capacity"], w["active"]) for w in status["media_workers"]] == [
        (worker.id, True, 200, 0)
    ]
    assert status["capacity"] == 200
    assert [t["id"] for t in status["tool_workers"]] == [tools.id]

    codes = cluster.stop_all()
    assert codes == {tools.id: 0, worker.id: 0, controller.id: 0}
    assert rclient.zscore(keys.controllers, controller.id) is None
    assert rclient.zscore(keys.workers, worker.id) is None
    assert not rclient.exists(keys.worker(worker.id), keys.controller(controller.id))
    assert tools.id not in rq_worker_names(redis_url, keys.queue("tools"))
    for proc in (controller, worker, tools):
        assert "Traceback" not in proc.log_text()
        assert "stopped" in proc.log_text()


def test_tool_worker_runs_jobs_from_each_configured_queue(cluster, prefix, redis_url):
    tools = cluster.start("tool-worker")
    assert cluster.wait_ready(timeout=30), tools.log_text()
    conn = redis.Redis.from_url(redis_url)
    jobs = [
        Queue(Keys(prefix).queue(name), connection=conn).enqueue("tool_worker.jobs.selftest", int(time.time() * 1000))
        for name in ("tools", "email")
    ]
    wait_for(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs))
    assert [j.return_value()["worker"] for j in jobs] == [tools.id, tools.id]
    conn.close()


@pytest.mark.slow  # measured 5.2 s
def test_status_marks_a_killed_worker_dead(cluster, cluster_env):
    worker = cluster.start("media-worker")
    assert cluster.wait_ready(timeout=30)
    worker.popen.send_signal(signal.SIGKILL)
    worker.popen.wait()

    def reported_dead():
        rows = status_json(cluster_env)["media_workers"]
        return rows and not rows[0]["live"]

    wait_for(reported_dead, timeout=10, interval=0.5)
    assert status_json(cluster_env)["capacity"] == 0  # a dead worker offers nothing


@pytest.mark.slow  # measured 4.0 s
@pytest.mark.parametrize("role", ROLES)
def test_role_started_while_redis_is_down_waits_then_connects(role, tmp_path, private_redis, prefix):
    server = private_redis()
    # `auto`: the media worker learns its address from the route towards Redis, once Redis can be reached
    cluster = LocalCluster(
        CONFIG,
        tmp_path,
        {
            "REDIS_URL": server.url,
            "REDIS_KEY_PREFIX": prefix,
            "OPENAI_API_KEY": TEST_API_KEY,
            "MEDIA_ADVERTISE_HOST": "auto",
            **OFFLINE,
        },
    )
    attach_asterisk(cluster)
    try:
        proc = cluster.start(role)
        wait_for(lambda: http_get(proc.health_url + "/healthz")[0] == 200)
        time.sleep(1.0)  # several connection attempts while Redis is down
        readiness = proc.readiness()
        assert readiness["ready"] is False
        assert readiness["failing"]["redis"] == "Redis is unreachable"
        assert proc.popen.poll() is None

        server.start()
        assert cluster.wait_ready([proc], timeout=20), proc.log_text()
        log = proc.log_text()
        assert log.count(f"Redis at {server.url} is unreachable") == 1  # one clear line, not one per retry
        assert "Traceback" not in log
        assert f"connected to Redis at {server.url}" in log
        if role == "tool-worker":
            assert proc.id in rq_worker_names(server.url, Keys(prefix).queue("tools"))
        else:
            zset = Keys(prefix).workers if role == "media-worker" else Keys(prefix).controllers
            assert redis.Redis.from_url(server.url).zscore(zset, proc.id) is not None
        if role == "media-worker":
            record = redis.Redis.from_url(server.url, decode_responses=True).hgetall(Keys(prefix).worker(proc.id))
            assert record["media_host"] == "127.0.0.1"  # the address towards this Redis
        assert cluster.stop(proc) == 0
    finally:
        cluster.stop_all()


@pytest.mark.slow  # measured 3.3 s
@pytest.mark.parametrize("role", ["controller", "media-worker"])
def test_redis_outage_mid_run_then_recovery_reregisters(role, tmp_path, private_redis, prefix):
    server = private_redis()
    server.start()
    cluster = LocalCluster(
        CONFIG,
        tmp_path,
        {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix, "OPENAI_API_KEY": TEST_API_KEY, **OFFLINE},
    )
    attach_asterisk(cluster)
    keys = Keys(prefix)
    zset = keys.workers if role == "media-worker" else keys.controllers
    try:
        proc = cluster.start(role)
        assert cluster.wait_ready(timeout=30), proc.log_text()
        server.stop()
        wait_for(lambda: proc.readiness().get("failing", {}).get("redis") == "Redis is unreachable")
        server.start()  # an empty Redis: everything it knew is gone
        assert cluster.wait_ready([proc], timeout=20), proc.log_text()
        assert redis.Redis.from_url(server.url).zscore(zset, proc.id) is not None
        assert "Traceback" not in proc.log_text()
        assert cluster.stop(proc) == 0
    finally:
        cluster.stop_all()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


@pytest.mark.slow  # measured 4 s
def test_a_killed_tool_workers_scheduler_does_not_run_on(cluster):
    """RQ's scheduler is a process of its own; when its worker was SIGKILLed (as after a lost SIGTERM) it ran
    on for good, an orphan holding the scheduler lock."""
    proc = cluster.start("tool-worker")
    assert cluster.wait_ready([proc], 30), proc.log_text()[-2000:]
    wait_for(lambda: _children(proc.popen.pid), timeout=10)  # the scheduler, forked once RQ registered
    (scheduler,) = _children(proc.popen.pid)
    proc.popen.kill()
    proc.popen.wait(5)
    try:
        wait_for(lambda: not os.path.exists(f"/proc/{scheduler}") or "zombie" in _state(scheduler), timeout=10)
    finally:
        if os.path.exists(f"/proc/{scheduler}"):
            os.kill(scheduler, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


@pytest.mark.slow  # measured 3 s
def test_a_tool_worker_stops_on_sigterm_while_redis_is_away(tmp_path, private_redis, prefix):
    """RQ's teardown unregisters the worker from Redis: with Redis away that raised, and the worker exited 1
    with a traceback. Now it exits 0 and says that its registration will expire by itself."""
    server = private_redis()
    server.start()
    cluster = LocalCluster(
        CONFIG,
        tmp_path,
        {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix, "OPENAI_API_KEY": TEST_API_KEY, **OFFLINE},
    )
    try:
        proc = cluster.start("tool-worker")
        assert cluster.wait_ready([proc], timeout=30), proc.log_text()
        server.stop()
        wait_for(lambda: proc.readiness().get("failing", {}).get("redis") == "Redis is unreachable")
        assert cluster.stop(proc, timeout=5) == 0, proc.log_text()[-3000:]
        assert "could not unregister from Redis" in proc.log_text()
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("role", ROLES)
def test_sigterm_while_waiting_for_redis_stops_cleanly(role, tmp_path, private_redis, prefix):
    server = private_redis()  # never started
    cluster = LocalCluster(
        CONFIG,
        tmp_path,
        {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix, "OPENAI_API_KEY": TEST_API_KEY, **OFFLINE},
    )
    proc = cluster.start(role)
    wait_for(lambda: http_get(proc.health_url + "/healthz")[0] == 200)
    assert cluster.stop(proc, timeout=10) == 0
    assert "Traceback" not in proc.log_text()


@pytest.mark.slow  # measured 2.9 s
def test_secrets_never_reach_logs_or_status(tmp_path, private_redis, prefix):
    server = private_redis(password="redis-pass-" + "q9" * 6)
    server.start()
    env = {
        "REDIS_URL": server.url,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEY": TEST_API_KEY,
        "ASTERISK_ARI_PASSWORD": "ari-pass-" + "z7" * 6,
        "LOG_LEVEL": "debug",
        **OFFLINE,
    }
    cluster = LocalCluster(CONFIG, tmp_path, env)
    attach_asterisk(cluster, env["ASTERISK_ARI_PASSWORD"])
    try:
        procs = [cluster.start(role) for role in ROLES]
        assert cluster.wait_ready(timeout=30)
        status = subprocess.run(
            [sys.executable, "-m", "voice_agent.cli", "--config", str(CONFIG), "status"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert "redis://:***@127.0.0.1" in status.stdout
    finally:
        cluster.stop_all()
    logs = "".join(p.log_text() for p in procs) + status.stdout + status.stderr
    assert "redis://:***@127.0.0.1" in logs
    for secret in (server.password, TEST_API_KEY, env["ASTERISK_ARI_PASSWORD"]):
        assert secret not in logs


def test_bad_config_stops_a_role_with_the_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("media_worker:\n  capacity: -1\n")
    res = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "--config", str(bad), "media-worker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": TEST_API_KEY},
        timeout=30,
    )
    assert res.returncode == 1
    assert "line 2: media_worker.capacity: expected an integer in [1, 10000], got -1" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow  # measured 4.1 s
def test_an_idle_tool_worker_exits_on_sigterm_at_once(cluster):
    """RQ's pubsub thread blocks in 60 s reads and redis-py joins it at shutdown: an idle worker used to need up
    to a minute (and was killed after the 15 s stop timeout). The stop timeout here is far below that minute."""
    proc = cluster.start("tool-worker")
    assert cluster.wait_ready([proc], 30), proc.log_text()[-2000:]
    time.sleep(2)  # the pubsub thread is inside its blocking read
    assert cluster.stop(proc, timeout=5) == 0, proc.log_text()[-2000:]


@pytest.mark.slow  # measured 25 s
def test_a_sigterm_as_the_tool_worker_turns_ready_is_never_lost(cluster):
    """RQ registers the worker (so /readyz turns 200) before it installs its signal handlers; a SIGTERM in
    between went to the service's early handler, whose flag nothing read: the worker never exited (about half
    of the time, signalled the moment it turned ready)."""
    for attempt in range(10):
        proc = cluster.start("tool-worker", instance_id=f"tool-worker-ready-{attempt}-{os.getpid()}")
        deadline = time.monotonic() + 30
        while not proc.ready():  # polled tightly: the window is a few ms after registration
            assert time.monotonic() < deadline and proc.popen.poll() is None, proc.log_text()[-2000:]
            time.sleep(0.005)
        proc.popen.send_signal(signal.SIGTERM)
        try:
            code = proc.popen.wait(5)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
            pytest.fail(f"attempt {attempt}: SIGTERM at readiness lost\n{proc.log_text()[-2000:]}")
        assert code == 0, proc.log_text()[-2000:]
        assert "Traceback" not in proc.log_text()
