"""The caller's audio on its way to the model: queued per 20 ms frame (the frame path never waits on the
network) and sent by one task, in order. The input latency (frame received -> its append sent) is sampled
one frame in PROBE_EVERY, so the frame path stays free of histograms.

The queue is bounded: MAX_MS of audio. It fills only when frames come faster than they can be sent (a peer
flooding us, a stalled Realtime socket): then the oldest frames are dropped, so that what the model gets is
the most recent speech, and counted in `dropped` (a plain int, published once a second by the session as
`va_uplink_dropped_frames_total`).

A frame that finds the queue empty and the sender idle is written at once by `send_now` (no task wake-up per
frame); the task sends only what had to wait (a reconnect, a full socket buffer), in order."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from shared.metrics import INPUT_LATENCY

log = logging.getLogger(__name__)

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
        self._send_now: Callable[[bytes], bool] | None = None  # set by run(): writes without waiting, or False
        self._sending = False  # run() is awaiting a send: a frame written now would overtake it

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, pcm: bytes, *, at_once: bool = True) -> None:
        """Queue a frame for the model; `at_once=False` leaves even an idle uplink's send to the task (the playout
        clock's padding: its loop over every call does only the sends to Asterisk)."""
        frames = self._frames
        if at_once and not frames and not self._sending and self._send_now is not None and self._sent_now(pcm):
            self._queued += 1
            self._sent += 1
            self._observe_probe()
            return
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

    def _observe_probe(self) -> None:
        """After a send: if the sampled frame has gone, its input latency is observed."""
        if self._probe_t is not None and self._sent > self._probe_seq:
            INPUT_LATENCY.observe(time.monotonic() - self._probe_t)
            self._probe_t = None

    def _sent_now(self, pcm: bytes) -> bool:
        assert self._send_now is not None
        try:
            return self._send_now(pcm)
        except Exception:  # a bug there must not cost the caller's audio: the task's path carries it from now on
            log.exception("the uplink's direct send failed; the sending task takes over")
            self._send_now = None
            return False

    def sample(self, frames_in: int) -> None:
        """A caller frame arrived (before it is put): it is timed if it is the one in PROBE_EVERY."""
        if frames_in % PROBE_EVERY == 0 and self._probe_t is None:
            self._probe_t = time.monotonic()
            self._probe_seq = self._queued

    async def run(
        self, send: Callable[[bytes], Awaitable[None]], send_now: Callable[[bytes], bool] | None = None
    ) -> None:
        """Send what is put, in order: `send_now` (from `put`, when nothing waits) or else `send` (from here)."""
        frames = self._frames
        self._send_now = send_now
        while True:
            await self._ready.wait()
            self._ready.clear()
            while frames:
                frame = frames.popleft()
                self._bytes -= len(frame)
                self._sent += 1
                self._sending = True
                try:
                    await send(frame)
                finally:
                    self._sending = False
                self._observe_probe()
