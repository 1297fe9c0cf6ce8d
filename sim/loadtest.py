"""`voice-agent loadtest`: N concurrent scripted calls through the real cluster, then a report.

By default everything runs here as processes, like the demo: the Realtime emulator, the Asterisk simulator,
a mail server, a controller, K media workers and M tool workers, on the local Redis under a fresh key prefix
(removed afterwards). Calls start evenly over `--ramp` seconds; call i is hung up `ramp + hold` seconds after
it started, so all N are up together for `--hold` seconds. Each caller speaks the demo's plan (question,
barge-in on the long answer, goodbye) over and over from one WAV; the emulator answers each turn.

With `--real-asterisk` the calls go through a real Asterisk 22 that the harness starts for the run (Debian's
package from the cache, `sim.real_asterisk`) and stops at the end; with `--ari-url`, through one the user runs.
Each caller is a `sim.pbx_caller` leg (`sim/loadtest_pbx.py`): a Local channel into `--ari-context` (the
shipped `from-ai-agent-openai`), bridged with an RTP leg to a socket here, speaking the same WAV and recording
what it hears.

The figures come from the call records in Redis, each role's /metrics, /proc (CPU, RSS), the mail server's
.eml files and, at the end, what is left: the simulator's `GET /sim/state`, or Asterisk's `GET /channels` and
`GET /bridges` (channels and bridges left: must be 0).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import yaml

from shared.config import Config, ConfigError, load_config
from shared.keys import Keys
from sim import chaos as ch
from sim import demo_call
from sim import loadtest_report as rep
from sim.chaos_run import ChaosRunner, PrivateRedisServer, chaos_result, leaks
from sim.cluster import LocalCluster, RoleProcess, SimProcess, http_get, purge, redis_or_explain
from sim.loadtest_pbx import PbxTarget
from sim.real_asterisk import RealAsterisk, start_or_explain

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = "from-ai-agent-openai"  # the guide's Stasis context
LOADTEST_CONTEXT = "loadtest"  # the AI context (greeting, prompt, profile) the calls run in
SHIPPED_AI_CONTEXT = "demo_openai"  # the AI_CONTEXT that deploy/asterisk's [from-ai-agent-openai] sets
EMULATOR_SPEED = "4"
ANSWER_TIMEOUT_S = 15.0  # a call not answered this long after it was placed counts as failed
SETTLE_TIMEOUT_S = 30.0  # after the last hangup: records ended, calls:active empty
MAIL_TIMEOUT_S = 30.0


# --- what the callers say and the emulator answers ------------------------------------------------------------


def cycles_for(seconds: float, timeline: demo_call.Timeline) -> int:
    return max(1, int(np.ceil(seconds / timeline.duration_s)))


def write_caller_wav(path: Path, timeline: demo_call.Timeline, cycles: int) -> None:
    """The demo's caller timeline, `cycles` times in a row: one WAV for every caller."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(demo_call.CALLER_RATE)
        out.writeframes(timeline.pcm() * cycles)


def emulator_script(plan: demo_call.Plan, cycles: int) -> dict:
    """The demo's script with its turns repeated, so turn 3c+n gets answer n in every cycle c."""
    base = demo_call.emulator_script(plan)
    per = len(plan.answers)
    base["turns"] = {c * per + n: reply for c in range(cycles) for n, reply in base["turns"].items()}
    base["transcripts"] = {c * per + n: text for c in range(cycles) for n, text in base["transcripts"].items()}
    return base


