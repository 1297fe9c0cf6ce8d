"""What the simulator plays to a channel by itself: prompts (a tone of known length per sound name, so tests
can tell which prompt played), music on hold (a quiet two-note melody) and ringback (a cadenced tone).

A per-channel `ToneClock` writes one 20 ms frame per tick from the playback queue, else MOH, else ringback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from sim.asterisk.audio import silence_pcm, tone_pcm

RATE = 8000
FRAME_MS = 20
FRAME_BYTES = RATE // 50 * 2

# sound name -> (length ms, tone Hz); anything else plays 1 s at 600 Hz
SOUNDS: dict[str, tuple[int, float]] = {
    "hello-world": (1400, 440.0),
    "beep": (250, 1000.0),
    "ss-noservice": (2000, 350.0),
    "vm-intro": (1500, 520.0),
    "vm-goodbye": (800, 480.0),
    "agent-greeting": (1200, 660.0),
    "queue-periodic-announce": (1000, 700.0),
    "silence/1": (1000, 0.0),
}
DEFAULT_SOUND = (1000, 600.0)
MOH_NOTES = (330.0, 392.0)  # alternating every 500 ms
MOH_DBFS = -30.0
RINGBACK_HZ = 425.0
RINGBACK_DBFS = -20.0
RINGBACK_ON_MS, RINGBACK_OFF_MS = 1000, 4000


def media_pcm(uri: str, scale: float = 1.0) -> bytes:
    """8 kHz PCM for an ARI media URI (`sound:x`, `tone:x`, `digits:123`, `number:n`, `recording:x`) or a
    dialplan sound name; lengths follow the time scale of the simulator (never shorter than one frame)."""
    kind, _, name = uri.partition(":") if ":" in uri else ("sound", "", uri)
    if kind == "digits":
        parts = [
            tone_pcm(700 + 40 * (ord(c) % 10), max(FRAME_MS, int(100 * scale)), RATE)
            + silence_pcm(max(FRAME_MS, int(100 * scale)), RATE)
            for c in name
        ]
        return b"".join(parts)
    if kind == "tone":
        ms, hz = {"busy": (2000, 480.0), "ring": (2000, RINGBACK_HZ)}.get(name, (1000, 400.0))
    elif kind == "number":
        ms, hz = 300 * max(1, len(name)), 560.0
    elif kind == "recording":
        ms, hz = 1000, 300.0
    else:
        ms, hz = SOUNDS.get(name, DEFAULT_SOUND)
    ms = max(FRAME_MS, int(ms * scale) // FRAME_MS * FRAME_MS)
    return silence_pcm(ms, RATE) if hz == 0 else tone_pcm(hz, ms, RATE)


class Queued:
    """One sound in a ToneClock's queue (`play` returns it, `cancel` takes it)."""

    def __init__(self, pcm: bytes, on_done: Callable[[], None] | None):
        self.pcm, self.pos, self.on_done = pcm, 0, on_done


class ToneClock:
    """Feeds one channel from its playback queue, else music on hold, else ringback; idle otherwise."""

    def __init__(self, write: Callable[[bytes, int], None]):
        self.write = write
        self.moh = False
        self.ringback = False
        self._queue: deque[Queued] = deque()
        self._task: asyncio.Task | None = None
        self._moh_frames = [tone_pcm(hz, 500, RATE, MOH_DBFS) for hz in MOH_NOTES]
        self._ring = tone_pcm(RINGBACK_HZ, RINGBACK_ON_MS, RATE, RINGBACK_DBFS) + silence_pcm(RINGBACK_OFF_MS, RATE)
        self._tick = 0

    def play(self, pcm: bytes, on_done: Callable[[], None] | None = None) -> Queued:
        item = Queued(pcm, on_done)
        self._queue.append(item)
        self._kick()
        return item

    def cancel(self, handle: Queued) -> None:
        if handle in self._queue:
            self._queue.remove(handle)
            if handle.on_done:
                handle.on_done()

    def set_moh(self, on: bool) -> None:
        self.moh = on
        self._kick()

    def set_ringback(self, on: bool) -> None:
        self.ringback = on
        self._kick()

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self.moh or self.ringback

    def stop(self) -> None:
        self.moh = self.ringback = False
        items, self._queue = list(self._queue), deque()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for item in items:
            if item.on_done:
                item.on_done()

    def _kick(self) -> None:
        if self.busy and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tone-clock")

    def _next(self) -> bytes | None:
        while self._queue:
            item = self._queue[0]
            if item.pos < len(item.pcm):
                frame = item.pcm[item.pos : item.pos + FRAME_BYTES]
                item.pos += FRAME_BYTES
                return frame
            self._queue.popleft()
            if item.on_done:
                item.on_done()
        if self.moh:
            note = self._moh_frames[(self._tick // 25) % 2]
            off = (self._tick % 25) * FRAME_BYTES
            return note[off : off + FRAME_BYTES]
        if self.ringback:
            off = (self._tick * FRAME_BYTES) % len(self._ring)
            return self._ring[off : off + FRAME_BYTES]
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0, n = loop.time(), 0
        while True:
            frame = self._next()
            if frame is None:
                self._task = None
                return
            self._tick += 1
            self.write(frame, RATE)
            n += 1
            delay = t0 + n * FRAME_MS / 1000 - loop.time()
            if delay < -0.2:
                t0, n, delay = loop.time(), 0, 0.0
            await asyncio.sleep(max(0.0, delay))
