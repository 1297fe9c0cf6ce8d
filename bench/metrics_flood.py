"""The playout tick's lag in a media worker's event loop while /metrics is flooded.

    .venv/bin/python bench/metrics_flood.py [--server bounded|aiohttp] [--calls 100] [--clients 16] [--seconds 10]

One process runs what a media worker's loop runs for this question: the real `PlayoutClock` with `--calls`
ticks (each copies a 20 ms frame), the media worker's metric catalogue (filled as a busy worker's would be) and
the health endpoints. It measures every tick's lag (exact, not bucketed) first quietly, then while another
process scrapes /metrics with `--clients` concurrent connections as fast as they are answered.

`--server bounded` is the roles' server (shared/health.py on shared/http_server.py: the exposition rendered in
a thread, at most once per 0.5 s, shared by the scrapes); `--server aiohttp` is the one it replaced (aiohttp,
a render per scrape on the loop), kept here as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest  # noqa: E402

from media_worker.audio.playout import PlayoutClock  # noqa: E402
from shared import health, metrics  # noqa: E402


class Lags:
    """Stands in for the clock's LagHistogram: keeps every lag, for exact percentiles."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, ms: float) -> None:
        self.values.append(max(ms, 0.0))


def summary(values: list[float]) -> str:
    if not values:
        return "no ticks"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms ({len(values)} ticks)"


def fill_metrics() -> None:
    """The series a media worker with calls behind it exports."""
    metrics.register("media-worker")
    for i in range(2000):
        seconds = (i % 50) / 100
        for histogram in (metrics.GREETING_SECONDS, metrics.TURN_SECONDS, metrics.BARGEIN_SECONDS):
            histogram.observe(seconds)
        metrics.INPUT_LATENCY.observe(seconds / 100)
        metrics.OUTPUT_LATENCY.observe(seconds / 10)
    for code in ("rate_limit_exceeded", "server_error", "invalid_request_error"):
        metrics.REALTIME_ERRORS.labels(code).inc()


async def aiohttp_server(host: str) -> tuple[web.AppRunner, int]:
    async def render(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", render)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def flood(port: int, clients: int, seconds: float, served: Any) -> None:
    """Another process: `clients` connections at a time, each GET /metrics then the next, for `seconds`."""

    async def one_client(until: float) -> int:
        done = 0
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                body = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                done += body.startswith(b"HTTP/1.1 200")
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.01)
        return done

    async def main() -> int:
        until = time.monotonic() + seconds
        return sum(await asyncio.gather(*(one_client(until) for _ in range(clients))))

    served.value = asyncio.run(main())


async def measure(args: argparse.Namespace) -> None:
    fill_metrics()
    if args.server == "bounded":
        server = health.make_server("media-worker", "bench", {})
        port = await health.start(server, "127.0.0.1", 0)
    else:
        runner, port = await aiohttp_server("127.0.0.1")
    frame = bytes(640)
    sink = bytearray(640)

    def tick() -> None:  # a call's tick: one frame copied out
        sink[:] = frame

    clock = PlayoutClock()
    for n in range(args.calls):
        clock.add(n, tick)
    lags = Lags()
    clock.lag_ms = lags  # type: ignore[assignment]
    stopping = asyncio.Event()
    ticking = asyncio.create_task(clock.run(stopping))
    try:
        await asyncio.sleep(args.seconds)
        quiet, lags.values = lags.values, []
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: none of this loop's state
        served = spawn.Value("q", 0)
        flooder = spawn.Process(target=flood, args=(port, args.clients, args.seconds, served))
        flooder.start()
        await asyncio.to_thread(flooder.join, args.seconds + 30)
        flooded = lags.values
    finally:
        stopping.set()
        await ticking
        if args.server == "bounded":
            await server.close()
        else:
            await runner.cleanup()
    size = len(generate_latest(REGISTRY))
    print(f"server {args.server}, {args.calls} calls on the clock, exposition {size / 1000:.0f} kB")
    print(f"  quiet:                  {summary(quiet)}")
    print(f"  /metrics flood ({args.clients:>2} conn): {summary(flooded)}")
    print(f"  scrapes answered: {served.value} in {args.seconds:.0f} s ({served.value / args.seconds:.0f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("bounded", "aiohttp"), default="bounded")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
