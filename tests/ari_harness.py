"""Test harness for the controller: the Asterisk simulator, a test AudioSocket listener standing in for a
media worker (registered in Redis like one, heartbeating), and a config file for the controller process."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError
import yaml

from controller.leadership import LeaderState, Leadership
from shared.keys import Keys
from shared.messages import Assignment, WorkerInfo
from shared.registry import Registration
from tests.conftest import CONFIG

ARI_USER, ARI_PASSWORD = "asterisk", "sim-secret-pw"


@dataclass
class Connection:
    uuid: str
    accepted_t: float
    writer: asyncio.StreamWriter
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class AudioSocketListener:
    """Accepts Asterisk's AudioSocket connections, reads the UUID frame, then drains audio until EOF."""

    def __init__(self):
        self.connections: dict[str, Connection] = {}
        self.arrived = asyncio.Condition()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = time.monotonic()
        try:
            head = await reader.readexactly(3)
            assert head[0] == 0x01 and int.from_bytes(head[1:3], "big") == 16, head
            conn = Connection(str(uuid.UUID(bytes=await reader.readexactly(16))), t, writer)
        except (asyncio.IncompleteReadError, ConnectionError, AssertionError):
            writer.close()
            return
        async with self.arrived:
            self.connections[conn.uuid] = conn
            self.arrived.notify_all()
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            conn.closed.set()
            writer.close()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self.connections) >= count)

    async def hang_up(self, call_uuid: str) -> None:
        """What a worker does to end its leg: AudioSocket kind 0x00."""
        conn = self.connections[call_uuid]
        conn.writer.write(b"\x00\x00\x00")
        await conn.writer.drain()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in self.connections.values():
                conn.writer.close()


class FakeWorker:
    """A media worker's registration (heartbeating) whose media address is a test listener."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, wid: str, port: int, capacity: int):
        info = WorkerInfo(
            id=wid,
            role="media-worker",
            hostname="test",
            pid=0,
            version="test",
            started_ms=0,
            media_host="127.0.0.1",
            audiosocket_port=port,
            rtp_port_min=30000,
            rtp_port_max=30099,
            capacity=capacity,
        )
        self.registration = Registration(redis, keys, info, record_ttl_ms=60_000)
        self.redis, self.keys, self.id = redis, keys, wid
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        await self.registration.heartbeat()
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.2)  # as a real worker's 250 ms: the controller's watch declares 750 ms dead
            try:
                await self.registration.heartbeat()
            except RedisError:
                pass  # Redis away (a test restarts it): beat again when it is back, like a worker

    async def active(self) -> int:
        return int(await self.redis.hget(self.keys.worker(self.id), "active") or 0)

    async def stop(self) -> None:
        # The flag ends the loop even when the cancellation is lost inside a Redis call: a beat loop left running
        # kept the event loop's close waiting (two teardowns timed out at 120 s in CI, polling every 0.2 s).
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
        await self.registration.remove()


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_config(
    path: Path, sim_url: str, contexts: dict | None = None, extra: dict | None = None, **controller
) -> Path:
    """The shipped config, pointed at the simulator, with controller settings overridden, contexts added and
    `extra` merged in (nested dicts are merged key by key)."""
    data = merge(yaml.safe_load(CONFIG.read_text()), extra or {})
    data["asterisk"].update(ari_url=sim_url, username=ARI_USER, password=ARI_PASSWORD)
    data["controller"].update(controller)
    data["contexts"].update(contexts or {})
    path.write_text(yaml.safe_dump(data))
    return path


async def start_controller(config: Path, workdir: Path, env: dict[str, str], n: int, clusters: list) -> tuple:
    """A controller process on `config`, ready (ARI connected); its cluster is added to `clusters` to stop."""
    from sim.cluster import LocalCluster

    cluster = LocalCluster(config, workdir, env)
    clusters.append(cluster)
    proc = cluster.start("controller", instance_id=f"controller-{n}")
    ready = await asyncio.to_thread(cluster.wait_ready, [proc], 30)
    assert ready, proc.log_text()[-3000:]
    return cluster, proc


def decode_assignment(fields: dict) -> Assignment:
    """A worker-inbox entry (bytes or str fields) as the Assignment a media worker would decode."""
    data = fields.get(b"data") or fields.get("data")
    return msgspec.json.decode(data, type=Assignment)


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def lease_holder(redis: aioredis.Redis, keys: Keys, cid: str = "test-controller", lease_ms: int = 60_000) -> Leadership:
    """A controller's leadership as if it held the lease (token 1): under a fresh prefix nobody has acquired one, so
    its first fenced write takes the lease (controller/leadership.py: a lease that is gone, and no counter)."""
    lead = Leadership(redis, keys, cid, lease_ms)
    lead.token, lead.value, lead.state = 1, f"1:{cid}", LeaderState.LEADING
    return lead
