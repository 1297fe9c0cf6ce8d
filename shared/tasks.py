"""Background tasks with an owner: each referenced until it ends, an unexpected exception logged once, and all
of them cancelled on stop, within a bound.

A task that is not referenced can be garbage-collected while pending ("Task was destroyed but it is
pending"), and one whose failure nobody reads fails silently. `TaskSet` keeps both from happening; its
`close` does not wait forever for a task that swallows its cancellation, so a stop always completes.

A task spawned `essential` is one its owner cannot work without (the playout clock, the inbox reader, a
call's uplink sender, the Realtime reader): its failure is a death. The set remembers it (`failure`, which
the worker's /readyz reports) and tells the owner (`on_death`), who ends what depends on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("tasks")

CLOSE_GRACE_S = 2.0  # how long close() waits for cancelled tasks to finish


class TaskSet:
    def __init__(self, owner: str, on_death: Callable[[str], None] | None = None):
        self.owner = owner  # for the logs: "call 1234", "realtime client"
        self.on_death = on_death  # told (once per death) that an essential task failed, with the reason
        self._tasks: set[asyncio.Task[Any]] = set()
        self._essential: set[asyncio.Task[Any]] = set()
        self._deaths: list[str] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, essential: bool = False) -> asyncio.Task[Any] | None:
        """Run `coro` as a task of this set; None (and the coroutine closed unrun) once the set is closed."""
        if self._closed:
            coro.close()
            log.debug("%s is stopping: task %s not started", self.owner, name)
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        if essential:
            self._essential.add(task)
        task.add_done_callback(self._finished)
        return task

    @property
    def failure(self) -> str | None:
        """None while no essential task has died; else which did and why (a ready check's answer)."""
        return f"{self.owner}: {'; '.join(self._deaths)}" if self._deaths else None

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        essential = task in self._essential
        self._essential.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)
        if essential and not self._closed:
            why = f"task {task.get_name()} died ({type(exc).__name__})"  # the message may name hosts: logged only
            self._deaths.append(why)
            if self.on_death is not None:
                self.on_death(why)

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
