"""Shared fixtures: a key prefix per test on the real Redis, local role processes, private Redis servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from sim.cluster import LocalCluster, free_port, purge

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "ai-agent.yaml"
# Tests share the developer's Redis but never its data: DB 9 and a fresh key prefix per test.
REDIS_URL = os.environ.get("VA_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TEST_API_KEY = "sk-test-" + "k3y" * 8
TEST_ARI_PASSWORD = "ari-" + "pw" * 8
# Tests reach loopback only: no prewarmed sessions toward the real API, and its URL points nowhere real.
OFFLINE = {"REALTIME_PREWARM": "0", "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime"}


def pytest_addoption(parser):
    # The real-PBX suite (tests/realpbx) starts its own Asterisk unless pointed at one already running.
    group = parser.getgroup("realpbx", "real-PBX tests (pytest -m realpbx)")
    group.addoption(
        "--ari-url",
        default=os.environ.get("VA_REAL_ASTERISK_ARI_URL"),
        help="use this running Asterisk's ARI (http://host:8088) instead of starting one ($VA_REAL_ASTERISK_ARI_URL)",
    )
    group.addoption(
        "--ari-user",
        default=os.environ.get("VA_REAL_ASTERISK_ARI_USER", "asterisk"),
        help="its ARI user ($VA_REAL_ASTERISK_ARI_USER, default asterisk)",
    )
    group.addoption(
        "--ari-password",
        default=os.environ.get("VA_REAL_ASTERISK_ARI_PASSWORD", ""),
        help="its ARI password ($VA_REAL_ASTERISK_ARI_PASSWORD)",
    )


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def prefix(redis_url):
    value = f"va-test-{uuid.uuid4().hex[:10]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    purge(client, value)
    client.close()


@pytest.fixture
def rclient(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def cluster_env(prefix, redis_url) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEY": TEST_API_KEY,
        "LOG_LEVEL": "info",
        # A worker limiting its own admission from its measured load (media_worker.admission) makes calls wait
        # when the machine is busy: only the tests about that feature turn it on (test_admission_from_measurement).
        "WORKER_ADMISSION": "false",
        **OFFLINE,
    }


@pytest.fixture
def cluster(tmp_path, cluster_env):
    """Local role processes, with a simulated Asterisk for the controller to connect to (it is ready only
    with ARI up)."""
    c = LocalCluster(CONFIG, tmp_path, cluster_env)
    attach_asterisk(c)
    yield c
    c.stop_all()


def attach_asterisk(cluster: LocalCluster, password: str = TEST_ARI_PASSWORD) -> None:
    """Start the Asterisk simulator as a process of `cluster` and point the cluster's ARI settings at it."""
    ari = cluster.start_sim("asterisk", "--user", "asterisk", "--password", password)
    cluster.env.update(ASTERISK_ARI_URL=ari.url, ASTERISK_ARI_USERNAME="asterisk", ASTERISK_ARI_PASSWORD=password)


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will."""

    def __init__(self, workdir: Path, password: str | None = None, persist: bool = False):
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.persist = persist  # append-only file, fsync'd on every write: a restart keeps the data (compose's setup)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    servers: list[PrivateRedis] = []

    def make(password: str | None = None, persist: bool = False) -> PrivateRedis:
        server = PrivateRedis(tmp_path, password, persist)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll until `predicate()` is truthy; return its value, or fail the test with what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)