def write_config(
    path: Path,
    source: Path,
    profile: str,
    calls: int,
    context: str = LOADTEST_CONTEXT,
    *,
    worker_admission: bool = False,
) -> None:
    """The config with the calls' AI context (`loadtest` on the simulator; on a real Asterisk the one its dialplan
    sets) in `profile`, and room for every call at the provider. Workers take every call offered unless
    `worker_admission`: the run measures what a worker carries, which a worker limiting its own admission from
    its measurements (media_worker.admission) would hide by making calls wait."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not worker_admission:
        data.setdefault("media_worker", {}).setdefault("admission", {})["enabled"] = False
    data.setdefault("contexts", {})[context] = {
        "greeting": demo_call.DEFAULT_PLAN.greeting.text,
        "profile": profile,
        "prompt": "You are the load-test assistant of {company_name}.",
    }
    provider = data.setdefault("providers", {}).setdefault("openai_realtime", {})
    provider["max_concurrent_sessions"] = max(int(provider.get("max_concurrent_sessions") or 0), calls)
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=120), encoding="utf-8")


# --- where the calls go: the simulator's control API (a real Asterisk: sim/loadtest_pbx.py) --------------------


class Http:
    """JSON over HTTP with Basic auth (blocking; the load test's own loop is not an audio path)."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw) if raw else {}
            except ValueError:
                return exc.code, {"message": raw.decode(errors="replace")}
        except (urllib.error.URLError, OSError) as exc:
            return 0, {"message": str(exc)}


class SimTarget:
    """Calls into the Asterisk simulator: `POST /sim/calls` with the caller's WAV."""

    kind = "sim"

    def __init__(self, http: Http, caller_wav: Path):
        self.http = http
        self.caller_wav = caller_wav
        self.errors: Counter = Counter()

    def place(self, index: int) -> str | None:
        status, body = self.http.request(
            "POST",
            "/sim/calls",
            {
                "context": CONTEXT,
                "caller_name": f"Caller {index}",
                "caller_number": f"555{index:04d}",
                "variables": {"AI_CONTEXT": LOADTEST_CONTEXT},
                "audio_wav": str(self.caller_wav),
                "rate": demo_call.CALLER_RATE,
            },
        )
        if status != 201:
            self.errors[f"place:{status}"] += 1
            return None
        return body["id"]

    def states(self) -> dict[str, str]:
        """Channel id -> Ring | Up | ended, for every call placed."""
        status, body = self.http.request("GET", "/sim/state")
        return dict(body.get("calls", {})) if status == 200 else {}

    def hangup(self, channel: str) -> None:
        status, _ = self.http.request("POST", f"/sim/calls/{channel}/hangup")
        if status not in (204, 404):
            self.errors[f"hangup:{status}"] += 1

    def key_for(self, caller_channel: str) -> str | None:
        return caller_channel  # the caller's channel is the one the controller sees

    def voice(self, key: str) -> tuple[float | None, list[tuple[float, float]]]:
        """When caller `key` started speaking, and the spans in which it heard speech (monotonic)."""
        status, body = self.http.request("GET", f"/sim/calls/{key}/voice")
        if status != 200:
            self.errors[f"voice:{status}"] += 1
            return None, []
        return body.get("answered_t"), [(a, b) for a, b in body.get("voiced", [])]

    def leftover(self) -> dict:
        status, body = self.http.request("GET", "/sim/state")
        if status != 200:
            return {"channels": None, "bridges": None}
        return {"channels": body.get("channels"), "bridges": body.get("bridges")}

    def close(self) -> None:
        pass


# Where the calls go: the simulator, or a real Asterisk.
Target = SimTarget | PbxTarget


# --- /proc and /metrics samples -------------------------------------------------------------------------------


@dataclass
class ProcStats:
    id: str
    role: str
    pid: int
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, cpu s)
    rss_mb: list[float] = field(default_factory=list)

    def sample(self) -> None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        self.cpu.append((time.monotonic(), rep.proc_cpu_seconds(stat, os.sysconf("SC_CLK_TCK"))))
        self.rss_mb.append(rep.proc_rss_mb(status))

    def cpu_at(self, t: float) -> float:
        """CPU seconds at the last sample taken at or before t (the first sample if none)."""
        best = self.cpu[0][1] if self.cpu else 0.0
        for when, value in self.cpu:
            if when <= t:
                best = value
        return best


def scrape(proc: RoleProcess) -> list:
    status, body = http_get(proc.health_url + "/metrics")
    return rep.parse_metrics(body.decode(errors="replace")) if status == 200 else []


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class CallTrack:
    index: int
    due: float  # when to place it (s since the ramp started)
    hangup_at: float
    channel: str | None = None
    placed: float | None = None
    answered: float | None = None
    ended: float | None = None
    hung_up: bool = False
    failed: str = ""

    def observe(self, state: str | None, now: float) -> None:
        """What the target reports of the call (Ring | Up | ended) at `now` (s since the ramp started)."""
        if state == "Up" and self.answered is None:
            self.answered = now
        if state == "ended" and self.ended is None:
            self.ended = now
            if self.answered is None:
                self.failed = "ended_before_answer"
        if self.answered is None and self.ended is None and self.placed is not None:
            if now - self.placed > ANSWER_TIMEOUT_S:
                self.failed = "not_answered"


def schedule(calls: int, ramp: float, hold: float) -> list[CallTrack]:
    """Calls started evenly over the ramp; each hung up ramp + hold after its start (all up for `hold`)."""
    step = ramp / calls if calls else 0
    return [CallTrack(i, i * step, i * step + ramp + hold) for i in range(calls)]


