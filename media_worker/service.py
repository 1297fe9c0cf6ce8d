"""The media worker process: the AudioSocket server and RTP ports, one playout clock for every call, the
Realtime sessions (with a prewarmed pool), the inbox of assignments, and the call leases."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import time

from media_worker import inbox
from media_worker.audio.playout import PlayoutClock
from media_worker.calls import CallManager
from media_worker.load_governor import GovernorLimits, LoadGovernor, LoadState, Reading
from media_worker.context import WorkerContext
from media_worker.realtime.client import ClientSettings
from media_worker.realtime.key_health import KeyHealth
from media_worker.realtime.pool import SessionPool
from shared.tasks import TaskSet
from media_worker.transport.allowlist import media_sources
from media_worker.transport.audiosocket_server import AudioSocketServer
from shared import rtp_ports
from shared.config import ConfigError, load_config
from shared.masking import redact
from shared.messages import WorkerInfo
from shared.netaddr import resolve_advertise_host
from shared.metrics import (
    LATE_TICKS,
    TICK_LAG,
    TICK_LAG_MAX,
    TICK_LAG_WAKEUPS,
    LOAD_STATES,
    WORKER_CAPACITY,
    WORKER_CAPACITY_ADVERTISED,
    WORKER_CPU,
    WORKER_LOAD_STATE,
    WORKER_SLOTS_FREE,
)
from shared.service import AsyncRole
from shared.supervisor import Supervised
from shared.version import VERSION

log = logging.getLogger("media-worker")

# A stopping worker's calls left after the drain are handed to other workers (live re-homing); this bounds the wait
# for the controller to move them (a move takes well under a second). What is left then is ended.
HANDOVER_TIMEOUT_S = 5.0


class MediaWorker(AsyncRole):
    role = "media-worker"

    def __init__(self, *args, audiosocket_port: int | None = None, rtp_ports: tuple[int, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        settings = self.config.media_worker
        self.audiosocket_port = settings.audiosocket_port if audiosocket_port is None else audiosocket_port
        self.rtp_ports = rtp_ports or (settings.rtp_port_min, settings.rtp_port_max)
        WORKER_CAPACITY.set(settings.capacity)
        WORKER_CAPACITY_ADVERTISED.set(settings.capacity)
        WORKER_SLOTS_FREE.set(settings.capacity)
        WORKER_LOAD_STATE.labels(LoadState.OK.value).set(1)
        admission = settings.admission
        limits = GovernorLimits(
            max_tick_lag_p99_ms=admission.max_tick_lag_p99_ms,
            max_cpu_percent=admission.max_cpu_percent,
            window_s=admission.window_s,
            recover_s=admission.recover_s,
        )
        self.governor = LoadGovernor(settings.capacity, limits) if admission.enabled else None
        provider = self.config.providers.openai_realtime
        self.realtime = ClientSettings.from_config(provider)
        self.key_health = KeyHealth()
        self.pool = SessionPool(
            self.realtime, settings.prewarm_sessions if provider.enabled else 0, key_health=self.key_health
        )
        self.ctx: WorkerContext | None = None
        self.clock = PlayoutClock()
        self.server: AudioSocketServer | None = None
        self.advertise_host = self.config.media_worker.advertise_host
        self.listen_host = self.config.media_worker.listen_host  # "" until resolved: the advertised address
        self.allowed_hosts: list[str] = []
        self.calls: CallManager | None = None
        self.tasks = TaskSet("media worker")  # the clock, the inbox reader, the leases: /readyz fails if one dies

    def redis_pool_size(self) -> int:
        # At most one command in flight per call (its call-log writer, a tool request, its figures at the end:
        # each call's steps are sequential), plus the process's own: heartbeat, leases, metrics.
        return self.config.media_worker.capacity + 16

    def ready_checks(self):
        checks = super().ready_checks()
        checks["audiosocket"] = lambda: None if self.server is not None else "AudioSocket server not listening"
        checks["tasks"] = lambda: self.tasks.failure or self.pool.failure
        checks["openai_key"] = self.key_health.failing
        return checks

    async def prepare(self) -> None:
        # From the start: SIGHUP's default action would end the process (and its calls).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        log.info("received SIGHUP: re-reading the OpenAI key")
        self.tasks.spawn(self.reload_key(), "reload-key")

    async def reload_key(self) -> None:
        """Re-read the config as at the start (the file, `.env`, OPENAI_API_KEY_FILE) and use its key for new
        sessions and the prewarm pool; calls in progress keep their open sessions. Only the key, organization
        and project are taken: other changes need a restart. A config that no longer loads changes nothing."""
        try:
            loaded = await asyncio.to_thread(load_config, self.loaded.source)
        except ConfigError as exc:
            log.error("SIGHUP: the config does not load, the key is unchanged:\n%s", redact(str(exc)))
            return
        redact.register(loaded.secrets)
        provider = loaded.config.providers.openai_realtime
        new = dataclasses.replace(
            self.realtime, api_key=provider.api_key, organization=provider.organization, project=provider.project
        )
        if new == self.realtime:
            log.info("SIGHUP: the OpenAI key is unchanged; the next open tries it at once")
            self.key_health.retry_now()
            return
        self.realtime = new
        if self.ctx is not None:
            self.ctx.realtime = new
        self.pool.use_settings(new)
        log.info("SIGHUP: new OpenAI key in use for new sessions; %d calls keep their sessions", self._calls())

    def _calls(self) -> int:
        return len(self.calls.sessions) if self.calls is not None else 0

    async def before_register(self) -> None:
        # `auto` needs the route towards Redis, so it waits, like the connection, until Redis can be reached.
        # Listening follows (the listen address defaults to the advertised one), still before registering:
        # the controller may send Asterisk here as soon as we are in Redis.
        settings = self.config.media_worker
        self.advertise_host = await resolve_advertise_host(settings.advertise_host, self.config.redis.url)
        self.listen_host = settings.listen_host or self.advertise_host
        server = None
        try:
            self.allowed_hosts = media_sources(settings.allowed_media_hosts, self.config.asterisk.ari_url)
            server = AudioSocketServer(
                self.listen_host, self.audiosocket_port, bind=self._bind, allowed_hosts=self.allowed_hosts
            )
            await server.start()
        except ValueError as exc:  # no host to take media from, or one that does not resolve: refuse to start
            raise OSError(errno.EINVAL, str(exc)) from exc
        self.server = server
        self.audiosocket_port = self.server.port
        log.info(
            "AudioSocket on %s:%d, RTP ports %d-%d, advertised as %s; media accepted from %s",
            self.listen_host,
            self.audiosocket_port,
            *self.rtp_ports,
            self.advertise_host,
            ", ".join(self.allowed_hosts),
        )
        overlap = rtp_ports.ephemeral_warning(*self.rtp_ports, rtp_ports.ephemeral_range())
        if overlap is not None:
            log.warning("%s", overlap)

    def _bind(self, call_uuid: str, peer_host: str, link):
        return self.calls.bind_audiosocket(call_uuid, peer_host, link) if self.calls is not None else None

    async def serve(self) -> None:
        assert self.redis is not None and self.streams is not None
        ctx = WorkerContext(
            config=self.config,
            redis=self.redis,
            keys=self.keys,
            worker_id=self.id,
            clock=self.clock,
            pool=self.pool,
            realtime=self.realtime,
        )
        self.ctx = ctx
        self.calls = CallManager(
            ctx, listen_host=self.listen_host, allowed_hosts=self.allowed_hosts, rtp_ports=self.rtp_ports
        )
        self.pool.start()
        stop_reading = asyncio.Event()
        tasks = self.tasks
        tasks.spawn(self.clock.run(self.stopping), "playout-clock", essential=True)
        # The inbox reader is restarted if it dies (Supervised); given up, it dies as an essential task.
        reading = inbox.Inbox(self.streams, self.keys, self.id, self.calls.handle, self.calls.media_failed)
        tasks.spawn(Supervised("inbox reader", lambda: reading.consume(stop_reading)).run(), "inbox", essential=True)
        tasks.spawn(self._leases(), "leases", essential=True)
        try:
            await self.stopping.wait()
            await self._drain()
            await self.calls.hand_over(HANDOVER_TIMEOUT_S)  # the inbox still read: the controller's `moved` ends
        finally:
            stop_reading.set()
            # The idle prewarmed connections close while the calls do, not after them.
            await asyncio.gather(self.calls.stop_all("worker_stopping"), self.pool.stop())
            await tasks.close()

    async def _drain(self) -> None:
        """SIGTERM: take no new calls (draining in the registry), give live ones their grace period."""
        assert self.calls is not None and self.registration is not None
        grace = self.config.media_worker.drain_timeout_ms / 1000
        if not self.calls.sessions:
            return
        info = self.registration.info
        if isinstance(info, WorkerInfo):
            info.draining = True  # the controller's admission skips a draining worker
        try:
            await self.registration.heartbeat()
        except Exception:  # Redis down: the heartbeat stops anyway and the entry goes stale
            pass
        if grace <= 0:
            return  # no grace: the calls are handed over at once
        log.info("draining: waiting up to %.0f s for %d calls", grace, len(self.calls.sessions))
        try:
            async with asyncio.timeout(grace):
                await self.calls.wait_no_calls()
        except TimeoutError:
            log.info("drain time is up with %d calls left: they are ended", len(self.calls.sessions))

    async def _leases(self) -> None:
        assert self.calls is not None
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.calls.renew_leases()
            except Exception as exc:  # Redis hiccup: the next beat tries again
                log.debug("lease renewal failed: %s", exc)
            self.calls.every_second(time.monotonic())
            publish_lag(self.clock)
            info = self.registration.info if self.registration is not None else None
            active = len(self.calls.sessions)
            capacity = self.config.media_worker.capacity
            if self.governor is not None and isinstance(info, WorkerInfo):
                capacity = self._govern(self.governor, info, active)
            draining = isinstance(info, WorkerInfo) and info.draining
            WORKER_SLOTS_FREE.set(0 if draining else max(capacity - active, 0))

    def _govern(self, governor: LoadGovernor, info: WorkerInfo, active: int) -> int:
        """This second's measurement into the governor; its figure goes into the registration, which the next
        heartbeat (within `heartbeat_ms`) writes where admission reads it. Returns the advertised capacity."""
        lag = self.clock.lag_ms
        before = governor.decision
        now = Reading(lag_counts=tuple(lag.counts), cpu_s=time.process_time(), wall_s=time.monotonic())
        decision = governor.observe(now, active, lag.buckets, lag.max)
        info.capacity, info.load_state, info.load_reason = decision.advertised, decision.state.value, decision.reason
        WORKER_CAPACITY_ADVERTISED.set(decision.advertised)
        if governor.cpu_percent is not None:
            WORKER_CPU.set(governor.cpu_percent)
        if decision.state is not before.state:  # once per change, not every second
            for state in LOAD_STATES:
                WORKER_LOAD_STATE.labels(state).set(1 if state == decision.state.value else 0)
            if decision.state is LoadState.OK:
                log.info("load back under the limits: advertising the configured %d calls", decision.advertised)
            else:
                log.warning(
                    "%s (%s): advertising %d calls of %d (%d in progress)",
                    decision.state.value,
                    decision.reason,
                    decision.advertised,
                    governor.configured,
                    active,
                )
        return decision.advertised

    async def cleanup(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def process_info(self) -> WorkerInfo:
        settings = self.config.media_worker
        return WorkerInfo(
            id=self.id,
            role=self.role,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=VERSION,
            started_ms=self.started_ms,
            health_url=self.health_url,
            media_host=self.advertise_host,
            audiosocket_port=self.audiosocket_port,
            rtp_port_min=self.rtp_ports[0],
            rtp_port_max=self.rtp_ports[1],
            capacity=settings.capacity,
            capacity_configured=settings.capacity,
        )


def publish_lag(clock: PlayoutClock) -> None:
    """The playout clock's lateness as gauges, on the 1 s beat: 15 buckets, two scrapes give any window's
    percentiles (bench/pinned_capacity.py takes the hold's)."""
    lag = clock.lag_ms
    TICK_LAG.set(lag.quantile(0.99) if lag.count else 0)
    for le, wakeups in lag.cumulative():
        TICK_LAG_WAKEUPS.labels("+Inf" if le == float("inf") else f"{le:g}").set(wakeups)
    TICK_LAG_MAX.set(lag.max)
    LATE_TICKS.set(clock.late_ticks)
