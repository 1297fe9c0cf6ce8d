"""Barge-in as the caller hears it: onset of the caller's speech -> the agent's audio below -40 dBFS.

One call through the real processes (the Realtime emulator, the Asterisk simulator, a controller, a media
worker) in which the caller interrupts the agent's long replies `--interruptions` times, each at another point
of the reply (1.0-1.8 s in), over a line echo (`--echo-db`, the agent's audio coming back attenuated in what
the caller sends), and coughs once (a `--burst-ms` noise burst) early in every reply it later interrupts.

Measured on the CALLER side, at the simulator's phone: the caller's onset is when the first sample of an
interruption is spoken (the clock of the caller's frames, which the simulator sends at the start of each
20 ms frame: a real phone sends a frame when it has captured it, 20 ms later); the stop is the arrival of the
first 5 ms the caller hears (timed from the arrival of its 20 ms chunk) from which the agent stays below
-40 dBFS for 300 ms. An interruption during
which the agent was not audible (a pause between its words, in the 100 ms before the onset) is not counted.
False stops: the worker's truncations beyond one per interruption (a cough or the echo that cut the agent).

    .venv/bin/python bench/bargein.py [--interruptions 22] [--echo-db -15] [--burst-ms 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.config import load_config  # noqa: E402
from shared.keys import Keys  # noqa: E402
from sim import demo_call  # noqa: E402
from sim.cluster import LocalCluster, purge  # noqa: E402
from sim.demo import SimControl, find_call, media_worker_args, wait_call_finished, wait_ready_each  # noqa: E402

STOP_DBFS = -40.0  # the agent is "stopped" once what the caller hears stays below this
STAY_S = 0.3  # ...for this long
AUDIBLE_BEFORE_S = 0.1  # the agent counts as talking at the onset if audible within this long before it
BUDGET_MS = 60.0
REPLY = demo_call.Line(
    "We are open on weekdays from eight in the morning until six in the evening, and on Saturdays from nine until one.",
    5500,
)
INTERRUPTIONS = (
    demo_call.Line("Sorry, where exactly are you?", 1600),
    demo_call.Line("Wait, one more question.", 1400),
    demo_call.Line("Hold on, what about Sundays?", 1600),
)
QUESTION = demo_call.Line("Hello. What are your opening hours?", 1800)


@dataclass
class CallerPlan:
    timeline: demo_call.Timeline
    onsets_s: list[float] = field(default_factory=list)  # interruptions, from the caller's first frame
    bursts_s: list[float] = field(default_factory=list)


def caller_plan(interruptions: int, burst_ms: int, seed: int = 1) -> CallerPlan:
    """The question, then per reply: a cough `burst_ms` long 0.5 s in (when burst_ms > 0), and the
    interruption 1.0-1.8 s in. Onsets are where the spoken samples start."""
    rng = np.random.default_rng(seed)
    t = demo_call.Timeline()
    plan = CallerPlan(t)
    t.silence(demo_call.REPLY_LEAD_S + 3.0 + 0.7)  # the greeting (3 s) plays first
    t.say(QUESTION, demo_call.caller_speech(QUESTION))
    speech = [demo_call.caller_speech(line) for line in INTERRUPTIONS]
    lead_s = demo_call.VAD_SILENCE_S + demo_call.REPLY_LEAD_S
    for i in range(interruptions):
        into_s = 1.0 + 0.2 * (i % 5)
        if burst_ms > 0:
            t.silence(lead_s + 0.5)
            noise = rng.normal(0.0, 3277.0, demo_call.CALLER_RATE * burst_ms // 1000)  # -20 dBFS white noise
            cough = demo_call.Line("(cough)", burst_ms)
            plan.bursts_s.append(t.duration_s)
            t.say(cough, np.clip(noise, -32768, 32767).astype(np.int16))
            t.silence(into_s - 0.5 - burst_ms / 1000)
        else:
            t.silence(lead_s + into_s)
        plan.onsets_s.append(t.duration_s)
        line = INTERRUPTIONS[i % len(INTERRUPTIONS)]
        t.say(line, speech[i % len(INTERRUPTIONS)])
    t.silence(lead_s + 1.0)
    return plan


def emulator_script(turns: int) -> dict:
    return {
        "greeting": {"text": "Hi Alice, I'm your AI assistant. How can I help you today?", "audio_ms": 3000},
        "turns": {i: {"text": REPLY.text, "audio_ms": REPLY.ms} for i in range(1, turns + 1)},
    }


def stop_latencies(chunks: list[tuple[float, float]], onsets: list[float]) -> tuple[list[float], int]:
    """Per onset (absolute times), ms until the agent stays below STOP_DBFS for STAY_S; and how many onsets
    found the agent silent already (not counted)."""
    times = np.array([c[0] for c in chunks])
    loud = np.array([c[1] for c in chunks]) >= STOP_DBFS
    out: list[float] = []
    silent = 0
    for onset in onsets:
        before = (times >= onset - AUDIBLE_BEFORE_S) & (times < onset)
        if not loud[before].any():
            silent += 1
            continue
        for j in np.flatnonzero(times >= onset):
            window = (times >= times[j]) & (times < times[j] + STAY_S)
            if not loud[window].any():
                out.append(round(float(times[j] - onset) * 1000, 1))
                break
    return out, silent


def burst_effects(chunks: list[tuple[float, float]], bursts: list[float]) -> list[tuple[bool, bool]]:
    """Per noise burst (absolute times): was the agent held below STOP_DBFS from 50 to 350 ms after it (ducked:
    at least 80 % of that time; the agent's own pauses make ~10 % of its speech), and is it audible again
    0.5-0.9 s after it (restored, not stopped)."""
    times = np.array([c[0] for c in chunks])
    levels = np.array([c[1] for c in chunks])
    out = []
    for b in bursts:
        held = levels[(times >= b + 0.05) & (times < b + 0.35)]
        later = levels[(times >= b + 0.5) & (times < b + 0.9)]
        ducked = bool(len(held) and np.mean(held < STOP_DBFS) >= 0.8)
        out.append((ducked, bool(len(later) and later.max() >= STOP_DBFS)))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(
    interruptions: int = 22,
    echo_db: float | None = -15.0,
    burst_ms: int = 30,
    workdir: Path | None = None,
    redis_url: str | None = None,
) -> dict:
    """Set up the cluster, make the call, measure; everything stopped and the keys removed at the end."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="va-bench-bargein-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"va-bench-bargein-{os.getpid()}-{os.urandom(3).hex()}:"
    api_key = "sk-bench-" + os.urandom(12).hex()
    password = "bench-" + os.urandom(6).hex()
    env = {"OPENAI_API_KEY": api_key, "REDIS_KEY_PREFIX": prefix, "REALTIME_PREWARM": "1"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    os.environ.update(env)
    config_path = ROOT / "config" / "ai-agent.yaml"
    config = load_config(config_path).config
    client = redis.Redis.from_url(config.redis.url, decode_responses=True, socket_connect_timeout=2)
    keys = Keys(prefix)
    plan = caller_plan(interruptions, burst_ms)
    (workdir / "realtime-script.yaml").write_text(yaml.safe_dump(emulator_script(interruptions + 2)), "utf-8")
    caller_wav = workdir / "caller-says.wav"
    demo_call.write_caller_wav(caller_wav, plan.timeline)
    cluster = LocalCluster(config_path, workdir, env)
    result: dict = {"interruptions": interruptions, "echo_db": echo_db, "burst_ms": burst_ms, "workdir": str(workdir)}
    try:
        realtime = cluster.start_sim(
            "realtime", "--script", str(workdir / "realtime-script.yaml"), "--speed", "4", "--api-key", api_key
        )
        ari_url = cluster.start_sim("asterisk", "--user", config.asterisk.username, "--password", password).url
        cluster.env.update(OPENAI_REALTIME_URL=realtime.url, ASTERISK_ARI_URL=ari_url, ASTERISK_ARI_PASSWORD=password)
        procs = [cluster.start("controller"), cluster.start("media-worker", *media_worker_args(0))]
        if not wait_ready_each(procs, time.monotonic(), timeout=30):
            result["error"] = "the cluster did not become ready"
            return result
        sim = SimControl(ari_url, config.asterisk.username, password)
        body: dict = {"context": "from-ai-agent-openai", "audio_wav": str(caller_wav), "rate": demo_call.CALLER_RATE}
        if echo_db is not None:
            body["echo_db"] = echo_db
        status, placed = sim.request("POST", "/sim/calls", body)
        if status != 201:
            result["error"] = f"POST /sim/calls: {status} {placed}"
            return result
        channel = placed["id"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sim.request("GET", f"/sim/calls/{channel}")[1].get("state") != "Up":
            time.sleep(0.02)
        call_id = find_call(client, keys, channel)
        end = time.monotonic() + plan.timeline.duration_s + 0.5
        while time.monotonic() < end:
            if sim.request("GET", f"/sim/calls/{channel}")[1].get("state") == "ended":
                result["error"] = "the call ended early"
                break
            time.sleep(0.2)
        heard = sim.request("GET", f"/sim/calls/{channel}/heard")[1]
        (workdir / "heard-levels.json").write_text(json.dumps(heard), "utf-8")
        sim.request("POST", f"/sim/calls/{channel}/hangup")
        call_id = call_id or find_call(client, keys, channel)
        wait_call_finished(client, keys, call_id)
        record = client.hgetall(keys.call(call_id)) if call_id else {}
        started = heard.get("answered_t") or 0.0
        chunks = [(float(t), float(db)) for t, db in heard.get("windows", [])]
        latencies, silent = stop_latencies(chunks, [started + s for s in plan.onsets_s])
        truncations = int(record.get("truncations") or 0)
        effects = burst_effects(chunks, [started + s for s in plan.bursts_s])
        result.update(
            call_id=call_id,
            onsets_t=[started + s for s in plan.onsets_s],
            stop_ms=latencies,
            counted=len(latencies),
            agent_silent_at_onset=silent,
            p50_ms=pct(latencies, 50),
            p95_ms=pct(latencies, 95),
            max_ms=max(latencies, default=float("nan")),
            truncations=truncations,
            false_stops=max(truncations - interruptions, 0),
            bursts_ducked=sum(dipped for dipped, _ in effects),
            bursts_heard_after=sum(back for _, back in effects),
            worker_bargein_ms=record.get("bargein_ms", ""),
            bargein_ducks=record.get("bargein_ducks"),
            # one duck per interruption and per burst is expected; more: echo or noise taken for the caller
            extra_ducks=max(int(record.get("bargein_ducks") or 0) - interruptions - len(plan.bursts_s), 0),
            bargein_restores=record.get("bargein_restores"),
            gate_closures=record.get("gate_closures"),
        )
        return result
    finally:
        cluster.stop_all()
        purge(client, prefix)
        client.close()


def report(result: dict) -> str:
    if "error" in result:
        return f"bargein: {result['error']} (files in {result['workdir']})"
    lat = result["stop_ms"]
    worker = [float(v) for v in result["worker_bargein_ms"].split(",") if v]
    return "\n".join(
        [
            f"caller onset -> agent below {STOP_DBFS:.0f} dBFS (caller side): p50 {result['p50_ms']:.0f} ms, "
            f"p95 {result['p95_ms']:.0f} ms, max {result['max_ms']:.0f} ms (n={len(lat)} of "
            f"{result['interruptions']}; {result['agent_silent_at_onset']} onsets in the agent's pauses) "
            f"budget <= {BUDGET_MS:.0f} ms",
            f"false stops: {result['false_stops']} in the call (truncations {result['truncations']} for "
            f"{result['interruptions']} interruptions; echo {result['echo_db']} dB, a {result['burst_ms']} ms "
            f"noise burst per reply: the agent dipped at {result['bursts_ducked']} and was heard again after "
            f"{result['bursts_heard_after']} of {result['interruptions'] if result['burst_ms'] else 0})",
            f"worker's bargein_ms (gate decision -> first frame of the stop): p50 "
            f"{pct(worker, 50):.0f} ms (n={len(worker)}); ducks {result['bargein_ducks']} "
            f"({result['extra_ducks']} beyond one per interruption and burst), restored "
            f"{result['bargein_restores']}, gate closures {result['gate_closures']}",
            f"all: {lat}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interruptions", type=int, default=22)
    parser.add_argument("--echo-db", default="-15", help="the line echo in dB, or 'none'")
    parser.add_argument("--burst-ms", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    echo_db = None if args.echo_db.lower() == "none" else float(args.echo_db)
    result = run(args.interruptions, echo_db, args.burst_ms)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), "utf-8")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
