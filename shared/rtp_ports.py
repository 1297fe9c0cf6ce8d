"""A media worker's RTP ports that are not ours to use: one another process holds (the worker could not bind it),
set aside for a while so admission hands out others, and the kernel's ephemeral range, from which outgoing
connections (Redis, HTTP) and unbound UDP sockets take their local ports at random."""

from __future__ import annotations

import sys
from pathlib import Path

import redis.asyncio as aioredis

# A port another process holds is usually held for as long as that process keeps its connection: a retry in
# seconds would fail the next call the same way. Ten minutes, then admission tries it again.
BLOCKED_FOR_MS = 600_000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_BLOCK = """
-- KEYS: 1 the worker's blocked ports (zset port -> until ms). ARGV: 1 port, 2 for how long (ms)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])  -- gone with its last entry (a worker that never comes back)
return redis.call('ZCARD', KEYS[1])
"""


async def block(redis: aioredis.Redis, key: str, port: int, for_ms: int = BLOCKED_FOR_MS) -> int:
    """Set `port` aside for `for_ms` (by Redis's clock, which admission reads too); how many are set aside now."""
    return int(await redis.eval(_BLOCK, 1, key, port, for_ms))


def ephemeral_range(path: Path | None = None) -> tuple[int, int] | None:
    """The kernel's ephemeral port range (Linux only; `path` default EPHEMERAL_RANGE_FILE), or None when it
    cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        low, high = (int(part) for part in (path or EPHEMERAL_RANGE_FILE).read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def ephemeral_overlap(low: int, high: int, ephemeral: tuple[int, int] | None) -> tuple[int, int] | None:
    """The part of the RTP range `low`-`high` inside the ephemeral range, or None when they do not meet."""
    if ephemeral is None:
        return None
    start, end = max(low, ephemeral[0]), min(high, ephemeral[1])
    return (start, end) if start <= end else None


def ephemeral_warning(low: int, high: int, ephemeral: tuple[int, int] | None) -> str | None:
    """What to tell the user when the RTP range overlaps the ephemeral range, or None."""
    overlap = ephemeral_overlap(low, high, ephemeral)
    if overlap is None or ephemeral is None:
        return None
    return (
        f"the RTP range {low}-{high} overlaps the kernel's ephemeral ports {ephemeral[0]}-{ephemeral[1]} "
        f"(at {overlap[0]}-{overlap[1]}): outgoing connections on this host take ports there, and a call given "
        f"one of them fails to open its RTP port (keep the range below {ephemeral[0]}, as the default 18080-18199, "
        "or reserve it with net.ipv4.ip_local_reserved_ports)"
    )
