"""Start the cluster's roles as real local processes (for the demo, the load generator and tests)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.masking import mask_url


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_lines(stream, path: Path) -> None:
    with open(path, "a", encoding="utf-8") as log:
        for line in stream:
            log.write(line)
            log.flush()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def redis_or_explain(url: str) -> redis.Redis | None:
    """A client on the cluster's Redis (decoded replies), or None after printing why it is unreachable."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2)
    try:
        client.ping()
        return client
    except redis.RedisError as exc:
        client.close()
        print(f"Redis at {mask_url(url)} is not reachable ({exc}); scripts/setup.sh starts one")
        return None


# RQ's keys of one job: `rq:job:{id}` (and `:dependents`, `rq:job::{id}:dependencies`), `rq:results:{id}`,
# `rq:executions:{id}`, `rq:execution:{id}:{execution}`. Job ids hold no ':' (RQ 2 refuses it).
_RQ_JOB_KEY = re.compile(r"rq:(?:job:+|results:|executions?:)([A-Za-z0-9_-]+)")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def purge(client: redis.Redis, prefix: str) -> int:
    """Delete a cluster's keys; returns how many. Its own are under its prefix; RQ's embed the prefix only in
    queue names (`rq:queue:{prefix}email`, the registries): job ids do not carry it, so a job is the cluster's
    when its `origin` is one of the cluster's queues. RQ's global sets (`rq:queues`, `rq:workers`) lose the
    cluster's entries."""
    removed = 0
    for pattern in (f"{prefix}*", f"rq:*{prefix}*"):
        for key in client.scan_iter(match=pattern, count=500):
            removed += client.delete(key)
    jobs = _rq_jobs_of(client, prefix)
    if jobs:
        for key in client.scan_iter(match="rq:*", count=500):
            found = _RQ_JOB_KEY.match(_text(key))
            if found is not None and found.group(1) in jobs:
                removed += client.delete(key)
    for queue in client.smembers("rq:queues"):
        if _text(queue).startswith(f"rq:queue:{prefix}"):
            client.srem("rq:queues", queue)
    for worker in client.smembers("rq:workers"):
        queues = client.hget(_text(worker), "queues")
        if queues is not None and all(q.startswith(prefix) for q in _text(queues).split(",")):
            client.srem("rq:workers", worker)
            removed += client.delete(_text(worker))
    return removed


def _rq_jobs_of(client: redis.Redis, prefix: str) -> set[str]:
    """The ids of the RQ jobs whose queue (`origin`) is under `prefix`."""
    ids = [
        _text(key)[len("rq:job:") :]
        for key in client.scan_iter(match="rq:job:*", count=500)
        if _text(key).count(":") == 2
    ]
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "origin")
        origins = pipe.execute()
    return {
        job_id
        for job_id, origin in zip(ids, origins, strict=True)
        if origin is not None and _text(origin).startswith(prefix)
    }


@dataclass
class RoleProcess:
    role: str
    id: str
    popen: subprocess.Popen
    log_path: Path
    _port: int = 0

    @property
    def health_port(self) -> int:
        """The port the role bound for its health endpoints (it picks a free one: no race with other
        processes for a port chosen here); 0 until it has written it to its port file."""
        if not self._port:
            try:
                self._port = int(self.log_path.with_suffix(".port").read_text() or 0)
            except (OSError, ValueError):
                pass
        return self._port

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def ready(self) -> bool:
        return http_get(self.health_url + "/readyz")[0] == 200

    def readiness(self) -> dict:
        status, body = http_get(self.health_url + "/readyz")
        return json.loads(body) if status else {}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class SimProcess:
    """A simulator (`voice-agent sim asterisk|realtime`) as a process; `url` is what it printed first."""

    kind: str
    popen: subprocess.Popen
    url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class LocalCluster:
    config_path: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[RoleProcess] = field(default_factory=list)
    sims: list[SimProcess] = field(default_factory=list)

    def start_sim(self, kind: str, *args: str, timeout: float = 20.0) -> SimProcess:
        """Start a simulator on a free port and wait for its `listening on URL` line."""
        log_path = self.workdir / f"sim-{kind}-{len(self.sims) + 1}.log"
        cmd = [sys.executable, "-m", "voice_agent.cli", "sim", kind, "--port", "0", *args]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        log = open(log_path, "ab")
        popen = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True, cwd=Path(__file__).resolve().parent.parent
        )
        log.close()
        stdout = popen.stdout
        if stdout is None:
            raise RuntimeError(f"sim {kind}: no stdout pipe")  # stdout=PIPE above: never
        deadline = time.monotonic() + timeout
        line = ""
        while popen.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                break  # a simulator that hangs before its first line must not hang the caller
            line = stdout.readline().strip()
            if line.startswith("listening on "):
                break
        if not line.startswith("listening on "):
            popen.kill()
            popen.wait()
            raise RuntimeError(f"sim {kind} did not start: {log_path.read_text(errors='replace')[-2000:]}")
        # Whatever it prints later goes to its log: an unread pipe would fill up and stall the simulator.
        threading.Thread(
            target=_copy_lines, args=(popen.stdout, log_path), daemon=True, name=f"sim-{kind}-stdout"
        ).start()
        sim = SimProcess(kind, popen, line.split(" ", 2)[2], log_path)
        self.sims.append(sim)
        return sim

    def start(self, role: str, *extra: str, instance_id: str | None = None) -> RoleProcess:
        instance_id = instance_id or f"{role}-{len(self.processes) + 1}-{os.getpid()}"
        log_path = self.workdir / f"{instance_id}.log"
        cmd = [
            sys.executable,
            "-m",
            "voice_agent.cli",
            "--config",
            str(self.config_path),
            role,
            "--id",
            instance_id,
            "--health-host",
            "127.0.0.1",
            "--health-port",
            "0",
            *extra,
        ]
        port_file = log_path.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "VA_HEALTH_PORT_FILE": str(port_file)}
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parent.parent
            )
        proc = RoleProcess(role, instance_id, popen, log_path)
        self.processes.append(proc)
        return proc

    def wait_ready(self, procs: list[RoleProcess] | None = None, timeout: float = 30.0) -> bool:
        """True once every process answers /readyz with 200; False if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        pending = list(self.processes if procs is None else procs)
        while pending:
            if any(p.popen.poll() is not None for p in pending) or time.monotonic() > deadline:
                return False
            pending = [p for p in pending if not p.ready()]
            if pending:
                time.sleep(0.1)
        return True

    def stop(self, proc: RoleProcess, timeout: float = 15.0) -> int:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            return proc.popen.wait()

    def stop_all(self) -> dict[str, int]:
        """Stop the roles (newest first), then the simulators; exit codes of the roles by id."""
        codes = {p.id: self.stop(p) for p in reversed(self.processes)}
        for sim in reversed(self.sims):
            if sim.popen.poll() is None:
                sim.popen.send_signal(signal.SIGTERM)
            try:
                sim.popen.wait(10)
            except subprocess.TimeoutExpired:
                sim.popen.kill()
                sim.popen.wait()
        self.sims.clear()
        return codes


def start_controllers(cluster: LocalCluster, count: int = 2) -> list[RoleProcess]:
    """`count` controller processes: whichever takes the leadership lease first leads, the others stand by."""
    return [cluster.start("controller") for _ in range(count)]


def leading(controllers: list[RoleProcess]) -> RoleProcess | None:
    """The controller whose /readyz says it leads (None while none does: a takeover under way)."""
    for proc in controllers:
        if proc.popen.poll() is None and proc.readiness().get("leadership") == "leading":
            return proc
    return None
