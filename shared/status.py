"""`voice-agent status`: the live cluster as Redis sees it (controllers, media workers with capacity and
load, tool workers with queue depths)."""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio as aioredis
from rq import Queue, Worker

from shared.config import Config
from shared.keys import Keys
from shared.masking import mask_url
from shared.registry import entries, worker_info


async def collect(config: Config) -> dict[str, Any]:
    keys = Keys(config.redis.key_prefix)
    stale = config.media_worker.stale_after_ms
    client = aioredis.Redis.from_url(config.redis.url, decode_responses=True, socket_connect_timeout=2)
    try:
        controllers = await entries(client, keys.controllers, keys.controller, stale)
        workers = await entries(client, keys.workers, keys.worker, stale)
        active_calls = await client.scard(keys.calls_active)
        lease = str(await client.get(keys.leader) or "")  # `{token}:{controller id}` (controller/leadership.py)
    finally:
        await client.aclose()

    worker_rows = []
    for entry in workers:
        info = worker_info(entry) if entry.live else None
        worker_rows.append(
            {
                "id": entry.info.get("id"),
                "live": entry.live,
                "heartbeat_age_ms": entry.age_ms,
                "media": f"{info.media_host}:{info.audiosocket_port}" if info else None,
                "capacity": info.capacity if info else 0,  # advertised: what admission reads
                "capacity_configured": (info.capacity_configured or info.capacity) if info else 0,
                "load_state": info.load_state if info else "ok",
                "load_reason": info.load_reason if info else "",
                "active": int(entry.info.get("active", 0)) if info else 0,
                "draining": info.draining if info else False,
                "version": entry.info.get("version"),
                "health_url": entry.info.get("health_url"),
            }
        )
    live = [w for w in worker_rows if w["live"] and not w["draining"]]

    sync = redis.Redis.from_url(config.redis.url, socket_connect_timeout=2)
    try:
        queues = [Queue(keys.queue(q), connection=sync) for q in config.tool_worker.queues]
        tool_workers: dict[str, dict[str, Any]] = {}
        for queue in queues:
            for w in Worker.all(queue=queue):
                row = tool_workers.setdefault(w.name, {"id": w.name, "state": str(w.get_state()), "queues": []})
                row["queues"].append(queue.name)
        queue_depths = {q.name: q.count for q in queues}
    finally:
        sync.close()

    leader = lease.partition(":")[2]
    return {
        "redis": mask_url(config.redis.url),
        "leader": leader or None,
        "prefix": keys.prefix,
        "time_ms": int(time.time() * 1000),
        "controllers": [
            {
                "id": e.info.get("id"),
                "live": e.live,
                "heartbeat_age_ms": e.age_ms,
                "health_url": e.info.get("health_url"),
                "version": e.info.get("version"),
                # the lease holder leads; a live one without it stands by, ready to take over
                "leadership": "leading" if e.info.get("id") == leader else "standby" if e.live else "-",
            }
            for e in controllers
        ],
        "media_workers": worker_rows,
        "capacity": sum(w["capacity"] for w in live),
        "active": sum(w["active"] for w in live),
        "active_calls": active_calls,
        "tool_workers": sorted(tool_workers.values(), key=lambda r: r["id"]),
        "queues": queue_depths,
    }


def render(status: dict[str, Any]) -> str:
    def liveness(row: dict[str, Any]) -> str:
        return "live" if row["live"] else f"dead (last seen {row['heartbeat_age_ms'] / 1000:.1f}s ago)"

    lines = [f"Redis {status['redis']} (key prefix {status['prefix']!r})"]
    controllers = status["controllers"]
    leader = status["leader"] or "none (no controller holds the lease)"
    lines.append(f"controllers: {sum(c['live'] for c in controllers)} live; leader {leader}")
    for c in controllers:
        lines.append(f"  {c['id']:<40} {liveness(c):<10} {c['leadership']:<8} {c['health_url'] or ''}")
    workers = status["media_workers"]
    load = f"{status['active']}/{status['capacity']}" if status["capacity"] else "0/0"
    lines.append(
        f"media workers: {sum(w['live'] for w in workers)} live, calls {load}, "
        f"{status['active_calls']} active call(s) in the cluster"
    )
    for w in workers:
        extra = f" media {w['media']}  calls {w['active']}/{w['capacity']}" if w["live"] else ""
        extra += "  draining" if w["draining"] else ""
        if w["live"] and w["load_state"] != "ok":  # the worker limits itself: say to what and why
            extra += f"  {w['load_state']}: {w['load_reason']} (configured {w['capacity_configured']})"
        lines.append(f"  {w['id']:<40} {liveness(w):<10}{extra}")
    lines.append(
        f"tool workers: {len(status['tool_workers'])}; queued jobs: "
        + ", ".join(f"{name} {count}" for name, count in status["queues"].items())
    )
    for t in status["tool_workers"]:
        lines.append(f"  {t['id']:<40} {t['state']:<10} queues {', '.join(t['queues'])}")
    return "\n".join(lines)
