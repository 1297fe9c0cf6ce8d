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
"""

from __future__ import annotations

import logging
import time

import redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import as_text, current_timestamp, parse_composite_key

from shared.email_queue import SUMMARY_FUNC, TRANSCRIPT_FUNC
from shared.metrics import JOB_SECONDS, JOBS

log = logging.getLogger("tool_worker")

HEARTBEAT_S = 1
HEARTBEAT_GRACE_S = 5
MAINTENANCE_S = 2
MAX_RECLAIMS = 3
# RQ reads its pubsub channel in 60 s blocking reads, and redis-py 8 joins that thread without a timeout when RQ
# unsubscribes at shutdown: an idle worker took up to 60 s to exit on SIGTERM.
PUBSUB_POLL_S = 1
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


class ToolWorker(Worker):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_S)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_S)
        super().__init__(*args, **kwargs)
        for func in (SUMMARY_FUNC, TRANSCRIPT_FUNC):  # at 0 from the start: increase() then sees the first one
            for outcome in OUTCOMES:
                JOBS.labels(task_name(func), outcome)

    def subscribe(self):
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    @property
    def dequeue_timeout(self) -> int:
        return MAINTENANCE_S  # an idle worker comes back to maintenance this often

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
            name = task_name(job.func_name)
            JOB_SECONDS.labels(name).observe(time.monotonic() - started)
            JOBS.labels(name, job_outcome(job)).inc()

    def run_maintenance_tasks(self):
        for queue in self.queues:
            try:
                reclaim_abandoned(queue)
            except Exception:  # noqa: BLE001 - maintenance must not stop the worker
                log.exception("reclaiming abandoned jobs of %s failed", queue.name)
        super().run_maintenance_tasks()
