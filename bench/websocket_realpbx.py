"""WebSocket media (and, for comparison, AudioSocket and RTP) through a real Asterisk 22.10.1:

    .venv/bin/python bench/websocket_realpbx.py --calls 5 \
        --profiles websocket_ulaw_8k,websocket_slin16,websocket_pcm16_24k,telephony_pcm16_24k,telephony_ulaw_8k

The real Asterisk comes from the project's harness (sim.real_asterisk: Debian's package from the cache, the
shipped deploy/asterisk confs, loopback only); this script adds two dialplan contexts over the CLI, starts a
controller and a media worker of this checkout on the local Redis, and runs the Realtime emulator in this
process. Each call is an ARI originate of `Local/s@from-ai-agent-ws`: the ;2 half runs the shipped dialplan's
shape (Set AI_CONTEXT, Stasis) and is the caller the agent sees; the ;1 half is the phone: Asterisk plays
`caller-says.wav` into the call (a question at 2.5 s, an interruption at 6.9 s) and MixMonitor records what the
caller hears. Printed per profile: controller setup, first greeting frame (worker) and the greeting's onset in
the caller's recording, end of caller speech -> first agent frame, barge-in -> audio stopped (worker) and
caller starts interrupting -> agent silent (recording), truncation vs. heard, Asterisk's queue depth.
"""

from __future__ import annotations

import argparse
import base64
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import time
import uuid
import wave
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import soxr
import redis.asyncio as aioredis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.keys import Keys  # noqa: E402
from sim.cluster import LocalCluster  # noqa: E402
from sim.real_asterisk import start as start_asterisk  # noqa: E402
from sim.realtime import Emulator, Reply, Script, voice  # noqa: E402

API_KEY = "sk-bench-" + "x" * 24
APP = "asterisk-ai-voice-agent"
QUESTION_AT, QUESTION_MS = 2.5, 900
INTERRUPT_AT, INTERRUPT_MS = QUESTION_AT + QUESTION_MS / 1000 + 3.5, 1500
CALL_S = INTERRUPT_AT + INTERRUPT_MS / 1000 + 3.0
CONTEXTS = {
    "from-ai-agent-ws": [
        "Set(AI_CONTEXT=${BENCH_CONTEXT})",
        "Set(AI_PROVIDER=openai_realtime)",
        "Stasis(asterisk-ai-voice-agent)",
        "Hangup()",
    ],
    "ws-caller": [
        "Answer()",
        "MixMonitor({run}/heard-${BENCH_CALL}-mix.wav,r({run}/heard-${BENCH_CALL}.wav))",
        "Playback({run}/caller-says)",
        "Hangup()",
    ],
}


def add_dialplan(ast, run_dir: Path) -> None:
    for context, apps in CONTEXTS.items():
        for priority, app in enumerate(apps, start=1):
            ast.cli(f"dialplan add extension s,{priority},{app.replace('{run}', str(run_dir))} into {context} replace")


