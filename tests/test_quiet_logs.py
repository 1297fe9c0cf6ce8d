"""Quiet default logs: no periodic lines from an idle role at INFO, and the call id on every line about a call."""

from __future__ import annotations

import logging

import pytest
import redis
from rq import Queue

from shared.keys import Keys
from sim.asterisk.audio import CallerAudio
from sim.realtime import Reply, Script
from tests.media_harness import (  # noqa: F401  (fixtures)
    aredis,
    call_of,
    caller_speech,
    cluster_up,
    emulator,
    keys,
    sim,
    until,
    worker_stats,
)
from tool_worker.worker import ToolWorker


def test_rq_maintenance_passes_log_at_debug_only(redis_url, prefix, caplog):
    conn = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    queues = [Queue(keys.queue(name), connection=conn) for name in ("tools", "email")]
    worker = ToolWorker(queues, connection=conn, name=f"{prefix}quiet")
    try:
        with caplog.at_level(logging.INFO, logger="rq.worker"):
            for _ in range(3):
                worker.run_maintenance_tasks()
        assert [r.getMessage() for r in caplog.records if "cleaning registries" in r.getMessage()] == []

        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="rq.worker"):
            worker.clean_registries()
        cleaned = [r for r in caplog.records if "cleaning registries" in r.getMessage()]
        assert [r.levelname for r in cleaned] == ["DEBUG", "DEBUG"]  # one per queue, still there when asked for
    finally:
        conn.close()


# --- every line about a call names it ----------------------------------------------------------------------

# Lines about a call that name neither its id nor its channel: a barge-in (logged by the worker-wide playout
# clock) and the media connection (logged by the transport's callbacks).
CALL_LINES = ("barge-in:", "media connected")


@pytest.mark.slow  # measured 9 s: a controller and a media worker as processes, one call with a barge-in
async def test_every_line_about_a_call_carries_its_id(sim, emulator, cluster_up, aredis, keys):
    script = Script(
        greeting=Reply(text="Hi.", audio_ms=400),
        turns={1: Reply(text="A long answer about our opening hours.", audio_ms=6000), 2: Reply(text="Sure.")},
        transcripts={1: "Opening hours?", 2: "Sorry, stop."},
    )
    emu = await emulator(script, speed=4.0)
    cluster = await cluster_up(emu)
    audio = (
        CallerAudio.silence(1000)
        .then(caller_speech("Opening hours?", 800))
        .then(CallerAudio.silence(1500))
        .then(caller_speech("Sorry, stop, one moment please.", 1500))
        .then(CallerAudio.silence(1000))
    )
    call = await sim.place_call(audio=audio)
    call_id = await call_of(aredis, keys, call.channel_id)
    await until(lambda: any(s.truncations for s in emu.sessions), timeout=20)
    await call.hangup()
    await until(lambda: worker_stats(aredis, keys, call_id))
    cluster.stop_all()

    for proc in cluster.processes:
        lines = proc.log_text().splitlines()
        about_the_call = [
            line
            for line in lines
            if call_id in line or call.channel_id in line or any(mark in line for mark in CALL_LINES)
        ]
        assert about_the_call, f"{proc.role} logged nothing about the call"
        without_id = [line for line in about_the_call if f"[call={call_id}]" not in line]
        assert without_id == [], f"{proc.role}: lines about call {call_id} without its id"
    worker_log = next(p for p in cluster.processes if p.role == "media-worker").log_text()
    assert f"session [call={call_id}]: barge-in:" in worker_log
