"""Soak: `--calls` concurrent scripted calls kept going for `--minutes` through the whole cluster on the simulators,
sampled all along, then checked for leaks: flat RSS, no leaked tasks, sessions, slots or Redis state.

    .venv/bin/python bench/soak.py [--minutes 30] [--calls 100] [--workers 2] [--sample-s 10] [--out DIR]

It starts what the load test starts (`sim/loadtest.py`), each a real process on loopback under a fresh Redis key
prefix (removed afterwards): the Realtime emulator, the Asterisk simulator, the mail server, a controller,
`--workers` media workers and a tool worker. Each of the `--calls` slots places a call, plays it out and places
the next, until `--minutes` have passed; then every call still up is hung up and the cluster gets `--settle-s` to
come back to idle. A call's kind and transport are drawn per call (seeded, `--seed`):

    chat      three caller turns (one a barge-in), then the caller hangs up after the agent's last answer
    tools     six turns: send_email_summary, request_transcript (confirmed), then the agent hangs up (hangup_call)
    early     the caller hangs up 0-50 ms after the controller admitted the call (what once left sessions behind)
    greeting  the caller hangs up during the greeting
    midcall   the caller hangs up at a random moment of the tools conversation

over the three transports (AudioSocket, RTP, WebSocket media: one AI context per profile).

Every `--sample-s`: each process's RSS (/proc/<pid>/status VmRSS) and open fds (/proc/<pid>/fd); from each role's
/metrics its asyncio tasks (`va_process_asyncio_tasks`), the workers' `va_worker_calls_active` and prewarm pool;
the emulator's open WebSocket sessions (its established connections, /proc/net/tcp); the admission state in Redis
(slots in use and RTP ports held per worker, calls:active, the provider's session counter, the queue, leases)
against the calls really live; the keys under the prefix and the stream lengths. `bench/soak_report.py` judges
the samples against the budgets, prints the table and writes soak.json, soak.md (and soak.png). Exit code: 0 when
every leak criterion holds, 1 when one fails, 2 when the cluster could not be run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import redis
import redis.asyncio as aioredis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not a package

from bench import soak_report  # noqa: E402
from shared.config import ConfigError, load_config  # noqa: E402
from shared.keys import Keys  # noqa: E402
from sim import demo_call, loadtest  # noqa: E402
from sim import loadtest_report as rep  # noqa: E402
from sim.cluster import LocalCluster, RoleProcess, purge, redis_or_explain  # noqa: E402

MAX_MINUTES = 240.0  # a soak that was started and forgotten still ends
PROVIDER = "openai_realtime"
STASIS_CONTEXT = "from-ai-agent-openai"
TRANSPORTS = {  # transport -> the built-in profile its calls' AI context uses
    "audiosocket": "telephony_pcm16_24k",
    "rtp": "telephony_ulaw_8k",
    "websocket": "websocket_ulaw_8k",
}
KINDS = {"chat": 0.3, "tools": 0.3, "early": 0.15, "greeting": 0.1, "midcall": 0.15}  # kind -> share of calls
ANSWER_TIMEOUT_S = 15.0  # a call not answered this long after it was placed failed
ADMIT_TIMEOUT_S = 15.0  # an early-hangup call whose admission was not seen this long failed
END_TIMEOUT_S = 15.0  # after the caller's hangup (or the agent's), the call must be gone within this
# A tools call the agent has not hung up after this many times its script's length (+ 30 s) failed: a simulator
# starved of CPU plays its callers slower than real time (its clock restarts rather than bursting).
AGENT_HANGUP_SLACK = 3.0
WORKER_RTP_BASE, WORKER_RTP_SPAN = 12000, 400  # below the ephemeral range; the simulator's own at 14000
SIM_RTP_PORTS = "14000-14999"
EMULATOR_SPEED = loadtest.EMULATOR_SPEED


# --- what is said: one plan for the agent's script and the callers' WAVs -------------------------------------


@dataclass(frozen=True)
class Turn:
    caller: demo_call.Line  # what the caller says
    reply: demo_call.Line  # what the agent answers
    tool: dict | None = None  # the tool call in the agent's answer (then `AFTER_TOOL` follows its output)


AFTER_TOOL = demo_call.Line("Done, that is taken care of.", 2000)
FAREWELL = demo_call.Line("Thank you for calling. Goodbye!", 1800)  # the hang-up tool's farewell response
TURNS = (
    Turn(
        demo_call.Line("Hello. What are your opening hours?", 1800),
        demo_call.Line(
            "We are open on weekdays from eight in the morning until six in the evening, and on Saturdays "
            "from nine until one.",
            5500,
        ),
    ),
    Turn(  # a barge-in: said 1.5 s into the previous answer
        demo_call.Line("Sorry, where exactly are you?", 1600),
        demo_call.Line("Twelve Harbour Street, right next to the central station.", 3000),
    ),
    Turn(
        demo_call.Line("Do you deliver to the suburbs?", 1700),
        demo_call.Line("Yes, we deliver everywhere in the city within two days.", 3200),
    ),
    Turn(
        demo_call.Line("Could you email a summary of this call to your team?", 2200),
        demo_call.Line("Sure, one moment.", 1200),
        {"name": "send_email_summary", "arguments": {}},
    ),
    Turn(
        demo_call.Line("And send me the transcript, alice at example dot com.", 2600),
        demo_call.Line("Of course.", 900),
        {"name": "request_transcript", "arguments": {"email": "alice@example.com", "confirmed": True}},
    ),
    Turn(
        demo_call.Line("That's all, thanks. Goodbye!", 1500),
        demo_call.Line("You're welcome, goodbye!", 1500),
        {"name": "hangup_call", "arguments": {"farewell": "You're welcome, goodbye!"}},
    ),
)
CHAT_TURNS = 3  # a chat call says the first three; a tools call all six
BARGE_TURN = 2
GREETING = demo_call.Line("Hi Alice, I'm your AI assistant. How can I help you today?", 3000)


def emulator_script() -> dict:
    """The Realtime emulator's script: the greeting, each turn's answer (with its tool call), the answer to a
    tool's output, and the farewell (the hang-up tool adds a system message, answered by `default`)."""
    turns: dict[int, dict[str, Any]] = {}
    for n, turn in enumerate(TURNS, start=1):
        reply: dict[str, Any] = {"text": turn.reply.text, "audio_ms": turn.reply.ms}
        if turn.tool is not None:
            reply["tool_calls"] = [turn.tool]
        turns[n] = reply
    return {
        "greeting": {"text": GREETING.text, "audio_ms": GREETING.ms},
        "turns": turns,
        "transcripts": {n: turn.caller.text for n, turn in enumerate(TURNS, start=1)},
        "after_tool": {"text": AFTER_TOOL.text, "audio_ms": AFTER_TOOL.ms},
        "default": {"text": FAREWELL.text, "audio_ms": FAREWELL.ms},
    }


