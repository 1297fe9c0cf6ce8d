"""The worker watch: finds a media worker that died or wedged, within a second of its last heartbeat, takes it
out of admission and has its calls moved to other workers.

Each worker beats from its event loop every `heartbeat_ms` (250 ms) into the ZSET `{prefix}workers`, scored
with Redis's clock. This task asks Redis every `POLL_S` for the members scored older than `stale_after_ms`
(750 ms), in one Lua script that also removes them. Why a sorted set polled by score, and not key TTLs or
keyspace notifications: an expiry in Redis fires when Redis gets round to it (lazily on access, or by its
sampling sweep, which may take well over a second to reach a key), keyspace notifications are fire-and-forget
pub/sub (a controller reconnecting or restarting loses the expiry for good, and they must be enabled in the
server's config), and a dead worker whose key expired leaves nothing to say which worker it was. A ZRANGEBYSCORE
on a sorted set that holds one member per worker costs Redis microseconds, answers the same to any controller,
and a worker that is already gone when the controller starts is still found.

The script judges staleness with Redis's own TIME at the moment it runs, so a worker whose late beat landed
just before it is left alone, and removing the member is the record of the death: a second controller running
the same script finds nothing, so each death is acted on once. From that moment the admission script (which
reads only the live members of the set) gives the worker no new call. A worker that was only wedged and wakes
up beats again and is back in the set; the calls it held were moved meanwhile and its sessions stop (the
`end` messages with reason `moved` in its inbox, and the epoch check of its lease renewal). When no other
worker has a free slot, the calls are not let go at once: they wait up to `controller.move_wait_ms` for the
worker to beat again (then they stay with it, untouched) or for another worker (controller/call.py,
`Call._await_worker`): at scale a busy machine stalls a loop past `stale_after_ms` that beats again a few
hundred ms later, and moving at once sent every call of a lone worker to the fallback.

After Redis was away (a restart, a partition) no worker could beat either, so every one would look dead: the
watch judges nothing until the workers have had `stale_after_ms` to beat again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from controller.admission import PICK_WORKER_LUA
from shared.keys import Keys
from shared.metrics import WORKER_DEATHS
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger("worker-watch")

POLL_S = 0.15  # detection ≤ stale_after_ms + POLL_S after the last beat (+ the script's round trip)

_DECLARE_DEAD = (
    PICK_WORKER_LUA
    + """
-- KEYS: 1 workers zset. ARGV: 1 prefix, 2 stale_after_ms
-- Every worker whose last beat is older than stale_after_ms by Redis's clock now: removed from the set (admission
-- no longer sees it), its record marked, and returned as {id, last beat ms, active calls} once, after one value
-- saying whether a live worker still has a free slot (1) or not (0).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])), 'WITHSCORES')
local out = {}
for i = 1, #stale, 2 do
  local wid, beat = stale[i], stale[i + 1]
  redis.call('ZREM', KEYS[1], wid)
  local record = ARGV[1] .. 'worker:' .. wid
  local active = redis.call('HGET', record, 'active') or '0'
  if redis.call('EXISTS', record) == 1 then redis.call('HSET', record, 'dead_ms', now) end
  table.insert(out, wid)
  table.insert(out, beat)
  table.insert(out, active)
end
if #out > 0 then table.insert(out, 1, pick_worker(KEYS[1], ARGV[1], tonumber(ARGV[2]), now, {}) and 1 or 0) end
return out
"""
)


@dataclass(frozen=True)
class DeadWorker:
    worker_id: str
    last_beat_ms: int  # Redis time of its last heartbeat
    active: int  # calls Redis counted on it when it was declared dead


class WorkerWatch:
    """`run()` polls until `stopping`; `on_death(dead)` gets each dead worker once and returns how many calls of
    this controller it started moving off it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        stale_after_ms: int,
        on_death: Callable[[DeadWorker], int],
        move_wait_ms: int = 0,
        poll_s: float = POLL_S,
    ):
        self.redis = redis
        self.keys = keys
        self.stale_after_ms = stale_after_ms
        self.move_wait_ms = move_wait_ms  # controller.move_wait_ms: only for the log line; the calls do the waiting
        self.on_death = on_death
        self.poll_s = poll_s
        self._script = redis.register_script(_DECLARE_DEAD)

    async def check(self) -> list[DeadWorker]:
        """One poll: the workers declared dead by this call (each is handed to `on_death`)."""
        reply = await self._script(keys=[self.keys.workers], args=[self.keys.prefix, self.stale_after_ms])
        other_free = bool(reply) and int(reply[0]) == 1
        dead = [
            DeadWorker(_text(reply[i]), int(float(_text(reply[i + 1]))), int(_text(reply[i + 2])))
            for i in range(1, len(reply), 3)
        ]
        for worker in dead:
            moving = self.on_death(worker)
            WORKER_DEATHS.labels("with_calls" if moving or worker.active else "idle").inc()
            age_ms = await self._age_ms(worker.last_beat_ms)
            if moving and not other_free and self.move_wait_ms > 0:
                # A stall (a busy machine) looks the same as a death until it ends: the calls wait (Call._await_worker).
                log.warning(
                    "media worker %s missed heartbeats for %d ms (by Redis's clock) with no other worker free: "
                    "no new calls for it; its %d calls wait up to %.1f s for it to beat again (or for another "
                    "worker) before the fallback",
                    worker.worker_id,
                    age_ms,
                    moving,
                    self.move_wait_ms / 1000,
                )
                continue
            log.warning(
                "media worker %s is dead (last heartbeat %d ms ago by Redis's clock, %d calls counted on it): "
                "no new calls for it; %d of its calls are being moved",
                worker.worker_id,
                age_ms,
                worker.active,
                moving,
            )
        return dead

    async def _age_ms(self, beat_ms: int) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000 - beat_ms

    async def run(self, stopping: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Poll until `stopping`, from the moment `ready` is set (the controller's first reconcile: a death found
        before it has adopted the calls would be recorded with nobody to move them). Redis being away skips a
        round (the next one finds what it missed); anything else raises, for the supervisor to restart."""
        while ready is not None and not ready.is_set() and not stopping.is_set():
            try:
                async with asyncio.timeout(self.poll_s):
                    await ready.wait()
            except TimeoutError:
                pass
        seen_at = time.monotonic()  # the last poll that found Redis answering
        settle_until = 0.0
        blind_s = self.poll_s + self.stale_after_ms / 2000
        while not stopping.is_set():
            try:
                await self.redis.ping()
                now = time.monotonic()
                if now - seen_at > blind_s:
                    # Redis was away (or this loop stalled): the workers could not beat meanwhile either, and every
                    # one of them would look dead. They get a full stale_after_ms to beat again first.
                    settle_until = now + self.stale_after_ms / 1000
                    log.info("worker watch: Redis answers again; judging heartbeats from %d ms on", self.stale_after_ms)
                seen_at = now
                if now >= settle_until:
                    await self.check()
            except UNAVAILABLE as exc:
                log.debug("worker watch: Redis unavailable (%s)", exc)
            try:
                async with asyncio.timeout(self.poll_s):
                    await stopping.wait()
            except TimeoutError:
                pass


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
