"""The whole media path of one media worker process under N concurrent calls: CPU per call-second, caller
frame in -> `append` sent, and model delta in -> first frame to Asterisk, with the playout tick's lag.

    .venv/bin/python bench/media_path.py [--calls 20] [--seconds 20] [--profile telephony_pcm16_24k]

The controller and the media worker are real subprocesses on the real Redis; the Asterisk simulator (callers
that talk and pause, over AudioSocket or RTP) and the Realtime emulator (scripted spoken replies) run in this
process. CPU is the worker's own (utime + stime from /proc) over the hold period; latencies are read from the
worker's /metrics histograms (sampled frames), as bucket-interpolated percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis as sync_redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.asterisk import AsteriskSim  # noqa: E402
from sim.asterisk.audio import CallerAudio  # noqa: E402
from sim.cluster import LocalCluster, http_get  # noqa: E402
from sim.realtime import Emulator, Reply, Script  # noqa: E402
from sim.realtime import voice  # noqa: E402
from tests.ari_harness import ARI_PASSWORD, ARI_USER, write_config  # noqa: E402
from tests.conftest import purge  # noqa: E402

KEY = "sk-bench-media-path"


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def histogram(metrics: str, name: str) -> list[tuple[float, float]]:
    rows = []
    for match in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+]+)$', metrics, re.M):
        rows.append((float("inf") if match.group(1) == "+Inf" else float(match.group(1)), float(match.group(2))))
    return rows


def quantile(rows: list[tuple[float, float]], q: float) -> float | None:
    total = rows[-1][1] if rows else 0
    if not total:
        return None
    target, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in rows:
        if n >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((target - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
    return None


def as_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.2f} ms"


def gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", metrics, re.M)
    return float(match.group(1)) if match else float("nan")


def caller_audio(seconds: int, seed: int) -> CallerAudio:
    """Talk 1.2 s, listen 3 s, over and over: the server VAD ends each turn and the agent answers."""
    words = voice.speech("I have a question about my order please", 1200, "en-us+m3", seed=seed)
    audio = CallerAudio.silence(2000 + 97 * seed % 900)
    while audio.duration_ms < seconds * 1000:
        audio = audio.then(CallerAudio.from_pcm(words.astype("<i2").tobytes(), 24000)).then(CallerAudio.silence(3000))
    return audio


async def run(args: argparse.Namespace) -> None:
    prefix = f"va-bench-{uuid.uuid4().hex[:8]}:"
    workdir = Path(tempfile.mkdtemp(prefix="bench-media-"))
    sim = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=workdir / "sim", record=False)
    await sim.start("127.0.0.1", 0)
    script = Script(
        greeting=Reply(text="Hello, how can I help?", audio_ms=1200),
        default=Reply(text="Sure, let me look into that for you.", audio_ms=1800),
    )
    emu = Emulator(script=script, api_keys={KEY}, speed=3.0, record=False)
    await emu.start("127.0.0.1", 0)
    env = {
        "REDIS_URL": args.redis,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEY": KEY,
        "LOG_LEVEL": "warning",
        "OPENAI_REALTIME_URL": emu.url,
        "REALTIME_PREWARM": str(min(args.calls, 50)),
    }
    contexts = {"bench": {"profile": args.profile, "prompt": "Benchmark."}}
    cluster = LocalCluster(write_config(workdir / "config.yaml", sim.url, contexts=contexts), workdir, env)
    controller = cluster.start("controller")
    worker = cluster.start("media-worker", "--audiosocket-port", "0", "--rtp-ports", "21000-21999")
    try:
        if not await asyncio.to_thread(cluster.wait_ready, [controller, worker], 60):
            raise SystemExit(worker.log_text()[-2000:] + controller.log_text()[-2000:])
        await asyncio.sleep(2)  # let the prewarm pool fill
        total = args.seconds + 6
        calls = [
            await sim.place_call(
                variables={"AI_CONTEXT": "bench"}, caller_name=f"Caller {i}", audio=caller_audio(total, i)
            )
            for i in range(args.calls)
        ]
        await asyncio.sleep(4)  # set-up and greetings
        (u0, s0), t0 = cpu_times(worker.popen.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        (u1, s1), t1 = cpu_times(worker.popen.pid), time.monotonic()
        cpu0, cpu1 = u0 + s0, u1 + s1
        _, body = http_get(worker.health_url + "/metrics")
        metrics = body.decode()
        await asyncio.gather(*(c.hangup() for c in calls))
        await asyncio.sleep(1)
        call_seconds = args.calls * (t1 - t0)
        cpu_ms = (cpu1 - cpu0) * 1000
        print(f"media worker, {args.calls} calls x {t1 - t0:.1f} s, profile {args.profile}:")
        print(
            f"  CPU {cpu_ms / 1000:.2f} s -> {cpu_ms / call_seconds:.2f} ms per call-second "
            f"({100 * (cpu1 - cpu0) / (t1 - t0):.0f}% of one core; user {(u1 - u0) * 1000 / call_seconds:.2f} ms, "
            f"kernel {(s1 - s0) * 1000 / call_seconds:.2f} ms)"
        )
        for name, label in (
            ("va_input_append_seconds", "caller frame in -> append sent"),
            ("va_output_first_frame_seconds", "model delta in -> first frame out"),
        ):
            rows = histogram(metrics, name)
            p50, p99 = quantile(rows, 0.5), quantile(rows, 0.99)
            n = int(rows[-1][1]) if rows else 0
            print(f"  {label:<36} p50 {as_ms(p50)}, p99 {as_ms(p99)} (n={n})")
        print(
            f"  playout tick lag p99 {gauge(metrics, 'va_playout_tick_lag_p99_ms'):.2f} ms, underruns "
            f"{gauge(metrics, 'va_playout_underruns_total'):.0f}, calls active at the end "
            f"{gauge(metrics, 'va_worker_calls_active'):.0f}"
        )
    finally:
        cluster.stop_all()
        await emu.stop()
        await sim.stop()
        purge(sync_redis.Redis.from_url(args.redis), prefix)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--profile", default="telephony_pcm16_24k")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
