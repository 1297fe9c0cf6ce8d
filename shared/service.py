"""The lifecycle every asyncio role shares: health endpoints first, then Redis (waiting for it if it is
down), registration with heartbeats, the role's own work, and a clean stop on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import redis.asyncio as aioredis

from shared import health, loop_lag, metrics
from shared.config import LoadedConfig
from shared.keys import Keys
from shared.messages import ProcessInfo
from shared.redis_conn import UNAVAILABLE, connect, stream_client
from shared.registry import Registration
from shared.version import VERSION

log = logging.getLogger("service")


def new_instance_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s died", task.get_name(), exc_info=task.exception())


class AsyncRole:
    role = "role"

    def __init__(self, loaded: LoadedConfig, *, instance_id: str | None, health_host: str, health_port: int):
        self.loaded = loaded
        self.config = loaded.config
        self.keys = Keys(self.config.redis.key_prefix)
        self.id = instance_id or new_instance_id(self.role)
        self.health_host = health_host
        self.health_port = health_port
        self.health_url = ""
        self.heartbeat_s = self.config.media_worker.heartbeat_ms / 1000
        self.stopping = asyncio.Event()
        self.redis: aioredis.Redis | None = None
        self.streams: aioredis.Redis | None = None  # bytes replies: the inbox readers' (shared/dead_letters.py)
        self.redis_ok = False
        self.registration: Registration | None = None
        self.registered = False
        self.started_ms = int(time.time() * 1000)
        self.exit_code = 0  # what run() returns after a stop: a role that had to give up says so
        self._beats: asyncio.Task[None] | None = None

    # --- what each role provides -------------------------------------------------------------------------
    def process_info(self) -> ProcessInfo:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Runs before Redis and registration: bind what must be listening before anyone is told about
        this process (a media worker's AudioSocket server)."""

    async def before_register(self) -> None:
        """Runs once Redis is reachable, before the first registration (what needs the network: a media
        worker's `advertise_host: auto`)."""

    async def cleanup(self) -> None:
        """Runs last, after deregistration: release what `prepare` bound."""

    async def serve(self) -> None:
        """The role's own work; runs after registration and must return once `self.stopping` is set."""
        await self.stopping.wait()

    def ready_details(self) -> dict[str, str]:
        """What /readyz shows beside the checks."""
        return {}

    def redis_pool_size(self) -> int:
        """How many Redis commands this process may have in flight at once (more wait for a connection)."""
        return 32

    def ready_checks(self) -> dict[str, health.ReadyCheck]:
        return {
            "redis": lambda: None if self.redis_ok else "Redis is unreachable",
            "registered": lambda: None if self.registered else "not registered in Redis",
            "heartbeats": self._heartbeats_failure,
        }

    def _heartbeats_failure(self) -> str | None:
        """The heartbeat task died (anything but Redis being away, which it retries): the registration goes
        stale while the process would look ready."""
        beats = self._beats
        if beats is None or not beats.done() or beats.cancelled() or beats.exception() is None:
            return None
        return f"heartbeats stopped ({type(beats.exception()).__name__})"

    # --- lifecycle -------------------------------------------------------------------------------------
    def _on_signal(self, signame: str) -> None:
        if not self.stopping.is_set():
            log.info("received %s: stopping", signame)
        self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        metrics.register(self.role)
        metrics.BUILD.info({"version": VERSION, "role": self.role, "id": self.id})
        server = health.make_server(self.role, self.id, self.ready_checks(), self.ready_details)
        try:
            port = await health.start(server, self.health_host, self.health_port)
        except OSError as exc:
            log.error("cannot serve health on %s:%s: %s", self.health_host, self.health_port, exc.strerror)
            return 2
        self.health_url = f"http://{self.health_host}:{port}"
        log.info("%s %s starting (version %s); health on %s", self.role, self.id, VERSION, self.health_url)
        try:
            await self.prepare()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            await server.close()
            return 2
        lag = asyncio.create_task(loop_lag.watch(), name="loop-lag")
        try:
            self.redis = await connect(self.config.redis.url, self.stopping, pool_size=self.redis_pool_size())
            if self.redis is None:
                return 0
            self.streams = stream_client(self.config.redis.url)
            self.redis_ok = True
            metrics.REDIS_UP.set(1)
            try:
                await self.before_register()
            except OSError as exc:
                log.error("cannot start: %s", exc)
                return 2
            self.registration = Registration(
                self.redis, self.keys, self.process_info(), record_ttl_ms=self.config.media_worker.stale_after_ms * 20
            )
            await self._beat()
            beats = self._beats = asyncio.create_task(self._heartbeats(), name="heartbeats")
            beats.add_done_callback(_log_death)
            try:
                await self.serve()
            finally:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)
                await self._deregister()
        finally:
            lag.cancel()
            await self.cleanup()
            await server.close()
            if self.redis is not None:
                await self.redis.aclose()
            if self.streams is not None:
                await self.streams.aclose()
        log.info("%s %s stopped", self.role, self.id)
        return self.exit_code

    async def _beat(self) -> None:
        assert self.registration is not None
        await self.registration.heartbeat()
        if not self.registered:
            log.info("registered in Redis as %s", self.id)
        self.registered = True
        metrics.REGISTERED.set(1)

    async def _heartbeats(self) -> None:
        while not self.stopping.is_set():
            try:
                async with asyncio.timeout(self.heartbeat_s):
                    await self.stopping.wait()
                return
            except TimeoutError:
                pass
            try:
                await self._beat()
                if not self.redis_ok:
                    log.info("Redis is reachable again")
                self.redis_ok = True
                metrics.REDIS_UP.set(1)
            except UNAVAILABLE as exc:
                if self.redis_ok:
                    log.warning("lost Redis (%s); retrying every %.1fs", exc, self.heartbeat_s)
                self.redis_ok = self.registered = False
                metrics.REDIS_UP.set(0)
                metrics.REGISTERED.set(0)

    async def _deregister(self) -> None:
        if self.registration is None:
            return
        try:
            async with asyncio.timeout(3):
                await self.registration.remove()
            log.info("deregistered %s", self.id)
        except (TimeoutError, *UNAVAILABLE) as exc:
            log.warning("could not deregister (Redis: %s); the entry goes stale and is ignored", exc or "timeout")
        self.registered = False
        metrics.REGISTERED.set(0)
