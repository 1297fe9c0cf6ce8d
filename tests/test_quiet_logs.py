"""Quiet default logs: no periodic lines from an idle role at INFO."""

from __future__ import annotations

import logging

import redis
from rq import Queue

from shared.keys import Keys
from tool_worker.worker import ToolWorker


def test_rq_maintenance_passes_log_at_debug_only(redis_url, prefix, caplog):
    conn = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    queues = [Queue(keys.queue(name), connection=conn) for name in ("tools", "email")]
    worker = ToolWorker(queues, connection=conn, name=f"{prefix}quiet")
    try:
        with caplog.at_level(logging.INFO, logger="rq.worker"):
            for _ in range(3):
                worker.run_maintenance_tasks()
        assert [r.getMessage() for r in caplog.records if "cleaning registries" in r.getMessage()] == []

        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="rq.worker"):
            worker.clean_registries()
        cleaned = [r for r in caplog.records if "cleaning registries" in r.getMessage()]
        assert [r.levelname for r in cleaned] == ["DEBUG", "DEBUG"]  # one per queue, still there when asked for
    finally:
        conn.close()