# RTP ports, each set apart: the workers' from 12000 (below the ephemeral range, where the callers' and the
# OS-picked ports live), the simulator's UnicastRTP legs at 10000 (as Asterisk's own rtp.conf starts), and a real
# Asterisk's (sim.real_asterisk) from 20000 up. An overlap made a worker's bind fail on a port the simulator held.
WORKER_RTP_BASE = 12000
SIM_RTP_PORTS = "10000-10999"


def media_worker_args(index: int, span: int = 400) -> list[str]:
    low = WORKER_RTP_BASE + span * index
    return ["--audiosocket-port", "0", "--rtp-ports", f"{low}-{low + span - 1}"]


def call_records(client: redis.Redis, keys: Keys) -> list[dict]:
    """Every call hash, with its call id in `_id`."""
    records = []
    for key in client.scan_iter(match=keys.call("*"), count=500):
        if key.count(":") == keys.call("x").count(":"):  # the call hash, not its :log or :lease
            records.append({**client.hgetall(key), "_id": key[len(keys.call("")) :]})
    return records


def progress_line(elapsed: float, tracks: list[CallTrack], cpu_pct: float, lag_ms: float, own_lag_ms: float) -> str:
    up = sum(1 for t in tracks if t.answered is not None and t.ended is None)
    answered = sum(1 for t in tracks if t.answered is not None)
    failed = sum(1 for t in tracks if t.failed)
    placed = sum(1 for t in tracks if t.placed is not None)
    return (
        f"t={elapsed:6.1f}s placed {placed:>4}  up {up:>4}  set up {answered:>4}  failed {failed:>3}  "
        f"CPU {cpu_pct:5.0f}%  tick lag p99 {lag_ms:5.2f} ms  driver lag {own_lag_ms:5.1f} ms"
    )


class Driver:
    """Places, watches and hangs up every call on schedule; samples /proc and the tick lag each second.
    Bounded: it ends once every call is hung up or failed, or at ramp + hold + ramp + ANSWER_TIMEOUT_S."""

    def __init__(
        self,
        target: Target,
        tracks: list[CallTrack],
        procs: list[ProcStats],
        workers: list[RoleProcess],
        ramp: float,
        hold: float,
        chaos: ChaosRunner | None = None,
    ):
        self.target, self.tracks, self.procs, self.workers = target, tracks, procs, workers
        self.ramp, self.hold = ramp, hold
        self.chaos = chaos
        self.tty = sys.stdout.isatty()
        self.print_every = 1.0 if self.tty else 5.0  # plain prints when not a TTY: fewer lines
        self.start = time.monotonic()
        self.deadline = 2 * ramp + hold + ANSWER_TIMEOUT_S + 5
        if chaos is not None and chaos.faults:
            self.deadline = max(self.deadline, chaos.faults[-1].at_s + chaos.extra_s)
        self.timeline: list[dict] = []
        self.window: dict[str, float] = {}  # hold_start, hold_end (monotonic)
        self.next_sample = self.next_print = 0.0
        self.last_cpu: tuple[float, float] | None = None  # (s since start, CPU s of every process)
        self.own_lag_ms = 0.0  # how late this loop's own ticks run

    def run(self) -> dict:
        while True:
            tick = time.monotonic()
            now = tick - self.start
            self._place_and_hang_up(now)
            if self.chaos is not None:
                self.chaos.tick(now)
            if now >= self.next_sample:
                self.next_sample = now + 1.0
                self._sample(now)
            if self._finished(now):
                break
            self.own_lag_ms = max(0.0, (time.monotonic() - tick) * 1000 - 50)
            time.sleep(0.05)  # the callers live in other processes (or the target's own loop): a paced poll
        if self.tty:
            print()
        self.window.setdefault("hold_start", self.start + self.ramp)
        self.window.setdefault("hold_end", time.monotonic())
        return {"timeline": self.timeline, "window": self.window, "started": self.start}

    def _place_and_hang_up(self, now: float) -> None:
        for t in self.tracks:
            if t.placed is None and not t.failed and now >= t.due:
                t.channel = self.target.place(t.index)
                t.placed = time.monotonic() - self.start
                if t.channel is None:
                    t.failed = "place"
            elif t.channel and not t.hung_up and not t.failed and now >= t.hangup_at:
                self.target.hangup(t.channel)
                t.hung_up = True

    def _finished(self, now: float) -> bool:
        calls_done = all(t.failed or (t.hung_up and t.ended is not None) for t in self.tracks)
        chaos_done = self.chaos is None or self.chaos.done(now)
        return (calls_done and chaos_done) or now > self.deadline

    def _sample(self, now: float) -> None:
        """Once a second: the calls' states, the processes' CPU and memory, the workers' tick lag."""
        states = self.target.states()
        for t in self.tracks:
            if t.channel and not t.failed:
                t.observe(states.get(t.channel), now)
        for p in self.procs:
            p.sample()
        if "hold_start" not in self.window and now >= self.ramp:
            self.window["hold_start"] = time.monotonic()
        if "hold_end" not in self.window and now >= self.ramp + self.hold:
            self.window["hold_end"] = time.monotonic()
        cpu_pct = self._cpu_pct(now)
        down = self.chaos.down if self.chaos is not None else set()
        live = [w for w in self.workers if w.id not in down]  # a stopped worker would stall each scrape 2 s
        lag_ms = max([rep.metric(scrape(w), "va_playout_tick_lag_p99_ms") for w in live] or [0.0])
        self.timeline.append(
            {
                "t": round(now, 1),
                "up": sum(1 for t in self.tracks if t.answered is not None and t.ended is None),
                "set_up": sum(1 for t in self.tracks if t.answered is not None),
                "failed": sum(1 for t in self.tracks if t.failed),
                "cpu_pct": round(cpu_pct, 1),
                "tick_lag_p99_ms": lag_ms,
            }
        )
        if now >= self.next_print:
            self.next_print = now + self.print_every
            line = progress_line(now, self.tracks, cpu_pct, lag_ms, self.own_lag_ms)
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def _cpu_pct(self, now: float) -> float:
        """CPU of every process since the previous sample, in % of one core."""
        total_cpu = sum(p.cpu[-1][1] for p in self.procs if p.cpu)
        last, self.last_cpu = self.last_cpu, (now, total_cpu)
        return 0.0 if last is None else 100 * (total_cpu - last[1]) / max(now - last[0], 1e-3)