def caller_timeline(turns: int) -> demo_call.Timeline:
    """The caller's side of the first `turns` turns, laid out like the demo's: each line after the agent's
    answer to the previous one (plus the VAD's end-of-turn wait), the barge-in 1.5 s into the answer."""
    t = demo_call.Timeline()
    t.silence(demo_call.REPLY_LEAD_S + GREETING.ms / 1000 + 0.7)
    for n, turn in enumerate(TURNS[:turns], start=1):
        if n > 1:
            wait_s = demo_call.BARGE_IN_AFTER_S if n == BARGE_TURN else answer_s(TURNS[n - 2]) + 0.7
            t.silence(demo_call.VAD_SILENCE_S + demo_call.REPLY_LEAD_S + wait_s)
        t.say(turn.caller, demo_call.caller_speech(turn.caller))
    t.silence(demo_call.VAD_SILENCE_S + demo_call.REPLY_LEAD_S + answer_s(TURNS[turns - 1]) + 1.0)
    return t


def answer_s(turn: Turn) -> float:
    """How long the agent's answer to `turn` plays: with a tool, the tool's round trip and the answer after it."""
    if turn.tool is None:
        return turn.reply.ms / 1000
    after = FAREWELL if turn.tool["name"] == "hangup_call" else AFTER_TOOL
    return (turn.reply.ms + after.ms) / 1000 + 0.5


