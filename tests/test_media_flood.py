"""A media peer that sends caller audio faster than real time, through a real media worker process: its memory
stays bounded, the worker closes the connection (the call's normal end: a hangup frame to Asterisk) and the
call is recorded as ended by a flood."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import pytest

from shared.messages import Assignment, CallPlan, inbox_fields
from sim.realtime import Reply, Script
from tests.media_harness import aredis, cluster_up, emulator, keys, sim, until, worker_stats  # noqa: F401

pytestmark = pytest.mark.slow

FRAME = b"\x10\x01\x40" + bytes(320)  # one 20 ms slin frame (8 kHz, 16 bit): silence
FLOOD_FOR_S = 20.0  # the worker ends a flood after 3 s; this is the bound for a loaded machine


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("pace", ["20x", "as fast as TCP takes it"])
async def test_a_peer_flooding_audio_is_cut_off_with_bounded_memory(emulator, cluster_up, aredis, keys, pace):
    emu = await emulator(Script(greeting=Reply(text="Hello.", audio_ms=500)), speed=4.0)
    cluster = await cluster_up(emu)
    worker = next(p for p in cluster.processes if p.role == "media-worker")
    (wid,) = await aredis.zrange(keys.workers, 0, -1)
    port = int(await aredis.hget(keys.worker(wid), "audiosocket_port"))
    call_id = str(uuid.uuid4())
    plan = CallPlan(
        call_id=call_id,
        caller_channel="flooding-caller",
        context="demo_openai",
        provider="openai_realtime",
        profile="telephony_slin_8k",
        transport="audiosocket",
        format="slin",
        provider_format="pcm16",
        greeting="Hello.",
    )
    await aredis.xadd(keys.worker_inbox(wid), inbox_fields("assign", Assignment(call_id=call_id, epoch=1, plan=plan)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x01\x00\x10" + uuid.UUID(call_id).bytes)
    await writer.drain()
    await asyncio.sleep(0.5)  # the session is up, the greeting playing
    before = rss_mb(worker.popen.pid)
    peak = before

    async def drain_reader() -> None:  # read what the worker sends until it closes the connection
        while await reader.read(65536):
            pass

    reading = asyncio.create_task(drain_reader())
    started = time.monotonic()
    batch = FRAME * 20  # 20x: 400 ms of audio every 20 ms
    try:
        while not reading.done() and time.monotonic() - started < FLOOD_FOR_S:
            writer.write(batch if pace == "20x" else FRAME * 200)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if pace == "20x":
                await asyncio.sleep(0.02)
            peak = max(peak, rss_mb(worker.popen.pid))
        closed_after = time.monotonic() - started
        closed = reading.done()
    finally:
        writer.close()
        reading.cancel()
    assert closed, f"the worker never closed a connection flooding at {pace} (RSS {before:.0f} -> {peak:.0f} MB)"
    record = await until(lambda: worker_stats(aredis, keys, call_id), timeout=10)
    assert record["worker_end_reason"] == "media_flood"
    # What the flood may cost: the uplink's 2 s of audio and what is in flight, far from the hundreds of MB an
    # unbounded queue reached in the measurements of issue 16.
    assert peak - before < 40, f"RSS grew from {before:.0f} to {peak:.0f} MB in {closed_after:.1f} s of flood"
