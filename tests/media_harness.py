"""Fixtures for calls through real processes: the Asterisk simulator and the Realtime emulator in the test's
process, a controller and media workers as subprocesses (`cluster_up`), and helpers to read the call's
record and log from Redis."""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import time

import numpy as np
import pytest
import redis.asyncio as aioredis
import soxr

from shared.keys import Keys
from sim.asterisk import AsteriskSim
from sim.asterisk.audio import CallerAudio
from sim.cluster import LocalCluster
from sim.realtime import Emulator, Script
from sim.realtime import g711, voice
from tests.ari_harness import ARI_PASSWORD, ARI_USER, write_config
from tests.conftest import TEST_API_KEY
from tests.realtime_schema import check_client_event, check_server_event


async def until(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)


def caller_speech(text: str, ms: int, rate: int = 8000) -> CallerAudio:
    """A caller's words: espeak-ng (another voice than the agent's) when installed, else a voice-like signal."""
    pcm = voice.speech(text, ms, "en-us+m3", seed=7).astype("<i2").tobytes()
    return CallerAudio.from_pcm(pcm, 24000)


@pytest.fixture
async def sim(tmp_path):
    s = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=tmp_path / "sim")
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


@pytest.fixture
async def aredis(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(prefix) -> Keys:
    return Keys(prefix)


@pytest.fixture
def cluster_up(tmp_path, cluster_env, sim):
    """Start a controller and a media worker against the simulator and an emulator; returns the cluster."""
    clusters: list[LocalCluster] = []
    n = itertools.count(1)

    async def start(
        emulator: Emulator, contexts: dict | None = None, workers: int = 1, extra: dict | None = None, **controller
    ):
        i = next(n)
        config = write_config(tmp_path / f"cluster-{i}.yaml", sim.url, contexts=contexts, extra=extra, **controller)
        env = {**cluster_env, "OPENAI_REALTIME_URL": emulator.url, "REALTIME_PREWARM": "1"}
        cluster = LocalCluster(config, tmp_path, env)
        clusters.append(cluster)
        procs = [cluster.start("controller", instance_id=f"controller-{i}")]
        for w in range(workers):
            low = 31000 + 200 * (i * 4 + w)
            procs.append(
                cluster.start(
                    "media-worker",
                    "--audiosocket-port",
                    "0",
                    "--rtp-ports",
                    f"{low}-{low + 99}",
                    instance_id=f"worker-{i}-{w}",
                )
            )
        ready = await asyncio.to_thread(cluster.wait_ready, procs, 30)
        assert ready, "\n".join(p.log_text()[-3000:] for p in procs)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop_all()


def emulator_factory():
    made: list[Emulator] = []

    async def make(script: Script, **kwargs) -> Emulator:
        emu = Emulator(script=script, api_keys={TEST_API_KEY}, **kwargs)
        await emu.start("127.0.0.1", 0)
        made.append(emu)
        return emu

    return made, make


@pytest.fixture
async def emulator():
    made, make = emulator_factory()
    yield make
    for emu in made:
        await emu.stop()


async def call_of(aredis, keys, channel_id: str) -> str:
    async def find():
        for call_id in await aredis.smembers(keys.calls_active):
            if await aredis.hget(keys.call(call_id), "caller_channel") == channel_id:
                return call_id
        return None

    return await until(find)


async def log_entries(aredis, keys, call_id: str) -> list[dict]:
    return [fields for _, fields in await aredis.xrange(keys.call_log(call_id))]


def assert_wire_conforms(emu: Emulator) -> None:
    for s in emu.sessions:
        for event in s.received:
            check_client_event(event)
        for event in s.sent:
            check_server_event(event)


def loud_ms(heard, rate: int = 8000, floor_dbfs: float = -40.0) -> list[tuple[float, bool]]:
    """The caller's timeline as (time, audible) per 20 ms frame."""
    return audible_frames(np.frombuffer(heard.pcm(rate), dtype="<i2"), rate, floor_dbfs)


def audible_frames(samples: np.ndarray, rate: int = 8000, floor_dbfs: float = -40.0) -> list[tuple[float, bool]]:
    """(time, audible) per 20 ms frame of PCM16 samples."""
    pcm = samples.astype(np.float64)
    n = rate // 50
    frames = pcm[: len(pcm) // n * n].reshape(-1, n)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-9
    return [(i * 20.0, 20 * math.log10(r / 32768) > floor_dbfs) for i, r in enumerate(rms)]


def agent_audible_ms(emu: Emulator) -> float:
    """How much of the agent audio the emulator sent is audible, judged as `loud_ms` judges what the caller
    heard (20 ms frames at 8 kHz above -40 dBFS). It depends on the voice: espeak-ng speaks more of a line's
    length than the synthetic voice used without it, whose syllables have gaps."""
    total = 0.0
    for session in emu.sessions:
        fmt = session.config["audio"]["output"]["format"]["type"]
        wire = b"".join(
            base64.b64decode(e["delta"]) for e in session.sent if e["type"] == "response.output_audio.delta"
        )
        if not wire:
            continue
        if fmt == "audio/pcm":
            pcm = soxr.resample(np.frombuffer(wire, dtype="<i2").astype(np.float32), 24000, 8000)
        else:
            pcm = g711.decode(wire, fmt).astype(np.float32)
        total += 20.0 * sum(loud for _, loud in audible_frames(pcm))
    return total


async def worker_stats(aredis, keys, call_id):
    record = await aredis.hgetall(keys.call(call_id))
    return record if "worker_end_reason" in record else None
