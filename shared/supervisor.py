"""A long-running reader task (an inbox consumer) that must not die quietly: an unexpected exception is logged
and the reader restarted after a pause; one that keeps dying is given up and reported, so `/readyz` answers
503 instead of a process that looks ready while it reads nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("supervisor")

RESTART_PAUSE_S = 1.0
MAX_RESTARTS = 5  # within RESTART_WINDOW_S; one more death and the reader is given up
RESTART_WINDOW_S = 60.0


class Supervised:
    def __init__(
        self,
        name: str,
        run: Callable[[], Coroutine[Any, Any, None]],
        *,
        pause_s: float = RESTART_PAUSE_S,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
    ):
        self.name = name  # for the logs and the readiness check: "inbox", "control inbox"
        self._run = run  # a new coroutine for each (re)start; returns only when told to stop
        self._pause_s = pause_s
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._deaths: deque[float] = deque()
        self.restarts = 0
        self.given_up = ""  # why, once the reader is no longer restarted
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Run the reader in a task of its own (`problem` reports on it)."""
        self.task = asyncio.create_task(self.run(), name=self.name)
        return self.task

    def problem(self) -> str | None:
        """For readiness: None while the reader runs (or waits to be restarted), else why it does not."""
        if self.task is None:
            return f"{self.name} not started"
        if self.given_up:
            return f"{self.name} stopped: {self.given_up}"
        if self.task.done():
            return f"{self.name} stopped"
        return None

    async def run(self) -> None:
        """The reader, restarted as it dies; returns when it returns (told to stop), raises its last exception
        once given up (an owner such as a TaskSet then counts the death)."""
        while True:
            try:
                await self._run()
                return  # it returns only once told to stop
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                self._deaths.append(now)
                while self._deaths and self._deaths[0] < now - self._window_s:
                    self._deaths.popleft()
                if len(self._deaths) > self._max_restarts:
                    self.given_up = f"{len(self._deaths)} failures within {self._window_s:.0f} s, the last {exc!r:.200}"
                    log.error("%s: %s; not restarted again", self.name, self.given_up)
                    raise
                log.error("%s died; restarting it in %.1f s", self.name, self._pause_s, exc_info=exc)
                self.restarts += 1
            await asyncio.sleep(self._pause_s)
