"""`voice-agent demo`: start a controller, a media worker and a tool worker as real processes on the local
Redis, show them registered, healthy and serving metrics, run a job through a tool worker, then stop them
all cleanly and show they deregistered. Exit 0 only if every step worked."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import redis
from rq import Queue

from shared.config import ConfigError, load_config
from shared.keys import Keys
from shared.status import collect, render
from sim.cluster import LocalCluster, http_get

ROOT = Path(__file__).resolve().parent.parent


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(args: argparse.Namespace) -> int:
    config_path = Path(args.config) if args.config else ROOT / "config" / "ai-agent.yaml"
    prefix = f"va-demo-{os.getpid()}:"
    env = {
        # The demo never reaches OpenAI; a placeholder key satisfies the config.
        "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "demo-key-not-used"),
        "REDIS_KEY_PREFIX": prefix,
    }
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        print(exc)
        return 1
    config = loaded.config
    for warning in loaded.warnings:
        print(f"config warning: {warning}")
    workdir = Path(tempfile.mkdtemp(prefix="voice-agent-demo-"))
    cluster = LocalCluster(config_path, workdir, env)
    ok = True
    try:
        step("starting the Asterisk simulator")
        ari_password = "demo-" + os.urandom(6).hex()
        ari = cluster.start_sim("asterisk", "--user", config.asterisk.username, "--password", ari_password)
        cluster.env.update(ASTERISK_ARI_URL=ari.url, ASTERISK_ARI_PASSWORD=ari_password)
        print(f"simulated Asterisk 22.10.1 (ARI) on {ari.url}")

        step("starting controller, media worker and tool worker")
        procs = [cluster.start("controller"), cluster.start("media-worker"),
                 cluster.start("tool-worker")]
        started = time.monotonic()
        if not cluster.wait_ready(timeout=60):
            for p in procs:
                print(f"--- {p.id} (exit {p.popen.poll()}):\n{p.log_text()[-2000:]}")
            return 1
        print(f"all three ready in {time.monotonic() - started:.2f}s (logs in {workdir})")

        step("voice-agent status")
        print(render(asyncio.run(collect(config))))

        step("health and metrics")
        for p in procs:
            code, body = http_get(p.health_url + "/metrics")
            registered = next((line for line in body.decode().splitlines() if line.startswith("va_registered")), "")
            print(f"{p.role:<13} /healthz {http_get(p.health_url + '/healthz')[0]}  /readyz "
                  f"{http_get(p.health_url + '/readyz')[0]}  /metrics {code}  {registered}")

        step("a job through the tool worker's queue")
        conn = redis.Redis.from_url(config.redis.url)
        job = Queue(Keys(prefix).queue("tools"), connection=conn).enqueue(
            "tool_worker.jobs.selftest", int(time.time() * 1000), result_ttl=60)
        deadline = time.monotonic() + 30
        while job.get_status(refresh=True) not in ("finished", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
        result = job.return_value()
        print(f"job {job.id}: {job.get_status().value}, result {result}")
        ok &= job.get_status() == "finished"

        if args.keep_running:
            step("running; press Ctrl-C to stop")
            try:
                while all(p.popen.poll() is None for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        step("stopping (SIGTERM)")
        codes = cluster.stop_all()
        for pid, code in codes.items():
            print(f"{pid}: exit {code}")
        ok &= all(code == 0 for code in codes.values())
    after = asyncio.run(collect(config))
    left = len(after["controllers"]) + len(after["media_workers"]) + len(after["tool_workers"])
    print(f"registered processes left in Redis: {left}")
    ok &= left == 0
    print("\ndemo OK" if ok else "\ndemo FAILED")
    return 0 if ok else 1
