"""One 20 ms clock for every simulated phone of an event loop.

A task per phone that sleeps 20 ms between frames costs a task step, a future and a timer per frame: with
hundreds of callers that loop overhead was the simulator's largest cost. Here one timer serves them all:
each phone keeps its own phase (its frames are due at its start + n × 20 ms, no drift), and one wakeup
sends the frames of every phone due within GROUP_S of it, so the loop wakes once per group of phones,
not once per phone. A frame goes out at most GROUP_S early, never late on the clock's account.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import weakref
from collections.abc import Callable

log = logging.getLogger("sim.asterisk")

GROUP_S = 0.002  # frames due this close together go out in one wakeup

# Called when its frame is due: (due, now) in loop time -> when its next frame is due (None: no more).
Tick = Callable[[float, float], float | None]


class Ticket:
    """One phone's place on the clock; cancel() takes it off (its pending slot is skipped)."""

    __slots__ = ("tick", "active")

    def __init__(self, tick: Tick):
        self.tick = tick
        self.active = True

    def cancel(self) -> None:
        self.active = False


class FrameClock:
    _clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FrameClock] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._due: list[tuple[float, int, Ticket]] = []  # a heap: (due, order added, ticket)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> FrameClock:
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    def start(self, tick: Tick, first_at: float) -> Ticket:
        """Call `tick` at `first_at` (loop time), then whenever it says its next frame is due."""
        ticket = Ticket(tick)
        heapq.heappush(self._due, (first_at, next(self._order), ticket))
        self._arm()
        return ticket

    def _arm(self) -> None:
        if not self._due:
            return
        at = self._due[0][0]
        if self._timer is not None and self._timer_at <= at:
            return  # already waking in time
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(at, self._fire), at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self._loop.time()
        due = self._due
        while due and due[0][0] <= now + GROUP_S:
            at, _, ticket = heapq.heappop(due)
            if not ticket.active:
                continue
            try:
                next_at = ticket.tick(at, now)
            except Exception:  # one phone's fault must not stop the others' clock
                log.exception("simulated phone: its 20 ms tick failed; its audio stops")
                next_at = None
            if next_at is None:
                ticket.active = False
            else:
                heapq.heappush(due, (next_at, next(self._order), ticket))
        self._arm()
