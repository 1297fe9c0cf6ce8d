"""The RQ worker class of the tool workers: RQ's Worker with abandoned jobs found in seconds, not minutes.

Stock RQ 2 notices a job whose worker died (SIGKILL, OOM, a lost host) only when its StartedJobRegistry entry
expires (the last heartbeat + `min(timeout, job_monitoring_interval) + 60` s, the monitoring interval being
30 s) *and* a maintenance pass runs (every 10 min by default, and an idle worker sits in a 405 s blocking pop
between passes). It then retries the job through the scheduler, whose lock, if the dead worker held it, stays
taken for another 61 s. So a summary email could wait ~10 minutes after a crash.

Here: the job heartbeat runs every HEARTBEAT_S with HEARTBEAT_GRACE_S of slack, maintenance runs every
MAINTENANCE_S (the blocking pop is as short), and `reclaim_abandoned` puts an expired started job straight
back at the front of its queue (no scheduler, no retry used: the worker's death was not the job's failure).
A job reclaimed MAX_RECLAIMS times is left to RQ's own cleanup, which retries it or moves it to failed.
Jobs whose sender might still run (a stalled, not dead, worker) are safe: the email jobs hold a refreshed
per-message lock and a sent-marker.

Stopping (SIGTERM, SIGINT). RQ's handler raises StopRequested wherever the main thread happens to be, Redis
calls included: between the pop of a job and its start that loses the job, and inside a broad `except` it is
swallowed (the worker never exits). It is also installed only after RQ registered the worker and started its
scheduler, and a signal meanwhile went to a handler whose flag nothing read. Here the handler only sets
`_stop_requested`; the loop reads it between blocking pops of at most DEQUEUE_TIMEOUT_S, and a signal that
came before RQ's handlers (`early_stop`) is taken over when they are installed. A job in progress gets
`tool_worker.stop_grace_ms`; then its work horse is killed and the job goes back to the front of its queue
(not a failure: no retry is used), where another worker, or this one restarted, takes it; the email jobs'
sent-marker and lock keep that to one delivery. Teardown waits a bounded time for RQ's scheduler process and
pubsub thread (both joined without a timeout by RQ and redis-py), and the scheduler process stops by itself
once its worker is gone (`OwnedScheduler`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress

import redis
from rq import Queue, Worker
from rq.exceptions import DequeueTimeout, InvalidJobOperation, NoSuchJobError
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.utils import as_text, current_timestamp, parse_composite_key
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from shared.email_queue import SUMMARY_FUNC, TRANSCRIPT_FUNC
from shared.metrics import JOB_SECONDS, JOBS
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger("tool_worker")

HEARTBEAT_S = 1
HEARTBEAT_GRACE_S = 5
MAINTENANCE_S = 2
MAX_RECLAIMS = 3
# RQ reads its pubsub channel in 60 s blocking reads, and redis-py 8 joins that thread without a timeout when RQ
# unsubscribes at shutdown: an idle worker took up to 60 s to exit on SIGTERM.
PUBSUB_POLL_S = 1
DEQUEUE_TIMEOUT_S = 1  # the longest blocking pop: an idle worker sees a stop request this soon
MAX_REDIS_WAIT_S = 5.0  # the longest wait between attempts while Redis is unreachable (RQ's: 60 s)
SCHEDULER_STOP_S = 3.0  # RQ's scheduler checks its stop flag every second; one that misses the signal is killed
OUTCOMES = ("finished", "failed", "retrying")


def reclaim_abandoned(queue: Queue) -> list[str]:
    """Requeue the started jobs of `queue` whose heartbeat expired; ZREM is the claim, so workers reclaiming
    at the same time requeue each job once."""
    conn = queue.connection
    registry = queue.started_job_registry
    reclaimed: list[str] = []
    for entry in conn.zrangebyscore(registry.key, 0, current_timestamp()):
        if not isinstance(entry, (bytes, str)):
            continue  # a (member, score) pair: not asked for here
        job_id, _ = parse_composite_key(as_text(entry))
        job = Job.fetch(job_id, connection=conn) if conn.exists(Job.key_for(job_id)) else None
        if job is None or job.get_status() != JobStatus.STARTED:
            continue  # finished or failed meanwhile: RQ's cleanup drops the entry
        reclaims = int(job.meta.get("reclaims", 0))
        if reclaims >= MAX_RECLAIMS:
            continue  # a job that keeps killing its worker: RQ's cleanup retries or fails it
        if not conn.zrem(registry.key, entry):
            continue  # another worker reclaimed it
        job.meta["reclaims"] = reclaims + 1
        job.save_meta()
        queue.enqueue_job(job, at_front=True)
        log.warning("job %s was abandoned by a dead worker; requeued", job_id)
        reclaimed.append(job_id)
    return reclaimed


def task_name(func_name: str | None) -> str:
    """The metrics label of a job: its function's name."""
    return (func_name or "unknown").rsplit(".", 1)[-1]


