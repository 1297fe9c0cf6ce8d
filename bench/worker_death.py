"""A media worker killed (kill -9) in the middle of calls on a real Asterisk 22: how long its callers hear nothing.

    .venv/bin/python bench/worker_death.py [--rounds 5] [--calls 2] [--json out.json] [--redis URL]

Each round: a controller (kept across rounds), a media worker that takes `--calls` calls per transport (ExternalMedia
RTP u-law, AudioSocket slin, WebSocket u-law: one dialplan context per transport), then a second worker; every
caller asks a question and hears the answer, then the first worker is killed with SIGKILL while the lines are
quiet. Measured per call, as the caller hears it (frame arrival at its RTP socket): the kill to the first voiced
agent frame (the resumed agent's "the line dropped" reply from the other worker): the caller-audible gap, whose
budget is p95 ≤ 1.5 s. Also counted: calls moved, calls sent to the fallback, calls that heard nothing within 5 s
(dead air), and what is left in Asterisk and Redis once the callers hang up. A last round kills the only worker:
kill to the caller leaving Stasis for the dialplan fallback (budget 5 s: the shipped controller.move_wait_ms, 3 s,
for which a lone worker's calls wait for it to beat again, plus 2 s).

Asterisk is Debian's 22.10.1 from `sim.real_asterisk` (or `--ari-url`); when none can be had the bench prints
SKIPPED and exits 0. The model is the Realtime emulator in this process (4× real time, no delay of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis as sync_redis
import redis.asyncio as aioredis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.realpbx import load, pct  # noqa: E402
from shared.keys import Keys  # noqa: E402
from sim.cluster import LocalCluster, purge  # noqa: E402
from sim.pbx_caller import CallerError, PbxCaller  # noqa: E402
from sim.real_asterisk import RealAsteriskUnavailable, connect, start  # noqa: E402
from sim.realtime import Emulator, Reply, Script  # noqa: E402
from tests.conftest import OFFLINE, REDIS_URL, TEST_API_KEY  # noqa: E402
from tests.media_harness import caller_speech  # noqa: E402
from tests.realpbx.pbx_harness import pbx_config  # noqa: E402

# transport -> (the shipped dialplan context, the context it sets in AI_CONTEXT, the profile given to it)
TRANSPORTS = {
    "rtp-ulaw": ("from-ai-agent-openai", "demo_openai", "telephony_ulaw_8k"),
    "audiosocket-slin": ("from-ai-agent-sales", "sales", "telephony_slin_8k"),
    "websocket-ulaw": ("va-bench-websocket", "support", "websocket_ulaw_8k"),  # added to the dialplan here
}
QUESTION = "When are you open?"
HEARD_WITHIN_S = 5.0  # a caller who hears nothing for this long after the kill is in dead air
GAP_BUDGET_MS = 1500.0
FALLBACK_BUDGET_MS = 5000.0  # controller.move_wait_ms as shipped (3 s) + 2 s


def script() -> Script:
    return Script(
        greeting=Reply(text="Hello, thanks for calling.", audio_ms=1000),
        turns={1: Reply(text="We are open from nine to five.", audio_ms=1000)},
        transcripts={1: QUESTION},
        default=Reply(text="Sorry, the line dropped for a moment. Please go on.", audio_ms=1200),
    )


async def wait_for(fn, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


class Bench:
    def __init__(self, ast, redis_url: str, workdir: Path, transports: list[str]):
        self.ast, self.redis_url, self.workdir, self.transports = ast, redis_url, workdir, transports
        self.prefix = f"va-bench-{uuid.uuid4().hex[:8]}:"
        self.keys = Keys(self.prefix)
        self.n = 0
        # The shipped dialplan has two entry contexts; the third transport gets one of the same shape.
        steps = [
            "Set(AI_CONTEXT=support)",
            "Set(AI_PROVIDER=openai_realtime)",
            f"Stasis({ast.app})",
            'GotoIf($["${STASISSTATUS}"="FAILED"]?ai-agent-fallback,s,1)',
            "Hangup()",
        ]
        for priority, app in enumerate(steps, start=1):
            ast.cli(f"dialplan add extension s,{priority},{app} into {TRANSPORTS['websocket-ulaw'][0]} replace")

    def config(self) -> Path:
        path = pbx_config(self.workdir / "config.yaml", self.ast, "telephony_ulaw_8k")
        data = yaml.safe_load(path.read_text())
        for transport in self.transports:
            _, context, profile = TRANSPORTS[transport]
            data["contexts"].setdefault(context, dict(data["contexts"]["demo_openai"]))
            data["contexts"][context].update(profile=profile, greeting="Hi")
        path.write_text(yaml.safe_dump(data))
        return path

    def worker(self, cluster: LocalCluster, name: str):
        self.n += 1
        low = 16000 + 200 * (self.n % 10)  # below the ephemeral ports and the harness Asterisk's RTP range
        return cluster.start(
            "media-worker", "--audiosocket-port", "0", "--rtp-ports", f"{low}-{low + 199}", instance_id=name
        )

    def live(self) -> dict[str, int]:
        out = {}
        for kind in ("channels", "bridges"):
            status, items = self.ast.ari("GET", f"/{kind}")
            out[kind] = len(items) if status == 200 and isinstance(items, list) else -1
        return out

    async def round(self, cluster, client, pbx, r: int, calls: int, out: dict) -> None:
        victim = self.worker(cluster, f"victim-{r}")
        if not await asyncio.to_thread(cluster.wait_ready, [victim], 30):
            raise RuntimeError("victim not ready:\n" + victim.log_text()[-1500:])
        legs = []
        for transport in self.transports:
            for _ in range(calls):
                try:
                    leg = await pbx.call(TRANSPORTS[transport][0])
                except CallerError as exc:
                    out["problems"].append(f"round {r}: not answered: {exc}")
                    continue
                legs.append((transport, leg))
        survivor = self.worker(cluster, f"survivor-{r}")
        if not await asyncio.to_thread(cluster.wait_ready, [survivor], 30):
            raise RuntimeError("survivor not ready:\n" + survivor.log_text()[-1500:])
        await asyncio.sleep(2.0)  # the greetings have played
        for _, leg in legs:
            await leg.say(caller_speech(QUESTION, 900))
        asked = time.monotonic()
        for _, leg in legs:
            await wait_for(lambda leg=leg: leg.first_voiced_after(asked), 10)
        await asyncio.sleep(1.5)  # the answers have played out: the lines are quiet
        killed = time.monotonic()
        victim.popen.kill()
        await asyncio.to_thread(victim.popen.wait)
        cluster.processes.remove(victim)
        for transport, leg in legs:
            heard = await wait_for(lambda leg=leg: leg.first_voiced_after(killed), HEARD_WITHIN_S)
            if heard:
                out["gap"].setdefault(transport, []).append((heard - killed) * 1000)
            else:
                out["dead_air"] += 1
        for _, leg in legs:
            await leg.hangup()
        await asyncio.sleep(1.0)
        records = [await client.hgetall(self.keys.call(cid)) for cid in await self._calls_of_round(client, r)]
        out["moved"] += sum(
            1 for rec in records if rec.get("moves") == "1" and rec.get("end_reason") == "caller_hangup"
        )
        out["fallback"] += sum(1 for rec in records if rec.get("end_reason") in ("no_worker", "move_failed"))
        out["left_redis"] += await client.scard(self.keys.calls_active)
        await asyncio.to_thread(cluster.stop, survivor)
        cluster.processes.remove(survivor)

    async def _calls_of_round(self, client, r: int) -> list[str]:
        found = []
        async for key in client.scan_iter(f"{self.prefix}call:*"):
            if key.count(":") == 2 and await client.hget(key, "worker") == f"survivor-{r}":
                found.append(key.rsplit(":", 1)[1])
        return found

    async def no_worker(self, cluster, pbx) -> float | None:
        victim = self.worker(cluster, "alone")
        if not await asyncio.to_thread(cluster.wait_ready, [victim], 30):
            return None
        leg = await pbx.call(TRANSPORTS["rtp-ulaw"][0])
        await wait_for(lambda: leg.first_voiced_after(leg.answered_at), 5)
        killed = time.monotonic()
        victim.popen.kill()
        await asyncio.to_thread(victim.popen.wait)
        cluster.processes.remove(victim)

        def in_fallback():
            status, channel = self.ast.ari("GET", f"/channels/{leg.peer_id}")
            return status == 200 and channel["dialplan"]["context"] == "ai-agent-fallback"

        took = await wait_for(in_fallback, 10, interval=0.01)
        ms = (time.monotonic() - killed) * 1000 if took else None
        await leg.hangup()
        return ms


async def run(args: argparse.Namespace) -> dict:
    result: dict = {"skipped": None}
    try:
        rc = sync_redis.Redis.from_url(args.redis, socket_connect_timeout=2)
        rc.ping()
        rc.close()
    except sync_redis.RedisError as exc:
        result["skipped"] = f"Redis at {args.redis} unreachable: {exc}"
        return result
    try:
        ast = await asyncio.to_thread(
            (lambda: connect(args.ari_url, args.ari_user, args.ari_password))
            if args.ari_url
            else (lambda: start(None, None, lambda *a: None))
        )
    except (RealAsteriskUnavailable, OSError) as exc:
        result["skipped"] = f"real Asterisk unavailable: {exc}"
        return result
    print(f"real Asterisk {ast.version}; load average at start {load()}; {os.cpu_count()} cores", flush=True)
    transports = args.transports.split(",")
    out = {"gap": {}, "dead_air": 0, "moved": 0, "fallback": 0, "left_redis": 0, "problems": []}
    emu = Emulator(script=script(), api_keys={TEST_API_KEY}, speed=4.0)
    await emu.start("127.0.0.1", 0)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-worker-death-") as tmp:
            bench = Bench(ast, args.redis, Path(tmp), transports)
            before = bench.live()
            env = {
                "REDIS_URL": args.redis,
                "REDIS_KEY_PREFIX": bench.prefix,
                "OPENAI_API_KEY": TEST_API_KEY,
                "LOG_LEVEL": "warning",
                **OFFLINE,
                "OPENAI_REALTIME_URL": emu.url,
                "REALTIME_PREWARM": "1",
            }
            cluster = LocalCluster(bench.config(), Path(tmp), env)
            ctl = cluster.start("controller", instance_id="controller")
            client = aioredis.Redis.from_url(args.redis, decode_responses=True)
            try:
                if not await asyncio.to_thread(cluster.wait_ready, [ctl], 30):
                    raise RuntimeError("controller not ready:\n" + ctl.log_text()[-1500:])
                async with PbxCaller(ast.ari_url, ast.user, ast.password) as pbx:
                    for r in range(args.rounds):
                        await bench.round(cluster, client, pbx, r, args.calls, out)
                        gaps = [g for v in out["gap"].values() for g in v]
                        print(f"round {r + 1}: gaps so far p95 {pct(gaps)['p95']:.0f} ms (n={len(gaps)})", flush=True)
                    out["fallback_ms"] = await bench.no_worker(cluster, pbx)
                await asyncio.sleep(1.0)
                after = bench.live()
                out["left_asterisk"] = {k: after[k] - before[k] for k in after}
            finally:
                await asyncio.to_thread(cluster.stop_all)
                await client.aclose()
                rc = sync_redis.Redis.from_url(args.redis)
                purge(rc, bench.prefix)
                rc.close()
    finally:
        await emu.stop()
        await asyncio.to_thread(ast.stop)
    all_gaps = [g for v in out["gap"].values() for g in v]
    result.update(
        asterisk=ast.version,
        load_end=load(),
        gap={t: pct(v) for t, v in out["gap"].items()},
        gap_all=pct(all_gaps),
        **{k: out[k] for k in ("dead_air", "moved", "fallback", "left_redis", "left_asterisk", "fallback_ms")},
        problems=out["problems"],
    )
    return result


def report(result: dict) -> None:
    if result["skipped"]:
        print(f"SKIPPED: {result['skipped']}")
        return
    print("\nkill -9 of a media worker → the caller hears the agent again (caller-audible gap), ms:")
    for transport, s in result["gap"].items():
        print(f"  {transport:18} p50 {s['p50']:.0f}  p95 {s['p95']:.0f}  max {s['max']:.0f}  (n={s['n']})")
    a = result["gap_all"]
    verdict = "met" if a["p95"] is not None and a["p95"] <= GAP_BUDGET_MS else "missed"
    print(
        f"  {'all':18} p50 {a['p50']:.0f}  p95 {a['p95']:.0f}  max {a['max']:.0f}  (n={a['n']})  "
        f"budget p95 ≤ {GAP_BUDGET_MS:.0f} ms: {verdict}"
    )
    print(
        f"moved {result['moved']}, sent to the fallback {result['fallback']}, dead air {result['dead_air']}; "
        f"left: Asterisk {result['left_asterisk']}, Redis active calls {result['left_redis']}"
    )
    fb = result["fallback_ms"]
    print(
        f"no worker left: kill → dialplan fallback {'n/a' if fb is None else f'{fb:.0f} ms'} "
        f"(budget {FALLBACK_BUDGET_MS:.0f} ms)"
    )
    for problem in result["problems"]:
        print(f"problem: {problem}")
    print(f"load average at the end {result['load_end']}")


async def bounded(coro, seconds: float):
    async with asyncio.timeout(seconds):
        return await coro


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=2, help="calls per transport in each round")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated, of " + ", ".join(TRANSPORTS))
    p.add_argument("--redis", default=REDIS_URL)
    p.add_argument("--ari-url", default=os.environ.get("VA_REAL_ASTERISK_ARI_URL"))
    p.add_argument("--ari-user", default=os.environ.get("VA_REAL_ASTERISK_ARI_USER", "asterisk"))
    p.add_argument("--ari-password", default=os.environ.get("VA_REAL_ASTERISK_ARI_PASSWORD", ""))
    p.add_argument("--json", type=Path, help="write the figures here as JSON (for run_all)")
    args = p.parse_args()
    for t in args.transports.split(","):
        if t not in TRANSPORTS:
            p.error(f"unknown transport {t!r}")
    result = asyncio.run(bounded(run(args), 60 * (args.rounds + 3)))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
