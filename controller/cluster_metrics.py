"""The cluster as Redis shows it, as gauges: calls waiting for a slot, media workers by state, RQ jobs by state.

Every controller reports the same figures (dashboards take `max`); they are read every REFRESH_S, off the
call path, in one round trip each.
"""

from __future__ import annotations

import asyncio
import logging

import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from shared.config import Config
from shared.keys import Keys
from shared.metrics import CALLS_WAITING, MEDIA_WORKERS, RQ_JOBS, RQ_WORKERS
from shared.redis_conn import UNAVAILABLE
from shared.registry import entries, worker_info

log = logging.getLogger("controller")

REFRESH_S = 5.0
WORKER_STATES = ("live", "draining", "stale")
JOB_STATES = ("queued", "started", "scheduled", "failed")


def rq_keys(keys: Keys, queue_names: list[str]) -> dict[str, dict[str, str]]:
    """queue name -> job state (and "workers") -> the Redis key RQ keeps it in (names from RQ, not guessed)."""
    offline = redis.Redis()  # never connects: RQ only needs it to build key names
    out = {}
    for name in queue_names:
        q = Queue(keys.queue(name), connection=offline)
        out[name] = {
            "queued": q.key,
            "started": q.started_job_registry.key,
            "scheduled": q.scheduled_job_registry.key,
            "failed": q.failed_job_registry.key,
            # RQ's set of every worker is shared by all clusters on this Redis; this one is ours
            "workers": WORKERS_BY_QUEUE_KEY % q.name,
        }
    return out


async def refresh(client: aioredis.Redis, keys: Keys, config: Config, queues: dict[str, dict[str, str]]) -> None:
    workers = await entries(client, keys.workers, keys.worker, config.media_worker.stale_after_ms)
    counts = dict.fromkeys(WORKER_STATES, 0)
    for entry in workers:
        counts["stale" if not entry.live else "draining" if worker_info(entry).draining else "live"] += 1
    for state, n in counts.items():
        MEDIA_WORKERS.labels(state).set(n)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.admission_queue)
        pipe.sunion([states["workers"] for states in queues.values()])
        for states in queues.values():
            for state in JOB_STATES:  # the queue is a list, the registries are sorted sets
                (pipe.llen if state == "queued" else pipe.zcard)(states[state])
        replies = iter(await pipe.execute())
    CALLS_WAITING.set(next(replies))
    RQ_WORKERS.set(len(next(replies)))
    for name in queues:
        for state in JOB_STATES:
            RQ_JOBS.labels(name, state).set(next(replies))


async def run(client: aioredis.Redis, keys: Keys, config: Config) -> None:
    """Refresh forever (until cancelled); Redis trouble only skips a round."""
    queues = rq_keys(keys, list(config.tool_worker.queues))
    while True:
        try:
            await refresh(client, keys, config, queues)
        except (*UNAVAILABLE, redis.RedisError) as exc:
            log.debug("cluster metrics not refreshed: %s", exc)
        await asyncio.sleep(REFRESH_S)  # other processes write these figures in Redis, which notifies nobody
