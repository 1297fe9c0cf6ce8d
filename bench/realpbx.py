"""The agent on a real Asterisk 22, per media transport: what a caller hears and what it costs.

    .venv/bin/python bench/realpbx.py [--quick] [--transports audiosocket-slin24,rtp-ulaw] [--json out.json]
                                      [--before-tree /tmp/before-bench] [--ari-url URL --ari-user U --ari-password P]

Asterisk is Debian's 22.10.1 from `sim.real_asterisk` (cached install, a run directory of its own, loopback
only), or the one at `--ari-url`; when none can be had the bench prints SKIPPED and exits 0. Our roles run as
processes (`sim.cluster.LocalCluster`: one controller, one media worker), the model is the Realtime emulator
(`sim.realtime.Emulator`, in this process, no delay of its own before the first audio), and the callers are
`sim.pbx_caller` legs: Local channels into the shipped dialplan context, whose half we hold bridged with an
ExternalMedia RTP leg to a socket here, so every frame the caller hears has its arrival time.

Per transport (AudioSocket slin / slin16 / slin24, ExternalMedia RTP u-law):

- conversation calls (a few at once): answer (Dial ANSWER seen by the caller) → first voiced greeting frame
  at the caller; caller speech end (last frame sent) → first voiced agent frame (includes the shipped
  config's `silence_duration_ms`, the model's end-of-turn wait); barge-in stop time: the caller's barge onset
  (first frame of the barge sent) → the last agent frame the caller hears before the agent goes quiet.
- a ramp: N calls started over R s, each held H s from its answer (every caller says a short phrase every
  few seconds and the agent answers): setup failures (not answered, or no `setup_ms` on the call record, or
  ended by a setup reason), fallbacks (ended to the dialplan fallback), orphans (channels and bridges left in
  Asterisk, calls left in Redis) and CPU ms per call-second of Asterisk, the media worker and the controller
  (/proc/<pid>/stat utime+stime over the window in which every answered call is up, divided by the
  call-seconds in it). Asterisk's figure includes the test callers' own half of each call (a Local channel
  pair, an ExternalMedia RTP leg and a bridge per call).

`--before-tree` runs one more ramp (AudioSocket slin24) with the roles of another checkout (e.g. a worktree of
f0ac822, before the Stasis-entry fix): its `sim/cluster.py` is loaded, so the roles run with that tree as cwd.
Everything is bounded: every wait has a timeout and the whole bench stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import sys
import tempfile
import time
import uuid
from asyncio.subprocess import DEVNULL, PIPE
from pathlib import Path

import numpy as np
import redis as sync_redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.keys import Keys  # noqa: E402
from sim.asterisk.audio import CallerAudio  # noqa: E402
from sim.cluster import LocalCluster, purge  # noqa: E402
from sim.pbx_caller import VOICED_DBFS, CallerError, PbxCaller  # noqa: E402
from sim.real_asterisk import RealAsterisk, RealAsteriskUnavailable, connect, start  # noqa: E402
from sim.realtime import Emulator, Reply, Script  # noqa: E402
from tests.ari_harness import percentile  # noqa: E402
from tests.conftest import OFFLINE, REDIS_URL, TEST_API_KEY  # noqa: E402
from tests.media_harness import caller_speech  # noqa: E402
from tests.realpbx.pbx_harness import PROFILES, pbx_config  # noqa: E402
from tests.realpbx.test_calls import speaking_up  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
EMULATOR_SPEED = 4.0  # the model streams its audio 4× faster than real time, as the real one streams ahead
GREETING_MS = 1500
ANSWER_MS = 6000  # the answer the caller barges into
SORRY_MS = 800  # the agent's reply to the barge-in
SPEECH_MS = 900
BARGE_AFTER_S = 1.0  # the caller barges in this long into the agent's answer
QUIET_S = 0.5  # the agent has finished once nothing voiced came for this long
RAMP_TALK_EVERY_S = 5.0  # during the ramp's hold each caller speaks this often; the agent answers
RAMP_REPLY_MS = 2000
FRAME = 160  # samples in a 20 ms frame at 8 kHz
SETUP_REASONS = {"setup_failed", "setup_error", "queue_timeout", "media_lost"}
# Ended into the dialplan fallback: a setup reason, or the call's worker lost with no other to move it to
# (`no_worker`: the worker watch declared it dead, e.g. its heartbeat stalled on a starved machine).
FALLBACK_REASONS = SETUP_REASONS | {"no_worker"}
BUDGETS = {"greeting": 100.0, "barge": 20.0}  # ms; the budget table is in run_all.py


# -- audio, made once (espeak-ng is a subprocess) ---------------------------------------------------------------


def _pcm8k(audio: CallerAudio) -> bytes:
    frames = []
    while (frame := audio.frame(8000)) is not None:
        frames.append(frame[0])
    return b"".join(frames)


def _voiced_span(pcm: bytes) -> tuple[float, float]:
    """Seconds from the start to the first voiced 20 ms frame, and from the end of the last one to the end."""
    frames = np.frombuffer(pcm, "<i2").astype(np.float64)
    n = len(frames) // FRAME
    rms = np.sqrt(np.mean(frames[: n * FRAME].reshape(n, FRAME) ** 2, axis=1) + 1e-9)
    voiced = np.flatnonzero(20 * np.log10(rms / 32768) > VOICED_DBFS)
    return voiced[0] * 0.02, (n - voiced[-1] - 1) * 0.02


class Voices:
    def __init__(self) -> None:
        self.question = _pcm8k(caller_speech("When are you open?", SPEECH_MS))
        self.barge = _pcm8k(speaking_up("Wait, stop."))
        self.question_tail = _voiced_span(self.question)[1]  # quiet end of the words: speech ended before it
        self.barge_head = _voiced_span(self.barge)[0]  # quiet start: the barge's onset is after it

    @staticmethod
    def of(pcm: bytes) -> CallerAudio:
        return CallerAudio.from_pcm(pcm, 8000)


# -- small helpers ------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}


def fmt(stats: dict) -> str:
    if not stats["n"]:
        return "n=0"
    return f"p50 {stats['p50']:7.1f}  p95 {stats['p95']:7.1f}  max {stats['max']:7.1f} ms  (n={stats['n']})"


async def wait_value(fn, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


async def quiet(leg, after: float, timeout: float) -> None:
    """Until nothing voiced has come for `QUIET_S` (counting from `after` at the earliest), at most `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = max(leg.voiced[-1] if leg.voiced else after, after)
        if time.monotonic() - last >= QUIET_S:
            return
        await asyncio.sleep(0.02)


class LoopLag:
    """How late this process's own event loop wakes (the callers' arrival times are taken on it)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            self.lags.append((time.monotonic() - t - 0.01) * 1000)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()

    def summary(self) -> str:
        if not self.lags:
            return "n/a"
        return f"p99 {percentile(self.lags, 99):.1f} ms, max {max(self.lags):.1f} ms"


# -- the cluster ---------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, ast: RealAsterisk, redis_url: str, workdir: Path):
        self.ast = ast
        self.redis_url = redis_url
        self.workdir = workdir
        self.n = 0
        self.voices = Voices()

    @contextlib.asynccontextmanager
    async def cluster(self, emu: Emulator, profile: str, extra: dict | None = None, cluster_cls=LocalCluster):
        """Controller + one media worker on `profile`, pointed at the real Asterisk and the emulator; yields
        (cluster, controller, worker, keys, redis client). Stopped and its Redis keys removed afterwards."""
        self.n += 1
        tag = f"c{self.n}"
        workdir = self.workdir / tag
        workdir.mkdir(parents=True)
        prefix = f"va-bench-{uuid.uuid4().hex[:8]}:"
        config = pbx_config(workdir / "config.yaml", self.ast, profile, extra)
        env = {
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "OPENAI_API_KEY": TEST_API_KEY,
            "LOG_LEVEL": "warning",
            **OFFLINE,
            "OPENAI_REALTIME_URL": emu.url,
            "REALTIME_PREWARM": "1",
        }
        cluster = cluster_cls(config, workdir, env)
        # Below the kernel's ephemeral ports (32768-60999 on Linux), from which this process's callers bind their
        # RTP sockets: a worker range in there was given a port a caller held (issue 19); and below the harness
        # Asterisk's RTP range (20000 up).
        low = 12000 + 400 * (self.n % 15)
        ctl = cluster.start("controller", instance_id=f"controller-{tag}")
        worker = cluster.start(
            "media-worker", "--audiosocket-port", "0", "--rtp-ports", f"{low}-{low + 399}", instance_id=f"worker-{tag}"
        )
        client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            if not await asyncio.to_thread(cluster.wait_ready, [ctl, worker], 30):
                raise RuntimeError("roles not ready:\n" + "\n".join(p.log_text()[-1500:] for p in (ctl, worker)))
            yield cluster, ctl, worker, Keys(prefix), client
        finally:
            codes = await asyncio.to_thread(cluster.stop_all)
            bad = {k: v for k, v in codes.items() if v != 0}
            if bad:
                print(f"  (roles exited non-zero: {bad}; logs in {workdir})")
            await client.aclose()
            rc = sync_redis.Redis.from_url(self.redis_url)
            purge(rc, prefix)
            rc.close()

    def live(self) -> dict[str, set[str]]:
        found = {}
        for kind in ("channels", "bridges"):
            status, items = self.ast.ari("GET", f"/{kind}")
            found[kind] = {i["id"] for i in items} if status == 200 and isinstance(items, list) else set()
        return found

    # -- conversation calls --------------------------------------------------------------------------------

    async def conversations(self, transport: str, calls: int, at_once: int, rounds: int) -> dict:
        turns = {}
        for r in range(rounds):
            turns[2 * r + 1] = Reply(text="We are open from nine to five, every day. " * 3, audio_ms=ANSWER_MS)
            turns[2 * r + 2] = Reply(text="Sorry, go ahead.", audio_ms=SORRY_MS)
        emu = Emulator(
            script=Script(
                greeting=Reply(text="Hello, thanks for calling. How can I help?", audio_ms=GREETING_MS), turns=turns
            ),
            api_keys={TEST_API_KEY},
            speed=EMULATOR_SPEED,
        )
        await emu.start("127.0.0.1", 0)
        out = {"greeting": [], "turn": [], "barge": [], "problems": [], "load": load()}
        try:
            async with (
                self.cluster(emu, PROFILES[transport]) as (_, _, _, keys, client),
                PbxCaller(self.ast.ari_url, self.ast.user, self.ast.password) as pbx,
            ):
                todo = iter(range(calls))

                async def runner(k: int) -> None:
                    await asyncio.sleep(k * 1.3)  # spread the callers over a conversation's phases
                    for _ in todo:
                        await self.one_conversation(pbx, rounds, out)

                per_call = GREETING_MS / 1000 + rounds * 8 + 10
                with LoopLag() as lag:
                    await asyncio.wait_for(
                        asyncio.gather(*(runner(k) for k in range(at_once))),
                        timeout=per_call * (calls / at_once + 1) + 30,
                    )
                out["loop_lag"] = lag.summary()
                out["worker"] = await worker_figures(keys, client, calls)
        finally:
            await emu.stop()
        return out

    async def one_conversation(self, pbx: PbxCaller, rounds: int, out: dict) -> None:
        try:
            leg = await pbx.call()
        except CallerError as exc:
            out["problems"].append(f"not answered: {exc}")
            return
        try:
            first = await wait_value(lambda: leg.first_voiced_after(leg.answered_at), 5)
            if first is None:
                out["problems"].append("no greeting heard")
                return
            out["greeting"].append((first - leg.answered_at) * 1000)
            await quiet(leg, first, timeout=GREETING_MS / 1000 + 5)
            for _ in range(rounds):
                await leg.say(self.voices.of(self.voices.question))
                spoken = time.monotonic() - self.voices.question_tail  # the last voiced frame went out here
                answer = await wait_value(functools.partial(leg.first_voiced_after, spoken), 10)
                if answer is None:
                    out["problems"].append("no answer heard")
                    return
                out["turn"].append((answer - spoken) * 1000)
                await asyncio.sleep(max(0.0, answer + BARGE_AFTER_S - time.monotonic()))
                said = time.monotonic()
                barge = said + self.voices.barge_head  # the first voiced frame of the barge-in goes out here
                await leg.say(self.voices.of(self.voices.barge))
                barge_end = time.monotonic()
                heard = [t for t in leg.voiced if barge <= t < barge_end]
                last = heard[-1] if heard else barge
                if barge_end - last < 0.3:
                    out["problems"].append("agent went on talking over the barge-in")
                else:
                    out["barge"].append((last - barge) * 1000)
                reply = await wait_value(functools.partial(leg.first_voiced_after, barge_end), 5)  # "Sorry, go ahead."
                await quiet(leg, reply or barge_end, timeout=SORRY_MS / 1000 + 5)
        finally:
            with contextlib.suppress(asyncio.TimeoutError, CallerError):
                await leg.hangup()

    # -- the ramp ------------------------------------------------------------------------------------------

    async def ramp(self, transport: str, calls: int, ramp_s: float, hold_s: float, cluster_cls=LocalCluster) -> dict:
        emu = Emulator(
            script=Script(
                greeting=Reply(text="Hello, thanks for calling.", audio_ms=GREETING_MS),
                default=Reply(text="I see, let me check that for you.", audio_ms=RAMP_REPLY_MS),
            ),
            api_keys={TEST_API_KEY},
            speed=EMULATOR_SPEED,
        )
        await emu.start("127.0.0.1", 0)
        out: dict = {"load": load(), "ramp_s": ramp_s, "hold_s": hold_s}
        before = self.live()
        try:
            async with (
                self.cluster(emu, PROFILES[transport], ramp_limits(calls), cluster_cls) as (
                    _,
                    ctl,
                    worker,
                    keys,
                    client,
                ),
                PbxCaller(self.ast.ari_url, self.ast.user, self.ast.password) as pbx,
            ):
                pids = {
                    "asterisk": self.ast.pid if self.ast.started_here else 0,
                    "media worker": worker.popen.pid,
                    "controller": ctl.popen.pid,
                }
                samples: list[tuple[float, dict]] = []
                stop = asyncio.Event()

                async def sample() -> None:
                    while not stop.is_set():
                        samples.append((time.monotonic(), {k: cpu_seconds(p) if p else None for k, p in pids.items()}))
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.25)

                sampler = asyncio.create_task(sample())
                with LoopLag() as lag:
                    legs = await asyncio.wait_for(
                        asyncio.gather(*(self.ramp_caller(pbx, i * ramp_s / calls, hold_s) for i in range(calls))),
                        timeout=ramp_s + hold_s + 60,
                    )
                stop.set()
                await sampler
                out["loop_lag"] = lag.summary()
                out.update(await self.ramp_outcome(legs, keys, client))
                out["cpu"] = cpu_window(samples, [leg for leg in legs if leg.get("answered_at")])
                out["warnings"] = {
                    "controller": log_problems(ctl.log_text()),
                    "media worker": log_problems(worker.log_text()),
                }
        finally:
            await emu.stop()
        # After the cluster stopped: anything of these calls still in Asterisk is an orphan.
        deadline = time.monotonic() + 10
        while True:
            left = {k: v - before[k] for k, v in self.live().items()}
            if not any(left.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        out["orphans_after_stop"] = {k: len(v) for k, v in left.items()}
        for channel in left["channels"]:
            self.ast.ari("DELETE", f"/channels/{channel}")
        for bridge in left["bridges"]:
            self.ast.ari("DELETE", f"/bridges/{bridge}")
        return out

    async def ramp_caller(self, pbx: PbxCaller, delay: float, hold_s: float) -> dict:
        await asyncio.sleep(delay)
        try:
            leg = await pbx.call()
        except CallerError as exc:
            return {"error": str(exc)}
        end = leg.answered_at + hold_s
        await asyncio.sleep(GREETING_MS / 1000 + 0.5)
        while time.monotonic() + RAMP_TALK_EVERY_S < end and not leg.gone.is_set():
            await leg.say(self.voices.of(self.voices.question))
            await asyncio.sleep(RAMP_TALK_EVERY_S - SPEECH_MS / 1000)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        hung = time.monotonic()
        gone_early = leg.gone.is_set()
        with contextlib.suppress(asyncio.TimeoutError, CallerError):
            await leg.hangup()
        return {
            "peer": leg.peer_id,
            "answered_at": leg.answered_at,
            "hung_at": hung,
            "gone_early": gone_early,
            "greeting": leg.first_voiced_after(leg.answered_at) is not None,
        }

    async def ramp_outcome(self, legs: list[dict], keys: Keys, client) -> dict:
        async def active() -> int:
            return await client.scard(keys.calls_active)

        deadline = time.monotonic() + 15
        while await active() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        records = {}
        async for key in client.scan_iter(match=keys.call("*"), _type="HASH"):
            record = await client.hgetall(key)
            if record.get("caller_channel"):
                records[record["caller_channel"]] = {**record, "_id": key[len(keys.call("")) :]}
        setup_failed, fallback, no_greeting, reasons = 0, 0, 0, {}
        for leg in legs:
            record = records.get(leg.get("peer"), {})
            reason = record.get("end_reason", "no call record")
            reasons[reason] = reasons.get(reason, 0) + 1
            if "error" in leg or not record.get("setup_ms") or reason in SETUP_REASONS - {"media_lost"}:
                setup_failed += 1
            if reason in FALLBACK_REASONS:
                fallback += 1
            if "error" not in leg and not leg["greeting"]:
                no_greeting += 1
        leases = sum([await client.exists(keys.call_lease(r["_id"])) for r in records.values()])
        return {
            "calls": len(legs),
            "answered": sum(1 for leg in legs if "error" not in leg),
            "setup_failed": setup_failed,
            "fallback": fallback,
            "no_greeting": no_greeting,
            "end_reasons": reasons,
            "redis_calls_left": await active(),
            "redis_leases_left": leases,
            "errors": sorted({leg["error"][:120] for leg in legs if "error" in leg}),
        }


def log_problems(text: str, shown: int = 3) -> dict:
    """A role's WARNING and ERROR lines (the roles log at warning level here): how many, and the first few, so a
    ramp that lost callers says why in its own report (issue 19's losses left only INFO lines)."""
    lines = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    return {"count": len(lines), "first": [line[:300] for line in lines[:shown]]}


def ramp_limits(calls: int) -> dict:
    """Room for every ramp call at once: the worker's slots and the provider's session limit (100 shipped) are
    raised above the count, so a ramp measures setup, not the admission queue."""
    return {
        "media_worker": {"capacity": calls + 10},
        "providers": {"openai_realtime": {"max_concurrent_sessions": calls + 10}},
    }


async def worker_figures(keys: Keys, client, calls: int) -> dict:
    """The media worker's own figures from the call records (written when its session ends): greeting_ms
    (media leg linked → first greeting frame sent), turn_ms (model speech_stopped → first frame sent),
    bargein_ms (speech detected → agent audio stopped)."""
    deadline = time.monotonic() + 10
    while True:
        records = [await client.hgetall(key) async for key in client.scan_iter(match=keys.call("*"), _type="HASH")]
        done = [r for r in records if "worker_end_reason" in r]
        if len(done) >= calls or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    figures: dict[str, list[float]] = {"greeting_ms": [], "turn_ms": [], "bargein_ms": []}
    for r in done:
        for name, values in figures.items():
            values += [float(v) for v in (r.get(name) or "").split(",") if v]
    return {name: pct(values) for name, values in figures.items()}


def cpu_window(samples: list[tuple[float, dict]], legs: list[dict]) -> dict:
    """CPU ms per call-second over the window in which every answered call is up (from the last answer plus
    the greeting to the first hangup), from the samples taken at its ends."""
    if not legs or len(samples) < 2:
        return {}
    t0 = max(leg["answered_at"] for leg in legs) + GREETING_MS / 1000
    t1 = min(leg["hung_at"] for leg in legs)
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return {}
    (a_t, a), (b_t, b) = inside[0], inside[-1]
    call_s = sum(max(0.0, min(b_t, leg["hung_at"]) - max(a_t, leg["answered_at"])) for leg in legs)
    figures = {}
    for name in a:
        if a[name] is None or b[name] is None:
            figures[name] = None
        else:
            figures[name] = (b[name] - a[name]) * 1000 / call_s
    return {"window_s": b_t - a_t, "call_seconds": call_s, "ms_per_call_s": figures}


def merge_ramps(runs: list[dict], commit: str) -> dict:
    """Several ramps as one: counts summed, CPU of the first, the runs kept."""
    total = dict(runs[0], commit=commit, runs=runs)
    for key in (
        "calls",
        "answered",
        "setup_failed",
        "fallback",
        "no_greeting",
        "redis_calls_left",
        "redis_leases_left",
    ):
        total[key] = sum(r[key] for r in runs)
    total["orphans_after_stop"] = {
        k: sum(r["orphans_after_stop"].get(k, 0) for r in runs) for k in ("channels", "bridges")
    }
    total["per_run_setup_failed"] = [r["setup_failed"] for r in runs]
    return total


async def short_commit(tree: Path) -> str:
    """The checked-out commit of `tree`, abbreviated ("?" when it is not a git checkout)."""
    git = await asyncio.create_subprocess_exec(
        "git", "-C", str(tree), "rev-parse", "--short", "HEAD", stdout=PIPE, stderr=DEVNULL
    )
    try:
        async with asyncio.timeout(10):
            out, _ = await git.communicate()
    except TimeoutError:
        git.kill()
        await git.wait()
        return "?"
    return out.decode().strip() or "?"


def before_cluster(tree: Path):
    """LocalCluster as defined in another checkout: its roles run with that tree as cwd (so its code)."""
    spec = importlib.util.spec_from_file_location("before_cluster", tree / "sim" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.LocalCluster


# -- report --------------------------------------------------------------------------------------------------------


def ramp_lines(name: str, r: dict, calls: int, ramp_s: float, hold_s: float) -> list[str]:
    orphans = r.get("orphans_after_stop", {})
    lines = [
        f"  ramp {calls} calls over {ramp_s:g} s, held {hold_s:g} s ({name}; load average at start {r['load']}):",
        f"    answered {r['answered']}/{r['calls']}, setup failures {r['setup_failed']}, fallbacks "
        f"{r['fallback']}, no greeting heard {r['no_greeting']}",
        f"    orphans: {orphans.get('channels', '?')} channels, {orphans.get('bridges', '?')} bridges left in "
        f"Asterisk, {r['redis_calls_left']} calls (and {r['redis_leases_left']} leases) left in Redis",
        f"    end reasons: {', '.join(f'{k} {v}' for k, v in sorted(r['end_reasons'].items()))}",
    ]
    if r["errors"]:
        lines.append(f"    caller errors: {'; '.join(r['errors'])}")
    for role, found in r.get("warnings", {}).items():
        if found["count"]:
            lines.append(f"    {role}: {found['count']} warning/error line(s), first: " + " | ".join(found["first"]))
    cpu = r.get("cpu") or {}
    if cpu:
        figures = "   ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in cpu["ms_per_call_s"].items())
        lines.append(
            f"    CPU ms per call-second over {cpu['window_s']:.1f} s ({cpu['call_seconds']:.0f} "
            f"call-seconds): {figures}"
        )
    lines.append(f"    this process's loop lag: {r.get('loop_lag', 'n/a')}")
    return lines


@contextlib.contextmanager
def phase(result: dict, name: str):
    """A phase that fails is reported and the bench goes on with the next one."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (reported, and the exit status says so)
        print(f"  FAILED: {name}: {type(exc).__name__}: {str(exc)[-1500:]}", flush=True)
        result.setdefault("failures", []).append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")


async def conversations(bench: Bench, transport: str, args: argparse.Namespace) -> dict:
    conv = await bench.conversations(transport, args.calls, args.at_once, args.rounds)
    print(
        f"  {args.calls} calls, {args.at_once} at a time, {args.rounds} question(s) + barge-in(s) each "
        f"(load average at start {conv['load']}; this process's loop lag {conv.get('loop_lag')}):"
    )
    print(f"    answer -> first greeting frame heard         {fmt(pct(conv['greeting']))}")
    print(f"    caller speech end -> first agent frame heard {fmt(pct(conv['turn']))}")
    print(f"    barge-in onset -> last agent frame heard     {fmt(pct(conv['barge']))}")
    if conv["problems"]:
        print(f"    problems: {', '.join(sorted(set(conv['problems'])))} ({len(conv['problems'])})")
    w = conv.get("worker", {})
    if w:
        print("    the worker's own figures (from the call records):")
        print(f"      media linked -> first greeting frame sent  {fmt(w['greeting_ms'])}")
        print(f"      model speech_stopped -> first frame sent   {fmt(w['turn_ms'])}")
        print(f"      barge-in detected -> agent audio stopped   {fmt(w['bargein_ms'])}")
    return {
        "greeting": pct(conv["greeting"]),
        "turn": pct(conv["turn"]),
        "barge": pct(conv["barge"]),
        "worker": w,
        "problems": conv["problems"],
        "load": conv["load"],
    }


async def run(args: argparse.Namespace) -> dict:
    result: dict = {"skipped": None, "transports": {}, "before": None}
    try:
        rc = sync_redis.Redis.from_url(args.redis, socket_connect_timeout=2)
        rc.ping()
        rc.close()
    except sync_redis.RedisError as exc:
        result["skipped"] = f"Redis at {args.redis} unreachable: {exc}"
        return result
    try:
        if args.ari_url:
            ast = await asyncio.to_thread(connect, args.ari_url, args.ari_user, args.ari_password)
        else:
            # 4 RTP ports per call (an RTP stream and its RTCP at the caller's leg and at ours), at least the default
            rtp_ports = max(200, 4 * (max(args.ramp_calls, args.at_once) + 10))
            ast = await asyncio.to_thread(functools.partial(start, None, None, lambda *a: None, rtp_ports=rtp_ports))
    except (RealAsteriskUnavailable, OSError) as exc:
        result["skipped"] = f"real Asterisk unavailable: {exc}"
        return result
    result["asterisk"] = ast.version
    print(
        f"real Asterisk {ast.version} at {ast.ari_url}; load average at start {load()}; "
        f"{os.cpu_count()} cores shared with whatever else runs on this machine",
        flush=True,
    )
    try:
        with (
            contextlib.nullcontext(args.workdir)
            if args.workdir
            else tempfile.TemporaryDirectory(prefix="bench-realpbx-")
        ) as tmp:
            bench = Bench(ast, args.redis, Path(tmp))
            for transport in args.transports:
                print(f"\n{transport} ({PROFILES[transport]}):", flush=True)
                entry = result["transports"][transport] = {}
                if args.calls:
                    with phase(result, f"{transport} conversations"):
                        entry.update(await conversations(bench, transport, args))
                if transport in args.ramp_transports:
                    with phase(result, f"{transport} ramp"):
                        r = entry["ramp"] = await bench.ramp(transport, args.ramp_calls, args.ramp_s, args.hold)
                        print(
                            "\n".join(ramp_lines("this tree", r, args.ramp_calls, args.ramp_s, args.hold)), flush=True
                        )
            if args.before_tree:
                tree = await asyncio.to_thread(Path(args.before_tree).resolve)
                head = await short_commit(tree)
                print(f"\nbefore the fix: the roles of {tree} (commit {head}), audiosocket-slin24:", flush=True)
                runs = []
                for n in range(args.before_runs):
                    with phase(result, f"ramp before the fix ({n + 1})"):
                        r = await bench.ramp(
                            "audiosocket-slin24", args.ramp_calls, args.ramp_s, args.hold, before_cluster(tree)
                        )
                        print(
                            "\n".join(
                                ramp_lines(
                                    f"roles of {head}, run {n + 1} of {args.before_runs}",
                                    r,
                                    args.ramp_calls,
                                    args.ramp_s,
                                    args.hold,
                                )
                            ),
                            flush=True,
                        )
                        runs.append(r)
                if runs:
                    result["before"] = merge_ramps(runs, head)
                    if len(runs) > 1:
                        b = result["before"]
                        print(
                            f"  {len(runs)} runs: setup failures {b['setup_failed']} of {b['calls']} calls "
                            f"(per run {', '.join(str(r['setup_failed']) for r in runs)}), fallbacks "
                            f"{b['fallback']}",
                            flush=True,
                        )
    finally:
        await asyncio.to_thread(ast.stop)
    print(f"\nload average at the end {load()}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls, one short ramp (for run_all --quick)")
    p.add_argument(
        "--transports", help="comma-separated, of: " + ", ".join(PROFILES) + " (none: only the --before-tree ramp)"
    )
    p.add_argument(
        "--calls", type=int, help="conversation calls per transport (default 16, quick 4; 0: only the ramps)"
    )
    p.add_argument("--at-once", type=int, default=4, help="conversation calls at a time")
    p.add_argument("--rounds", type=int, help="question + barge-in rounds per call (default 2, quick 1)")
    p.add_argument("--ramp-calls", type=int, help="calls in the ramp (default 50, quick 20)")
    p.add_argument("--ramp-s", type=float, default=2.0)
    p.add_argument("--hold", type=float, help="seconds each ramp call is held (default 20, quick 10)")
    p.add_argument("--ramp-transports", help="transports that get a ramp (default all, quick audiosocket-slin24)")
    p.add_argument("--before-tree", help="a checkout whose roles run one more ramp (the 'before' figure)")
    p.add_argument(
        "--before-runs",
        type=int,
        default=1,
        help="how many ramps with the --before-tree roles (the race is random: one ramp gives a noisy count)",
    )
    p.add_argument("--redis", default=REDIS_URL)
    p.add_argument("--ari-url", default=os.environ.get("VA_REAL_ASTERISK_ARI_URL"))
    p.add_argument("--ari-user", default=os.environ.get("VA_REAL_ASTERISK_ARI_USER", "asterisk"))
    p.add_argument("--ari-password", default=os.environ.get("VA_REAL_ASTERISK_ARI_PASSWORD", ""))
    p.add_argument("--workdir", help="keep the roles' configs and logs here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="write the figures here as JSON (for run_all)")
    args = p.parse_args()
    q = args.quick
    args.transports = (
        [] if args.transports == "none" else args.transports.split(",") if args.transports else list(PROFILES)
    )
    unknown = [t for t in args.transports if t not in PROFILES]
    if unknown:
        p.error(f"unknown transport(s) {unknown}; known: {', '.join(PROFILES)}")
    args.calls = args.calls if args.calls is not None else (4 if q else 16)
    args.rounds = args.rounds or (1 if q else 2)
    args.ramp_calls = args.ramp_calls or (20 if q else 50)
    args.hold = args.hold or (10.0 if q else 20.0)
    args.ramp_transports = (
        args.ramp_transports.split(",")
        if args.ramp_transports
        else ["audiosocket-slin24"]
        if q
        else list(args.transports)
    )
    started = time.monotonic()
    result = asyncio.run(run(args))
    if result["skipped"]:
        print(f"SKIPPED: {result['skipped']}")
    else:
        print(
            f"done in {time.monotonic() - started:.0f} s"
            + (f", {len(result['failures'])} phase(s) FAILED" if result.get("failures") else "")
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    sys.exit(1 if result.get("failures") else 0)


if __name__ == "__main__":
    main()
