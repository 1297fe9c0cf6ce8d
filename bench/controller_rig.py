"""What the controller benches share: an Asterisk simulator, an AudioSocket listener registered as a media
worker in Redis, and the environment for a controller process on a key prefix of its own.

    rig = await ControllerRig.start(redis_url, "bench-ctl-", capacity=210)
    cluster = LocalCluster(rig.config(extra), rig.workdir, rig.env)
    ...
    await rig.stop()  # after cluster.stop_all(): the listener, the simulator, Redis and the prefix
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis as sync_redis
import redis.asyncio as aioredis

from shared.keys import Keys
from sim.asterisk import AsteriskSim
from sim.cluster import purge
from tests.ari_harness import ARI_PASSWORD, ARI_USER, AudioSocketListener, FakeWorker, write_config


@dataclass
class ControllerRig:
    redis_url: str
    prefix: str
    workdir: Path
    sim: AsteriskSim
    listener: AudioSocketListener
    client: aioredis.Redis
    keys: Keys
    worker: FakeWorker

    @classmethod
    async def start(cls, redis_url: str, tag: str, capacity: int) -> ControllerRig:
        prefix = f"va-{tag}{uuid.uuid4().hex[:8]}:"
        workdir = Path(tempfile.mkdtemp(prefix=tag))
        sim = AsteriskSim(users={ARI_USER: ARI_PASSWORD}, workdir=workdir / "sim")
        await sim.start("127.0.0.1", 0)
        listener = AudioSocketListener()
        await listener.start()
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys(prefix)
        worker = FakeWorker(client, keys, "bench-worker", listener.port, capacity=capacity)
        await worker.start()
        return cls(redis_url, prefix, workdir, sim, listener, client, keys, worker)

    @property
    def env(self) -> dict[str, str]:
        """A controller's environment: this rig's Redis prefix, no Realtime sessions, warnings only."""
        return {
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.prefix,
            "OPENAI_API_KEY": "bench",
            "REALTIME_PREWARM": "0",
            "LOG_LEVEL": "warning",
        }

    def config(self, extra: dict | None = None) -> Path:
        """The shipped config pointed at this rig's simulator."""
        return write_config(self.workdir / "controller.yaml", self.sim.url, extra=extra)

    async def stop(self, keep_workdir: bool = False) -> None:
        await self.worker.stop()
        await self.listener.stop()
        await self.sim.stop()
        await self.client.aclose()
        purge(sync_redis.Redis.from_url(self.redis_url), self.prefix)
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
