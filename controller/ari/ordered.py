"""Run a handler for items strictly in order per key, keys concurrently.

One asyncio task per busy key: it drains that key's queue one item at a time and exits when the queue is
empty, so idle keys (ended calls) cost nothing. Memory is bounded: `put` waits while `max_pending` items are
queued or running, which stops the reader and pushes back on the socket instead of growing without limit.
A handler's exception is logged and skipped; the key goes on with its next item.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("ari")

CLOSE_WAIT_S = 2.0  # how long close() waits for cancelled handlers to end

T = TypeVar("T")


class KeyedDispatcher(Generic[T]):
    def __init__(
        self,
        handler: Callable[[T], Awaitable[None]],
        *,
        max_pending: int = 10_000,
        describe: Callable[[T], str] = lambda item: type(item).__name__,
    ):
        self._handler = handler
        self._describe = describe
        self._queues: dict[str, deque[T]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._space = asyncio.Semaphore(max_pending)
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.handled = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Items queued or being handled."""
        return self._pending

    @property
    def busy_keys(self) -> int:
        return len(self._tasks)

    async def put(self, key: str, item: T) -> None:
        await self._space.acquire()
        self._pending += 1
        self._idle.clear()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._drain(key, queue), name=f"ari-key-{key}")

    async def _drain(self, key: str, queue: deque[T]) -> None:
        try:
            while queue:
                item = queue[0]
                try:
                    await self._handler(item)
                    self.handled += 1
                except Exception:
                    self.failed += 1
                    log.exception("ARI event handler failed on %s (key %s)", self._describe(item), key)
                finally:
                    queue.popleft()
                    self._done_one()
        finally:
            # Nothing may be left behind: cancelled (close) → drop what was queued for this key.
            while queue:
                queue.popleft()
                self._done_one()
            self._queues.pop(key, None)
            self._tasks.pop(key, None)

    def _done_one(self) -> None:
        self._pending -= 1
        self._space.release()
        if self._pending == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until every queue is empty and no handler runs."""
        await self._idle.wait()

    async def close(self, grace: float = 0.0) -> None:
        """Let running handlers finish for up to `grace` seconds, then cancel the rest."""
        if grace > 0 and self._pending:
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                pass
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # Bounded: a handler that swallows its cancellation must not hang the controller's stop.
        _, stuck = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        for task in stuck:
            log.error(
                "ARI event handler %s did not stop within %.1f s of being cancelled", task.get_name(), CLOSE_WAIT_S
            )