def settle(client: redis.Redis, keys: Keys, timeout: float = SETTLE_TIMEOUT_S) -> list[dict]:
    """Wait until every call record is ended with the worker's figures and calls:active is empty."""
    deadline = time.monotonic() + timeout
    records: list[dict] = []
    while True:
        try:
            records = call_records(client, keys)
            done = all(r.get("state") == "ended" and "worker_end_reason" in r for r in records)
            if done and not client.scard(keys.calls_active):
                return records
        except redis.RedisError:  # a Redis restarted by the chaos run: its first command may meet the old socket
            pass
        if time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def count_mail(directory: Path, expected: int, timeout: float = MAIL_TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = len(list(directory.glob("*.eml"))) if directory.exists() else 0
        if found >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def process_figures(procs: list[ProcStats], window: dict, calls_up: int, run_s: float) -> list[dict]:
    out = []
    span = max(window["hold_end"] - window["hold_start"], 1e-3)
    for p in procs:
        if not p.cpu:
            continue
        held = p.cpu_at(window["hold_end"]) - p.cpu_at(window["hold_start"])
        base = p.rss_mb[0]
        peak = max(p.rss_mb)
        out.append(
            {
                "id": p.id,
                "role": p.role,
                "cpu_s": round(p.cpu[-1][1] - p.cpu[0][1], 2),
                "core_pct": round(100 * held / span, 1),
                "cpu_ms_per_call_s": round(1000 * held / (span * calls_up), 3) if calls_up else None,
                "rss_start_mb": round(base, 1),
                "rss_peak_mb": round(peak, 1),
                "rss_mb_per_call": round((peak - base) / calls_up, 3) if calls_up else 0.0,
            }
        )
    return out


def build_result(
    args: argparse.Namespace,
    target: Target,
    tracks: list[CallTrack],
    records: list[dict],
    driven: dict,
    procs: list[ProcStats],
    worker_metrics: dict[str, list],
    controller_metrics: list,
    emails: int,
    emails_expected: int,
    left: dict,
    active_left: int,
    chaos: dict | None = None,
) -> dict:
    answered = [t for t in tracks if t.answered is not None]
    set_up = [r for r in records if r.get("setup_ms")]
    dropped = [t for t in answered if t.ended is not None and not t.hung_up]
    peak = max([x["up"] for x in driven["timeline"]] or [0])
    errors: Counter = rep.end_errors(records) + rep.ari_errors(controller_metrics) + target.errors
    for samples in worker_metrics.values():
        errors += rep.realtime_errors(samples)
    errors += Counter(f"call:{t.failed}" for t in tracks if t.failed)
    by_worker = rep.underruns_by_worker(records)
    # Underruns per worker from the call records: the workers' va_playout_underruns_total is kept as well,
    # but nothing increments it at the time of writing.
    workers = [
        {
            "id": wid,
            "tick_lag_p99_ms": rep.metric(s, "va_playout_tick_lag_p99_ms"),
            "underruns": by_worker.get(wid, 0),
            "underruns_metric": rep.metric(s, "va_playout_underruns_total"),
            "calls": sum(1 for r in records if r.get("worker") == wid),
        }
        for wid, s in worker_metrics.items()
    ]
    run_s = time.monotonic() - driven["started"]
    result = {
        "params": {
            "calls": args.calls,
            "ramp": args.ramp,
            "hold": args.hold,
            "workers": args.workers,
            "controllers": args.controllers,
            "tool_workers": args.tool_workers,
            "chaos": args.chaos or None,
            "profile": args.profile,
            "target": target.kind,
            "asterisk": getattr(args, "asterisk_version", None),
            "cores": os.cpu_count(),
        },
        "setup": {
            "placed": sum(1 for t in tracks if t.channel),
            "answered": len(answered),
            "set_up": len(set_up),
            "failed": sum(1 for t in tracks if t.failed),
            "success_rate": round(len(set_up) / args.calls, 4) if args.calls else 0.0,
        },
        "peak_up": peak,
        "latency_ms": rep.latencies(records),
        "underruns": int(sum(float(r.get("underruns") or 0) for r in records)),
        "workers": workers,
        "processes": process_figures(procs, driven["window"], peak, run_s),
        "emails": {"delivered": emails, "expected": emails_expected},
        "errors": dict(errors),
        "dropped": len(dropped),
        "left": left,
        "active_left": active_left,
        "timeline": driven["timeline"],
        "seconds": round(run_s, 1),
    }
    if hasattr(target, "heard"):
        result["caller_heard"] = target.heard()
    result["checks"] = {
        "every call set up": result["setup"]["set_up"] == args.calls and not result["setup"]["failed"],
        "none dropped": not dropped,
        "nothing left over": left.get("channels") == 0 and left.get("bridges") == 0 and active_left == 0,
    }
    if chaos is not None:
        # Under chaos a call may be set up late or go to the fallback: those are reported per fault. What must
        # hold is the must-be-0 figures (dead air, mails lost or doubled, leaks), each named when it does not.
        chaos["leaks"] = {"channels": left.get("channels"), "bridges": left.get("bridges"), **chaos["leaks"]}
        result["chaos"] = chaos
        result["checks"] = {
            "chaos: must-be-0 figures are 0": not ch.failures(chaos),
            "nothing left over": left.get("channels") == 0 and left.get("bridges") == 0 and active_left == 0,
        }
    result["ok"] = all(result["checks"].values())
    return result


@dataclass
class LoadRun:
    """One load test's set-up: its files, its cluster's key prefix and environment, and what it started."""

    workdir: Path
    prefix: str
    api_key: str
    ari_password: str
    config: Config
    client: redis.Redis
    keys: Keys
    caller_wav: Path
    script: Path
    mail_dir: Path
    cluster: LocalCluster
    tracks: list[CallTrack]
    target: Target | None = None
    asterisk_run: RealAsterisk | None = None  # a real Asterisk this run started (--real-asterisk)
    faults: list[ch.Fault] = field(default_factory=list)
    redis_server: PrivateRedisServer | None = None  # the run's own Redis (restart-redis)
    chaos: ChaosRunner | None = None
    mail_delay_s: float = 0.0  # the mail server's hold of each message in DATA (--mail-delay-ms)


@dataclass
class Started:
    """The processes of a load test's cluster, once ready."""

    controllers: list[RoleProcess]  # the chaos run replaces a killed one in place
    workers: list[RoleProcess]
    tools: list[RoleProcess]
    asterisk_sim: SimProcess | None  # None on a real Asterisk

    @property
    def controller(self) -> RoleProcess:
        """A live controller (the first, when all are)."""
        return next((c for c in self.controllers if c.popen.poll() is None), self.controllers[0])


def main(args: argparse.Namespace) -> int:
    if args.real_asterisk and args.ari_url:
        print("--real-asterisk starts an Asterisk of its own: leave out --ari-url")
        return 2
    try:
        faults = ch.parse_chaos(args.chaos) if args.chaos else []
        last_hangup = schedule(args.calls, args.ramp, args.hold)[-1].hangup_at if args.calls else 0.0
        ch.check_schedule(faults, last_hangup, args.workers, args.tool_workers)
    except ch.ChaosSpecError as exc:
        print(exc)
        return 2
    if args.controllers < 1:
        print("--controllers must be 1 or more")
        return 2
    run = prepare(args, faults)
    if run is None:
        return 1
    print(
        f"load test: {args.calls} calls over {args.ramp:g} s, held {args.hold:g} s, {args.workers} media "
        f"worker(s), {args.controllers} controller(s), {args.tool_workers} tool worker(s); files in {run.workdir}",
        flush=True,
    )
    if faults:
        print("chaos: " + ", ".join(f.name for f in faults), flush=True)
    started: Started | None = None
    result: dict | None = None
    try:
        started = start_cluster(args, run)
        if started is not None:
            result = measure(args, run, started)
    finally:
        codes, removed = tear_down(run)
    if started is None:
        return 1  # what did not start has been said
    if result is None:
        print("the load test did not run to the end")
        return 1
    return report(args, run, result, codes, removed)


def prepare(args: argparse.Namespace, faults: list[ch.Fault] | None = None) -> LoadRun | None:
    """The work directory, the environment every process inherits, the config, the caller's WAV and the
    emulator's script; None (after saying why) when the config or Redis is unusable."""
    config_path = Path(args.config) if args.config else ROOT / "config" / "ai-agent.yaml"
    workdir = Path(os.environ.get("VA_LOADTEST_WORKDIR") or tempfile.mkdtemp(prefix="voice-agent-loadtest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    faults = faults or []
    redis_server = None
    if any(f.kind is ch.FaultKind.RESTART_REDIS for f in faults):
        # Restarting the shared Redis would hit every other user of it: the run gets a redis-server of its own.
        if args.redis_url:
            print("restart-redis runs a redis-server of its own: --redis-url is not used")
        try:
            redis_server = PrivateRedisServer(workdir / "redis")
            redis_server.start()
        except RuntimeError as exc:
            print(exc)
            return None
        args.redis_url = redis_server.url
        print(f"chaos: the run's own redis-server on {redis_server.url} (AOF in {redis_server.directory})")
    prefix = f"va-loadtest-{os.getpid()}-{os.urandom(3).hex()}:"
    api_key = "sk-loadtest-" + os.urandom(12).hex()
    real_pbx = bool(args.real_asterisk or args.ari_url)
    env = {
        "OPENAI_API_KEY": api_key,
        "REDIS_KEY_PREFIX": prefix,
        "LOG_LEVEL": "warning",
        "REALTIME_PREWARM": str(max(2, min(20, args.calls // max(args.workers, 1)))),
        "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
    }
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    os.environ.update(env)
    context = SHIPPED_AI_CONTEXT if real_pbx else LOADTEST_CONTEXT
    write_config(
        workdir / "config.yaml", config_path, args.profile, args.calls, context, worker_admission=args.worker_admission
    )
    try:
        config = load_config(workdir / "config.yaml").config
    except ConfigError as exc:
        print(exc)
        return None
    client = redis_or_explain(config.redis.url)
    if client is None:
        if redis_server is not None:
            redis_server.stop()
        return None
    plan = demo_call.DEFAULT_PLAN
    timeline = demo_call.caller_timeline(plan)
    cycles = cycles_for(args.ramp + args.hold + 5, timeline)
    script = workdir / "realtime-script.yaml"
    script.write_text(yaml.safe_dump(emulator_script(plan, cycles), sort_keys=False, width=120), encoding="utf-8")
    caller_wav = workdir / "caller-says.wav"
    write_caller_wav(caller_wav, timeline, cycles)
    for stale in (workdir / "mail").glob("*.eml"):  # a reused work directory: count this run's mail only
        stale.unlink()
    return LoadRun(
        workdir=workdir,
        prefix=prefix,
        api_key=api_key,
        ari_password=args.ari_password or "loadtest-" + os.urandom(6).hex(),
        config=config,
        client=client,
        keys=Keys(prefix),
        caller_wav=caller_wav,
        script=script,
        mail_dir=workdir / "mail",
        cluster=LocalCluster(workdir / "config.yaml", workdir, env),
        tracks=schedule(args.calls, args.ramp, args.hold),
        faults=faults,
        redis_server=redis_server,
    )


def start_cluster(args: argparse.Namespace, run: LoadRun) -> Started | None:
    """The simulators (and a real Asterisk with --real-asterisk), then every role; None when one did not
    become ready (its log is printed)."""
    cluster = run.cluster
    sim_loop = getattr(args, "sim_loop", "asyncio")
    realtime = cluster.start_sim(
        "realtime",
        *("--script", str(run.script), "--speed", EMULATOR_SPEED, "--api-key", run.api_key),
        *("--event-loop", sim_loop),
    )
    mail_delay_ms = args.mail_delay_ms
    if mail_delay_ms is None:  # a tool worker killed mid-send needs a send to be in progress: a slow server
        mail_delay_ms = 1000 if any(f.kind is ch.FaultKind.KILL_TOOL_WORKER for f in run.faults) else 0
    run.mail_delay_s = mail_delay_ms / 1000
    mail = cluster.start_sim("mail", "--dir", str(run.mail_dir), "--data-delay-ms", str(mail_delay_ms))
    cluster.env.update(
        OPENAI_REALTIME_URL=realtime.url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=mail.url.rsplit(":", 1)[1],
        ASTERISK_ARI_PASSWORD=run.ari_password,
    )
    if args.real_asterisk:
        run.asterisk_run = start_or_explain(run.workdir / "asterisk")
        if run.asterisk_run is None:
            return None
        args.ari_url, args.ari_user = run.asterisk_run.ari_url, run.asterisk_run.user
        run.ari_password = run.asterisk_run.password
        args.asterisk_version = run.asterisk_run.version
        cluster.env.update(ASTERISK_ARI_PASSWORD=run.ari_password)
    asterisk_sim = None
    if args.ari_url:
        cluster.env.update(ASTERISK_ARI_URL=args.ari_url, ASTERISK_ARI_USERNAME=args.ari_user)
    else:
        asterisk_sim = cluster.start_sim(
            "asterisk",
            "--user",
            run.config.asterisk.username,
            "--password",
            run.ari_password,
            "--rtp-ports",
            SIM_RTP_PORTS,
            "--event-loop",
            sim_loop,
        )
        cluster.env.update(ASTERISK_ARI_URL=asterisk_sim.url)
    started = Started(
        controllers=[cluster.start("controller") for _ in range(args.controllers)],
        workers=[cluster.start("media-worker", *media_worker_args(i)) for i in range(args.workers)],
        tools=[cluster.start("tool-worker") for _ in range(args.tool_workers)],
        asterisk_sim=asterisk_sim,
    )
    if not cluster.wait_ready(timeout=60):
        for proc in cluster.processes:
            if not proc.ready():
                print(f"{proc.id} not ready: {proc.readiness()}\n{proc.log_text()[-1500:]}")
        return None
    time.sleep(1.0)  # let the prewarm pools fill
    return started


def measure(args: argparse.Namespace, run: LoadRun, started: Started) -> dict:
    """Drive the calls, let them settle, and gather every figure into the result."""
    if started.asterisk_sim is None:
        run.target = PbxTarget(args.ari_url, args.ari_user, run.ari_password, run.caller_wav, args.ari_context)
    else:
        http = Http(started.asterisk_sim.url, run.config.asterisk.username, run.ari_password)
        run.target = SimTarget(http, run.caller_wav)
    roles = [*started.controllers, *started.workers, *started.tools]
    procs = [ProcStats(r.id, r.role, r.popen.pid) for r in roles]
    procs += [ProcStats(f"sim-{s.kind}", "sim", s.popen.pid) for s in run.cluster.sims]
    if run.asterisk_run is not None:
        procs.append(ProcStats("asterisk", "asterisk", run.asterisk_run.pid))
    for p in procs:
        p.sample()
    if run.faults:
        run.chaos = ChaosRunner(
            run.faults,
            run.cluster,
            run.client,
            run.keys,
            started.controllers,
            started.workers,
            started.tools,
            run.redis_server,
        )
    driven = Driver(run.target, run.tracks, procs, started.workers, args.ramp, args.hold, run.chaos).run()
    if run.chaos is not None:
        run.chaos.finish()
    run_end_t = time.monotonic()
    records = settle(run.client, run.keys)
    for p in procs:
        p.sample()
    set_up = sum(1 for r in records if r.get("setup_ms"))
    # A slow mail server (--mail-delay-ms) holds each message: the tool workers need that long per mail, in turn.
    sending_s = set_up * run.mail_delay_s / max(args.tool_workers, 1)
    emails = count_mail(run.mail_dir, set_up, MAIL_TIMEOUT_S + sending_s)
    chaos = None
    if run.chaos is not None:
        timeline = demo_call.caller_timeline(demo_call.DEFAULT_PLAN)
        lines = [(seg.start_s, seg.start_s + seg.ms / 1000) for seg in timeline.spoken()]
        chaos = chaos_result(
            run.chaos,
            records,
            run.target,
            {t.channel for t in run.tracks if t.channel and t.hung_up},
            lines,
            timeline.duration_s,
            cycles_for(args.ramp + args.hold + 5, timeline),
            run.mail_dir,
            leaks(run.client, run.keys),
            run_end_t,
            "".join(sim.log_text() for sim in run.cluster.sims if sim.kind == "mail"),
        )
    return build_result(
        args,
        run.target,
        run.tracks,
        records,
        driven,
        procs,
        {w.id: scrape(w) for w in started.workers},
        scrape(started.controller),
        emails,
        set_up,
        run.target.leftover(),
        int(run.client.scard(run.keys.calls_active)),
        chaos,
    )


def tear_down(run: LoadRun) -> tuple[dict[str, int], int]:
    """Stop everything this run started and remove its keys: (exit code per process, keys removed)."""
    if run.target is not None:
        run.target.close()
    codes = run.cluster.stop_all()
    removed = purge(run.client, run.prefix)
    run.client.close()
    if run.asterisk_run is not None:
        run.asterisk_run.stop()
        print(f"stopped the real Asterisk (logs in {run.asterisk_run.own_run_dir / 'log'})")
    if run.redis_server is not None:
        run.redis_server.stop()
    return codes, removed


def report(args: argparse.Namespace, run: LoadRun, result: dict, codes: dict[str, int], removed: int) -> int:
    """Print the report and the checks, write the JSON (and the plot); 0 when every check passed."""
    result["exit_codes"] = codes
    killed = run.chaos.killed if run.chaos is not None else set()  # their -9 is the chaos's doing
    result["checks"]["every process exited 0"] = all(code == 0 for pid, code in codes.items() if pid not in killed)
    result["ok"] = all(result["checks"].values())
    print("\n".join(rep.report_lines(result)))
    if "chaos" in result:
        print("\n".join(ch.report_lines(result["chaos"])))
    print(f"removed {removed} keys under {run.prefix!r}")
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'}  {name}")
    out = Path(args.out) if args.out else run.workdir / "results.json"
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"results in {out}")
    if args.plot:
        written = rep.write_plot(Path(args.plot), result)
        if written.suffix != Path(args.plot).suffix:
            print(f"matplotlib is not installed: wrote an SVG plot instead, {written}")
        else:
            print(f"plot in {written}")
    print(f"\nload test {'OK' if result['ok'] else 'FAILED'} in {result['seconds']} s")
    return 0 if result["ok"] else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=10, help="concurrent calls")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which the calls start, evenly")
    p.add_argument("--hold", type=float, default=20.0, help="seconds all calls stay up together after the ramp")
    p.add_argument("--workers", type=int, default=2, help="media worker processes")
    p.add_argument("--tool-workers", type=int, default=1, help="tool worker processes")
    p.add_argument(
        "--controllers",
        type=int,
        default=1,
        help="controller processes (with a standby controller, 2: one leads, one waits)",
    )
    p.add_argument(
        "--chaos",
        default="",
        help="faults to inject, fault@time (s since the ramp started) comma-separated: kill-worker, "
        "stop-worker, kill-controller, restart-redis, kill-tool-worker; e.g. kill-worker@20s,restart-redis@40s",
    )
    p.add_argument(
        "--mail-delay-ms",
        type=int,
        default=None,
        help="the mail server holds each DATA this long (default: 1000 with kill-tool-worker, else 0)",
    )
    p.add_argument("--profile", default="telephony_pcm16_24k", help="media profile of the calls' context")
    p.add_argument(
        "--worker-admission",
        action="store_true",
        help="keep media_worker.admission as configured (off by default: a worker that stops taking calls when "
        "it measures an overload would make calls wait, where the run measures what it carries)",
    )
    p.add_argument(
        "--sim-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of the Asterisk simulator and the Realtime emulator (uvloop: cheaper load generators)",
    )
    p.add_argument("--out", help="JSON results (default: results.json in the work directory)")
    p.add_argument("--plot", help="PNG plot (SVG next to it without matplotlib)")
    p.add_argument("--redis-url", help="overrides redis.url (default: the config's)")
    p.add_argument(
        "--real-asterisk",
        action="store_true",
        help="start a real Asterisk 22 (scripts/real-asterisk, cached) for the run and call through it",
    )
    p.add_argument(
        "--ari-url",
        help="a real Asterisk you run (http://host:8088, with deploy/asterisk's confs and "
        "no other calls): callers on Local channels into --ari-context",
    )
    p.add_argument("--ari-user", default="asterisk")
    p.add_argument("--ari-password", default="")
    p.add_argument(
        "--ari-context",
        default=CONTEXT,
        help="the dialplan context the Local channels dial into "
        f"(--profile applies to AI context {SHIPPED_AI_CONTEXT}, the one {CONTEXT} sets)",
    )
