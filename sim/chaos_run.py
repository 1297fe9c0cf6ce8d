"""Chaos in the load test, the I/O half: the run's private redis-server, the faults injected on schedule into
the real processes (SIGKILL, SIGSTOP/SIGCONT, restarts), and what is read back to judge them (`sim/chaos.py`):
the calls on the target at the fault, what each caller heard, the mails, and what was left in Redis.

Everything here is bounded: a fault's recovery is a scheduled action (a restart after RESTART_S, SIGCONT after
STOP_WORKER_S, Redis back after REDIS_DOWN_S), and `finish()` runs whatever is still pending at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.keys import Keys
from sim import chaos as ch
from sim.cluster import LocalCluster, RoleProcess, free_port, leading

REDIS_START_TIMEOUT_S = 10.0
REDIS_STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0


class PrivateRedisServer:
    """The run's own redis-server on a free loopback port (restart-redis never touches the shared one).

    Persistence as a production Redis keeps it: an append-only file, fsynced every second, on a data directory
    of the run's own. A restart is SIGTERM (Redis writes and fsyncs the AOF on shutdown, as on `systemctl
    restart`), then the same command on the same directory: every write acknowledged before the stop is back."""

    def __init__(self, directory: Path):
        if shutil.which("redis-server") is None:
            raise RuntimeError("restart-redis needs redis-server (scripts/setup.sh installs it)")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis-server.log", "ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                try:
                    client.ping()
                    return
                except redis.RedisError:  # loading its AOF, or not listening yet
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"the run's redis-server did not answer within {REDIS_START_TIMEOUT_S:g} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(REDIS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (a tool worker's work horse and scheduler)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def leader_of(controllers: list[RoleProcess]) -> RoleProcess | None:
    """The leading controller among the live ones (its /readyz says `"leadership": "leading"`), else the
    first live one (a takeover under way: killing it is the fault asked for)."""
    alive = [c for c in controllers if c.popen.poll() is None]
    return leading(alive) or (alive[0] if alive else None)


@dataclass
class _Pending:
    at: float  # monotonic
    label: str
    action: Callable[[], None]


@dataclass
class ChaosRunner:
    """Fires each fault at its time (`tick`, from the load test's driver loop) and its recovery later."""

    faults: list[ch.Fault]
    cluster: LocalCluster
    client: redis.Redis
    keys: Keys
    controllers: list[RoleProcess]
    workers: list[RoleProcess]
    tools: list[RoleProcess]
    redis_server: PrivateRedisServer | None = None
    records: list[ch.FaultRecord] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # role ids not to scrape now (killed or stopped)
    killed: set[str] = field(default_factory=set)  # role ids whose exit code is the chaos's doing
    _pending: list[_Pending] = field(default_factory=list)
    _awaiting_ready: list[tuple[ch.FaultRecord, RoleProcess]] = field(default_factory=list)
    _next: int = 0

    @property
    def extra_s(self) -> float:
        """How long past the last fault's time the run must go on for its recovery."""
        return max((ch.FAULT_TIMES[f.kind] for f in self.faults), default=0.0) + 10.0

    def done(self, now_s: float) -> bool:
        return self._next >= len(self.faults) and not self._pending and not self._awaiting_ready

    def tick(self, now_s: float) -> None:
        while self._next < len(self.faults) and self.faults[self._next].at_s <= now_s:
            fault = self.faults[self._next]
            self._next += 1
            try:
                self._fire(fault)
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                self.records.append(ch.FaultRecord(fault, time.monotonic(), note=f"not injected: {exc}"))
        t = time.monotonic()
        for item in [p for p in self._pending if p.at <= t]:
            self._pending.remove(item)
            item.action()
        for record, proc in list(self._awaiting_ready):
            if proc.popen.poll() is not None:
                record.note += f" {proc.id} exited ({proc.popen.returncode}) after its restart."
                self._awaiting_ready.remove((record, proc))
            elif proc.ready():
                record.recovered_t = time.monotonic()
                self._awaiting_ready.remove((record, proc))

    def finish(self, timeout: float = 30.0) -> None:
        """Run every pending recovery now and wait (bounded) for restarted processes to be ready."""
        for item in list(self._pending):
            self._pending.remove(item)
            item.action()
        deadline = time.monotonic() + timeout
        while self._awaiting_ready and time.monotonic() < deadline:
            self.tick(float("inf") if self._next >= len(self.faults) else -1.0)
            time.sleep(0.1)

    # --- the faults -------------------------------------------------------------------------------------------
    def _live_calls(self) -> dict[str, dict]:
        """The calls not ended, by id, with their records (empty when Redis is down)."""
        try:
            out = {}
            for key in self.client.scan_iter(match=self.keys.call("*"), count=500):
                if key.count(":") != self.keys.call("x").count(":"):
                    continue  # a :log or :lease
                rec = self.client.hgetall(key)
                if rec and rec.get("state") != "ended":
                    out[key[len(self.keys.call("")) :]] = rec
            return out
        except redis.RedisError:
            return {}

    def _fire(self, fault: ch.Fault) -> None:
        record = ch.FaultRecord(fault, time.monotonic())
        self.records.append(record)
        live = self._live_calls()
        kind = fault.kind
        if kind in ch.WORKER_FAULTS:
            self._hit_worker(record, live)
        elif kind is ch.FaultKind.KILL_CONTROLLER:
            self._kill_controller(record, live)
        elif kind is ch.FaultKind.RESTART_REDIS:
            self._restart_redis(record, live)
        else:
            self._kill_tool_worker(record)

    def _hit_worker(self, record: ch.FaultRecord, live: dict[str, dict]) -> None:
        candidates = [w for w in self.workers if w.popen.poll() is None and w.id not in self.down]
        if not candidates:
            record.note = "no live media worker to hit"
            return
        load = {w.id: sum(1 for r in live.values() if r.get("worker") == w.id) for w in candidates}
        worker = max(candidates, key=lambda w: load[w.id])
        record.target = worker.id
        record.affected = sorted(c for c, r in live.items() if r.get("worker") == worker.id)
        self.down.add(worker.id)
        if record.fault.kind is ch.FaultKind.KILL_WORKER:
            os.kill(worker.popen.pid, signal.SIGKILL)
            self.killed.add(worker.id)
            record.note = f"SIGKILL, {load[worker.id]} calls on it; not restarted"
            return
        os.kill(worker.popen.pid, signal.SIGSTOP)
        record.note = f"SIGSTOP, {load[worker.id]} calls on it; SIGCONT after {ch.STOP_WORKER_S:g} s"

        def resume() -> None:
            if worker.popen.poll() is None:
                os.kill(worker.popen.pid, signal.SIGCONT)
            self.down.discard(worker.id)
            record.recovered_t = time.monotonic()

        self._pending.append(_Pending(record.t + ch.STOP_WORKER_S, f"SIGCONT {worker.id}", resume))

    def _kill_controller(self, record: ch.FaultRecord, live: dict[str, dict]) -> None:
        leader = leader_of(self.controllers)
        if leader is None:
            record.note = "no live controller to kill"
            return
        record.target = leader.id
        record.affected = sorted(live)
        os.kill(leader.popen.pid, signal.SIGKILL)
        leader.popen.wait(KILL_WAIT_S)
        self.killed.add(leader.id)
        record.note = f"SIGKILL; a new controller started after {ch.RESTART_S:g} s"

        def restart() -> None:
            new = self.cluster.start("controller")
            self.controllers[self.controllers.index(leader)] = new
            self._awaiting_ready.append((record, new))

        self._pending.append(_Pending(record.t + ch.RESTART_S, "restart controller", restart))

    def _restart_redis(self, record: ch.FaultRecord, live: dict[str, dict]) -> None:
        server = self.redis_server
        if server is None:
            record.note = "no private redis-server"
            return
        record.target = f"redis-server :{server.port}"
        record.affected = sorted(live)
        server.stop()
        record.t = time.monotonic()  # down from here (the stop took its SIGTERM's time)
        record.note = f"SIGTERM (AOF kept), started again after {ch.REDIS_DOWN_S:g} s"

        def start() -> None:
            server.start()
            record.recovered_t = time.monotonic()

        self._pending.append(_Pending(record.t + ch.REDIS_DOWN_S, "start redis-server", start))

    def _summary_jobs_in_flight(self) -> list[str]:
        """Call ids whose summary job is started or queued (RQ's registry and queue of the email queue)."""
        queue = self.keys.queue("email")
        try:
            started = self.client.zrange(f"rq:wip:{queue}", 0, -1)
            queued = self.client.lrange(f"rq:queue:{queue}", 0, -1)
        except redis.RedisError:
            return []
        ids = [str(entry).split(":", 1)[0] for entry in started] + [str(entry) for entry in queued]
        return sorted({i.removeprefix("send_email_summary-") for i in ids if i.startswith("send_email_summary-")})

    def _kill_tool_worker(self, record: ch.FaultRecord) -> None:
        alive = [t for t in self.tools if t.popen.poll() is None]
        if not alive:
            record.note = "no live tool worker to kill"
            return
        # The one running a job (it has a work horse), else the first.
        worker = next((t for t in alive if descendants(t.popen.pid)), alive[0])
        record.target = worker.id
        record.mail_calls = self._summary_jobs_in_flight()
        for pid in [worker.popen.pid, *descendants(worker.popen.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.popen.wait(KILL_WAIT_S)
        self.killed.add(worker.id)
        record.note = (
            f"SIGKILL (with its children), {len(record.mail_calls)} summary job(s) started or queued; "
            f"a new tool worker started after {ch.RESTART_S:g} s"
        )

        def restart() -> None:
            new = self.cluster.start("tool-worker")
            self.tools[self.tools.index(worker)] = new
            self._awaiting_ready.append((record, new))

        self._pending.append(_Pending(record.t + ch.RESTART_S, "restart tool worker", restart))


def leaks(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """What the cluster still holds in Redis once every call ended: live calls, worker `active` counters, RTP
    ports reserved, provider session counters and calls waiting for a slot. Each must be 0."""
    worker_active = rtp_ports = 0
    base = keys.worker("")
    for key in client.scan_iter(match=keys.worker("*"), count=500):
        rest = key[len(base) :]
        if ":" not in rest and client.type(key) == "hash":
            worker_active += int(float(client.hget(key, "active") or 0))
        elif rest.endswith(":rtp_ports"):
            rtp_ports += int(client.scard(key))
    sessions = 0
    for key in client.scan_iter(match=keys.provider_sessions("*"), count=500):
        sessions += int(float(client.get(key) or 0))
    return {
        "calls_active": int(client.scard(keys.calls_active)),
        "worker_active": worker_active,
        "rtp_ports": rtp_ports,
        "provider_sessions": sessions,
        "admission_queue": int(client.zcard(keys.admission_queue)),
    }


def mail_server_counts(log: str) -> dict[str, int] | None:
    """From `voice-agent sim mail`'s output with --data-delay-ms: messages that reached DATA, and accepted."""
    data = log.count(": holding it ")
    if not data:
        return None
    return {"data": data, "accepted": log.count("accepted message ")}


def wall_to_monotonic(ms: str | None) -> float | None:
    """A Redis-server time in ms (this host's clock: the server is local) on this process's monotonic clock."""
    if not ms:
        return None
    return float(ms) / 1000 - (time.time() - time.monotonic())


def chaos_result(
    runner: ChaosRunner,
    records: list[dict],  # the call hashes, each with its id in `_id`
    target,
    hung_up_keys: set[str],
    lines: list[tuple[float, float]],
    cycle_s: float,
    cycles: int,
    mail_dir: Path,
    leaked: dict[str, int],
    run_end_t: float,
    mail_log: str = "",
) -> dict:
    """Every fault judged from what its callers heard, the mails of every call, and the leaks."""
    by_id = {r["_id"]: r for r in records}
    # Mails are counted by caller: one summary per caller admitted, however many call ids it was given.
    caller_of = {r["_id"]: r.get("caller_channel") or r["_id"] for r in records}
    summaries: Counter = Counter()
    for call_id, n in ch.summaries_by_call(mail_dir).items():
        summaries[caller_of.get(call_id, call_id)] += n
    voices: dict[str, tuple[float | None, list[tuple[float, float]]]] = {}
    faults = []
    for record in runner.records:
        judged = []
        for call_id in record.affected:
            rec = by_id.get(call_id)
            if rec is None:
                continue
            key = target.key_for(rec.get("caller_channel", ""))
            if key is None:
                continue
            if key not in voices:
                voices[key] = target.voice(key)
            start_t, voiced = voices[key]
            end_reason = rec.get("end_reason", "")
            call = ch.CallAtFault(
                call_id=call_id,
                voiced=voiced,
                spoke=ch.spoken_spans(start_t, lines, cycle_s, cycles),
                pauses=ch.script_pauses(start_t, lines, cycle_s, cycles),
                end_t=wall_to_monotonic(rec.get("ended_ms")),
                scripted_end=key in hung_up_keys and end_reason in ch.rep.NORMAL_END,
                end_reason=end_reason,
            )
            judged.append(ch.judge(call, record.t, run_end_t))
        faults.append(ch.fault_result(record, judged, summaries, caller_of))
    set_up = sorted(r["_id"] for r in records if r.get("setup_ms"))
    callers = sorted(set(caller_of.values()))
    mails = ch.mail_faults(callers, summaries)
    # The same measure on the calls no fault touched: how long the script itself leaves the caller in silence.
    touched = {c for record in runner.records for c in record.affected}
    baseline = []
    for call_id in set_up:
        rec = by_id[call_id]
        key = target.key_for(rec.get("caller_channel", ""))
        end_t = wall_to_monotonic(rec.get("ended_ms"))
        if call_id in touched or key is None or end_t is None or rec.get("end_reason") not in ch.rep.NORMAL_END:
            continue  # touched by a fault, or not run to the script's end (a fallback, a duplicate admission)
        start_t, voiced = voices[key] if key in voices else target.voice(key)
        if voiced:
            spoke = ch.spoken_spans(start_t, lines, cycle_s, cycles)
            quiet = spoke + ch.script_pauses(start_t, lines, cycle_s, cycles)
            baseline.append(1000 * ch.longest_silence(voiced, quiet, voiced[0][0], end_t - 0.3))
    return {
        "faults": faults,
        "mails": {"calls": len(callers), **mails},
        "mail_server": mail_server_counts(mail_log),
        "leaks": leaked,
        "baseline_silence_ms": ch.rep.summary(baseline),
    }
