"""The controller process: registers itself, owns the Stasis app over ARI, admits and sets up calls."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from functools import partial

from redis.exceptions import RedisError

from controller import cluster_metrics
from controller.admission import Admission
from controller.ari.capabilities import Capabilities, probe
from controller.ari.errors import AriError
from controller.ari.events import EventStream, Reconnect
from controller.ari.rest import AriRest
from controller.call import CallDeps
from controller.call_emails import CallEmails
from controller.leadership import LeaderState, Leadership
from controller.stasis import StasisApp
from controller.call_control import CallControl, ControlInbox
from controller.worker_watch import WorkerWatch
from shared import health
from shared.config import LoadedConfig
from shared.messages import ProcessInfo
from shared.service import AsyncRole
from shared.metrics import TAKEOVER_SECONDS
from shared.supervisor import MAX_RESTARTS, RESTART_PAUSE_S, Supervised
from shared.tasks import TaskSet
from shared.version import VERSION

log = logging.getLogger("controller")

DAY_MS = 86_400_000
CONTROLLER_REDIS_POOL = 128
EXIT_DEPOSED = 3  # another controller took the lease: exit, for the supervisor to restart this one as a standby
RECONCILE_RETRY_S = (0.25, 5.0)  # a reconcile after a Redis outage that fails is tried again, backing off


class Controller(AsyncRole):
    role = "controller"

    def __init__(self, loaded: LoadedConfig, *, instance_id: str | None, health_host: str, health_port: int):
        super().__init__(loaded, instance_id=instance_id, health_host=health_host, health_port=health_port)
        self.capabilities: Capabilities | None = None
        self.events: EventStream | None = None
        self.app: StasisApp | None = None
        self.reconciled = asyncio.Event()  # the first reconcile ran: control requests may act on calls
        self.requests: Supervised | None = None  # the control inbox reader, restarted if it dies
        self.gauges: Supervised | None = None  # the cluster gauges' refresh loop, restarted if it dies
        self.watch: Supervised | None = None  # the worker watch (dead workers' calls moved), restarted if it dies
        self.leadership: Leadership | None = None
        self.reconcile_wanted = asyncio.Event()  # Redis came back, or a teardown could not finish
        self._reconciling = asyncio.Lock()  # one reconcile at a time (on connect, after an outage)
        self._leading_since = 0.0  # monotonic: when this process acquired the lease

    def process_info(self) -> ProcessInfo:
        return ProcessInfo(
            id=self.id,
            role=self.role,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=VERSION,
            started_ms=self.started_ms,
            health_url=self.health_url,
        )

    def redis_pool_size(self) -> int:
        # Each call's setup and teardown send their commands one after the other, and so does each control
        # request: a burst of N callers has at most N commands in flight (plus the heartbeat, the cluster
        # gauges and the inbox). Redis runs them one at a time anyway: beyond this many, a command waits a few
        # ms for a connection (va_redis_pool_wait_seconds) instead of failing the call.
        return CONTROLLER_REDIS_POOL

    def ready_checks(self) -> dict[str, health.ReadyCheck]:
        checks = super().ready_checks()
        # A standby runs none of the leader's tasks: it is ready when Redis is (it can take over).
        checks["control_inbox"] = lambda: (
            None
            if self._standing_by()
            else self.requests.problem()
            if self.requests is not None
            else "control inbox reader not started"
        )
        checks["cluster_metrics"] = lambda: (
            None
            if self._standing_by()
            else self.gauges.problem()
            if self.gauges is not None
            else "cluster metrics not started"
        )
        checks["worker_watch"] = lambda: (
            None
            if self._standing_by()
            else self.watch.problem()
            if self.watch is not None
            else "worker watch not started"
        )
        checks["ari"] = self._ari_failure
        return checks

    def _standing_by(self) -> bool:
        return self.leadership is not None and self.leadership.state is LeaderState.STANDBY

    def _ari_failure(self) -> str | None:
        """A standby is ready without ARI (it must not connect the events WebSocket); a leader needs it."""
        if self._standing_by():
            return None
        if self.leadership is None or self.leadership.state is LeaderState.STARTING:
            return "starting: has not asked for the leadership lease yet"
        if self.leadership.state is LeaderState.DEPOSED:
            return "deposed: another controller leads"
        return (
            None if self.events is not None and self.events.connected else "not connected to the ARI events WebSocket"
        )

    def ready_details(self) -> dict[str, str]:
        return {"leadership": self.leadership.state.value if self.leadership is not None else "starting"}

    async def serve(self) -> None:
        config = self.config
        assert self.redis is not None
        leadership = self.leadership = Leadership(self.redis, self.keys, self.id, config.controller.leader_lease_ms)
        # A standby sends nothing to Asterisk and reads no control request: it only polls for the lease.
        if not await leadership.wait_to_lead(self.stopping):
            return
        self._leading_since = time.monotonic()
        leadership.on_regained = self.reconcile_wanted.set
        background = TaskSet("leadership")
        background.spawn(leadership.keep(self.stopping), "lease-renewal")
        background.spawn(self._stop_when_deposed(leadership), "deposed-watch")
        try:
            await self._lead(leadership, background)
        finally:
            await background.close()
            if leadership.state is LeaderState.DEPOSED:
                self.exit_code = EXIT_DEPOSED
            else:
                await leadership.resign()  # a clean stop: the standby takes over now, not after the TTL

    async def _stop_when_deposed(self, leadership: Leadership) -> None:
        await leadership.deposed.wait()
        self.stopping.set()  # the events socket closes, setups are cancelled; the ARI gate stays shut

    async def _lead(self, leadership: Leadership, background: TaskSet) -> None:
        config = self.config
        ari = config.asterisk
        assert self.redis is not None and self.streams is not None
        async with AriRest(
            ari.ari_url,
            ari.username,
            ari.password,
            timeout=config.controller.ari_timeout_ms / 1000,
            gate=leadership.may_act,
            client_id=self.id,  # in the User-Agent: Asterisk's HTTP log tells the controllers apart
        ) as rest:
            admission = Admission(
                self.redis,
                self.keys,
                stale_after_ms=config.media_worker.stale_after_ms,
                provider_limit=config.providers.openai_realtime.max_concurrent_sessions,
                queue_timeout_ms=config.controller.queue_timeout_ms,
                retention_ms=config.call_retention_days * DAY_MS,
                fence=leadership,
                limits=config.limits,
            )
            emails = CallEmails(config, self.keys, config.redis.url)
            deps = CallDeps(
                config=config,
                rest=rest,
                redis=self.redis,
                keys=self.keys,
                admission=admission,
                app=ari.app_name,
                capabilities=lambda: self.capabilities,
                controller_id=self.id,
                after_end=partial(_mail, emails, admission),
                unfinished=self.reconcile_wanted.set,
            )
            self.app = StasisApp(deps)
            self.events = EventStream(
                ari.ari_url,
                ari.username,
                ari.password,
                ari.app_name,
                handler=self.app.handle,
                key=self.app.key,
                on_connect=self._connected,
            )
            inbox = ControlInbox(
                self.redis, self.keys, self.id, CallControl(self.app), fence=leadership, streams=self.streams
            )
            self.requests = Supervised("control inbox reader", lambda: inbox.run(self.stopping, self.reconciled))
            requests = self.requests.start()
            self.gauges = self.cluster_gauges()
            gauges = self.gauges.start()
            background.spawn(self._reconcile_after_outages(), "reconcile-after-outage")
            app = self.app
            watch = WorkerWatch(
                self.redis,
                self.keys,
                stale_after_ms=config.media_worker.stale_after_ms,
                on_death=lambda dead: app.worker_died(dead.worker_id, dead.last_beat_ms),
                move_wait_ms=config.controller.move_wait_ms,
            )
            self.watch = Supervised("worker watch", lambda: watch.run(self.stopping, self.reconciled))
            watching = self.watch.start()
            try:
                await self.events.run(self.stopping)
            finally:
                requests.cancel()  # not waiting for its blocking read to time out
                gauges.cancel()
                watching.cancel()
                await asyncio.gather(requests, gauges, watching, return_exceptions=True)
                await self.app.stop()
                emails.close()

    def cluster_gauges(self, *, pause_s: float = RESTART_PAUSE_S, max_restarts: int = MAX_RESTARTS) -> Supervised:
        """The cluster gauges' loop: Redis trouble skips a round in it; anything else (a bug, a record of an
        unexpected shape) is a death, restarted, then given up and failing /readyz as `cluster_metrics`."""
        assert self.redis is not None
        redis, keys, config = self.redis, self.keys, self.config
        return Supervised(
            "cluster metrics",
            lambda: cluster_metrics.run(redis, keys, config),
            pause_s=pause_s,
            max_restarts=max_restarts,
        )

    async def _connected(self, first: bool) -> None:
        """Runs before any event of a new events connection: learn what this Asterisk can do (it may have
        been upgraded or restarted), then reconcile."""
        assert self.app is not None and self.events is not None
        try:
            self.capabilities = await probe(self.app.deps.rest)
        except (AriError, ValueError) as exc:
            log.warning("cannot read Asterisk's capabilities (%s); using the profiles' formats as configured", exc)
        try:
            async with self._reconciling:
                await self.app.reconcile(first)
            if first and self._leading_since:
                took = time.monotonic() - self._leading_since
                self._leading_since = 0.0
                TAKEOVER_SECONDS.observe(took)
                log.info(
                    "leading: ARI events connected and calls reconciled %.0f ms after taking the lease", took * 1000
                )
        except (AriError, RedisError, OSError) as exc:
            # Asterisk or Redis trouble is passing: raising makes the events stream reconnect (with backoff) and
            # run this again, instead of waiting for the next time the socket happens to drop.
            log.warning("reconcile failed (%s); reconnecting to try again", exc)
            raise Reconnect from exc
        except Exception:
            log.exception("reconcile failed; calls are handled, orphans wait for the next connect")
        finally:
            self.reconciled.set()

    async def _reconcile_after_outages(self) -> None:
        """Reconcile whenever Redis comes back after an outage (the lease was not confirmed, then was) or a teardown
        could not finish: calls whose caller left meanwhile are torn down, their slots released, their emails
        enqueued. A reconcile that fails (Redis or Asterisk still away) is tried again, backing off."""
        assert self.app is not None
        while not self.stopping.is_set():
            if not await _until(self.reconcile_wanted, self.stopping):
                return
            self.reconcile_wanted.clear()
            pause, most = RECONCILE_RETRY_S
            while not self.stopping.is_set():
                try:
                    async with self._reconciling:
                        await self.app.reconcile(
                            False, why="after a Redis outage or an unfinished teardown", events_flowing=True
                        )
                    break
                except (AriError, RedisError, OSError) as exc:
                    log.info("reconcile after an outage failed (%s); trying again in %.2f s", exc, pause)
                except Exception:
                    log.exception("reconcile after an outage failed; trying again in %.2f s", pause)
                try:
                    async with asyncio.timeout(pause):
                        await self.stopping.wait()
                except TimeoutError:
                    pause = min(pause * 2, most)


async def _mail(emails: CallEmails, admission: Admission, call_id: str, reason: str) -> None:
    """After a call's release: enqueue its emails, then clear its pending mark (kept if enqueueing fails)."""
    await emails.call_ended(call_id, reason)
    await admission.emails_enqueued(call_id)


async def _until(event: asyncio.Event, stopping: asyncio.Event) -> bool:
    """Wait for `event` or `stopping`; True when `event` came first."""
    waiters = [asyncio.create_task(event.wait()), asyncio.create_task(stopping.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set() and not stopping.is_set()
