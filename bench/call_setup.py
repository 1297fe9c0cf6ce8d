"""Call setup latency through the real controller: StasisStart (in the Asterisk simulator) to the media leg's
AudioSocket connection at a worker's listener, for calls one at a time and in bursts.

    .venv/bin/python bench/call_setup.py [--sequential 30] [--burst 50] [--redis redis://127.0.0.1:6379/9]

The controller is a real subprocess on the real Redis; the simulator and a test AudioSocket listener
(registered as a media worker) run in this process. Reports p50/p95/p99 and max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.controller_rig import ControllerRig  # noqa: E402
from sim.cluster import LocalCluster  # noqa: E402
from tests.ari_harness import percentile  # noqa: E402


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<28} n={len(values):<4} p50 {percentile(values, 50):6.1f}  p95 {percentile(values, 95):6.1f}  "
        f"p99 {percentile(values, 99):6.1f}  max {max(values):6.1f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    rig = await ControllerRig.start(args.redis, "bench-setup-", capacity=args.burst + 10)
    sim, listener, client, keys = rig.sim, rig.listener, rig.client, rig.keys
    cluster = LocalCluster(rig.config(), rig.workdir, rig.env)
    proc = cluster.start("controller")
    try:
        if not await asyncio.to_thread(cluster.wait_ready, [proc], 30):
            raise SystemExit(proc.log_text()[-2000:])

        async def one() -> float:
            seen = len(listener.connections)
            call = await sim.place_call()
            await listener.wait_for(seen + 1)
            conn = max(listener.connections.values(), key=lambda c: c.accepted_t)
            latency = (conn.accepted_t - call.stasis_start_t) * 1000
            await call.hangup()
            return latency

        await one()  # warm-up: connections, scripts loaded
        sequential = [await one() for _ in range(args.sequential)]
        await asyncio.sleep(0.5)
        before = len(listener.connections)
        calls = await asyncio.gather(*(sim.place_call() for _ in range(args.burst)))
        await listener.wait_for(before + args.burst, timeout=60)
        accepted = {c.uuid: c.accepted_t for c in list(listener.connections.values())[before:]}
        by_caller = {}
        for call_id in accepted:
            record = await client.hgetall(keys.call(call_id))
            by_caller[record[b"caller_channel"].decode()] = accepted[call_id]
        burst = [(by_caller[c.channel_id] - c.stasis_start_t) * 1000 for c in calls]
        await asyncio.gather(*(c.hangup() for c in calls))
        print(f"call setup, StasisStart -> media leg connected (controller {os.cpu_count()} CPUs machine):")
        print(summary("one call at a time", sequential))
        print(summary(f"{args.burst} calls at once", burst))
    finally:
        cluster.stop_all()
        await rig.stop(keep_workdir=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
