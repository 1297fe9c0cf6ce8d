"""CPU of the media worker's Realtime client per call-second of two-way audio, over real WebSockets.

N concurrent sessions against the emulator (in its own process, so its CPU is not counted): each appends
a 20 ms caller frame every 20 ms and receives the model's audio at real-time pace (the emulator at speed 1,
one long reply after another). Reports this process's CPU per call-second and the event loop's lag.

    .venv/bin/python bench/realtime_client.py [--calls 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from media_worker.realtime.client import ClientSettings, RealtimeClient
from media_worker.realtime.protocol import AudioChunk
from media_worker.realtime import events as ev
from shared.config.ga_session import build_session
from shared.config.schema import OpenAIRealtime

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = (
    'default:\n  text: "This is a long answer that keeps the audio flowing for the benchmark."\n  audio_ms: 10000\n'
)


async def one_call(url: str, seconds: float, received: list[int]) -> None:
    session = build_session(OpenAIRealtime(), instructions="benchmark")
    client = RealtimeClient(ClientSettings(url=url, model="gpt-realtime-2.1", api_key="bench"), session)
    await client.start()
    client.create_response()
    frame = bytes(960)  # 20 ms of silence at 24 kHz: no VAD turn, so replies are never interrupted
    start = time.monotonic()
    n = 0
    got = 0

    async def drain() -> None:
        nonlocal got
        while True:
            item = await client.events.get()
            if isinstance(item, AudioChunk):
                got += len(item.data)
            elif isinstance(item, ev.ResponseDone):
                client.create_response()

    reader = asyncio.create_task(drain())
    while (elapsed := time.monotonic() - start) < seconds:
        await client.append(frame)
        n += 1
        await asyncio.sleep(max(0.0, n * 0.02 - elapsed))
    reader.cancel()
    received.append(got)
    await client.close()


async def lag_probe(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - t - 0.01)


async def run(url: str, calls: int, seconds: float) -> None:
    received: list[int] = []
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(lags, stop))
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(one_call(url, seconds, received) for _ in range(calls)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    stop.set()
    await probe
    call_seconds = calls * seconds
    q = statistics.quantiles(lags, n=100)
    print(f"{calls} calls x {seconds:g} s: CPU {cpu:.2f} s over {wall:.1f} s wall")
    print(f"client CPU per call-second: {cpu / call_seconds * 1000:.3f} ms (includes handshakes and asyncio)")
    print(f"model audio received per call-second: {sum(received) / 48 / call_seconds:.0f} ms")
    print(f"event loop lag: p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, max {max(lags) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.yaml"
        script.write_text(SCRIPT)
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voice_agent.cli",
                "sim",
                "realtime",
                "--port",
                "0",
                "--speed",
                "1",
                "--script",
                str(script),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        try:
            line = emulator.stdout.readline().strip()
            url = line.split("listening on ", 1)[1]
            asyncio.run(run(url, args.calls, args.seconds))
        finally:
            emulator.terminate()
            emulator.wait(10)


if __name__ == "__main__":
    main()
