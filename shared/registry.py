"""Process registration in Redis: who is alive, where, and with what capacity.

Heartbeats are stamped with Redis's own clock (TIME inside the script), so liveness never depends on the
clocks of the hosts agreeing. Each heartbeat rewrites the whole record, so a Redis restart heals itself
within one beat. A worker's `active` counter belongs to the admission script and is never overwritten here.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.messages import ProcessInfo, WorkerInfo, from_hash, to_hash

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'heartbeat_ms', now, unpack(ARGV, 4))
if ARGV[3] == '1' then redis.call('HSETNX', KEYS[2], 'active', 0) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
"""


@dataclass
class Registration:
    """One process's entry: `heartbeat()` every beat, `remove()` on a clean stop."""

    redis: aioredis.Redis
    keys: Keys
    info: ProcessInfo
    record_ttl_ms: int

    def _keys(self) -> tuple[str, str]:
        if isinstance(self.info, WorkerInfo):
            return self.keys.workers, self.keys.worker(self.info.id)
        return self.keys.controllers, self.keys.controller(self.info.id)

    async def heartbeat(self) -> int:
        zset, record = self._keys()
        fields = [x for pair in to_hash(self.info).items() for x in pair]
        is_worker = "1" if isinstance(self.info, WorkerInfo) else "0"
        script = self.redis.register_script(_HEARTBEAT)
        return int(await script(keys=[zset, record], args=[self.info.id, self.record_ttl_ms, is_worker, *fields]))

    async def remove(self) -> None:
        zset, record = self._keys()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(zset, self.info.id)
            pipe.delete(record)
            await pipe.execute()


class Entry(msgspec.Struct):
    info: dict[str, str]
    age_ms: int
    live: bool


async def redis_now_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _scored(row: object) -> tuple[str, float]:
    """One (member, score) row of a ZRANGE … WITHSCORES reply (redis-py types it together with the scoreless
    shape)."""
    if not isinstance(row, (tuple, list)) or len(row) != 2:
        raise TypeError(f"not a (member, score) row: {row!r}")
    member, score = row
    return (member.decode() if isinstance(member, bytes) else str(member)), float(score)


async def entries(redis: aioredis.Redis, zset: str, record_key, stale_after_ms: int) -> list[Entry]:
    """Every registered process of one kind, live or stale, oldest heartbeat last."""
    now = await redis_now_ms(redis)
    members = [_scored(row) for row in await redis.zrevrange(zset, 0, -1, withscores=True)]
    async with redis.pipeline(transaction=False) as pipe:
        for member, _ in members:
            pipe.hgetall(record_key(member))
        records = await pipe.execute()
    out = []
    for (member, beat), record in zip(members, records, strict=True):
        age = now - int(beat)
        out.append(Entry(info=record or {"id": member}, age_ms=age, live=age <= stale_after_ms))
    return out


def worker_info(entry: Entry) -> WorkerInfo:
    return from_hash(entry.info, WorkerInfo)
