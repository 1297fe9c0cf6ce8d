"""The caller's audio on its way to the model: queued per 20 ms frame (the frame path never waits on the
network) and sent by one task, in order. The input latency (frame received -> its append sent) is sampled
one frame in PROBE_EVERY, so the frame path stays free of histograms."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

from shared.metrics import INPUT_LATENCY

PROBE_EVERY = 25


class Uplink:
    def __init__(self) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        self._queued = 0
        self._sent = 0
        self._probe_t: float | None = None  # when the sampled frame arrived, until its append is sent
        self._probe_seq = 0  # the append the sampled frame became

    def put(self, pcm: bytes) -> None:
        self._frames.append(pcm)
        self._queued += 1
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
                await send(frames.popleft())
                self._sent += 1
                if self._probe_t is not None and self._sent > self._probe_seq:
                    INPUT_LATENCY.observe(time.monotonic() - self._probe_t)
                    self._probe_t = None
