"""Callers who hang up 0–50 ms after our Stasis answer, on each transport, on the real Asterisk (the judge: the
simulator once left "Down" media legs in this case). Nothing of ours may stay behind: no media channel
(UnicastRTP/, AudioSocket/, WebSocket/, Snoop/), no bridge, no call in Redis, every worker slot free."""

from __future__ import annotations

import asyncio

import pytest

from controller import ids
from sim.cluster import http_get
from sim.realtime import Reply, Script
from tests.media_harness import until
from tests.realpbx.pbx_harness import (  # noqa: F401  (fixtures)
    PROFILES,
    aredis,
    emulator,
    keys,
    pbx,
    pbx_cluster,
)

DELAYS_MS = (0, 12, 25, 37, 50)  # after the answer the caller sees (the Dial ANSWER event)
CLEAN_WITHIN_S = 10.0


def ours_in_asterisk(real_asterisk) -> list[str]:
    """Our channels and bridges still in Asterisk; the test caller's own legs (`vacaller-…`) are not ours."""
    left = []
    for kind in ("channels", "bridges"):
        status, items = real_asterisk.ari("GET", f"/{kind}")
        assert status == 200
        for item in items:
            if item["id"].startswith("vacaller-"):
                continue
            name = item.get("name", "")
            if ids.owner(item["id"]) is not None or name.startswith(ids.MEDIA_PREFIXES):
                left.append(f"{kind[:-1]} {item['id']} {name} {item.get('state', '')}".strip())
    return left


async def redis_clean(aredis, keys) -> bool:
    if await aredis.scard(keys.calls_active):
        return False
    for worker in await aredis.zrange(keys.workers, 0, -1):
        if int(await aredis.hget(keys.worker(worker), "active") or 0):
            return False
    return True


def worker_sessions(cluster) -> int:
    total = 0
    for proc in cluster.processes:
        if proc.role != "media-worker":
            continue
        status, body = http_get(proc.health_url + "/metrics")
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith("va_worker_calls_active "):
                total += int(float(line.split()[1]))
    return total


@pytest.mark.parametrize("transport", ["audiosocket-slin24", "rtp-ulaw", "websocket-ulaw"])
async def test_callers_gone_right_after_the_answer_leave_nothing_behind(
    transport, real_asterisk, pbx_cluster, pbx, emulator, aredis, keys
):
    emu = await emulator(Script(greeting=Reply(text="Welcome. " * 5, audio_ms=3000)), speed=4.0)
    cluster = await pbx_cluster(emu, PROFILES[transport])
    for delay_ms in DELAYS_MS:
        leg = await pbx.call()
        await asyncio.sleep(delay_ms / 1000)
        await leg.hangup()
    await until(lambda: not ours_in_asterisk(real_asterisk), timeout=CLEAN_WITHIN_S)
    await until(lambda: redis_clean(aredis, keys), timeout=CLEAN_WITHIN_S)
    await until(lambda: worker_sessions(cluster) == 0, timeout=CLEAN_WITHIN_S)
    assert not await aredis.keys(f"{keys.prefix}call:*:lease")
    # Every caller was admitted (a worker slot reserved, its media leg under way) and ended as a caller hangup.
    records = [
        await aredis.hgetall(k) for k in await aredis.keys(f"{keys.prefix}call:*") if await aredis.type(k) == "hash"
    ]
    assert sorted((r.get("end_reason"), bool(r.get("worker"))) for r in records) == [("caller_hangup", True)] * len(
        DELAYS_MS
    )
