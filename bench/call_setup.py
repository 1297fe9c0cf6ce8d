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
import tempfile
import uuid
from pathlib import Path

import redis as sync_redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.keys import Keys  # noqa: E402
from sim.asterisk import AsteriskSim  # noqa: E402
from sim.cluster import LocalCluster  # noqa: E402
from tests.ari_harness import (  # noqa: E402
    ARI_PASSWORD,
    ARI_USER,
    AudioSocketListener,
    FakeWorker,
    percentile,
    write_config,
)
from tests.conftest import purge  # noqa: E402


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<28} n={len(values):<4} p50 {percentile(values, 50):6.1f}  p95 {percentile(values, 95):6.1f}  "
        f"p99 {percentile(values, 99):6.1f}  max {max(values):6.1f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    prefix = f"va-bench-{uuid.uuid4().hex[:8]}:"
    workdir = Path(tempfile.mkdtemp(prefix="bench-setup-"))
    sim = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=workdir / "sim")
    await sim.start("127.0.0.1", 0)
    listener = AudioSocketListener()
    await listener.start()
    client = aioredis.Redis.from_url(args.redis)
    keys = Keys(prefix)
    worker = FakeWorker(client, keys, "bench-worker", listener.port, capacity=args.burst + 10)
    await worker.start()
    env = {
        "REDIS_URL": args.redis,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEY": "bench",
        "REALTIME_PREWARM": "0",
        "LOG_LEVEL": "warning",
    }
    cluster = LocalCluster(write_config(workdir / "controller.yaml", sim.url), workdir, env)
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
        await worker.stop()
        await listener.stop()
        await sim.stop()
        await client.aclose()
        purge(sync_redis.Redis.from_url(args.redis), prefix)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
