"""Capacity search: the most calls a media worker process holds with p99 tick lag <= 5 ms and no underruns
(the budget asks >= 200), by bisection over `voice-agent loadtest` runs with 1 worker, then with 2 and 4.

    .venv/bin/python bench/capacity.py [--workers 1,2,4] [--max-calls 240] [--runs 6] [--ramp 10] [--hold 30]

Each probe is a whole load test (every role and simulator as processes, fresh Redis prefix). A probe passes
when every call was set up, none dropped, nothing was left over, every worker's `va_playout_tick_lag_p99_ms`
is <= the limit and no call record counts an underrun. The lag gauge is the p99 over the worker's life
(ramp and hold), in the histogram's bucket bounds (… 4, 5, 7.5, 10 ms). Everything shares this machine's
cores with the simulators, which cost more CPU per call than the worker: the figure is a floor of what a
worker holds on a core of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def probe(calls: int, workers: int, args: argparse.Namespace) -> dict:
    """One load test run; its verdict and the figures that decided it."""
    out = Path(tempfile.mkdtemp(prefix="capacity-")) / "results.json"
    cmd = [
        sys.executable,
        "-m",
        "voice_agent.cli",
        "loadtest",
        "--calls",
        str(calls),
        "--workers",
        str(workers),
        "--ramp",
        str(args.ramp),
        "--hold",
        str(args.hold),
        "--tool-workers",
        "1",
        "--out",
        str(out),
        "--profile",
        args.profile,
    ]
    if args.redis_url:
        cmd += ["--redis-url", args.redis_url]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2 * args.ramp + args.hold + 180)
    if not out.exists():
        return {"calls": calls, "ok": False, "why": f"no results (exit {proc.returncode})", "tail": proc.stdout[-800:]}
    result = json.loads(out.read_text())
    lag = max([w["tick_lag_p99_ms"] for w in result["workers"]] or [float("inf")])
    media_cpu = [p for p in result["processes"] if p["role"] == "media-worker"]
    verdict = {
        "calls": calls,
        "tick_lag_p99_ms": lag,
        "underruns": result["underruns"],
        "set_up": result["setup"]["set_up"],
        "dropped": result["dropped"],
        "checks_ok": result["ok"],
        "worker_core_pct": [p["core_pct"] for p in media_cpu],
        "worker_ms_per_call_s": [p["cpu_ms_per_call_s"] for p in media_cpu],
        "total_core_pct": round(sum(p["core_pct"] for p in result["processes"]), 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    verdict["ok"] = bool(result["ok"] and lag <= args.lag_ms and result["underruns"] == 0)
    return verdict


def search(workers: int, args: argparse.Namespace) -> dict:
    """Bisection on the call count in [0, max_calls * workers], at most `runs` probes."""
    low, high = 0, args.max_calls * workers + 1  # low passes (trivially), high fails (assumed)
    probes = []
    guess = args.start * workers if args.start else (low + high) // 2
    for _ in range(args.runs):
        if high - low <= max(1, args.resolution * workers):
            break
        calls = min(max(guess, low + 1), high - 1)
        verdict = probe(calls, workers, args)
        probes.append(verdict)
        print(
            f"  {workers} worker(s), {calls:>4} calls: {'pass' if verdict['ok'] else 'FAIL'}  "
            + json.dumps({k: v for k, v in verdict.items() if k not in ("calls", "ok")}),
            flush=True,
        )
        if verdict["ok"]:
            low = calls
        else:
            high = calls
        guess = (low + high) // 2
    return {
        "workers": workers,
        "max_calls_passing": low,
        "first_failing": high if high <= args.max_calls * workers else None,
        "probes": probes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts to search, comma-separated")
    parser.add_argument("--max-calls", type=int, default=240, help="upper bound per worker")
    parser.add_argument("--start", type=int, default=0, help="first probe per worker (default: the middle)")
    parser.add_argument("--runs", type=int, default=6, help="probes per worker count (bounded)")
    parser.add_argument("--resolution", type=int, default=5, help="stop when the bracket is this narrow per worker")
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--lag-ms", type=float, default=5.0)
    parser.add_argument("--profile", default="telephony_pcm16_24k")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--out", help="JSON of every probe")
    args = parser.parse_args()
    cores = os.cpu_count()
    print(
        f"capacity search: p99 tick lag <= {args.lag_ms} ms, no underruns; this machine has {cores} cores, "
        "shared by the media workers, the controller, the tool worker and the simulators (the Asterisk "
        "simulator and the Realtime emulator cost more CPU per call than a worker), so more worker "
        f"processes than cores cannot add capacity here",
        flush=True,
    )
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        found = search(workers, args)
        results.append(found)
        print(
            f"=> {workers} worker(s): {found['max_calls_passing']} calls pass"
            + (f", {found['first_failing']} fail" if found["first_failing"] else "")
            + f" (on {cores} cores)",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"cores": cores, "results": results}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
