"""`voice-agent demo`: a complete scripted call through the real cluster on the simulators.

It runs the Realtime emulator and the Asterisk simulator, a controller, two media workers and a tool worker
as real processes on the local Redis (under a key prefix of its own, removed afterwards), places a call
(greeting, a question and its answer, a barge-in, goodbye), saves what the caller heard as WAV, and prints
the transcript, the measured latencies and the counters. Then `voice-agent status`, SIGTERM to everything,
and a check that all exited 0 and deregistered. Exit 0 only if every check passed.

`VA_DEMO_WORKDIR` names the directory for the WAVs, the wire log, the process logs and `demo.json` (the
run's summary, for tests); by default it is a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.config import Config, ConfigError, load_config
from shared.keys import Keys
from shared.status import collect, render
from sim import demo_call, demo_pbx, demo_report
from sim.cluster import LocalCluster, RoleProcess, purge, redis_or_explain
from sim.real_asterisk import RealAsterisk, start_or_explain

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_SPEED = "4"  # model audio arrives 4x faster than real time, as a real model's often does
AGENT_CONTEXT = "from-ai-agent-openai"
GREETING_WINDOW_S = 2.0  # the greeting must be audible this soon after the caller starts hearing the line


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


class SimControl:
    """The Asterisk simulator's control API (`sim/asterisk/control.py`), over plain HTTP."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else {}


