"""One call's figures on the worker: latencies measured at the frames themselves, counters kept as plain
attributes on the audio path, and all of it written once into the call record (and the metrics) at the end."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from shared.metrics import BARGEIN_SECONDS, GREETING_SECONDS, TURN_SECONDS

log = logging.getLogger("session")


@dataclass
class CallStats:
    linked_at: float = 0.0  # media connected (monotonic): the greeting's latency counts from here
    greeting_ms: float | None = None  # media connected -> first greeting frame
    turn_ms: list[float] = field(default_factory=list)  # end of the caller's turn -> first agent frame
    bargein_ms: list[float] = field(default_factory=list)  # caller speech detected -> agent audio stopped
    truncations: int = 0
    audioless_responses: int = 0
    turn_ended_at: float | None = None  # the server heard the caller stop; the next agent frame ends the turn
    awaiting_first_frame: bool = False  # the next real frame is a first one (greeting, or a turn's answer)
    bargein_at: float | None = None

    def first_frame(self, now: float, greeting: bool) -> None:
        self.awaiting_first_frame = False
        if greeting and self.greeting_ms is None:
            self.greeting_ms = round((now - self.linked_at) * 1000, 1)
            GREETING_SECONDS.observe(self.greeting_ms / 1000)
        elif self.turn_ended_at is not None:
            ms = round((now - self.turn_ended_at) * 1000, 1)
            self.turn_ms.append(ms)
            TURN_SECONDS.observe(ms / 1000)
            self.turn_ended_at = None

    def barge_in_over(self, now: float) -> None:
        assert self.bargein_at is not None
        ms = round((now - self.bargein_at) * 1000, 1)
        self.bargein_ms.append(ms)
        BARGEIN_SECONDS.observe(ms / 1000)
        self.bargein_at = None

    def record(self) -> dict[FieldT, EncodableT]:
        """The call record's fields (`va:call:{id}`) these figures fill."""
        return {
            "greeting_ms": "" if self.greeting_ms is None else str(self.greeting_ms),
            "turn_ms": ",".join(str(v) for v in self.turn_ms),
            "bargein_ms": ",".join(str(v) for v in self.bargein_ms),
            "truncations": self.truncations,
            "audioless_responses": self.audioless_responses,
        }


async def save_record(redis: aioredis.Redis, key: str, fields: dict[FieldT, EncodableT]) -> None:
    try:
        await redis.hset(key, mapping=fields)
    except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
        log.warning("could not save the call's figures: %s", exc)