def job_outcome(job: Job) -> str:
    """finished, failed, or retrying (RQ put it back on the queue or the schedule), as Redis has it now."""
    try:
        status = job.get_status(refresh=True)
    except (NoSuchJobError, InvalidJobOperation):  # gone already: only a finished job with result_ttl=0 is
        return "finished"
    except redis.RedisError:
        return "unknown"
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        return "retrying"
    return status.value if status is not None else "finished"


class OwnedScheduler(RQScheduler):
    """RQ's scheduler process, which also stops once its worker is gone: RQ's ran on as an orphan after a
    SIGKILL of its worker, holding the scheduler lock and a Redis connection for good."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._worker_pid = os.getpid()  # built in the worker; its process is forked from there

    def enqueue_scheduled_jobs(self):
        # In the scheduler's own process (burst mode runs it in the worker's), re-parented: the worker died.
        if os.getpid() != self._worker_pid and os.getppid() != self._worker_pid:
            self.log.warning("Scheduler: its worker (PID %d) is gone; stopping", self._worker_pid)
            self.request_stop()
            return
        super().enqueue_scheduled_jobs()


class MaintenanceAtDebug(logging.Filter):
    """RQ logs each maintenance pass at INFO, one line per queue: with maintenance every MAINTENANCE_S that is two
    lines every 2 s from an idle worker. Those lines are moved to DEBUG (shown when the level is debug)."""

    TEMPLATE = "Worker %s: cleaning registries for queue: %s"  # RQ's, in Worker.clean_registries

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.TEMPLATE or record.levelno != logging.INFO:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class StoppedWhileStarting(Exception):
    """A stop request came while the worker waited for Redis to finish its start."""


class ToolWorker(Worker):
    def __init__(
        self, *args, stop_grace_s: float = 5.0, early_stop: Callable[[], bool] = lambda: False, **kwargs
    ) -> None:
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_S)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_S)
        super().__init__(*args, **kwargs)
        if not any(isinstance(f, MaintenanceAtDebug) for f in self.log.filters):
            self.log.addFilter(MaintenanceAtDebug())
        self.stop_grace_s = stop_grace_s
        self._early_stop = early_stop  # whether a signal came before RQ's handlers were installed
        self._stop_at: float | None = None  # monotonic time of the stop request
        self._handed_back: str | None = None  # the job whose horse we killed to stop: requeued, not failed
        for func in (SUMMARY_FUNC, TRANSCRIPT_FUNC):  # at 0 from the start: increase() then sees the first one
            for outcome in OUTCOMES:
                JOBS.labels(task_name(func), outcome)

    def bootstrap(
        self, logging_level="INFO", date_format=DEFAULT_LOGGING_DATE_FORMAT, log_format=DEFAULT_LOGGING_FORMAT
    ):
        """RQ's, retried while Redis is unreachable. Once RQ has registered the worker, /readyz says ready; Redis
        lost before the rest of the start (subscribe, state) made the worker exit 1 with a traceback."""
        wait_s = 0.5
        while True:
            try:
                return super().bootstrap(logging_level, date_format, log_format)
            except UNAVAILABLE as exc:
                (log.error if wait_s == 0.5 else log.debug)("Redis went away while starting (%s); retrying", exc)
            if self.pubsub_thread is not None:  # subscribed before the failure: subscribe afresh next time
                self.unsubscribe()
                self.pubsub_thread = None
            self._sleep_unless_stopped(wait_s)
            if self._early_stop():
                raise StoppedWhileStarting
            wait_s = min(wait_s * 2, MAX_REDIS_WAIT_S)
            with suppress(*UNAVAILABLE):  # our own half-made registration: RQ refuses a name already alive
                self.connection.delete(self.key)

    def _start_scheduler(self, burst=False, logging_level="INFO", date_format=None, log_format=None):
        """RQ's, with the scheduler that stops when the worker is gone."""
        self.scheduler = OwnedScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format or DEFAULT_LOGGING_DATE_FORMAT,
            log_format=log_format or DEFAULT_LOGGING_FORMAT,
            serializer=self.serializer,
        )
        try:
            self.scheduler.acquire_locks()
        except UNAVAILABLE as exc:  # Redis went away meanwhile: maintenance tries again
            log.warning("could not start the scheduler (Redis: %s); retrying later", exc)
            return
        if not self.scheduler.acquired_locks:
            return  # another worker's scheduler holds them; maintenance tries again
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    # --- stopping -------------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        if self._early_stop():  # checked after ours are in: a signal from now on reaches request_stop
            self._note_stop("a signal received while starting")

    def request_stop(self, signum, frame):
        """SIGTERM/SIGINT: only a flag (no Redis call, no exception in whatever the main thread is doing); a
        second signal is RQ's cold shutdown."""
        self._shutdown_requested_date = rq_now()
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._note_stop(signal.Signals(signum).name)

    def _note_stop(self, why: str) -> None:
        self._stop_requested = True
        if self._stop_at is not None:
            return
        self._stop_at = time.monotonic()
        log.info("%s: stopping (a job in progress gets %g s)", why, self.stop_grace_s)
        # The scheduler process and the pubsub thread each notice within a second: let them start now, in
        # parallel with the last pop or the job's grace, rather than one after the other in teardown.
        process = self.scheduler._process if self.scheduler is not None else None
        if process is not None and process.pid:
            with suppress(OSError):
                os.kill(process.pid, signal.SIGTERM)
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop(timeout=0)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ's wait for a job, with the stop flag read between pops of at most DEQUEUE_TIMEOUT_S and during
        the waits while Redis is unreachable (RQ's loops until a job comes, or Redis does)."""
        if timeout is None or max_idle_time is not None:  # burst mode, or an idle limit: RQ's as is
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        wait_s = 1.0
        while not self._stop_requested:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                job, queue = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    timeout,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                wait_s = 1.0
                continue
            except redis.ConnectionError as exc:
                # One line per outage, not one per attempt.
                (log.error if wait_s == 1.0 else log.debug)("Redis is unreachable (%s); retrying", exc)
                self._sleep_unless_stopped(wait_s)
                wait_s = min(wait_s * 2, MAX_REDIS_WAIT_S)
                continue
            self.reorder_queues(reference_queue=queue)
            job.redis_server_version = self.get_redis_server_version()
            self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
            self.heartbeat()
            return job, queue
        return None

    def _sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (self._stop_requested or self._early_stop()) and time.monotonic() < deadline:
            time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))

    def teardown(self):
        try:
            super().teardown()
        except redis.ConnectionError as exc:  # stopping while Redis is away: its registration expires by itself
            log.warning(
                "could not unregister from Redis (%s); the registration expires within %d s", exc, self.worker_ttl + 60
            )
            self.unsubscribe()  # RQ's teardown stopped the scheduler, then failed before this

    def maintain_heartbeats(self, job: Job):
        super().maintain_heartbeats(job)  # every job_monitoring_interval while the horse runs
        if self._stop_at is not None and self._handed_back is None:
            if time.monotonic() - self._stop_at >= self.stop_grace_s:
                log.warning(
                    "job %s still running %g s after the stop request: handing it back", job.id, self.stop_grace_s
                )
                self._handed_back = job.id
                self.kill_horse()

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string=""):
        if job.id != self._handed_back:
            return super().handle_job_failure(job, queue, started_job_registry, exc_string)
        # Killed by us to stop, not failed: back to the front of its queue, with no retry used.
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline)
            pipeline.execute()
        if job.get_status(refresh=True) != JobStatus.STARTED:
            return  # the horse settled it (a retry scheduled) just before it was killed: nothing to put back
        queue.enqueue_job(job, at_front=True)
        log.warning("job %s put back at the front of %s for another worker", job.id, queue.name)

    def stop_scheduler(self):
        """RQ's joins the scheduler process without a timeout; one that got the signal before installing its
        handler never stops. Bounded here, and its locks released so another worker's scheduler takes over."""
        process = self.scheduler._process if self.scheduler is not None else None
        if process is None or not process.pid or not process.is_alive():
            return
        with suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(SCHEDULER_STOP_S)
        if process.is_alive():
            log.warning("RQ's scheduler did not stop within %g s: killed", SCHEDULER_STOP_S)
            process.kill()
            process.join(1)
            with suppress(redis.RedisError):
                self.scheduler.release_locks()

    def unsubscribe(self):
        """RQ unsubscribes and then joins the listener with no timeout; here the join is bounded, and closing
        the connection unsubscribes."""
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop(timeout=PUBSUB_POLL_S + 1)
            if self.pubsub_thread.is_alive():
                log.warning("RQ's pubsub thread did not stop; leaving it (a daemon)")
            else:
                self.pubsub.close()

    def subscribe(self):
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_TIMEOUT_S  # an idle worker comes back to its stop flag and maintenance this often

    def get_heartbeat_ttl(self, job: Job) -> int:
        remaining = (job.timeout - self.current_job_working_time) if job.timeout and job.timeout > 0 else None
        interval = self.job_monitoring_interval if remaining is None else min(remaining, self.job_monitoring_interval)
        return int(max(interval, 1)) + HEARTBEAT_GRACE_S

    def execute_job(self, job: Job, queue: Queue):
        # Counted here, in the parent: the work horse that ran the job is a forked child whose metrics die with it.
        started = time.monotonic()
        try:
            super().execute_job(job, queue)
        finally:
            self._handed_back = None
            name = task_name(job.func_name)
            JOB_SECONDS.labels(name).observe(time.monotonic() - started)
            JOBS.labels(name, job_outcome(job)).inc()

    def run_maintenance_tasks(self):
        if self._stop_requested:
            return  # RQ's would start the scheduler we are stopping again
        for queue in self.queues:
            try:
                reclaim_abandoned(queue)
            except Exception:  # noqa: BLE001 - maintenance must not stop the worker
                log.exception("reclaiming abandoned jobs of %s failed", queue.name)
        super().run_maintenance_tasks()
