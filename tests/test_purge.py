"""`purge`: a cluster's keys go, RQ's included (its job ids carry no prefix), and another cluster's stay."""

from __future__ import annotations

import time
import uuid

import redis
from rq import Queue, SimpleWorker

from shared import email_queue
from shared.keys import Keys
from sim.cluster import purge


def _fill(client: redis.Redis, prefix: str) -> set[str]:
    """What a demo leaves: queued email jobs that never ran, a finished job with its result, a worker that
    died registered. Returns the ids of the jobs."""
    keys = Keys(prefix)
    call_id = str(uuid.uuid4())
    jobs = {
        email_queue.enqueue_summary(client, keys, call_id),
        email_queue.enqueue_transcript(client, keys, call_id, "bob@example.org"),
    }
    tools = Queue(keys.queue("tools"), connection=client, is_async=False)  # run here and now: a finished job
    jobs.add(tools.enqueue("tool_worker.jobs.selftest", int(time.time() * 1000)).id)
    dead = SimpleWorker([tools], connection=client, name=f"dead-{uuid.uuid4().hex[:8]}")
    dead.register_birth()  # SIGKILLed: never unregistered
    return jobs


def _rq_keys_of(client: redis.Redis, prefix: str, jobs: set[str]) -> set[str]:
    found = set()
    for raw in client.scan_iter(match="rq:*", count=500):
        key = raw.decode()
        if prefix in key or any(job_id in key for job_id in jobs):
            found.add(key)
    return found


def test_purge_removes_the_clusters_rq_jobs_and_leaves_another_clusters(redis_url, prefix):
    client = redis.Redis.from_url(redis_url)
    other = f"va-test-other-{uuid.uuid4().hex[:8]}:"
    try:
        ours, theirs = _fill(client, prefix), _fill(client, other)
        assert len(_rq_keys_of(client, prefix, ours)) > 6  # job hashes, results, registries, queues
        kept = _rq_keys_of(client, other, theirs)
        their_members = {m for m in client.smembers("rq:queues") if other.encode() in m}

        assert purge(client, prefix) > 0

        assert _rq_keys_of(client, prefix, ours) == set()
        assert not [m for m in client.smembers("rq:queues") if prefix.encode() in m]
        for member in client.smembers("rq:workers"):
            queues = client.hget(member.decode(), "queues") or b""
            assert prefix.encode() not in queues
        assert _rq_keys_of(client, other, theirs) == kept
        assert their_members <= client.smembers("rq:queues")
    finally:
        purge(client, other)
        client.close()