def write_config(path: Path, source: Path, calls: int) -> None:
    """The config with one AI context per transport, and room at the provider for every call (and the ones
    being released while their successors arrive)."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for transport, profile in TRANSPORTS.items():
        data.setdefault("contexts", {})[f"soak_{transport}"] = {
            "greeting": GREETING.text,
            "profile": profile,
            "prompt": "You are the soak-test assistant of {company_name}.",
        }
    provider = data.setdefault("providers", {}).setdefault(PROVIDER, {})
    provider["max_concurrent_sessions"] = max(int(provider.get("max_concurrent_sessions") or 0), 2 * calls)
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=120), encoding="utf-8")


# --- the calls ---------------------------------------------------------------------------------------------


@dataclass
class Track:
    """One call as the soak sees it (the simulator's caller channel)."""

    channel: str
    kind: str
    transport: str
    placed: float
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str = ""


class SimControl:
    """The Asterisk simulator's control API (`sim/asterisk/control.py`), async."""

    def __init__(self, session: aiohttp.ClientSession, url: str, user: str, password: str):
        self.session = session
        self.url = url.rstrip("/")
        self.headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        try:
            async with self.session.request(
                method, self.url + path, json=body, headers=self.headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                raw = await resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, {"message": str(exc)}


class Calls:
    """Keeps `args.calls` calls going (`keep_going`); knows which are live from the simulator's state."""

    def __init__(
        self, sim: SimControl, rds: aioredis.Redis, keys: Keys, wavs: dict[str, Path], args: argparse.Namespace
    ):
        self.sim, self.redis, self.keys, self.wavs = sim, rds, keys, wavs
        self.slots = args.calls
        self.kinds: dict[str, float] = args.kinds
        self.transports: list[str] = args.transports
        self.rng = random.Random(args.seed)
        self.tracks: dict[str, Track] = {}
        self.live: dict[str, str] = {}  # channel -> state, of the calls the simulator has not ended
        self.sim_state: dict[str, Any] = {}
        self.errors: Counter = Counter()
        self.awaiting_admission: dict[str, Track] = {}  # early-hangup calls not yet seen admitted, by channel
        self.chat_s = caller_timeline(CHAT_TURNS).duration_s
        self.tools_s = caller_timeline(len(TURNS)).duration_s
        self._seen_admitted: set[str] = set()
        self._serial = 0

    @property
    def up(self) -> int:
        return sum(1 for t in self.tracks.values() if t.answered.is_set() and not t.ended.is_set())

    def in_flight(self) -> int:
        return sum(1 for t in self.tracks.values() if not t.ended.is_set())

    async def keep_going(self, until: float, ramp_s: float) -> None:
        """Every slot places calls one after the other until the monotonic time `until`; starts spread over ramp."""
        async with asyncio.TaskGroup() as group:
            for slot in range(self.slots):
                group.create_task(self._slot(slot * ramp_s / max(self.slots, 1), until), name=f"slot-{slot}")

    async def _slot(self, delay_s: float, until: float) -> None:
        await asyncio.sleep(delay_s)
        while time.monotonic() < until:
            kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
            transport = self.rng.choice(self.transports)
            left = until - time.monotonic()
            try:
                async with asyncio.timeout(left):  # the soak's end hangs up what is still up (hang_up_all)
                    await self._one(kind, transport)
            except TimeoutError:
                return

    async def _one(self, kind: str, transport: str) -> None:
        self._serial += 1
        status, body = await self.sim.request(
            "POST",
            "/sim/calls",
            {
                "context": STASIS_CONTEXT,
                "caller_name": "Alice",
                "caller_number": f"7{self._serial:06d}",
                "variables": {"AI_CONTEXT": f"soak_{transport}"},
                "audio_wav": str(self.wavs["chat" if kind == "chat" else "tools"]),
                "rate": demo_call.CALLER_RATE,
            },
        )
        if status != 201:
            self.errors[f"place:{status}"] += 1
            await asyncio.sleep(1.0)  # a simulator that refuses calls is not hammered
            return
        track = Track(body["id"], kind, transport, time.monotonic())
        self.tracks[track.channel] = track
        self.live[track.channel] = "Ring"
        if kind == "early":
            self.awaiting_admission[track.channel] = track
        try:
            await self._play(track)
        finally:
            self.awaiting_admission.pop(track.channel, None)
        await self._hang_up(track)
        if not await _wait(track.ended, END_TIMEOUT_S):
            self._fail(track, "not_ended_after_hangup")

    async def _play(self, track: Track) -> None:
        """The call's script, up to the moment the caller hangs up (or the agent did)."""
        if track.kind == "early":
            if not await _wait(track.admitted, ADMIT_TIMEOUT_S):
                return self._fail(track, "not_admitted")
            await asyncio.sleep(self.rng.uniform(0.0, 0.05))
            return None
        if not await _wait(track.answered, ANSWER_TIMEOUT_S):
            return self._fail(track, "not_answered")
        if track.kind == "greeting":
            await _wait(track.ended, self.rng.uniform(0.2, GREETING.ms / 1000))
        elif track.kind == "midcall":
            await _wait(track.ended, self.rng.uniform(3.0, self.tools_s - 3.0))
        elif track.kind == "chat":
            await _wait(track.ended, self.chat_s + self.rng.uniform(0.0, 2.0))
        elif not await _wait(track.ended, AGENT_HANGUP_SLACK * self.tools_s + 30.0):
            self._fail(track, "agent_did_not_hang_up")
        return None

    async def _hang_up(self, track: Track) -> None:
        if track.ended.is_set():
            return
        status, _ = await self.sim.request("POST", f"/sim/calls/{track.channel}/hangup")
        if status not in (204, 404):
            self.errors[f"hangup:{status}"] += 1

    def _fail(self, track: Track, why: str) -> None:
        track.failed = why
        self.errors[f"call:{track.kind}:{why}"] += 1

    async def hang_up_all(self, timeout: float) -> int:
        """At the end: hang up every call the simulator still has up (ours, and any placed as the slots were
        stopped); the number still up after `timeout`."""
        async with asyncio.timeout(timeout + 5):
            deadline = time.monotonic() + timeout
            asked: set[str] = set()
            while time.monotonic() < deadline:
                await self.poll_sim()
                pending = [c for c, state in self.live.items() if c not in asked]
                for channel in pending:
                    await self.sim.request("POST", f"/sim/calls/{channel}/hangup")
                    asked.add(channel)
                if not self.live:
                    break
                await asyncio.sleep(0.5)
        return len(self.live)

    # --- watchers -----------------------------------------------------------------------------------------
    async def watch_sim(self, stop: asyncio.Event) -> None:
        """The simulator's call states, four times a second: answered and ended as they happen."""
        while not stop.is_set():
            await self.poll_sim()
            await _wait(stop, 0.25)

    async def poll_sim(self) -> None:
        status, body = await self.sim.request("GET", "/sim/state")
        if status != 200:
            self.errors[f"sim_state:{status}"] += 1
            return
        self.sim_state = body
        states: dict[str, str] = body.get("calls", {})
        for channel, state in states.items():
            if state != "ended":
                self.live[channel] = state
        for channel in list(self.live):
            state = states.get(channel, "ended")  # the simulator forgets old ended calls
            track = self.tracks.get(channel)
            if state == "Up" and track is not None:
                track.answered.set()
            if state == "ended":
                del self.live[channel]
                if track is not None:
                    track.ended.set()

    async def watch_admissions(self, stop: asyncio.Event) -> None:
        """For the early-hangup calls: the moment the controller admitted them (their call id appears in
        calls:active with their caller channel). Polls every 5 ms while one waits, otherwise idles."""
        while not stop.is_set():
            waiting = self.awaiting_admission
            if not waiting:
                await _wait(stop, 0.05)
                continue
            try:
                members = await self.redis.smembers(self.keys.calls_active)
                self._seen_admitted &= members  # only the live ones: the set stays as small as the calls
                new = [m for m in members if m not in self._seen_admitted]
                if new:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for call_id in new:
                            pipe.hget(self.keys.call(call_id), "caller_channel")
                        channels = await pipe.execute()
                    for call_id, channel in zip(new, channels, strict=True):
                        self._seen_admitted.add(call_id)
                        track = waiting.pop(channel, None) if channel else None
                        if track is not None:
                            track.admitted.set()
            except redis.RedisError as exc:
                self.errors[f"redis:{type(exc).__name__}"] += 1
            await asyncio.sleep(0.005)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """True once `event` is set, False after `seconds` (never raises TimeoutError)."""
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
        return True
    except TimeoutError:
        return False


# --- the samples ----------------------------------------------------------------------------------------------


@dataclass
class Proc:
    id: str
    role: str  # controller, media-worker, tool-worker, sim
    pid: int
    metrics_url: str = ""  # roles only


def proc_rss_mb(pid: int) -> float | None:
    try:
        return rep.proc_rss_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def proc_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    established: bool
    inode: str


def tcp_sockets() -> list[TcpSocket]:
    """Every TCP socket of this network namespace (/proc/net/tcp and tcp6), once per sample."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9:
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in parts[1:3])
                out.append(TcpSocket(local, remote, parts[3] == "01", parts[9]))
    return out


def established_to(sockets: list[TcpSocket], port: int) -> int:
    """Established connections whose local port is `port`: the server side of each client's connection (the
    emulator's open WebSocket sessions, whichever process holds the client end)."""
    return sum(1 for s in sockets if s.established and s.local_port == port)


def connections_to(pid: int, sockets: list[TcpSocket], port: int) -> int | None:
    """How many of process `pid`'s open fds are TCP connections to remote port `port` (its Redis pool)."""
    inodes = {s.inode for s in sockets if s.remote_port == port}
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None
    return sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)


class Sampler:
    """One sample of everything the leak criteria need (see the module docstring)."""

    # Key families kept after a call by design: records and email markers (days), requests (1 h), the inbox
    # streams (trimmed, never deleted); what is left is what a call holds while it is live.
    RETAINED = ("call", "email", "request", "inbox", "rq")

    def __init__(
        self,
        http: aiohttp.ClientSession,
        rds: aioredis.Redis,
        keys: Keys,
        procs: list[Proc],
        workers: list[str],
        emulator_port: int,
        calls: Calls,
        redis_url: str,
    ):
        self.http, self.redis, self.keys = http, rds, keys
        self.procs, self.workers, self.emulator_port, self.calls = procs, workers, emulator_port, calls
        self.redis_port = urlparse(redis_url).port or 6379
        self.started = time.monotonic()
        self.samples: list[dict] = []

    async def scrape(self, proc: Proc) -> list:
        try:
            async with self.http.get(proc.metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return rep.parse_metrics(await resp.text()) if resp.status == 200 else []
        except (aiohttp.ClientError, TimeoutError):
            return []

    async def take(self, phase: str) -> dict:
        now = time.monotonic() - self.started
        processes: dict[str, dict] = {}
        pool_ready = 0.0
        workers: dict[str, dict] = {w: {} for w in self.workers}
        controller_calls = None
        sockets = tcp_sockets()
        for p in self.procs:
            entry: dict[str, Any] = {"role": p.role, "rss_mb": proc_rss_mb(p.pid), "fds": proc_fds(p.pid)}
            entry["redis_conns"] = connections_to(p.pid, sockets, self.redis_port)
            if p.metrics_url:
                scraped = await self.scrape(p)
                entry["tasks"] = rep.metric(scraped, "va_process_asyncio_tasks") if scraped else None
                if p.role == "media-worker" and p.id in workers:
                    workers[p.id]["calls_active"] = rep.metric(scraped, "va_worker_calls_active") if scraped else None
                    workers[p.id]["pool_ready"] = rep.metric(scraped, "va_realtime_pool_ready") if scraped else None
                    pool_ready += workers[p.id]["pool_ready"] or 0.0
                if p.role == "controller":
                    controller_calls = rep.metric(scraped, "va_calls_active") if scraped else None
            processes[p.id] = entry
        emulator = established_to(sockets, self.emulator_port)
        sample = {
            "t": round(now, 1),
            "phase": phase,
            "calls": {
                "live": self.calls.in_flight(),
                "up": self.calls.up,
                "placed": len(self.calls.tracks),
                "sim_channels": self.calls.sim_state.get("channels"),
                "sim_bridges": self.calls.sim_state.get("bridges"),
                "controller_active": controller_calls,
            },
            "processes": processes,
            "workers": workers,
            "emulator": {"sessions": emulator, "pool_ready": pool_ready, "beyond_pool": emulator - pool_ready},
            "redis": await self._redis(workers),
        }
        self.samples.append(sample)
        return sample

    async def _redis(self, workers: dict[str, dict]) -> dict:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(k.calls_active)
            pipe.get(k.provider_sessions(PROVIDER))
            pipe.zcard(k.admission_queue)
            pipe.xlen(k.controller_inbox)
            for wid in self.workers:
                pipe.hget(k.worker(wid), "active")
                pipe.scard(k.worker_rtp_ports(wid))
                pipe.xlen(k.worker_inbox(wid))
            replies = await pipe.execute()
        calls_active, provider, queue, controller_inbox, *per_worker = replies
        for i, wid in enumerate(self.workers):
            active, ports, inbox = per_worker[3 * i : 3 * i + 3]
            workers[wid].update(slots_in_use=int(active or 0), rtp_ports=int(ports), inbox_len=int(inbox))
        families: Counter = Counter()
        async for key in self.redis.scan_iter(match=f"{k.prefix}*", count=1000):
            families[key_family(key[len(k.prefix) :])] += 1
        async for _key in self.redis.scan_iter(match=f"rq:*{k.prefix}*", count=1000):
            families["rq"] += 1
        return {
            "calls_active": int(calls_active),
            "provider_sessions": int(provider or 0),
            "admission_queue": int(queue),
            "controller_inbox_len": int(controller_inbox),
            "keys": sum(families.values()),
            "key_families": dict(families),
            "leases": families.get("lease", 0),
            "live_keys": sum(n for f, n in families.items() if f not in self.RETAINED),
        }


def key_family(rest: str) -> str:
    """The family of a key (without the prefix): call (a call's record, log and transcripts: retained), lease,
    inbox (the streams, kept and trimmed by design), email, request, worker, controller, provider …"""
    head, _, tail = rest.partition(":")
    if head == "call":
        return "lease" if tail.endswith(":lease") else "call"
    if rest.endswith(":inbox"):
        return "inbox"
    return head


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class Soak:
    args: argparse.Namespace
    workdir: Path
    prefix: str
    cluster: LocalCluster
    client: redis.Redis
    keys: Keys
    wavs: dict[str, Path]
    script: Path
    ari_user: str
    ari_password: str
    api_key: str
    redis_url: str


def prepare(args: argparse.Namespace) -> Soak | None:
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="voice-agent-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"va-soak-{os.getpid()}-{os.urandom(3).hex()}:"
    api_key = "sk-soak-" + os.urandom(12).hex()
    env = {
        "OPENAI_API_KEY": api_key,
        "REDIS_KEY_PREFIX": prefix,
        "LOG_LEVEL": "warning",
        "REALTIME_PREWARM": str(max(2, min(10, args.calls // max(args.workers, 1)))),
        "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
    }
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    os.environ.update(env)
    config_path = workdir / "config.yaml"
    write_config(config_path, Path(args.config) if args.config else ROOT / "config" / "ai-agent.yaml", args.calls)
    try:
        config = load_config(config_path).config
    except ConfigError as exc:
        print(exc)
        return None
    client = redis_or_explain(config.redis.url)
    if client is None:
        return None
    script = workdir / "realtime-script.yaml"
    script.write_text(yaml.safe_dump(emulator_script(), sort_keys=False, width=120), encoding="utf-8")
    wavs = {"chat": workdir / "caller-chat.wav", "tools": workdir / "caller-tools.wav"}
    demo_call.write_caller_wav(wavs["chat"], caller_timeline(CHAT_TURNS))
    demo_call.write_caller_wav(wavs["tools"], caller_timeline(len(TURNS)))
    return Soak(
        args=args,
        workdir=workdir,
        prefix=prefix,
        cluster=LocalCluster(config_path, workdir, env),
        client=client,
        keys=Keys(prefix),
        wavs=wavs,
        script=script,
        ari_user=config.asterisk.username,
        ari_password="soak-" + os.urandom(6).hex(),
        api_key=api_key,
        redis_url=config.redis.url,
    )


def start(soak: Soak) -> tuple[list[Proc], list[RoleProcess], str, int] | None:
    """Every simulator and role; (processes to sample, the roles, the simulator's URL, the emulator's port), or
    None when one did not become ready (its log is printed)."""
    cluster = soak.cluster
    realtime = cluster.start_sim(
        "realtime", "--script", str(soak.script), "--speed", EMULATOR_SPEED, "--api-key", soak.api_key
    )
    mail = cluster.start_sim("mail", "--dir", str(soak.workdir / "mail"))
    asterisk = cluster.start_sim(
        "asterisk",
        "--user",
        soak.ari_user,
        "--password",
        soak.ari_password,
        "--rtp-ports",
        SIM_RTP_PORTS,
        "--keep-ended-calls",
        "50",  # each ended caller keeps what it heard and said: memory the soak does not need
    )
    cluster.env.update(
        OPENAI_REALTIME_URL=realtime.url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=mail.url.rsplit(":", 1)[1],
        ASTERISK_ARI_URL=asterisk.url,
        ASTERISK_ARI_PASSWORD=soak.ari_password,
    )
    roles = [cluster.start("controller")]
    for i in range(soak.args.workers):
        low = WORKER_RTP_BASE + WORKER_RTP_SPAN * i
        roles.append(
            cluster.start(
                "media-worker", "--audiosocket-port", "0", "--rtp-ports", f"{low}-{low + WORKER_RTP_SPAN - 1}"
            )
        )
    roles.append(cluster.start("tool-worker"))
    if not cluster.wait_ready(timeout=60):
        for proc in cluster.processes:
            if not proc.ready():
                print(f"{proc.id} not ready: {proc.readiness()}\n{proc.log_text()[-1500:]}")
        return None
    procs = [Proc(r.id, r.role, r.popen.pid, r.health_url + "/metrics") for r in roles]
    procs += [Proc(f"sim-{s.kind}", "sim", s.popen.pid) for s in cluster.sims]
    emulator_port = int(realtime.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    return procs, roles, asterisk.url, emulator_port


async def drive(soak: Soak, procs: list[Proc], roles: list[RoleProcess], sim_url: str, emulator_port: int) -> dict:
    args = soak.args
    workers = [r.id for r in roles if r.role == "media-worker"]
    rds = aioredis.Redis.from_url(soak.redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        calls = Calls(
            SimControl(http, sim_url, soak.ari_user, soak.ari_password),
            rds,
            soak.keys,
            soak.wavs,
            args,
        )
        sampler = Sampler(http, rds, soak.keys, procs, workers, emulator_port, calls, soak.redis_url)
        await asyncio.sleep(2.0)  # the prewarm pools fill
        await calls.poll_sim()
        baseline = await sampler.take("idle")
        stop = asyncio.Event()
        watchers = [
            asyncio.create_task(calls.watch_sim(stop), name="watch-sim"),
            asyncio.create_task(calls.watch_admissions(stop), name="watch-admissions"),
            asyncio.create_task(_sample_every(sampler, args.sample_s, stop), name="sampler"),
        ]
        load_s = args.minutes * 60
        print(
            f"soak: {args.calls} calls for {args.minutes:g} min, {len(workers)} media worker(s); "
            f"sampling every {args.sample_s:g} s; files in {soak.workdir}",
            flush=True,
        )
        try:
            await calls.keep_going(time.monotonic() + load_s, min(args.ramp_s, load_s / 2))
            loaded = await sampler.take("load")  # the last sample under load
            stop.set()
            await asyncio.gather(*watchers)
            left_up = await calls.hang_up_all(END_TIMEOUT_S + 15)
            settled = await settle(sampler, calls, args.settle_s)
            leftover = await leftover_channels(calls.sim)
        finally:
            stop.set()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await rds.aclose()
        records = end_reasons(soak.client, soak.keys)
    return {
        "baseline": baseline,
        "loaded": loaded,
        "settled": settled,
        "samples": sampler.samples,
        "left_up_after_hangup": left_up,
        "calls": {
            "placed": len(calls.tracks),
            "by_kind": dict(Counter(t.kind for t in calls.tracks.values())),
            "by_transport": dict(Counter(t.transport for t in calls.tracks.values())),
            "answered": sum(1 for t in calls.tracks.values() if t.answered.is_set()),
            "failed": sum(1 for t in calls.tracks.values() if t.failed),
            "end_reasons": records,
        },
        "errors": dict(calls.errors),
        "emails": emails(soak.workdir / "mail"),
        "leftover_channels": leftover,
    }


async def _sample_every(sampler: Sampler, every_s: float, stop: asyncio.Event) -> None:
    last_print = 0.0
    while not await _wait(stop, every_s):
        s = await sampler.take("load")
        if s["t"] - last_print >= max(every_s, 30.0) or sys.stdout.isatty():
            last_print = s["t"]
            print(soak_report.progress_line(s), flush=True)


async def settle(sampler: Sampler, calls: Calls, settle_s: float) -> dict:
    """Samples every 2 s after the calls stopped, until the cluster is back to idle (keep-alive connections
    closed too) or `settle_s` passed; the last."""
    deadline = time.monotonic() + settle_s
    while True:
        await calls.poll_sim()
        sample = await sampler.take("settle")
        if soak_report.back_to_idle(sampler.samples[0], sample) or time.monotonic() >= deadline:
            return sample
        await asyncio.sleep(2.0)


async def leftover_channels(sim: SimControl) -> dict[str, Any]:
    """The channels the simulator still has after the settle, counted by technology and state."""
    status, channels = await sim.request("GET", "/ari/channels")
    if status != 200:
        return {f"GET /ari/channels: {status}": 1}
    counts: dict[str, Any] = dict(Counter(f"{c['name'].split('/', 1)[0]} {c['state']}" for c in channels))
    if channels:  # a few in full, for whoever looks into it
        counts["first"] = [
            {k: c.get(k) for k in ("id", "name", "state", "creationtime", "dialplan")} for c in channels[:3]
        ]
    return counts


def emails(directory: Path) -> dict[str, int]:
    """The messages the mail server kept: summaries (to the team) and transcripts (to the caller)."""
    counts: Counter = Counter()
    for path in directory.glob("*.eml"):
        head = path.read_text(errors="replace").split("\n\n", 1)[0]
        counts["transcript" if "alice@example.com" in head else "summary"] += 1
    return dict(counts)


def end_reasons(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """`end_reason / worker_end_reason` of every call record, counted."""
    reasons: Counter = Counter()
    ids = [k for k in client.scan_iter(match=keys.call("*"), count=1000) if k.count(":") == keys.call("x").count(":")]
    for start in range(0, len(ids), 500):
        with client.pipeline(transaction=False) as pipe:
            for key in ids[start : start + 500]:
                pipe.hmget(key, "state", "end_reason", "worker_end_reason")
            for state, end, worker_end in pipe.execute():
                reasons[f"{state}: {end or '-'} / {worker_end or '-'}"] += 1
    return dict(reasons.most_common())


def run(args: argparse.Namespace) -> int:
    soak = prepare(args)
    if soak is None:
        return 2
    result: dict | None = None
    started = time.monotonic()
    try:
        ready = start(soak)
        if ready is None:
            return 2
        result = asyncio.run(drive(soak, *ready))
    except Exception:  # the harness failed, not the product: exit 2, never the leak verdict's 1
        traceback.print_exc()
    finally:
        codes = soak.cluster.stop_all()
        removed = purge(soak.client, soak.prefix)
        soak.client.close()
    if result is None:
        return 2
    result["exit_codes"] = codes
    result["keys_removed"] = removed
    result["seconds"] = round(time.monotonic() - started, 1)
    result["params"] = {k: v for k, v in vars(args).items() if k not in ("config", "out", "redis_url")}
    result["params"].update(cores=os.cpu_count())
    report = soak_report.judge(result, warmup_s=args.warmup_min * 60)
    print("\n".join(soak_report.table_lines(report)))
    (soak.workdir / "soak.json").write_text(json.dumps({**result, "report": report}, indent=1), encoding="utf-8")
    (soak.workdir / "soak.md").write_text(soak_report.markdown(result, report), encoding="utf-8")
    plot = soak_report.write_plot(soak.workdir / "soak.png", result)
    print(f"results in {soak.workdir}/soak.json, soak.md" + (f", {plot.name}" if plot else ""))
    print(f"\nsoak {'OK' if report['ok'] else 'FAILED'} in {result['seconds']} s")
    return 0 if report["ok"] else 1


def _kinds(text: str) -> dict[str, float]:
    """`early=1,chat=2` -> {"early": 1.0, "chat": 2.0}: the call kinds to draw and their weights."""
    kinds: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown call kind {name.strip()!r} (known: {', '.join(KINDS)})")
        try:
            kinds[name.strip()] = float(weight or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight must be a number") from None
    if not kinds or sum(kinds.values()) <= 0 or min(kinds.values()) < 0:
        raise argparse.ArgumentTypeError("the weights must be >= 0, one of them > 0")
    return kinds


def _transports(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TRANSPORTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"transports are {', '.join(TRANSPORTS)}, not {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help=f"how long the calls go on (at most {MAX_MINUTES:g})")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls")
    p.add_argument("--workers", type=int, default=2, help="media worker processes")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument(
        "--settle-s",
        type=float,
        default=90.0,
        help="most seconds the cluster gets to return to idle (HTTP keep-alive: up to 75 s)",
    )
    p.add_argument("--ramp-s", type=float, default=10.0, help="seconds over which the slots start")
    p.add_argument(
        "--warmup-min", type=float, help="RSS is judged from this minute on (default: min(3, a third of the run))"
    )
    p.add_argument(
        "--kinds",
        type=_kinds,
        default=KINDS,
        help="kind=share,… of the calls (default: " + ",".join(f"{k}={v:g}" for k, v in KINDS.items()) + ")",
    )
    p.add_argument(
        "--transports",
        type=_transports,
        default=list(TRANSPORTS),
        help="transports the calls are spread over (default: " + ",".join(TRANSPORTS) + ")",
    )
    p.add_argument("--seed", type=int, default=16, help="the calls' kinds, transports and hang-up moments")
    p.add_argument("--out", help="directory for soak.json, soak.md, soak.png and the logs (default: a temp dir)")
    p.add_argument("--config", help="the base config (default config/ai-agent.yaml)")
    p.add_argument("--redis-url", help="overrides redis.url")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        p.error(f"--minutes must be in (0, {MAX_MINUTES:g}]")
    if not 1 <= args.calls <= 1000 or not 1 <= args.workers <= 16:
        p.error("--calls must be 1..1000 and --workers 1..16")
    if args.sample_s <= 0 or args.settle_s < 0 or args.ramp_s < 0:
        p.error("--sample-s must be > 0, --settle-s and --ramp-s >= 0")
    if args.warmup_min is None:
        args.warmup_min = min(3.0, args.minutes / 3)
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
