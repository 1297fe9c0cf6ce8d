"""What goes to Asterisk: a per-call frame queue, and one clock per worker process that ticks every queue.

`PlayoutQueue` is sans-I/O: the session pushes model audio (already in wire format) per Realtime item and
the clock pulls exactly one frame per tick. It counts what was actually ticked out per item, so a truncate
after barge-in carries the true `audio_end_ms`, and `flush` empties it within one frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable

from media_worker.audio.lag import LagHistogram

log = logging.getLogger(__name__)

RECENT_ITEMS = 32  # per-item counters kept; older items are forgotten (a call has few in flight)


class _ItemCount:
    __slots__ = ("received", "played", "ended", "dropped")

    def __init__(self) -> None:
        self.received = 0  # bytes pushed
        self.played = 0  # bytes of real audio ticked out (padding excluded)
        self.ended = False
        self.dropped = False  # flushed by a barge-in: later audio for it is discarded


class PlayoutQueue:
    """One per call. Frames of `frame_bytes`; an item's partial tail waits for more audio or its end."""

    def __init__(self, frame_bytes: int, silence_frame: bytes, frame_ms: int = 20) -> None:
        if len(silence_frame) != frame_bytes:
            raise ValueError("silence_frame must be exactly one frame")
        self.frame_bytes = frame_bytes
        self.frame_ms = frame_ms
        self._silence = silence_frame
        self._frames: deque[tuple[str, bytes, int]] = deque()  # (item, frame, real bytes in it)
        self._tail_item: str | None = None
        self._tail = bytearray()
        self._items: OrderedDict[str, _ItemCount] = OrderedDict()
        self.playing_item: str | None = None
        self.underruns = 0
        self.frames_played = 0

    # -- feeding ---------------------------------------------------------------------------------------

    def _count(self, item_id: str) -> _ItemCount:
        count = self._items.get(item_id)
        if count is None:
            count = self._items[item_id] = _ItemCount()
            while len(self._items) > RECENT_ITEMS:
                self._items.popitem(last=False)
        return count

    def push(self, item_id: str, wire: bytes) -> None:
        """Model audio for `item_id`, in wire format. Audio for an item flushed by barge-in is dropped."""
        count = self._count(item_id)
        if count.dropped or count.ended or not wire:
            return
        count.received += len(wire)
        if self._tail_item is not None and self._tail_item != item_id:
            self._pad_tail()  # a new item starts: the previous one's tail goes out padded, in order
        self._tail_item = item_id
        tail = self._tail
        tail += wire
        size = self.frame_bytes
        whole = len(tail) - len(tail) % size
        if whole:
            frames = self._frames
            with memoryview(tail) as view:  # one copy per frame (a bytearray slice would be a second)
                for start in range(0, whole, size):
                    frames.append((item_id, bytes(view[start : start + size]), size))
            del tail[:whole]

    def end_item(self, item_id: str) -> None:
        """The item's audio is complete: its partial tail goes out padded with silence."""
        self._count(item_id).ended = True
        if self._tail_item == item_id:
            self._pad_tail()

    def _pad_tail(self) -> None:
        tail, item_id = self._tail, self._tail_item
        if tail and item_id is not None:  # push() names the item before its audio reaches the tail
            real = len(tail)
            self._frames.append((item_id, bytes(tail) + self._silence[real:], real))
        tail.clear()
        self._tail_item = None

    # -- draining --------------------------------------------------------------------------------------

    def tick(self) -> tuple[bytes, bool]:
        """The next frame and whether it is real audio. Silence when empty; an underrun is counted only
        while an item is mid-stream (it has started playing and has not ended)."""
        if self._frames:
            item_id, frame, real = self._frames.popleft()
            self.playing_item = item_id
            count = self._items.get(item_id)
            if count is not None:
                count.played += real
            self.frames_played += 1
            return frame, True
        playing = self.playing_item
        if playing is not None:
            count = self._items.get(playing)
            if count is None or count.ended or count.dropped:  # dropped: its fade-out frame was the last
                self.playing_item = None
            else:
                self.underruns += 1
        return self._silence, False

    def flush(self, keep_frames: int = 0) -> str | None:
        """Barge-in: drop everything queued now (and ignore later audio of those items), except the next
        `keep_frames` frames of the item about to play (they carry the fade-out). Returns the item that was
        playing, or the one about to play, i.e. the item a truncate must name."""
        current = self.playing_item
        if current is None and self._frames:
            current = self._frames[0][0]
        dropped = {item for item, _, _ in self._frames}
        kept: list[tuple[str, bytes, int]] = []
        while len(kept) < keep_frames and self._frames and self._frames[0][0] == current:
            kept.append(self._frames.popleft())
        if self._tail_item is not None:
            dropped.add(self._tail_item)
        if current is not None:
            dropped.add(current)
        for item_id in dropped:
            count = self._items.get(item_id)
            if count is not None and not count.ended:
                count.dropped = True
        self._frames.clear()
        self._frames.extend(kept)
        self._tail.clear()
        self._tail_item = None
        self.playing_item = None
        return current

    def pending(self) -> list[tuple[str, bytes, bool]]:
        """The audio queued and not played yet, per item in order, as (item, wire audio without padding, the
        item's audio is complete). A format change re-queues it, converted, in a new queue."""
        runs: list[tuple[str, bytearray]] = []
        for item_id, frame, real in self._frames:
            if not runs or runs[-1][0] != item_id:
                runs.append((item_id, bytearray()))
            runs[-1][1].extend(frame[:real])
        if self._tail_item is not None and self._tail:
            if not runs or runs[-1][0] != self._tail_item:
                runs.append((self._tail_item, bytearray()))
            runs[-1][1].extend(self._tail)
        return [(item_id, bytes(audio), self._items[item_id].ended) for item_id, audio in runs]

    # -- what was played -------------------------------------------------------------------------------

    def _ms(self, nbytes: int) -> int:
        return nbytes * self.frame_ms // self.frame_bytes

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of that item actually ticked out (0 for an unknown or forgotten item)."""
        count = self._items.get(item_id)
        return 0 if count is None else self._ms(count.played)

    def received_ms(self, item_id: str) -> int:
        """Milliseconds pushed for that item."""
        count = self._items.get(item_id)
        return 0 if count is None else self._ms(count.received)

    @property
    def idle(self) -> bool:
        return not self._frames and not self._tail

    @property
    def queued_ms(self) -> int:
        return self._ms(len(self._frames) * self.frame_bytes + len(self._tail))


class PlayoutClock:
    """One per worker process: every call's tick on one absolute-deadline schedule (start + n·frame), one
    wakeup per frame for all calls. A late wakeup does not send twice: it skips to now and counts
    `late_ticks`. `lag_ms` records how late each wakeup ran."""

    def __init__(
        self,
        frame_ms: int = 20,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.frame_ms = frame_ms
        self._period = frame_ms / 1000.0
        self._clock = clock
        self._sleep = sleep
        self._ticks: dict[Hashable, Callable[[], None]] = {}
        self._snapshot: tuple[tuple[Hashable, Callable[[], None]], ...] = ()
        self.lag_ms = LagHistogram()
        self.late_ticks = 0  # frame slots skipped because a wakeup came a whole frame late or more
        self.ticks = 0  # wakeups run
        self.errors = 0  # tick functions that raised (and were removed)

    def add(self, key: Hashable, tick_fn: Callable[[], None]) -> None:
        self._ticks[key] = tick_fn
        self._snapshot = tuple(self._ticks.items())

    def remove(self, key: Hashable) -> None:
        if self._ticks.pop(key, None) is not None:
            self._snapshot = tuple(self._ticks.items())

    def __len__(self) -> int:
        return len(self._ticks)

    def run_due(self, now: float, deadline: float) -> None:
        """One wakeup's work: record the lag and tick every call once."""
        self.lag_ms.observe((now - deadline) * 1000.0)
        self.ticks += 1
        for key, tick_fn in self._snapshot:
            try:
                tick_fn()
            except Exception:  # one broken call must not stop the others' audio; log once, then drop it
                self.errors += 1
                log.exception("playout tick of %r failed; removed from the clock", key, extra={"call_id": str(key)})
                self.remove(key)

    async def run(self, stopping: asyncio.Event) -> None:
        period, clock = self._period, self._clock
        start = clock()
        n = 0
        while not stopping.is_set():
            deadline = start + n * period
            now = clock()
            if now < deadline:
                await self._sleep(deadline - now)
                now = clock()
                if stopping.is_set():
                    break
            self.run_due(now, deadline)
            n += 1
            behind = int((clock() - start) / period) - n + 1
            if behind > 0:  # a whole frame slot or more already passed: skip it rather than burst
                self.late_ticks += behind
                n += behind
