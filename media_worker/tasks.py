"""Background tasks with an owner: each referenced until it ends, an unexpected exception logged once, and all
of them cancelled on stop, within a bound.

A task that is not referenced can be garbage-collected while pending ("Task was destroyed but it is
pending"), and one whose failure nobody reads fails silently. `TaskSet` keeps both from happening; its
`close` does not wait forever for a task that swallows its cancellation, so a stop always completes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("tasks")

CLOSE_GRACE_S = 2.0  # how long close() waits for cancelled tasks to finish


class TaskSet:
    def __init__(self, owner: str):
        self.owner = owner  # for the logs: "call 1234", "realtime client"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        """Run `coro` as a task of this set; None (and the coroutine closed unrun) once the set is closed."""
        if self._closed:
            coro.close()
            log.debug("%s is stopping: task %s not started", self.owner, name)
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)

    async def close(self, grace_s: float = CLOSE_GRACE_S, *, finish_s: float = 0.0) -> None:
        """Cancel every task (but the caller's own) and wait for them, at most `grace_s`. With `finish_s`, the
        tasks first get that long to end by themselves (cleanups under way). Idempotent."""
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and not t.done()]
        if tasks and finish_s > 0:
            _, still = await asyncio.wait(tasks, timeout=finish_s)
            tasks = list(still)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            log.error("%s: task %s did not stop within %.1f s of being cancelled", self.owner, task.get_name(), grace_s)
