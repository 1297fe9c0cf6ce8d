"""Inbox readers are supervised: one that dies is restarted, one that keeps dying is given up and makes
`/readyz` answer 503 (a process that reads nothing must not look ready)."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from controller import cluster_metrics
from controller.service import Controller
from media_worker.service import MediaWorker
from shared import health
from shared.config import load_config
from shared.supervisor import Supervised
from sim.cluster import http_get
from tests.conftest import CONFIG, TEST_API_KEY, TEST_ARI_PASSWORD

ENV = {"OPENAI_API_KEY": TEST_API_KEY, "ASTERISK_ARI_PASSWORD": TEST_ARI_PASSWORD}


def dying(deaths: list[int], times: int):
    """A reader that raises its first `times` runs, then waits to be cancelled (a healthy reader)."""

    async def run() -> None:
        deaths.append(1)
        if len(deaths) <= times:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    return run


async def until_done(reader: Supervised) -> None:
    async with asyncio.timeout(5):
        while reader.restarts < 1 and not reader.given_up:
            await asyncio.sleep(0.01)


async def test_a_reader_that_dies_once_is_restarted_and_stays_ready():
    deaths: list[int] = []
    reader = Supervised("inbox reader", dying(deaths, 1), pause_s=0)
    task = reader.start()
    await until_done(reader)
    await asyncio.sleep(0.01)
    assert reader.restarts == 1 and len(deaths) == 2 and reader.problem() is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_reader_that_keeps_dying_is_given_up_and_readiness_fails():
    reader = Supervised("inbox reader", dying([], 100), pause_s=0, max_restarts=2)
    await asyncio.wait_for(asyncio.gather(reader.start(), return_exceptions=True), 5)
    assert "3 failures within 60 s, the last RuntimeError('boom')" in (reader.problem() or "")
    server = health.make_server("media-worker", "w", {"inbox": reader.problem})
    port = await health.start(server, "127.0.0.1", 0)
    try:
        status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")
    finally:
        await server.close()
    assert status == 503 and "boom" in json.loads(body)["failing"]["inbox"]


async def test_the_roles_report_an_inbox_reader_given_up():
    loaded = load_config(CONFIG, env=ENV)
    worker = MediaWorker(loaded, instance_id="w", health_host="127.0.0.1", health_port=0)
    controller = Controller(loaded, instance_id="c", health_host="127.0.0.1", health_port=0)
    assert controller.ready_checks()["control_inbox"]() == "control inbox reader not started"
    # The worker's reader is an essential task of its TaskSet: given up, it is a death /readyz reports.
    reader = Supervised("inbox reader", dying([], 100), pause_s=0, max_restarts=0)
    task = worker.tasks.spawn(reader.run(), "inbox", essential=True)
    await asyncio.wait({task}, timeout=5)
    assert "task inbox died (RuntimeError)" in (worker.ready_checks()["tasks"]() or "")
    # The controller's runs in a task of its own.
    controller.requests = Supervised("control inbox reader", dying([], 100), pause_s=0, max_restarts=0)
    await asyncio.gather(controller.requests.start(), return_exceptions=True)
    assert "control inbox reader stopped: 1 failures" in (controller.ready_checks()["control_inbox"]() or "")


async def test_the_cluster_gauges_loop_that_keeps_dying_is_restarted_then_fails_the_controllers_readiness(
    monkeypatch, caplog, redis_url
):
    """On main it was a bare task: its death went unnoticed (no log until garbage collection, /readyz 200)."""

    async def broken(*_args) -> None:
        raise ValueError("a worker record of an unexpected shape")

    monkeypatch.setattr(cluster_metrics, "refresh", broken)
    controller = Controller(load_config(CONFIG, env=ENV), instance_id="c", health_host="127.0.0.1", health_port=0)
    assert controller.ready_checks()["cluster_metrics"]() == "cluster metrics not started"
    controller.redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        controller.gauges = controller.cluster_gauges(pause_s=0, max_restarts=1)
        await asyncio.wait_for(asyncio.gather(controller.gauges.start(), return_exceptions=True), 5)
    finally:
        await controller.redis.aclose()
    assert controller.gauges.restarts == 1
    problem = controller.ready_checks()["cluster_metrics"]() or ""
    assert "cluster metrics stopped: 2 failures" in problem and "ValueError" in problem
    deaths = [r for r in caplog.records if r.name == "supervisor"]
    assert len(deaths) == 2 and deaths[0].exc_info is not None  # each death logged once, the first with its traceback
