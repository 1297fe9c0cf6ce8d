"""Fixtures for calls through the real Asterisk: our roles as processes (controller, media worker, tool worker)
pointed at it, the Realtime emulator in the test's process, and callers placed with `sim.pbx_caller`."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import yaml

from shared.keys import Keys
from sim.cluster import LocalCluster
from sim.pbx_caller import PbxCaller
from sim.real_asterisk import RealAsterisk
from sim.realtime import Emulator
from tests.ari_harness import write_config
from tests.media_harness import aredis, emulator, keys, until  # noqa: F401  (fixtures, re-exported)

# Test-only destinations for the transfer tool, added to the running Asterisk with `dialplan add extension`.
AGENTS_CONTEXT = "va-test-agents"
AGENTS = {
    "6001": ["Answer()", "Playback(tt-monkeys)", "Wait(30)"],  # answers and talks
    "6002": ["Ringing()", "Wait(60)"],  # rings, never answers
    "6003": ["Busy(5)"],
}
DESTINATIONS = {
    "tools": {
        "transfer": {
            "extension_context": AGENTS_CONTEXT,
            "ring_timeout_ms": 3000,
            "destinations": {
                "sales": {"type": "extension", "target": "6001", "description": "Sales team"},
                "nobody": {"type": "extension", "target": "6002", "description": "Rings, never answers"},
                "busyline": {"type": "extension", "target": "6003", "description": "Always busy"},
            },
        },
        "hangup_call": {"farewell_timeout_ms": 1500},
    }
}
PROFILES = {  # transport and format of each shipped profile the suite runs on
    "audiosocket-slin": "telephony_slin_8k",
    "audiosocket-slin16": "telephony_pcm16_16k",
    "audiosocket-slin24": "telephony_pcm16_24k",
    "rtp-ulaw": "telephony_ulaw_8k",
    "websocket-ulaw": "websocket_ulaw_8k",
    "websocket-slin24": "websocket_pcm16_24k",
}


@pytest.fixture(scope="session")
def agents_dialplan(real_asterisk: RealAsterisk) -> str:
    for exten, apps in AGENTS.items():
        for priority, app in enumerate(apps, start=1):
            real_asterisk.cli(f"dialplan add extension {exten},{priority},{app} into {AGENTS_CONTEXT} replace")
    return AGENTS_CONTEXT


@pytest.fixture
async def pbx(real_asterisk: RealAsterisk):
    """Our callers. Tests name it after `pbx_cluster`: fixtures end in reverse, so a failed test's callers
    hang up while our roles still run and clean up after them."""
    async with PbxCaller(real_asterisk.ari_url, real_asterisk.user, real_asterisk.password) as caller:
        yield caller


def pbx_config(path: Path, ast: RealAsterisk, profile: str, extra: dict | None = None, **controller) -> Path:
    """The shipped config pointed at the real Asterisk, every context on `profile`."""
    write_config(path, ast.ari_url, extra=extra, **controller)
    data = yaml.safe_load(path.read_text())
    data["asterisk"].update(username=ast.user, password=ast.password)
    for context in data["contexts"].values():
        context["profile"] = profile
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def pbx_cluster(tmp_path, cluster_env, real_asterisk):
    """`await pbx_cluster(emulator, profile, workers=1, tool_workers=0, extra=…, **controller)`: our roles as
    processes against the real Asterisk, ready; stopped after the test (each must exit 0)."""
    clusters: list[LocalCluster] = []
    n = itertools.count(1)

    async def start(
        emu: Emulator | None,
        profile: str = "telephony_pcm16_24k",
        workers: int = 1,
        tool_workers: int = 0,
        extra: dict | None = None,
        **controller,
    ) -> LocalCluster:
        i = next(n)
        config = pbx_config(tmp_path / f"cluster-{i}.yaml", real_asterisk, profile, extra, **controller)
        env = dict(cluster_env)
        if emu is not None:
            env.update(OPENAI_REALTIME_URL=emu.url, REALTIME_PREWARM="1")
        cluster = LocalCluster(config, tmp_path, env)
        clusters.append(cluster)
        procs = [cluster.start("controller", instance_id=f"controller-{i}")]
        for w in range(workers):
            procs.append(
                cluster.start(
                    "media-worker",
                    "--audiosocket-port",
                    "0",
                    "--rtp-ports",
                    _rtp_range(i, w),
                    instance_id=f"worker-{i}-{w}",
                )
            )
        for t in range(tool_workers):
            procs.append(cluster.start("tool-worker", instance_id=f"tools-{i}-{t}"))
        ready = await asyncio.to_thread(cluster.wait_ready, procs, 30)
        assert ready, "\n".join(p.log_text()[-3000:] for p in procs)
        return cluster

    yield start
    for cluster in clusters:
        codes = cluster.stop_all()
        assert all(code == 0 for code in codes.values()), codes


def _rtp_range(i: int, w: int) -> str:
    low = 14000 + 200 * (i * 4 + w)  # below the ephemeral ports and the harness Asterisk's RTP range (20000 up)
    return f"{low}-{low + 199}"


async def call_of(aredis, keys: Keys, peer_channel: str, timeout: float = 15) -> str:
    """The call id of the caller whose far half (the channel the agent sees) is `peer_channel`."""

    async def find():
        for call_id in await aredis.smembers(keys.calls_active):
            if await aredis.hget(keys.call(call_id), "caller_channel") == peer_channel:
                return call_id
        return None

    return await until(find, timeout=timeout)


async def nothing_of_the_call_left(aredis, keys: Keys, call_id: str) -> None:
    """The call is out of the active set, its lease is gone and no worker counts it."""

    async def clean():
        if await aredis.sismember(keys.calls_active, call_id) or await aredis.exists(keys.call_lease(call_id)):
            return False
        for worker in await aredis.zrange(keys.workers, 0, -1):
            if int(await aredis.hget(keys.worker(worker), "active") or 0):
                return False
        return True

    await until(clean, timeout=10)
