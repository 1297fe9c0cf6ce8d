"""Redis: reachable, new enough (XAUTOCLAIM and the Lua scripts need 6.2), persistence and eviction settings."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from shared.masking import mask_url
from voice_agent.doctor.result import Outcome, fail, ok, warn
from voice_agent.doctor.runner import Probe

MIN_VERSION = (6, 2)  # XAUTOCLAIM (the tool and control queues' reclaim)


def client(probe: Probe) -> aioredis.Redis:
    url = probe.loaded.config.redis.url
    timeout = probe.timeout_s
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)


async def check_redis(probe: Probe) -> Outcome:
    url = mask_url(probe.loaded.config.redis.url)
    r = client(probe)
    try:
        info = await r.info("server")
    except RedisError as exc:
        return fail(f"{url}: {exc}", "is redis-server running there? check redis.url (REDIS_URL) and its password")
    finally:
        await r.aclose()
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_VERSION:
        return fail(f"Redis {version} at {url} is too old (XAUTOCLAIM needs 6.2)", "upgrade Redis to 6.2 or newer")
    return ok(f"Redis {version} at {url}")


async def _config(probe: Probe, name: str) -> str | None:
    """A CONFIG GET value; None when the server refuses CONFIG (managed Redis often does)."""
    r = client(probe)
    try:
        return (await r.config_get(name)).get(name, "")
    except ResponseError:
        return None
    finally:
        await r.aclose()


async def check_persistence(probe: Probe) -> Outcome:
    appendonly, save = await _config(probe, "appendonly"), await _config(probe, "save")
    if appendonly is None or save is None:
        return warn("CONFIG GET is refused: persistence not checked", "make sure AOF or RDB snapshots are on")
    if appendonly == "yes":
        return ok("append-only file on")
    if save.strip():
        return ok(f"RDB snapshots ({save}); append-only off: up to the last snapshot can be lost")
    return warn(
        "nothing persists (appendonly no, save ''): queued mail and call records are lost when Redis restarts",
        "redis.conf: appendonly yes (or a save rule)",
    )


async def check_eviction(probe: Probe) -> Outcome:
    policy = await _config(probe, "maxmemory-policy")
    if policy is None:
        return warn("CONFIG GET is refused: maxmemory-policy not checked", "make sure it is noeviction")
    if policy == "noeviction":
        return ok("maxmemory-policy noeviction")
    return warn(
        f"maxmemory-policy {policy}: under memory pressure Redis may delete call state, leases or queued jobs",
        "redis.conf: maxmemory-policy noeviction",
    )


async def redis_time(probe: Probe) -> float:
    r = client(probe)
    try:
        seconds, micros = await r.time()
    finally:
        await r.aclose()
    return seconds + micros / 1e6