def wait_ready_each(procs: list[RoleProcess], started: float, timeout: float) -> bool:
    """Print a line as each process becomes ready; False if one exits or time runs out."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for p in list(pending):
            if p.popen.poll() is not None:
                print(f"{p.id} exited with {p.popen.returncode}:\n{p.log_text()[-2000:]}")
                return False
            if p.ready():
                pending.remove(p)
                print(f"  ready after {time.monotonic() - started:5.2f}s  {p.role:<13} {p.id:<28} {p.health_url}")
        time.sleep(0.05)
    for p in pending:
        print(f"{p.id} not ready after {timeout:.0f}s: {p.readiness()}\n{p.log_text()[-2000:]}")
    return not pending


def media_worker_args(index: int) -> list[str]:
    """Media workers on one host need their own ports: an AudioSocket port the OS picks (the worker binds it
    before it registers) and an RTP range each."""
    low = 18300 + 100 * index
    return ["--audiosocket-port", "0", "--rtp-ports", f"{low}-{low + 99}"]


def find_call(client: redis.Redis, keys: Keys, channel_id: str) -> str | None:
    """The controller's call id for the caller channel."""
    if client.exists(keys.call(channel_id)):
        return channel_id
    for member in client.smembers(keys.calls_active):
        call_id = _text(member)
        if _text(client.hget(keys.call(call_id), "caller_channel")) == channel_id:
            return call_id
    return None


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _texts(fields: dict[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def run_call(
    sim: SimControl, client: redis.Redis, keys: Keys, timeline: demo_call.Timeline, caller_wav: Path, heard_wav: Path
) -> dict:
    """Place the call, let the caller's script play out, hang up, save the recording; what happened."""
    status, body = sim.request(
        "POST",
        "/sim/calls",
        {
            "context": AGENT_CONTEXT,
            "caller_name": demo_call.CALLER_NAME,
            "caller_number": "5551234",
            "audio_wav": str(caller_wav),
            "rate": demo_call.CALLER_RATE,
        },
    )
    if status != 201:
        print(f"POST /sim/calls: {status} {body}")
        return {"placed": False}
    channel, placed = body["id"], time.monotonic()
    print(f"caller channel {channel}")
    result: dict = {"placed": True, "channel": channel, "call_id": None, "answered": False}
    answered = None
    deadline = placed + 10
    while time.monotonic() < deadline:  # until the agent answers
        state = sim.request("GET", f"/sim/calls/{channel}")[1]
        if state.get("state") == "ended":
            break
        if state.get("state") == "Up":
            answered = time.monotonic()
            break
        time.sleep(0.02)
    result["call_id"] = find_call(client, keys, channel)
    if answered is None:
        print("the call was not answered")
        return result
    result["answered"] = True
    print(
        f"answered after {(answered - placed) * 1000:.0f} ms (call id {result['call_id']}); the caller's "
        f"script runs {timeline.duration_s:.1f}s"
    )
    end = answered + timeline.duration_s
    hung_up_by = "caller"
    while time.monotonic() < end:  # the script plays out (unless the agent hangs up first)
        if sim.request("GET", f"/sim/calls/{channel}")[1].get("state") == "ended":
            hung_up_by = "agent"
            print(f"the agent hung up {time.monotonic() - answered:.1f}s into the call")
            break
        time.sleep(0.1)
    if hung_up_by == "caller":
        sim.request("POST", f"/sim/calls/{channel}/hangup")
    result["hung_up_by"] = hung_up_by
    result["call_id"] = result["call_id"] or find_call(client, keys, channel)
    wait_call_finished(client, keys, result["call_id"])
    saved = sim.request("POST", f"/sim/calls/{channel}/save", {"path": str(heard_wav)})
    result["heard_ms"] = saved[1].get("ms") if saved[0] == 200 else None
    return result


def wait_call_finished(client: redis.Redis, keys: Keys, call_id: str | None, timeout: float = 5.0) -> None:
    """Until the controller marked the call ended and the worker flushed its log and wrote its figures."""
    deadline = time.monotonic() + timeout
    while call_id and time.monotonic() < deadline:
        state, figures = client.hmget(keys.call(call_id), "state", "underruns")
        if state == "ended" and figures is not None and not client.sismember(keys.calls_active, call_id):
            return
        time.sleep(0.05)
    if call_id:
        print(f"the call did not finish in Redis within {timeout:g} s (state ended, the worker's figures written)")


def run_pbx_call(
    ast, client: redis.Redis, keys: Keys, timeline: demo_call.Timeline, caller_wav: Path, heard_wav: Path
) -> dict:
    """The same call through a real Asterisk: Asterisk plays the caller's WAV into the call and records what
    the caller hears (sim/demo_pbx.py); what happened, with the keys of run_call."""
    placed = time.monotonic()
    found: dict[str, str | None] = {}

    def answered(channel: str) -> None:  # the call leaves calls:active when it ends: find it now
        found["call_id"] = find_call(client, keys, channel)
        print(
            f"caller channel {channel}: answered after {(time.monotonic() - placed) * 1000:.0f} ms "
            f"(call id {found['call_id']}); the caller's script runs {timeline.duration_s:.1f}s"
        )

    result = asyncio.run(
        demo_pbx.run_call(
            ast.ari_url,
            ast.user,
            ast.password,
            ast.own_run_dir / "spool" / "recording",
            AGENT_CONTEXT,
            demo_call.CALLER_NAME,
            "5551234",
            caller_wav,
            timeline.duration_s,
            heard_wav,
            on_answer=answered,
        )
    )
    if result.get("error"):
        print(f"the call through Asterisk failed: {result['error']}")
    if result.get("hung_up_by") == "agent":
        print(f"the agent hung up {result['agent_hung_up_after_s']}s into the call")
    result["call_id"] = found.get("call_id") or (
        find_call(client, keys, result["channel"]) if result.get("placed") else None
    )
    wait_call_finished(client, keys, result["call_id"])
    return result


def asterisk_leftovers(ast) -> dict:
    """Channels and bridges still in the real Asterisk (it is ours: anything there is left over)."""
    return {kind: len(ast.ari("GET", f"/{kind}")[1] or []) for kind in ("channels", "bridges")}


def wait_for_mail(directory: Path, timeout: float) -> Path | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.eml"))
        if found:
            return found[0]
        time.sleep(0.2)
    return None


def mail_headline(path: Path) -> str:
    from email import message_from_bytes, policy

    msg = message_from_bytes(path.read_bytes(), policy=policy.default)
    return f"To: {msg['To']}  Subject: {msg['Subject']}"


def report_call(client: redis.Redis, keys: Keys, call_id: str | None, heard_wav: Path, plan: demo_call.Plan) -> dict:
    """Print the transcript, latencies and the recording's speech; return them for the checks and demo.json."""
    call = _texts(client.hgetall(keys.call(call_id))) if call_id else {}
    call_log = (client.xrange(keys.call_log(call_id)) or []) if call_id else []
    entries = [demo_report.LogEntry.from_fields(_texts(fields)) for _, fields in call_log if fields is not None]
    full = (plan.greeting.text, *(a.text for a in plan.answers))
    step("transcript (the call log stream; s since the call started, when each utterance finished)")
    print("\n".join(demo_report.transcript_lines(entries, full)) or "(empty)")
    step("latencies and counters (call hash)")
    print("\n".join(demo_report.latency_lines(call)))
    step("what the caller heard")
    spans: list[tuple[float, float]] = []
    greeting_share = 0.0
    if heard_wav.exists():
        samples, rate = demo_report.read_wav(heard_wav)
        spans = demo_report.voiced_spans(samples, rate)
        greeting_share = demo_report.voiced_share(samples, rate, 0, GREETING_WINDOW_S)
        print(
            f"{heard_wav} ({len(samples) / rate:.1f}s); agent speech at "
            + ", ".join(f"{a:.1f}-{b:.1f}s" for a, b in spans)
        )
    else:
        print("no recording")
    return {"call": call, "log": [e.__dict__ for e in entries], "spans": spans, "greeting_share": greeting_share}


@dataclass
class DemoRun:
    """One demo's set-up and what it found: its files, its cluster's key prefix, the checks and the summary."""

    workdir: Path
    prefix: str
    api_key: str
    ari_password: str
    config: Config
    client: redis.Redis
    keys: Keys
    plan: demo_call.Plan
    timeline: demo_call.Timeline
    paths: dict[str, Path]
    cluster: LocalCluster
    checks: dict[str, bool] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    real: RealAsterisk | None = None  # the real Asterisk of --real-asterisk, stopped at the end
    ari_url: str = ""


def main(args: argparse.Namespace) -> int:
    run = prepare(args)
    if run is None:
        return 1
    started = time.monotonic()
    if args.real_asterisk:
        step("a real Asterisk (Debian's package from the cache, a run directory of its own)")
        run.real = start_or_explain(run.workdir / "asterisk")
        if run.real is None:
            run.client.close()
            return 1
        run.summary["asterisk"] = {
            "version": run.real.version,
            "ari_url": run.real.ari_url,
            "run_dir": str(run.real.run_dir),
        }
    procs: list[RoleProcess] = []
    try:
        start_simulators(run)
        step("controller, two media workers, tool worker")
        procs = [
            run.cluster.start("controller"),
            run.cluster.start("media-worker", *media_worker_args(0)),
            run.cluster.start("media-worker", *media_worker_args(1)),
            run.cluster.start("tool-worker"),
        ]
        run.checks["all processes ready"] = wait_ready_each(procs, time.monotonic(), timeout=30)
        if run.checks["all processes ready"]:
            scripted_call(run)
            show_email_files_and_status(run)
        if args.keep_running:
            step("running; press Ctrl-C to stop")
            try:
                while all(p.popen.poll() is None for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        stop_everything(run)
    return finish(run, started)


def prepare(args: argparse.Namespace) -> DemoRun | None:
    """The work directory, the environment every process inherits, the config, the emulator's script and the
    caller's WAV; None (after saying why) when the config or Redis is unusable."""
    config_path = Path(args.config) if args.config else ROOT / "config" / "ai-agent.yaml"
    workdir = Path(os.environ.get("VA_DEMO_WORKDIR") or tempfile.mkdtemp(prefix="voice-agent-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"va-demo-{os.getpid()}-{os.urandom(3).hex()}:"
    api_key = "sk-demo-" + os.urandom(12).hex()  # only the emulator accepts it; nothing reaches OpenAI
    env = {
        "OPENAI_API_KEY": api_key,
        "REDIS_KEY_PREFIX": prefix,
        "REALTIME_PREWARM": "1",
        "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
    }  # replaced by the emulator's URL in start_simulators
    os.environ.update(env)
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        print(exc)
        return None
    for warning in loaded.warnings:
        print(f"config warning: {warning}")
    client = redis_or_explain(loaded.config.redis.url)
    if client is None:
        return None
    plan = demo_call.DEFAULT_PLAN
    timeline = demo_call.caller_timeline(plan)
    paths = {
        "script": workdir / "realtime-script.yaml",
        "caller": workdir / "caller-says.wav",
        "heard": workdir / "caller-heard.wav",
        "wire": workdir / "realtime-wire.jsonl",
        "mail": workdir / "mail",
    }
    demo_call.write_emulator_script(paths["script"], plan)
    demo_call.write_caller_wav(paths["caller"], timeline)
    return DemoRun(
        workdir=workdir,
        prefix=prefix,
        api_key=api_key,
        ari_password="demo-" + os.urandom(6).hex(),
        config=loaded.config,
        client=client,
        keys=Keys(prefix),
        plan=plan,
        timeline=timeline,
        paths=paths,
        cluster=LocalCluster(config_path, workdir, env),
        summary={"workdir": str(workdir), "prefix": prefix, "paths": {k: str(v) for k, v in paths.items()}},
    )


def start_simulators(run: DemoRun) -> None:
    """The Realtime emulator, the Asterisk simulator (unless a real Asterisk runs) and the mail server; the
    roles' environment points at them."""
    step("simulators")
    cluster, paths = run.cluster, run.paths
    realtime = cluster.start_sim(
        "realtime",
        "--script",
        str(paths["script"]),
        "--wire-log",
        str(paths["wire"]),
        "--speed",
        EMULATOR_SPEED,
        "--api-key",
        run.api_key,
    )
    if run.real is not None:
        run.ari_url = run.real.ari_url
        cluster.env.update(ASTERISK_ARI_USERNAME=run.real.user, ASTERISK_ARI_PASSWORD=run.real.password)
    else:
        username = run.config.asterisk.username
        run.ari_url = cluster.start_sim("asterisk", "--user", username, "--password", run.ari_password).url
        cluster.env.update(ASTERISK_ARI_PASSWORD=run.ari_password)
    mail = cluster.start_sim("mail", "--dir", str(paths["mail"]))
    smtp_port = mail.url.rsplit(":", 1)[1]
    cluster.env.update(
        OPENAI_REALTIME_URL=realtime.url, ASTERISK_ARI_URL=run.ari_url, SMTP_HOST="127.0.0.1", SMTP_PORT=smtp_port
    )
    print(f"OpenAI Realtime emulator  {realtime.url}  (speed {EMULATOR_SPEED}x, wire log {paths['wire']})")
    if run.real is not None:
        print(f"real Asterisk {run.real.version} (ARI)  {run.ari_url}  (run dir {run.real.run_dir})")
        stored = f"in {run.real.run_dir / 'etc' / 'ari.conf'}, " if run.real.run_dir is not None else ""
        print(
            f"  ARI user {run.real.user}, password {run.real.password}"
            f" (made for this run; {stored}given to the agents as ASTERISK_ARI_PASSWORD)"
        )
    else:
        print(f"Asterisk 22.10.1 simulator (ARI)    {run.ari_url}")
        print(
            f"  ARI user {run.config.asterisk.username}, password {run.ari_password} (made for this run: given to"
            " the simulator on its command line and to the agents as ASTERISK_ARI_PASSWORD; written nowhere)"
        )
    print(f"mail server (SMTP)        {mail.url}  (messages in {paths['mail']})")


def scripted_call(run: DemoRun) -> None:
    """The call, its report, and the checks on what happened in it."""
    paths = run.paths
    step(f"a scripted call (the caller speaks from {paths['caller']})")
    for seg in run.timeline.segments:
        if seg.line is not None:
            print(f"  {seg.start_s:4.1f}s after the answer the caller says: {seg.line.text}")
    if run.real is not None:
        print(f"(Asterisk plays it into the call and records what the caller hears: {paths['heard']})")
        call = run_pbx_call(run.real, run.client, run.keys, run.timeline, paths["caller"], paths["heard"])
    else:
        sim = SimControl(run.ari_url, run.config.asterisk.username, run.ari_password)
        call = run_call(sim, run.client, run.keys, run.timeline, paths["caller"], paths["heard"])
    run.summary["sim_call"] = call
    run.checks["call set up"] = bool(call.get("answered") and call.get("call_id"))
    result = report_call(run.client, run.keys, call.get("call_id"), paths["heard"], run.plan)
    run.summary.update(result)
    roles = {e["role"] for e in result["log"]}
    run.checks["greeting heard"] = result["greeting_share"] > 0.3
    run.checks["transcript has both roles"] = {"user", "assistant"} <= roles
    run.checks["barge-in happened"] = bool(
        demo_report.numbers(result["call"].get("bargein_ms")) or int(result["call"].get("truncations") or 0) > 0
    )


def show_email_files_and_status(run: DemoRun) -> None:
    paths = run.paths
    step("the summary email (sent by a tool worker after the call)")
    summary_mail = wait_for_mail(paths["mail"], timeout=15)
    run.checks["summary email delivered"] = summary_mail is not None
    if summary_mail is not None:
        print(f"{summary_mail}\n  {mail_headline(summary_mail)}")
    else:
        print("no email arrived within 15 s")
    step("files")
    print(
        f"caller-side recording  {paths['heard']}\ncaller's script        {paths['caller']}\n"
        f"Realtime wire log      {paths['wire']}\nsummary email          {paths['mail']}/*.eml\n"
        f"process logs           {run.workdir}/*.log"
    )
    step("voice-agent status")
    print(render(asyncio.run(collect(run.config))))


def stop_everything(run: DemoRun) -> None:
    """SIGTERM to every process (and a real Asterisk stopped, after counting what is left in it)."""
    step("stopping (SIGTERM)")
    sims = list(run.cluster.sims)
    codes = run.cluster.stop_all()
    for pid, code in codes.items():
        print(f"{pid}: exit {code}")
    for s in sims:
        print(f"sim {s.kind}: exit {s.popen.returncode}")
    run.checks["everything exited 0"] = all(code == 0 for code in codes.values()) and all(
        s.popen.returncode == 0 for s in sims
    )
    if run.real is not None:
        left = asterisk_leftovers(run.real)
        print(f"left in Asterisk: {left['channels']} channels, {left['bridges']} bridges")
        run.checks["nothing left in Asterisk"] = left == {"channels": 0, "bridges": 0}
        run.summary["asterisk"]["left"] = left
        run.real.stop()
        print(f"stopped the real Asterisk (logs in {run.real.own_run_dir / 'log'})")


def finish(run: DemoRun, started: float) -> int:
    """The deregistration check, the cluster's keys removed, the checks printed, demo.json written."""
    after = asyncio.run(collect(run.config))
    left = len(after["controllers"]) + len(after["media_workers"]) + len(after["tool_workers"])
    print(f"registered processes left in Redis: {left}")
    run.checks["all deregistered"] = left == 0
    print(f"removed {purge(run.client, run.prefix)} keys under {run.prefix!r}")
    run.client.close()

    step("checks")
    for name, ok in run.checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'}  {name}")
    ok = bool(run.checks) and all(run.checks.values())
    run.summary.update(checks=run.checks, ok=ok, seconds=round(time.monotonic() - started, 1))
    (run.workdir / "demo.json").write_text(json.dumps(run.summary, indent=1, default=str), encoding="utf-8")
    print(f"\ndemo {'OK' if ok else 'FAILED'} in {run.summary['seconds']}s (files in {run.workdir})")
    sys.stdout.flush()
    return 0 if ok else 1