def caller_wav(path: Path) -> None:
    rate = 8000

    def speech(text: str, ms: int) -> np.ndarray:
        pcm24 = voice.speech(text, ms, "en-us+m3", seed=7).astype(np.float32)
        return soxr.resample(pcm24, 24000, rate).astype(np.float64)

    parts = [
        np.zeros(int(QUESTION_AT * rate)),
        speech("When are you open?", QUESTION_MS),
        np.zeros(int(3.5 * rate)),
        speech("Sorry, where exactly are you?", INTERRUPT_MS),
        np.zeros(3 * rate),
    ]
    pcm = np.concatenate(parts)
    pcm = (pcm * (16000 / max(np.abs(pcm).max(), 1.0))).clip(-32768, 32767).astype("<i2")  # peaks at -6 dBFS
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def loud(path: Path, floor_dbfs: float = -40.0) -> list[bool]:
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    n = rate // 50
    frames = pcm[: len(pcm) // n * n].reshape(-1, n)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-9
    return [20 * math.log10(r / 32768) > floor_dbfs for r in rms]


def tone24k(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (np.sin(2 * math.pi * hz * t) * 32767 * 0.1).astype("<i2").tobytes()


@dataclass
class RunResult:
    results: dict[str, list[dict]]
    left_channels: int
    left_bridges: int
    error_lines: dict[str, list[str]]  # role -> ERROR / Traceback lines of its log


async def run(profiles: list[str], calls: int, redis_url: str, keep: bool = False) -> RunResult:
    """Start a real Asterisk (the harness), the cluster and the emulator; place `calls` calls per profile."""
    ast = start_asterisk(log=lambda line: None)
    run_dir = ast.run_dir / "bench"
    run_dir.mkdir()
    add_dialplan(ast, run_dir)
    caller_wav(run_dir / "caller-says.wav")
    ari_url, ari_user, ari_password = ast.ari_url, ast.user, ast.password
    token = base64.b64encode(f"{ari_user}:{ari_password}".encode()).decode()
    key_prefix = f"wsb{uuid.uuid4().hex[:6]}:"
    keys = Keys(key_prefix)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    emu = Emulator(
        script=Script(
            greeting=Reply(text="Hello, thanks for calling. How can I help?", audio_ms=1500),
            turns={
                1: Reply(text="Let me tell you all about our opening hours in detail.", pcm=tone24k(6000)),
                2: Reply(text="Twelve Harbour Street.", audio_ms=1500),
            },
            transcripts={1: "When are you open?", 2: "Sorry, where exactly are you?"},
        ),
        api_keys={API_KEY},
        speed=4.0,
    )
    await emu.start("127.0.0.1", 0)
    results: dict[str, list[dict]] = {}
    cluster: LocalCluster | None = None
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
            print("Asterisk", ast.version, "on", ari_url)
            config = yaml.safe_load((ROOT / "config/ai-agent.yaml").read_text())
            config["asterisk"].update(ari_url=ari_url, username=ari_user, password=ari_password)
            config.setdefault("profiles", {})["websocket_slin16"] = {
                "transport": "websocket",
                "format": "slin16",
                "provider_format": "pcm16",
            }
            config["contexts"].update(
                {p: {"profile": p, "greeting": "Hello {caller_name}", "prompt": "Be brief."} for p in profiles}
            )
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
            env = {
                "REDIS_URL": redis_url,
                "REDIS_KEY_PREFIX": key_prefix,
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_REALTIME_URL": emu.url,
                "REALTIME_PREWARM": "1",
                "LOG_LEVEL": "info",
            }
            cluster = LocalCluster(run_dir / "config.yaml", run_dir, env)
            procs = [
                cluster.start("controller", instance_id="controller-bench"),
                cluster.start(
                    "media-worker", "--audiosocket-port", "0", "--rtp-ports", "32000-32099", instance_id="worker-bench"
                ),
            ]
            if not await asyncio.to_thread(cluster.wait_ready, procs, 30):
                raise RuntimeError("\n".join(p.log_text()[-3000:] for p in procs))
            n = 0
            for profile in profiles:
                for _ in range(calls):
                    n += 1
                    results.setdefault(profile, []).append(
                        await one_call(http, ari_url, redis, keys, emu, run_dir, profile, n)
                    )
            async with http.get(f"{ari_url}/ari/channels") as r:
                left = await r.json()
            async with http.get(f"{ari_url}/ari/bridges") as r:
                left_bridges = await r.json()
        errors = {
            p.role: [line for line in p.log_text().splitlines() if "ERROR" in line or "Traceback" in line]
            for p in cluster.processes
        }
        return RunResult(results, len(left), len(left_bridges), errors)
    finally:
        if cluster is not None:
            cluster.stop_all()
        await emu.stop()
        ast.stop()
        async for key in redis.scan_iter(f"{key_prefix}*"):
            await redis.delete(key)
        await redis.aclose()
        if keep:
            print("run directory:", ast.run_dir)
        else:
            shutil.rmtree(ast.run_dir, ignore_errors=True)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument(
        "--profiles",
        default="websocket_ulaw_8k,websocket_slin16,websocket_pcm16_24k,telephony_pcm16_24k,telephony_ulaw_8k",
    )
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    result = await run(args.profiles.split(","), args.calls, args.redis, args.keep)
    print(f"left in Asterisk after all calls: {result.left_channels} channels, {result.left_bridges} bridges")
    report(result.results)
    if args.json:
        args.json.write_text(json.dumps(result.results, indent=1))
    for role, lines in result.error_lines.items():
        print(f"{role}: {len(lines)} error lines" + (f": {lines[:3]}" if lines else ""))
    return 0


async def one_call(http, ari_url, redis, keys, emu, run: Path, profile: str, n: int) -> dict:
    truncations_before = sum(len(s.truncations) for s in emu.sessions)
    params = {"endpoint": "Local/s@from-ai-agent-ws", "context": "ws-caller", "extension": "s", "priority": "1"}
    body = {"variables": {"BENCH_CONTEXT": profile, "BENCH_CALL": str(n)}}
    t0 = time.monotonic()
    async with http.post(f"{ari_url}/ari/channels", params=params, json=body) as r:
        assert r.status == 200, await r.text()
    call_id = ""
    for _ in range(100):
        new = set(await redis.smembers(keys.calls_active)) - SEEN
        if new:
            call_id = new.pop()
            SEEN.add(call_id)
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(CALL_S + 1.0)
    record: dict = {}
    for _ in range(100):
        record = await redis.hgetall(keys.call(call_id)) if call_id else {}
        if record.get("worker_end_reason"):
            break
        await asyncio.sleep(0.1)
    heard = loud(run / f"heard-{n}.wav")
    onset = next((i * 20 for i, x in enumerate(heard) if x), None)
    # the agent's long answer: the loud run after the question; it stops when the caller interrupts
    q_end = int((QUESTION_AT + QUESTION_MS / 1000) * 50)
    start = next((i for i in range(q_end, len(heard)) if heard[i]), None)
    end = next((i for i in range(start, len(heard)) if not heard[i]), None) if start is not None else None
    truncs = [t for s in emu.sessions for t in s.truncations][truncations_before:]
    out = {
        "profile": profile,
        "setup_ms": record.get("setup_ms"),
        "greeting_ms": record.get("greeting_ms"),
        "turn_ms": record.get("turn_ms"),
        "bargein_ms": record.get("bargein_ms"),
        "truncations": record.get("truncations"),
        "end": record.get("worker_end_reason"),
        "greeting_onset_heard_ms": onset,
        "interrupt_to_silence_ms": (end * 20 - INTERRUPT_AT * 1000) if end is not None else None,
        "answer_heard_ms": ((end - start) * 20) if end is not None else None,
        "truncated_at_ms": truncs[0]["audio_end_ms"] if truncs else None,
        "media_queue_max": record.get("media_queue_max"),
        "media_flushed_frames": record.get("media_flushed_frames"),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(out))
    return out


SEEN: set[str] = set()


def report(results: dict[str, list[dict]]) -> None:
    def med(values):
        values = [float(v) for v in values if v not in (None, "")]
        return f"{statistics.median(values):.0f}" if values else "-"

    print(
        "\nprofile                  setup  greeting(worker)  greeting onset heard  turn  barge-in(worker)  "
        "interrupt->silent heard  |trunc-heard|  ast.queue max"
    )
    for profile, calls in results.items():
        turns = [v for c in calls for v in (c["turn_ms"] or "").split(",") if v]
        barge = [v for c in calls for v in (c["bargein_ms"] or "").split(",") if v]
        err = [
            abs(c["truncated_at_ms"] - c["answer_heard_ms"])
            for c in calls
            if c["truncated_at_ms"] is not None and c["answer_heard_ms"] is not None
        ]
        print(
            f"{profile:24} {med(c['setup_ms'] for c in calls):>5}  {med(c['greeting_ms'] for c in calls):>16}  "
            f"{med(c['greeting_onset_heard_ms'] for c in calls):>20}  {med(turns):>4}  {med(barge):>16}  "
            f"{med(c['interrupt_to_silence_ms'] for c in calls):>23}  {med(err):>12}  "
            f"{max((int(c['media_queue_max']) for c in calls if c['media_queue_max']), default='-'):>13}"
            f"  (n={len(calls)}, medians, ms)"
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
