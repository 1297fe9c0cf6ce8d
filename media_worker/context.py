"""What every call on a media worker shares: the config, Redis, the playout clock, the Realtime settings and
prewarmed connections."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from media_worker.audio.playout import PlayoutClock
from media_worker.realtime.client import ClientSettings
from media_worker.realtime.pool import SessionPool
from shared.config.schema import Config
from shared.keys import Keys


@dataclass
class WorkerContext:
    config: Config
    redis: aioredis.Redis
    keys: Keys
    worker_id: str
    clock: PlayoutClock
    pool: SessionPool
    realtime: ClientSettings
