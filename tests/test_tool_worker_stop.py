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
from tool_worker.worker import SCHEDULER_STOP_S, ToolWorker


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
