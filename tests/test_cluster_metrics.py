"""The controller's cluster gauges, read from a real Redis: media workers by state, calls waiting, RQ jobs by
state and the tool workers of this cluster only (RQ's global worker set is shared by every cluster)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from rq import Queue, Worker
from rq.job import Job

from controller import cluster_metrics
from shared import metrics
from shared.config.schema import Config
from shared.keys import Keys
from shared.messages import WorkerInfo
from shared.registry import Registration


def _worker(wid: str, draining: bool = False) -> WorkerInfo:
    return WorkerInfo(
        id=wid,
        role="media-worker",
        hostname="h",
        pid=1,
        version="t",
        started_ms=0,
        health_url="",
        media_host="127.0.0.1",
        audiosocket_port=1,
        rtp_port_min=2,
        rtp_port_max=3,
        capacity=4,
        draining=draining,
    )


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_refresh_reports_workers_waiting_calls_and_jobs_of_this_cluster(prefix, redis_url):
    metrics.register("controller")
    keys, config = Keys(prefix), Config()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    sync = redis.Redis.from_url(redis_url)
    tools = Queue(keys.queue("tools"), connection=sync)
    mine = Worker([tools], connection=sync, name=f"{prefix}mine")
    other = Worker([Queue(f"{prefix}other-cluster", connection=sync)], connection=sync, name=f"{prefix}other")
    try:
        for info in (_worker("w-live"), _worker("w-drain", draining=True), _worker("w-dead")):
            await Registration(client, keys, info, record_ttl_ms=60_000).heartbeat()
        await client.zadd(keys.workers, {"w-dead": 1})  # its last heartbeat long ago
        await client.zadd(keys.admission_queue, {"call-a": 1, "call-b": 2})
        tools.enqueue_call("tool_worker.jobs.selftest", args=(0,))
        tools.failed_job_registry.add(Job.create("tool_worker.jobs.selftest", args=(0,), connection=sync), ttl=60)
        mine.register_birth()
        other.register_birth()  # another cluster's worker, in RQ's global set too

        await cluster_metrics.refresh(client, keys, config, cluster_metrics.rq_keys(keys, config.tool_worker.queues))

        assert [_value("va_media_workers", state=s) for s in ("live", "draining", "stale")] == [1, 1, 1]
        assert _value("va_calls_waiting") == 2
        assert _value("va_rq_workers") == 1
        assert _value("va_rq_jobs", queue="tools", state="queued") == 1
        assert _value("va_rq_jobs", queue="tools", state="failed") == 1
        assert _value("va_rq_jobs", queue="email", state="queued") == 0
    finally:
        mine.register_death()
        other.register_death()
        await client.aclose()
        sync.close()
