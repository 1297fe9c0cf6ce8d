"""Capacity of one media worker process on a core of its own: the worker pinned to core 0, everything else
(the Asterisk simulator, the Realtime emulator, the mail server, the controller, the tool worker, this driver)
pinned to core 1, one `voice-agent loadtest` run (sim/loadtest.py, in this process) per call count and loop.

    .venv/bin/python bench/pinned_capacity.py [--counts 25,50,100,150,200,250] [--loops asyncio,uvloop]
        [--ramp 10] [--hold 30] [--out bench/pinned_capacity.json] [--md table.md]
        [--profile-calls 150 --profile-s 20]   # then a py-spy flame graph and top-N of the worker at that count

Per run, over the hold (every call up; from `ramp + settle` to `ramp + hold` after the first call):
- the worker's CPU ms per call-second, from /proc/PID/stat (utime + stime) at both ends of the hold;
- the playout tick lag p50 / p99 / max in the hold, from two scrapes of the worker's cumulative lag buckets
  (`va_playout_tick_lag_wakeups{le_ms}`: bucket bounds, so "p99 5" means "p99 in (4, 5] ms"), and the max as the
  bound of the highest bucket hit (the exact max when it is the +Inf bucket);
- frame slots the clock skipped in the hold (`va_playout_late_ticks`: a wakeup a whole 20 ms late or more, the
  frames that reached Asterisk late), and underruns (the call records, whole calls);
- the worker's RSS growth per call (hold end against before the first call);
- the share of the hold the worker's threads were runnable but waiting for core 0 (/proc/PID/task/*/schedstat);
- each core's busy share from /proc/stat, and the worker's share of core 0: core 0's remainder is other load of
  this machine (the pin keeps the cluster off core 0, not the rest of the machine), and a core 1 near 100 %
  means the simulators, not the worker, were the limit: the worker's figures are then a floor.

A run passes when the load test's own checks pass (every call set up, none dropped, nothing left over), the lag
p99 in the hold is <= --lag-ms and no call record counts an underrun. Each run is bounded by the load test's own
deadline; the whole bench by the counts and loops given. Redis (the shared server) is not pinned.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim import loadtest as lt  # noqa: E402 - the repository root first, as the other benches do
from sim import loadtest_report as rep  # noqa: E402
from sim.cluster import http_get  # noqa: E402

WORKER_CORE = 0
CLUSTER_CORE = 1
SETTLE_S = 2.0  # the last calls of the ramp are set up within this: the hold's figures start after it
SAMPLE_S = 0.5
LAG_BUDGET_MS = 5.0
CPU_BUDGET_MS = 2.5
IDLE_FRAMES = ("EpollSelector.select (", "select (selectors.py")  # the loop waiting for I/O or its next timer
LINE_NUMBER = re.compile(r":\d+\)$")  # "tick (media_worker/calls.py:120)" -> "tick (media_worker/calls.py)"


def pin(pid: int, cores: set[int]) -> int:
    """Every thread of `pid` onto `cores` (sched_setaffinity takes one thread at a time); threads pinned."""
    pinned = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
            pinned += 1
        except OSError:  # a thread that ended in between
            continue
    return pinned


def core_jiffies() -> dict[int, tuple[int, int]]:
    """cpuN -> (busy, total) jiffies from /proc/stat (busy: all but idle and iowait)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def runqueue_wait_s(pid: int) -> float:
    """Seconds the threads of `pid` spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat, field 2):
    a loop that stalls while this grows was kept off its core by other work, not blocked on its own."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that ended in between; no schedstats
            continue
    return total_ns / 1e9


@dataclass
class Sample:
    t: float  # monotonic
    worker_cpu_s: float
    worker_rss_mb: float
    cores: dict[int, tuple[int, int]]
    metrics: list  # the worker's /metrics, parsed
    worker_wait_s: float = 0.0  # runnable, waiting for core 0
    driver_cpu_s: float = 0.0  # this process (the load test's driver and this sampler), on core 1


@dataclass
class WorkerWatch:
    """Samples the pinned worker every SAMPLE_S in a thread (the driver's own loop keeps its pace)."""

    pid: int
    health_url: str
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        status_code, body = http_get(self.health_url + "/metrics")
        metrics = rep.parse_metrics(body.decode(errors="replace")) if status_code == 200 else []
        self.samples.append(
            Sample(
                time.monotonic(),
                rep.proc_cpu_seconds(stat, os.sysconf("SC_CLK_TCK")),
                rep.proc_rss_mb(status),
                core_jiffies(),
                metrics,
                runqueue_wait_s(self.pid),
                sum(os.times()[:2]),
            )
        )

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.take()

    def at(self, t: float, after: bool) -> Sample | None:
        """The first sample at or after t (after=True), or the last at or before it."""
        with_metrics = [s for s in self.samples if s.metrics]
        if after:
            return next((s for s in with_metrics if s.t >= t), None)
        return next((s for s in reversed(with_metrics) if s.t <= t), None)


def lag_buckets(metrics: list) -> list[tuple[float, float]]:
    """(le_ms, cumulative wakeups), ascending, +Inf last."""
    out = [
        (float("inf") if labels["le_ms"] == "+Inf" else float(labels["le_ms"]), value)
        for name, labels, value in metrics
        if name == "va_playout_tick_lag_wakeups"
    ]
    return sorted(out)


def window_lag(first: list, last: list) -> dict:
    """Lag p50 / p99 / max (bucket bounds, ms) of the wakeups between two scrapes."""
    before = dict(lag_buckets(first))
    buckets = [(le, n - before.get(le, 0.0)) for le, n in lag_buckets(last)]
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return {"wakeups": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    lifetime_max = rep.metric(last, "va_playout_tick_lag_max_ms")

    def quantile(q: float) -> float:
        le = next(le for le, n in buckets if n >= q * total)
        return lifetime_max if le == float("inf") else le

    top = next(le for le, n in buckets if n >= total)
    return {
        "wakeups": int(total),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "max_ms": lifetime_max if top == float("inf") else top,
        "wakeups_over_5ms": int(total - dict(buckets).get(5.0, 0.0)),
    }


def core_busy_pct(first: Sample, last: Sample, core: int) -> float:
    (b0, t0), (b1, t1) = first.cores[core], last.cores[core]
    return round(100 * (b1 - b0) / max(t1 - t0, 1), 1)


def loadtest_args(calls: int, args: argparse.Namespace) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    lt.add_arguments(parser)
    argv = ["--calls", str(calls), "--workers", "1", "--tool-workers", "1"]
    argv += ["--ramp", str(args.ramp), "--hold", str(args.hold), "--profile", args.media_profile]
    argv += ["--sim-loop", args.sim_loop]
    if args.redis_url:
        argv += ["--redis-url", args.redis_url]
    ns = parser.parse_args(argv)
    ns.config = None  # the CLI's global --config: the shipped config/ai-agent.yaml
    return ns


def py_spy(pid: int, calls: int, loop: str, seconds: float) -> dict[str, object]:
    """A flame graph (SVG) and the collapsed stacks of the worker, recorded without pausing it (--nonblocking)."""
    out = ROOT / "bench" / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"worker-{loop}-{calls}"
    spy = Path(sys.executable).with_name("py-spy")
    files: dict[str, object] = {}
    for fmt, path in (("raw", stem.with_suffix(".collapsed")), ("flamegraph", stem.with_suffix(".svg"))):
        cmd = [str(spy), "record", "--nonblocking", "--pid", str(pid), "--duration", f"{seconds:g}"]
        cmd += ["--format", fmt, "-o", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        files[fmt] = str(path.relative_to(ROOT)) if proc.returncode == 0 else f"failed: {proc.stderr[-300:]}"
    collapsed = stem.with_suffix(".collapsed")
    if collapsed.exists():
        top = top_functions(collapsed.read_text(encoding="utf-8"), 15)
        text = [
            f"py-spy --nonblocking, {seconds:g} s at {calls} calls ({loop}): {top['samples']} busy samples, "
            f"{top['idle_pct']} % of all samples idle in the selector; % of the busy samples",
        ]
        for kind in ("self", "inclusive"):
            text += ["", f"{kind}:"] + [f"  {p:5.1f}  {name}" for name, p in top.get(kind, [])]
        stem.with_suffix(".top.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
        files["top"] = str(stem.with_suffix(".top.txt").relative_to(ROOT))
        files["summary"] = top
    return files


def top_functions(collapsed: str, n: int = 10) -> dict:
    """From py-spy's collapsed stacks ("frame;frame;... count" per line): the functions with the most samples
    on top of the stack (self) and anywhere in it (inclusive), in % of the busy samples. A sample waiting in
    the selector is the loop idle (py-spy --nonblocking counts it): counted apart, as `idle_pct`."""
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        if frames[-1].startswith(IDLE_FRAMES):
            idle += count
            continue
        total += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(n)]

    if not total:
        return {"samples": 0, "idle_pct": 100.0 if idle else None}
    return {
        "samples": total,
        "idle_pct": round(100 * idle / (total + idle), 1),
        "self": pct(self_samples),
        "inclusive": pct(inclusive),
    }


def one_run(calls: int, loop: str, args: argparse.Namespace, profile: bool = False) -> dict:
    ns = loadtest_args(calls, args)
    os.environ["MEDIA_EVENT_LOOP"] = loop  # config/ai-agent.yaml: media_worker.event_loop
    run = lt.prepare(ns)
    if run is None:
        return {"calls": calls, "loop": loop, "ok": False, "why": "the load test could not prepare"}
    verdict: dict = {"calls": calls, "loop": loop, "sim_loop": args.sim_loop}
    try:
        started = lt.start_cluster(ns, run)
        if started is None:
            return {**verdict, "ok": False, "why": "the cluster did not start"}
        worker = started.workers[0]
        verdict["worker_threads_pinned"] = pin(worker.popen.pid, {WORKER_CORE})
        watch = WorkerWatch(worker.popen.pid, worker.health_url)
        watch.take()
        before = watch.samples[-1] if watch.samples else None
        sampler = threading.Thread(target=watch.run, name="worker-watch", daemon=True)
        t0 = time.monotonic()
        sampler.start()
        profiler = None
        if profile:  # during the hold, from a thread: the load test drives the calls meanwhile
            profile_at = t0 + args.ramp + SETTLE_S
            profiled: dict = {}

            def record() -> None:
                time.sleep(max(0.0, profile_at - time.monotonic()))
                profiled.update(py_spy(worker.popen.pid, calls, loop, args.profile_s))

            profiler = threading.Thread(target=record, name="py-spy", daemon=True)
            profiler.start()
        result = lt.measure(ns, run, started)
        watch.stop.set()
        sampler.join(timeout=5)
        if profiler is not None:
            profiler.join(timeout=2 * args.profile_s + 70)
            verdict["profile"] = profiled
    finally:
        lt.tear_down(run)
    first = watch.at(t0 + args.ramp + SETTLE_S, after=True)
    last = watch.at(t0 + args.ramp + args.hold, after=False)
    if first is None or last is None or before is None or last.t - first.t < 1.0:
        return {**verdict, "ok": False, "why": "no worker samples in the hold"}
    span = last.t - first.t
    lag = window_lag(first.metrics, last.metrics)
    others = [p for p in result["processes"] if p["role"] != "media-worker"]
    verdict.update(
        hold_s=round(span, 1),
        set_up=result["setup"]["set_up"],
        peak_up=result["peak_up"],
        checks_ok=result["ok"],
        checks=result["checks"],
        errors=result["errors"],
        underruns=result["underruns"],
        worker_cpu_ms_per_call_s=round(1000 * (last.worker_cpu_s - first.worker_cpu_s) / (span * calls), 3),
        worker_core_pct=round(100 * (last.worker_cpu_s - first.worker_cpu_s) / span, 1),
        lag=lag,
        lag_p99_lifetime_ms=rep.metric(last.metrics, "va_playout_tick_lag_p99_ms"),
        late_ticks_hold=int(
            rep.metric(last.metrics, "va_playout_late_ticks") - rep.metric(first.metrics, "va_playout_late_ticks")
        ),
        rss_mb_per_call=round((last.worker_rss_mb - before.worker_rss_mb) / calls, 3),
        worker_rss_mb=round(last.worker_rss_mb, 1),
        worker_runqueue_wait_pct=round(100 * (last.worker_wait_s - first.worker_wait_s) / span, 1),
        core0_busy_pct=core_busy_pct(first, last, WORKER_CORE),
        core1_busy_pct=core_busy_pct(first, last, CLUSTER_CORE),
        cluster_core_pct=round(sum(p["core_pct"] for p in others), 1),
        # Core 1's share of each of its processes, in CPU ms per call-second: what a simulator costs per call.
        core1_ms_per_call_s={p["id"]: p["cpu_ms_per_call_s"] for p in others},
        driver_ms_per_call_s=round(1000 * (last.driver_cpu_s - first.driver_cpu_s) / (span * calls), 3),
        load_average=os.getloadavg()[0],
    )
    p99 = lag["p99_ms"]
    verdict["ok"] = bool(result["ok"] and p99 is not None and p99 <= args.lag_ms and result["underruns"] == 0)
    return verdict


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(runs: list[dict]) -> list[str]:
    lines = [
        "| loop | calls | set up | worker CPU ms/call-s (≤ 2.5) | worker % core 0 | lag p50 / p99 / max ms (p99 ≤ 5) "
        "| wakeups > 5 ms | skipped slots | underruns (0) | RSS MB/call | core 0 busy % | core 1 busy % "
        "(cluster's) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "lag" not in r:
            lines.append(f"| {r['loop']} | {r['calls']} | - | - | - | - | - | - | - | - | - | - | FAIL: {r['why']} |")
            continue
        lag = r["lag"]
        lines.append(
            f"| {r['loop']} | {r['calls']} | {r['set_up']} | {fmt(r['worker_cpu_ms_per_call_s'])} | "
            f"{fmt(r['worker_core_pct'], 1)} | {fmt(lag['p50_ms'])} / {fmt(lag['p99_ms'])} / {fmt(lag['max_ms'], 1)} | "
            f"{lag['wakeups_over_5ms']} of {lag['wakeups']} | {r['late_ticks_hold']} | {r['underruns']} | "
            f"{fmt(r['rss_mb_per_call'], 3)} | {fmt(r['core0_busy_pct'], 1)} | {fmt(r['core1_busy_pct'], 1)} "
            f"({fmt(r['cluster_core_pct'], 1)}) | {'pass' if r['ok'] else 'FAIL'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="25,50,100,150,200,250", help="call counts, comma-separated")
    parser.add_argument("--loops", default="asyncio,uvloop", help="the worker's event loops (asyncio, uvloop)")
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--lag-ms", type=float, default=LAG_BUDGET_MS)
    parser.add_argument("--media-profile", default="telephony_pcm16_24k", help="the calls' media profile")
    parser.add_argument("--redis-url", default=os.environ.get("VA_TEST_REDIS_URL"))
    parser.add_argument(
        "--sim-loop",
        choices=("asyncio", "uvloop"),
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="the simulators' event loop (default uvloop when installed: core 1 then holds more calls)",
    )
    parser.add_argument("--stop-after-fail", type=int, default=2, help="stop a loop after this many failed counts")
    parser.add_argument("--profile-calls", type=int, default=0, help="then profile the worker at this count")
    parser.add_argument("--profile-loop", default="asyncio")
    parser.add_argument("--profile-s", type=float, default=20.0)
    parser.add_argument("--top-of", type=Path, help="only print the top functions of a collapsed py-spy file")
    parser.add_argument("--out", type=Path, help="JSON of every run")
    parser.add_argument("--md", type=Path, help="the markdown table")
    args = parser.parse_args()
    if args.top_of:
        print(json.dumps(top_functions(args.top_of.read_text(encoding="utf-8"), 15), indent=1))
        return 0
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: one for the worker, one for the rest")
        return 2
    os.sched_setaffinity(0, {CLUSTER_CORE})  # before any thread or child: they all inherit core 1
    counts = [int(c) for c in args.counts.split(",") if c]
    loops = [x for x in args.loops.split(",") if x]
    print(
        f"pinned capacity: worker on core {WORKER_CORE}, simulators, controller, tool worker and driver on core "
        f"{CLUSTER_CORE}; counts {counts}, loops {loops}, ramp {args.ramp:g} s, hold {args.hold:g} s",
        flush=True,
    )
    runs: list[dict] = []
    for loop in loops:
        failed = 0
        for calls in counts:
            if failed >= args.stop_after_fail:
                break
            verdict = one_run(calls, loop, args)
            runs.append(verdict)
            failed += 0 if verdict["ok"] else 1
            print(f"=> {json.dumps(verdict)}", flush=True)
            print("\n".join(table([verdict])[2:]), flush=True)
    profile = None
    if args.profile_calls:
        profile = one_run(args.profile_calls, args.profile_loop, args, profile=True)
        print(f"=> profile run: {json.dumps(profile)}", flush=True)
    lines = table(runs)
    print("\n".join(lines))
    if args.md:
        args.md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.out:
        data = {"cores": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
        data["profile_run"] = profile
        args.out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
