"""The caller's audio on its way to the model: queued per 20 ms frame (the frame path never waits on the
network) and sent by one task, in order. The input latency (frame received -> its append sent) is sampled
one frame in PROBE_EVERY, so the frame path stays free of histograms.

The queue is bounded: MAX_MS of audio. It fills only when frames come faster than they can be sent (a peer
flooding us, a stalled Realtime socket): then the oldest frames are dropped, so that what the model gets is
the most recent speech, and counted in `dropped` (a plain int, published once a second by the session as
`va_uplink_dropped_frames_total`)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

from shared.metrics import INPUT_LATENCY

PROBE_EVERY = 25
MAX_MS = 2000  # caller audio held for the model at most; the oldest goes first


class Uplink:
    def __init__(self, bytes_per_ms: float) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self._bytes = 0  # queued bytes
        self._max_bytes = int(MAX_MS * bytes_per_ms)
        self._ready = asyncio.Event()
        self._queued = 0
        self._sent = 0  # frames that left the queue, sent or dropped
        self.dropped = 0
        self._probe_t: float | None = None  # when the sampled frame arrived, until its append is sent
        self._probe_seq = 0  # the append the sampled frame became

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, pcm: bytes) -> None:
        frames = self._frames
        frames.append(pcm)
        self._queued += 1
        self._bytes += len(pcm)
        while self._bytes > self._max_bytes and len(frames) > 1:
            self._bytes -= len(frames.popleft())
            self._sent += 1
            self.dropped += 1
            if self._probe_t is not None and self._sent == self._probe_seq + 1:
                self._probe_t = None  # the sampled frame was the one dropped: no sample this time
        self._ready.set()

    def sample(self, frames_in: int) -> None:
        """A caller frame arrived (before it is put): it is timed if it is the one in PROBE_EVERY."""
        if frames_in % PROBE_EVERY == 0 and self._probe_t is None:
            self._probe_t = time.monotonic()
            self._probe_seq = self._queued

    async def run(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        frames = self._frames
        while True:
            await self._ready.wait()
            self._ready.clear()
            while frames:
                frame = frames.popleft()
                self._bytes -= len(frame)
                self._sent += 1
                await send(frame)
                if self._probe_t is not None and self._sent > self._probe_seq:
                    INPUT_LATENCY.observe(time.monotonic() - self._probe_t)
                    self._probe_t = None
