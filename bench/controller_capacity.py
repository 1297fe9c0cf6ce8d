"""The controller at scale, on a core of its own: N calls started over R s through the real controller process,
each held H s from its start, then hung up by the caller.

    .venv/bin/python bench/controller_capacity.py [--calls 200] [--ramp 10] [--hold 10] [--json out.json]

The controller is a real subprocess, pinned to core 0 (every thread, `sched_setaffinity` after spawn), on the
real Redis (`--redis`, default $VA_TEST_REDIS_URL; a fresh key prefix, removed afterwards). This driver, the
Asterisk simulator (ARI over HTTP and the events WebSocket) and a test AudioSocket listener registered as a
media worker (it accepts and drains: no audio path, only signalling) run in this process, pinned to core 1.
Redis (shared) and the machine's other work are not pinned. The callers send no audio (`send_silence=False`).

Reported over the run (first call placed -> every call ended in Redis):
- ARI events the controller received (its own `va_ari_events_total`), per second and per call; its ARI REST
  requests (`va_ari_requests_total`) per call, and those answered with an error;
- the controller's CPU (/proc/PID/stat utime + stime): ms per call set up, µs per event, % of core 0;
- setup latency, StasisStart (in the simulator) -> the media leg's AudioSocket connection at the listener:
  p50 / p95 / p99 / max; calls never connected;
- the controller's event-loop lag in the run, from two scrapes of its `va_event_loop_lag_seconds` histogram
  (one timer every 0.5 s: bucket bounds, coarse; the max is the highest bucket hit);
- the share of the run the controller's threads were runnable but waiting for core 0 (other work of the machine
  on its core: /proc/PID/task/*/schedstat);
- the controller's RSS before the first call and its peak; each core's busy share (core 1 near 100 %: the
  simulator, not the controller, was the limit, and the controller's figures are a floor).

Bounded: every wait has a deadline and the bench stops by itself. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.controller_rig import ControllerRig  # noqa: E402
from bench.pinned_capacity import core_jiffies, pin, runqueue_wait_s  # noqa: E402
from sim.cluster import LocalCluster, http_get  # noqa: E402
from sim.loadtest_report import metric, parse_metrics, proc_cpu_seconds, proc_rss_mb  # noqa: E402
from tests.ari_harness import percentile  # noqa: E402

CONTROLLER_CORE = 0
DRIVER_CORE = 1
SAMPLE_S = 0.25
END_TIMEOUT_S = 60.0  # after the last hangup, every call must have ended in Redis within this
CLK = os.sysconf("SC_CLK_TCK")


def busy_pct(first: dict[int, tuple[int, int]], last: dict[int, tuple[int, int]], core: int) -> float:
    (b0, t0), (b1, t1) = first[core], last[core]
    return round(100 * (b1 - b0) / max(t1 - t0, 1), 1)


def controller_cpu_s(pid: int) -> float:
    return proc_cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), CLK)


def controller_rss_mb(pid: int) -> float:
    return proc_rss_mb(Path(f"/proc/{pid}/status").read_text())


def scrape(health_url: str) -> list:
    status, body = http_get(health_url + "/metrics")
    if status != 200:
        raise RuntimeError(f"the controller's /metrics answered {status}")
    return parse_metrics(body.decode(errors="replace"))


def lag_window(first: list, last: list) -> dict:
    """Event-loop lag (ms, bucket bounds) of the observations between two scrapes."""

    def buckets(samples: list) -> dict[float, float]:
        return {
            float("inf") if lab["le"] == "+Inf" else float(lab["le"]) * 1000: v
            for name, lab, v in samples
            if name == "va_event_loop_lag_seconds_bucket"
        }

    before, after = buckets(first), buckets(last)
    window = sorted((le, n - before.get(le, 0.0)) for le, n in after.items())
    total = window[-1][1] if window else 0.0
    if total <= 0:
        return {"observations": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def bound(q: float) -> float:
        return next(le for le, n in window if n >= q * total)

    return {"observations": int(total), "p50_ms": bound(0.5), "p99_ms": bound(0.99), "max_ms": bound(1.0)}


def ari_error_requests(samples: list) -> int:
    return int(
        sum(
            v
            for name, lab, v in samples
            if name == "va_ari_requests_total" and not lab.get("status", "").startswith("2")
        )
    )


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


async def run(args: argparse.Namespace) -> dict:
    rig = await ControllerRig.start(args.redis, "bench-ctl-", capacity=args.calls + 10)
    sim, listener, client, keys = rig.sim, rig.listener, rig.client, rig.keys
    # The provider's session limit (100 in the shipped config) would queue calls: this bench measures the
    # controller, not the queue, so every call gets a session at once (`--queue` keeps the shipped limit).
    extra = {} if args.queue else {"providers": {"openai_realtime": {"max_concurrent_sessions": args.calls + 10}}}
    cluster = LocalCluster(rig.config(extra), rig.workdir, rig.env)
    proc = cluster.start("controller")
    out: dict = {"calls": args.calls, "ramp_s": args.ramp, "hold_s": args.hold, "cores": os.cpu_count()}
    try:
        if not await asyncio.to_thread(cluster.wait_ready, [proc], 30):
            raise SystemExit(proc.log_text()[-2000:])
        pid = proc.popen.pid
        out["controller_threads_pinned"] = pin(pid, {CONTROLLER_CORE})
        # Warm-up (connections, Redis scripts loaded), then the idle figures the run is measured from.
        warm = await sim.place_call(send_silence=False)
        await listener.wait_for(1)
        await warm.hangup()
        while await client.scard(keys.calls_active):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        metrics0 = await asyncio.to_thread(scrape, proc.health_url)
        cpu0, rss0, cores0 = controller_cpu_s(pid), controller_rss_mb(pid), core_jiffies()
        wait0 = runqueue_wait_s(pid)
        connected_before = len(listener.connections)
        peak_rss = rss0

        async def watch_rss() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, controller_rss_mb(pid))
                await asyncio.sleep(SAMPLE_S)

        async def caller(i: int, t0: float):
            await asyncio.sleep(max(0.0, t0 + i * args.ramp / args.calls - time.monotonic()))
            call = await sim.place_call(send_silence=False)
            await asyncio.sleep(args.hold)
            await call.hangup()
            return call

        watcher = asyncio.create_task(watch_rss())
        t0 = time.monotonic()
        calls = await asyncio.wait_for(
            asyncio.gather(*(caller(i, t0) for i in range(args.calls))), args.ramp + args.hold + 60
        )
        deadline = time.monotonic() + END_TIMEOUT_S
        while await client.scard(keys.calls_active) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        t1 = time.monotonic()
        cpu1, cores1, wait1 = controller_cpu_s(pid), core_jiffies(), runqueue_wait_s(pid)
        watcher.cancel()
        metrics1 = await asyncio.to_thread(scrape, proc.health_url)
        span = t1 - t0
        # Setup latency: the listener's connection carries the call id; its record names the caller channel.
        accepted = {c.uuid: c.accepted_t for c in list(listener.connections.values())[connected_before:]}
        by_caller = {}
        for call_id, accepted_t in accepted.items():
            channel = await client.hget(keys.call(call_id), "caller_channel")
            if channel:
                by_caller[channel.decode()] = accepted_t
        setup = [
            (by_caller[c.channel_id] - c.stasis_start_t) * 1000
            for c in calls
            if c.channel_id in by_caller and c.stasis_start_t is not None
        ]
        events = int(metric(metrics1, "va_ari_events_total") - metric(metrics0, "va_ari_events_total"))
        queued = int(metric(metrics1, "va_calls_queued_total") - metric(metrics0, "va_calls_queued_total"))
        requests = int(metric(metrics1, "va_ari_requests_total") - metric(metrics0, "va_ari_requests_total"))
        cpu_s = cpu1 - cpu0
        out.update(
            seconds=round(span, 2),
            left_active=int(await client.scard(keys.calls_active)),
            set_up=len(setup),
            not_connected=args.calls - len(setup),
            queued=queued,
            setup_ms=stats(setup),
            events=events,
            events_per_s=round(events / span, 1),
            events_per_call=round(events / args.calls, 1),
            requests_per_call=round(requests / args.calls, 1),
            request_errors=ari_error_requests(metrics1) - ari_error_requests(metrics0),
            cpu_ms_per_call=round(1000 * cpu_s / args.calls, 2),
            cpu_us_per_event=round(1e6 * cpu_s / max(events, 1), 1),
            controller_core_pct=round(100 * cpu_s / span, 1),
            runqueue_wait_pct=round(100 * (wait1 - wait0) / span, 1),
            loop_lag=lag_window(metrics0, metrics1),
            rss_mb_idle=round(rss0, 1),
            rss_mb_peak=round(peak_rss, 1),
            core0_busy_pct=busy_pct(cores0, cores1, CONTROLLER_CORE),
            core1_busy_pct=busy_pct(cores0, cores1, DRIVER_CORE),
            load_average=" ".join(f"{v:.2f}" for v in os.getloadavg()),
        )
        out["ok"] = out["not_connected"] == 0 and out["left_active"] == 0
    finally:
        cluster.stop_all()
        await rig.stop()  # its workdir too: the controller's log tail is printed when it fails
    return out


def report(r: dict) -> list[str]:
    s, lag = r["setup_ms"], r["loop_lag"]
    return [
        f"controller capacity: {r['calls']} calls started over {r['ramp_s']:g} s, each held {r['hold_s']:g} s; "
        f"controller on core {CONTROLLER_CORE}, simulator, listener and driver on core {DRIVER_CORE} "
        f"({r['cores']} cores, shared machine; load average at the end {r['load_average']})",
        f"  run {r['seconds']:.1f} s (first call placed -> every call ended), set up {r['set_up']}/{r['calls']}, "
        f"not connected {r['not_connected']}, queued for capacity {r['queued']}, left active {r['left_active']}",
        f"  ARI events received {r['events']} ({r['events_per_call']} per call): {r['events_per_s']:.1f} events/s; "
        f"REST requests {r['requests_per_call']} per call, {r['request_errors']} answered with an error",
        f"  controller CPU {r['cpu_ms_per_call']:.2f} ms per call, {r['cpu_us_per_event']:.0f} µs per event, "
        f"{r['controller_core_pct']:.1f} % of core {CONTROLLER_CORE} over the run; runnable but waiting for the core "
        f"{r['runqueue_wait_pct']:.1f} % of the run",
        f"  setup, StasisStart -> media leg connected: p50 {s.get('p50', 0):.1f}  p95 {s.get('p95', 0):.1f}  "
        f"p99 {s.get('p99', 0):.1f}  max {s.get('max', 0):.1f} ms (n={s['n']})",
        f"  controller event-loop lag (0.5 s timer, bucket bounds): p50 {lag['p50_ms']} p99 {lag['p99_ms']} "
        f"max {lag['max_ms']} ms (n={lag['observations']})",
        f"  controller RSS {r['rss_mb_idle']:.1f} MB idle, {r['rss_mb_peak']:.1f} MB peak; core {CONTROLLER_CORE} "
        f"busy {r['core0_busy_pct']:.1f} %, core {DRIVER_CORE} busy {r['core1_busy_pct']:.1f} %",
        f"  verdict: {'pass' if r['ok'] else 'FAIL'} (every call connected and ended)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the calls start")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each call lasts from its start")
    parser.add_argument("--queue", action="store_true", help="keep the shipped provider limit (100 sessions)")
    parser.add_argument("--redis", default=os.environ.get("VA_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"))
    parser.add_argument("--json", type=Path, help="write the figures here as JSON (for run_all)")
    args = parser.parse_args()
    if args.calls < 1 or args.ramp < 0 or args.hold <= 0:
        parser.error("--calls must be >= 1, --ramp >= 0 and --hold > 0")
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: one for the controller, one for the rest")
        return 2
    os.sched_setaffinity(0, {DRIVER_CORE})  # before any thread or child: they all inherit core 1
    result = asyncio.run(run(args))
    print("\n".join(report(result)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
