"""The tool worker process: a real RQ worker on the configured queues, plus health endpoints.

RQ is blocking, so the health endpoints run on their own loop in a thread; RQ owns the main thread. SIGTERM
stops the worker: at once when idle; a job in progress gets `tool_worker.stop_grace_ms`, then goes back to its
queue (`ToolWorker`). A signal before RQ's handlers are installed is kept here and handed over to them.
"""

from __future__ import annotations

import logging
import signal

import redis
from rq import Queue, Worker

from shared import health, metrics
from shared.config import LoadedConfig
from shared.keys import Keys
from shared.redis_conn import UNAVAILABLE, connect_sync
from shared.service import new_instance_id
from shared.version import VERSION
from tool_worker import email_jobs
from tool_worker.worker import StoppedWhileStarting, ToolWorker

log = logging.getLogger("tool_worker")

ROLE = "tool-worker"


def run(
    loaded: LoadedConfig, *, instance_id: str | None, health_host: str, health_port: int, burst: bool = False
) -> int:
    config = loaded.config
    keys = Keys(config.redis.key_prefix)
    name = instance_id or new_instance_id(ROLE)
    stop = {"requested": False}

    def early_stop(signum, _frame):
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop["requested"] = True

    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)

    probe = redis.Redis.from_url(config.redis.url, socket_connect_timeout=1, socket_timeout=1)
    state: dict[str, Worker | None] = {"worker": None}

    def redis_check() -> str | None:
        try:
            probe.ping()
            metrics.REDIS_UP.set(1)
            return None
        except UNAVAILABLE:
            metrics.REDIS_UP.set(0)
            return "Redis is unreachable"

    def registered_check() -> str | None:
        worker = state["worker"]
        try:
            if worker is not None and probe.sismember(Worker.redis_workers_keys, worker.key):
                metrics.REGISTERED.set(1)
                return None
        except UNAVAILABLE:
            pass
        metrics.REGISTERED.set(0)
        return "RQ worker not registered"

    metrics.register(ROLE)
    metrics.BUILD.info({"version": VERSION, "role": ROLE, "id": name})
    server = health.ThreadedServer(
        health.make_server(ROLE, name, {"redis": redis_check, "registered": registered_check}), health_host, health_port
    )
    try:
        port = server.start()
    except OSError as exc:
        log.error("cannot serve health on %s:%s: %s", health_host, health_port, exc.strerror)
        return 2
    log.info("%s %s starting (version %s); health on http://%s:%s", ROLE, name, VERSION, health_host, port)
    try:
        conn = connect_sync(config.redis.url, should_stop=lambda: stop["requested"])
        if conn is None:
            return 0
        queues = [Queue(keys.queue(q), connection=conn) for q in config.tool_worker.queues]
        email_jobs.configure(config)  # the jobs (forked from here) send with this worker's config
        worker = ToolWorker(
            queues,
            connection=conn,
            name=name,
            stop_grace_s=config.tool_worker.stop_grace_ms / 1000,
            early_stop=lambda: stop["requested"],  # a signal before RQ's handlers are in is read once they are
        )
        state["worker"] = worker
        if not stop["requested"]:
            log.info("listening on queues %s", ", ".join(q.name for q in queues))
            try:
                worker.work(burst=burst, logging_level=config.logging.level.upper(), with_scheduler=True)
            except StoppedWhileStarting:
                log.info("stopped while waiting for Redis to finish starting")
    finally:
        server.stop()
        probe.close()
    log.info("%s %s stopped", ROLE, name)
    return 0
