"""CPU of the caller's audio on its way to the model, per call-second: 50 `input_audio_buffer.append` a second per
call, sent by the uplink's task (one wake-up and one `ws.send` per frame) or written at once by `append_now`.

    .venv/bin/python bench/uplink_cpu.py [--calls 50] [--seconds 5] [--rounds 6]

The Realtime emulator runs as a subprocess (its CPU is not counted); this process holds `--calls` real
RealtimeClient sessions, each with a real Uplink, and puts one 20 ms frame (pcm16 24 kHz silence, so the server
VAD never starts a turn) per call every 20 ms. The two ways run on the same sessions, interleaved round by round
(A B A B …), each timed with `time.process_time`; the figures are the median and min–max over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from media_worker.realtime.client import ClientSettings, RealtimeClient  # noqa: E402
from media_worker.uplink import Uplink  # noqa: E402
from shared.config.ga_session import build_session  # noqa: E402
from shared.config.schema import OpenAIRealtime  # noqa: E402
from sim.cluster import LocalCluster  # noqa: E402

KEY = "sk-bench-uplink"
FRAME = bytes(960)  # 20 ms of pcm16 at 24 kHz


async def one_round(uplinks: list[Uplink], seconds: float) -> float:
    """Put a frame in every uplink every 20 ms for `seconds`; the process CPU seconds it took."""
    ticks = int(seconds * 50)
    start, cpu0 = time.monotonic(), time.process_time()
    for n in range(ticks):
        delay = start + n * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for uplink in uplinks:
            uplink.put(FRAME)
    await asyncio.sleep(0.05)  # what the tasks still had queued
    return time.process_time() - cpu0


async def run(args: argparse.Namespace) -> None:
    cluster = LocalCluster(Path("/dev/null"), Path(tempfile.mkdtemp(prefix="bench-uplink-")))
    emulator = cluster.start_sim("realtime", "--api-key", KEY, "--speed", "1")
    url = emulator.url
    clients: list[RealtimeClient] = []
    try:
        settings = ClientSettings(url=url, model="gpt-realtime-2.1", api_key=KEY)
        session = build_session(OpenAIRealtime(), instructions="Benchmark.", tools=[])
        for _ in range(args.calls):
            client = RealtimeClient(settings, session)
            await client.start()
            clients.append(client)
        figures: dict[str, list[float]] = {"task": [], "append_now": []}
        for _ in range(args.rounds):
            for way in figures:
                uplinks = [Uplink(48) for _ in clients]
                tasks = [
                    asyncio.create_task(u.run(c.append, c.append_now if way == "append_now" else None))
                    for u, c in zip(uplinks, clients, strict=True)
                ]
                await asyncio.sleep(0)
                cpu = await one_round(uplinks, args.seconds)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                figures[way].append(cpu * 1000 / (args.calls * args.seconds))
        print(f"uplink, {args.calls} calls x {args.seconds:g} s x {args.rounds} rounds, CPU ms per call-second:")
        for way, values in figures.items():
            print(f"  {way:<11} median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
    finally:
        for client in clients:
            await client.close()
        emulator.popen.terminate()
        emulator.popen.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=6)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
