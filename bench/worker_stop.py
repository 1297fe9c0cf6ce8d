"""How long a media worker takes to exit on SIGTERM (drain_timeout_ms 0) while it holds live calls, and what
it leaves open: calls with the greeting streaming, plus calls hung up 0-50 ms after admission just before.

    .venv/bin/python bench/worker_stop.py [--calls 20] [--short 20] [--rounds 3] [--redis redis://127.0.0.1:6379/9]

A controller and a media worker are real subprocesses on the real Redis; the Asterisk simulator and the Realtime
emulator (session.created after --opening-ms, like the real service) run in this process. Reports, per round,
SIGTERM to process exit in ms, the worker's exit code, and the Realtime sessions still open after the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis as sync_redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.asterisk import AsteriskSim  # noqa: E402
from sim.asterisk.audio import CallerAudio  # noqa: E402
from sim.cluster import LocalCluster, purge  # noqa: E402
from sim.realtime import Emulator, Reply, Script  # noqa: E402
from tests.ari_harness import ARI_PASSWORD, ARI_USER, write_config  # noqa: E402
from tests.conftest import TEST_API_KEY  # noqa: E402


async def one_round(args: argparse.Namespace, n: int, workdir: Path) -> tuple[float, int | None, int]:
    prefix = f"va-bench-{uuid.uuid4().hex[:8]}:"
    sim = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=workdir / f"sim-{n}")
    await sim.start("127.0.0.1", 0)
    script = Script(greeting=Reply(text="Hello, thanks for calling. " * 4, audio_ms=20_000))
    emu = Emulator(script=script, api_keys={TEST_API_KEY}, speed=1.0, session_created_delay_ms=args.opening_ms)
    await emu.start("127.0.0.1", 0)
    config = write_config(workdir / f"cluster-{n}.yaml", sim.url)
    env = {
        "REDIS_URL": args.redis,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEY": TEST_API_KEY,
        "OPENAI_REALTIME_URL": emu.url,
        "REALTIME_PREWARM": "1",
        "LOG_LEVEL": "info",
    }
    cluster = LocalCluster(config, workdir, env)
    controller = cluster.start("controller", instance_id=f"controller-{n}")
    worker = cluster.start(
        "media-worker", "--audiosocket-port", "0", "--rtp-ports", "32000-32099", instance_id=f"w-{n}"
    )
    try:
        assert await asyncio.to_thread(cluster.wait_ready, [controller, worker], 30), worker.log_text()[-2000:]
        live = [await sim.place_call(audio=CallerAudio.silence(60_000)) for _ in range(args.calls)]
        rng = random.Random(n)

        async def short_call() -> None:
            call = await sim.place_call(audio=CallerAudio.silence(5000))
            async with asyncio.timeout(15):
                await call.channel.flag("answered").wait()
            await asyncio.sleep(rng.uniform(0, 0.05))
            await call.hangup()

        await asyncio.gather(*(short_call() for _ in range(args.short)))
        deadline = time.monotonic() + 15
        while sum(1 for s in emu.open_sessions() if s.received) < args.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the greeting streams
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        code: int | None = None
        while time.monotonic() - started < 30:
            code = worker.popen.poll()
            if code is not None:
                break
            await asyncio.sleep(0.01)
        took = (time.monotonic() - started) * 1000
        await asyncio.sleep(0.5)
        left = len(emu.open_sessions())
        for call in live:
            await call.hangup()
        return took, code, left
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await emu.stop()
        await sim.stop()
        client = sync_redis.Redis.from_url(args.redis)
        purge(client, prefix)
        client.close()


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-stop-"))
    for n in range(1, args.rounds + 1):
        took, code, left = await one_round(args, n, workdir)
        print(
            f"round {n}: {args.calls} live calls + {args.short} hung up at admission: SIGTERM to exit {took:7.1f} ms, "
            f"exit code {code}, Realtime sessions open after the exit: {left}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="live calls when the worker is stopped")
    parser.add_argument("--short", type=int, default=20, help="calls hung up 0-50 ms after admission just before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--opening-ms", type=int, default=300, help="the emulator's session.created delay")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
