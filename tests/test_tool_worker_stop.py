"""ToolWorker's stopping, in this process: the parts RQ and redis-py wait on without a timeout."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time

import pytest
import redis
from rq import Queue

from shared.keys import Keys
from tool_worker.worker import SCHEDULER_STOP_S, StoppedWhileStarting, ToolWorker


def _deaf_scheduler(deaf) -> None:
    """A scheduler process that got its SIGTERM before it installed a handler: it never stops by itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deaf.set()
    time.sleep(60)


class _Scheduler:
    def __init__(self, process) -> None:
        self._process = process
        self.released = False

    def release_locks(self) -> None:
        self.released = True


@pytest.mark.slow  # 3 s: it waits out the scheduler's stop bound
def test_a_scheduler_that_missed_its_signal_is_killed_not_waited_for(redis_url, prefix):
    conn = redis.Redis.from_url(redis_url)
    worker = ToolWorker([Queue(Keys(prefix).queue("email"), connection=conn)], connection=conn, name="stop-test")
    fork = multiprocessing.get_context("fork")
    deaf = fork.Event()
    process = fork.Process(target=_deaf_scheduler, args=(deaf,), daemon=True)
    process.start()
    assert deaf.wait(10)
    scheduler = _Scheduler(process)
    worker.scheduler = scheduler  # type: ignore[assignment]
    stopping = threading.Thread(target=worker.stop_scheduler, daemon=True)
    try:
        stopping.start()
        stopping.join(SCHEDULER_STOP_S + 5)
        assert not stopping.is_alive(), "stop_scheduler waited for a scheduler that never stops"
        assert not process.is_alive()
        assert scheduler.released  # its locks, so that another worker's scheduler takes over at once
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        conn.close()


def test_redis_lost_in_the_middle_of_the_start_is_waited_for(private_redis, prefix, monkeypatch):
    """RQ registers the worker (/readyz then says ready) before it subscribes and sets its state: Redis lost in
    between made the tool worker exit 1 with a traceback (seen in the tool-worker SIGTERM test, 1 run in 10).
    Now the start is retried once Redis is back, and a stop request while waiting ends it quietly."""
    server = private_redis()
    server.start()
    conn = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    worker = ToolWorker([Queue(Keys(prefix).queue("email"), connection=conn)], connection=conn, name="start-test")
    subscribe = ToolWorker.subscribe
    restarted = threading.Timer(1.0, server.start)

    def redis_dies_first(self) -> None:  # Redis goes away right after the registration, the first time only
        if not restarted.is_alive() and not restarted.finished.is_set():
            server.stop()
            restarted.start()
        subscribe(self)

    monkeypatch.setattr(ToolWorker, "subscribe", redis_dies_first)
    try:
        worker.bootstrap()
        assert conn.hget(worker.key, "state") == b"started"
        assert conn.sismember(ToolWorker.redis_workers_keys, worker.key)
    finally:
        restarted.join(5)
        worker.unsubscribe()
        conn.close()


def test_a_stop_while_waiting_for_redis_to_start_ends_the_start(private_redis, prefix, monkeypatch):
    server = private_redis()
    server.start()
    conn = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    stop = threading.Event()
    worker = ToolWorker(
        [Queue(Keys(prefix).queue("email"), connection=conn)],
        connection=conn,
        name="stop-start",
        early_stop=stop.is_set,
    )
    subscribe = ToolWorker.subscribe

    def redis_dies(self) -> None:
        server.stop()
        threading.Timer(0.3, stop.set).start()  # the signal comes while the worker waits for Redis
        subscribe(self)

    monkeypatch.setattr(ToolWorker, "subscribe", redis_dies)
    try:
        with pytest.raises(StoppedWhileStarting):
            worker.bootstrap()
    finally:
        conn.close()
