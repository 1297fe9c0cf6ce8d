"""The call session in this process, with its real neighbours: the worker's AudioSocket server and calls
(Asterisk is a raw TCP client here, so the test controls every frame), the playout clock, the real Redis and
the Realtime emulator. For what only the shell does: following a format change on the wire, and stopping."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid

import msgspec
import numpy as np
import pytest
import redis.asyncio as aioredis

from media_worker.audio.playout import PlayoutClock
from media_worker.call_state import Stage
from media_worker.calls import CallManager
from media_worker.context import WorkerContext
from media_worker.realtime.client import ClientSettings, RealtimeClient
from media_worker.realtime.pool import SessionPool
from shared.tasks import TaskSet
from media_worker.transport.audiosocket_codec import HEADER, KIND_SLIN16, KIND_SLIN24, encode
from media_worker.transport.audiosocket_server import AudioSocketServer
from shared.config.schema import Config
from shared.keys import Keys
from shared.messages import Assignment, CallEnded, CallPlan
from shared.metrics import WORKER_CALLS
from sim.realtime import Emulator, Reply, Script
from tests.conftest import TEST_API_KEY
from tests.media_harness import until


class Worker:
    """A media worker's call machinery without the process around it."""

    def __init__(self, ctx: WorkerContext, calls: CallManager, server: AudioSocketServer, stop: asyncio.Event):
        self.ctx, self.calls, self.server, self.stop = ctx, calls, server, stop


@pytest.fixture
async def worker(redis_url, prefix):
    script = Script(greeting=Reply(text="Hello there, thanks for calling.", audio_ms=1500))
    emu = Emulator(script=script, api_keys={TEST_API_KEY}, speed=4.0)
    await emu.start("127.0.0.1", 0)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    settings = ClientSettings(url=emu.url, model="gpt-realtime", api_key=TEST_API_KEY)
    clock, stop = PlayoutClock(), asyncio.Event()
    ctx = WorkerContext(Config(), redis, Keys(prefix), "worker-t", clock, SessionPool(settings, 0), settings)
    calls = CallManager(ctx, listen_host="127.0.0.1", allowed_hosts=[])
    server = AudioSocketServer("127.0.0.1", 0, bind=calls.bind_audiosocket)
    await server.start()
    ticking = asyncio.create_task(clock.run(stop))
    yield Worker(ctx, calls, server, stop), emu
    await calls.stop_all("test_over")
    stop.set()
    await ticking
    await server.stop()
    await redis.aclose()
    await emu.stop()


def plan(call_id: str, fmt: str) -> CallPlan:
    return CallPlan(
        call_id=call_id,
        caller_channel="caller-1",
        context="t",
        provider="openai_realtime",
        profile="p",
        transport="audiosocket",
        format=fmt,
        provider_format="pcm16",
        greeting="Hello there.",
    )


def tone(rate: int, ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * math.pi * hz * t) * 8000).astype("<i2").tobytes()


def loud(frame: bytes) -> bool:
    return len(frame) > 1 and int(np.abs(np.frombuffer(frame, "<i2")).max()) > 500


def dominant_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


async def read_frames(reader: asyncio.StreamReader, into: list[tuple[int, bytes]]) -> None:
    while True:
        kind, length = HEADER.unpack(await reader.readexactly(3))
        into.append((kind, await reader.readexactly(length)))


async def test_a_format_change_on_the_wire_reconfigures_the_call(worker):
    """The call asked Asterisk for slin24; Asterisk sends slin16. The link learns it from the first audio
    frame and the session follows: what it sends is slin16 from then on (the greeting already queued in slin24
    is converted, not lost), and the caller's audio reaches the model at the right pitch."""
    w, emu = worker
    call_id = str(uuid.uuid4())
    await w.calls.assign(Assignment(call_id=call_id, epoch=1, plan=plan(call_id, "slin24")))
    reader, writer = await asyncio.open_connection("127.0.0.1", w.server.port)
    writer.write(encode(0x01, uuid.UUID(call_id).bytes))
    await writer.drain()
    heard: list[tuple[int, bytes]] = []
    reading = asyncio.create_task(read_frames(reader, heard))
    try:
        session = w.calls.sessions[call_id]
        # The greeting plays, in the format the call asked for.
        await until(lambda: any(kind == KIND_SLIN24 and loud(p) for kind, p in heard), timeout=10)
        switched_at = len(heard)

        # Asterisk's side: 20 ms slin16 frames, paced: silence while the greeting ends, an 800 ms tone, silence.
        async def send(frames: list[bytes]) -> None:
            for frame in frames:
                writer.write(encode(KIND_SLIN16, frame))
                await writer.drain()
                await asyncio.sleep(0.02)

        await send([bytes(640)] * 100)
        greeting_heard = list(heard)
        await send([tone(16000, 800)[i : i + 640] for i in range(0, 25600, 640)] + [bytes(640)] * 60)
        after = heard[switched_at + 3 :]  # a frame or two may have been on their way
        assert after and all(kind == KIND_SLIN16 and len(p) == 640 for kind, p in after), {
            (k, len(p)) for k, p in after
        }
        assert session.audio.wire == "slin16" and session.state.stage is Stage.CONVERSATION
        # The greeting went on in slin16: the caller heard as much of it as the model said (within a frame or
        # two of the switch), not just its start.
        conversation = emu.sessions[0].conversation
        greeting = next(item["id"] for item in conversation.items if item.get("role") == "assistant")
        said = bytes(conversation.audio[greeting])  # 24 kHz
        said_loud = sum(loud(said[i : i + 960]) for i in range(0, len(said), 960))
        heard_loud = sum(loud(p) for _, p in greeting_heard)
        assert said_loud > 40 and abs(heard_loud - said_loud) <= 3, (heard_loud, said_loud)
        # The model got the caller's tone at 24 kHz, at its pitch (slin16 read as slin24 would be 660 Hz).
        [user_item] = [item["id"] for item in conversation.items if item.get("role") == "user"]
        assert abs(dominant_hz(bytes(conversation.audio[user_item]), 24000) - 440) < 15
    finally:
        reading.cancel()
        writer.close()


async def test_stop_completes_even_when_a_task_ignores_its_cancellation(worker, caplog):
    w, _ = worker
    call_id = str(uuid.uuid4())
    await w.calls.assign(Assignment(call_id=call_id, epoch=1, plan=plan(call_id, "slin")))
    session = w.calls.sessions[call_id]
    await until(lambda: session.client is not None and session.state.stage is not Stage.STARTING, timeout=10)

    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # a bug: the cancellation is swallowed

    task = session.tasks.spawn(stubborn(), "stubborn")
    caplog.set_level(logging.ERROR, logger="tasks")
    session.stop("test")
    session.stop("again")  # idempotent: the first reason stays, the cleanup is not cut
    async with asyncio.timeout(8):
        await session.finished.wait()
    assert session.end_reason == "test"
    assert "stubborn did not stop" in caplog.text
    record = await w.ctx.redis.hgetall(w.ctx.keys.call(call_id))
    assert record["worker_end_reason"] == "test"
    release.set()  # let the test's stubborn task go, or the loop could not close
    assert task is not None
    await task


async def test_a_task_set_logs_a_failure_once_and_closes_idempotently(caplog):
    tasks = TaskSet("call t")
    caplog.set_level(logging.ERROR, logger="tasks")

    async def fails() -> None:
        raise RuntimeError("boom")

    failing = tasks.spawn(fails(), "fails")
    sleeping = tasks.spawn(asyncio.sleep(3600), "sleeps")
    assert failing is not None and sleeping is not None
    await asyncio.wait([failing])
    await asyncio.sleep(0)  # the done callback runs
    assert caplog.text.count("task fails failed") == 1 and len(tasks) == 1  # the failed one is let go
    await tasks.close()
    assert sleeping.cancelled() and len(tasks) == 0
    await tasks.close()
    late = fails()
    assert tasks.spawn(late, "late") is None  # a closed set starts nothing (and closes the coroutine)
    assert late.cr_frame is None


def inbox_message(kind: str, struct) -> tuple[str, str]:
    return kind, msgspec.json.encode(struct).decode()


@pytest.mark.parametrize("gap_s", [None, 0.0, 0.005, 0.02, 0.05])
async def test_an_end_right_after_the_assignment_leaves_nothing(worker, gap_s):
    """The controller's `end` follows the `assign` at once (the caller hung up on admission): in the same inbox
    read (gap None: handled back to back, the session's task not yet started), or a few ms later (the session
    is taking its connection, or configuring it). Either way the session ends: it leaves the worker's calls,
    `va_worker_calls_active` comes back down, and no Realtime session stays open."""
    w, emu = worker
    call_id = str(uuid.uuid4())
    before = WORKER_CALLS._value.get()
    await w.calls.handle(*inbox_message("assign", Assignment(call_id=call_id, epoch=1, plan=plan(call_id, "slin"))))
    if gap_s is not None:
        await asyncio.sleep(gap_s)
    await w.calls.handle(*inbox_message("end", CallEnded(call_id=call_id, reason="caller_hangup")))
    await until(lambda: call_id not in w.calls.sessions and WORKER_CALLS._value.get() == before, timeout=10)
    await until(lambda: not emu.open_sessions(), timeout=5)


async def test_an_essential_task_that_dies_is_reported_and_its_owner_told(caplog):
    deaths: list[str] = []
    tasks = TaskSet("media worker", on_death=deaths.append)
    caplog.set_level(logging.ERROR, logger="tasks")

    async def fails() -> None:
        raise RuntimeError("boom")

    helper = tasks.spawn(fails(), "helper")  # not essential: logged, nothing more
    assert helper is not None
    await asyncio.wait([helper])
    await asyncio.sleep(0)
    assert tasks.failure is None and not deaths
    inbox = tasks.spawn(fails(), "inbox", essential=True)
    assert inbox is not None
    await asyncio.wait([inbox])
    await asyncio.sleep(0)
    assert tasks.failure == "media worker: task inbox died (RuntimeError)"
    assert deaths == ["task inbox died (RuntimeError)"]
    await tasks.close()


async def test_a_call_whose_uplink_sender_dies_ends(worker, monkeypatch):
    """The task that sends the caller's audio to the model fails: the call ends (it would go on deaf)."""
    w, _ = worker
    call_id = str(uuid.uuid4())

    async def broken_append(self, pcm: bytes) -> None:
        raise RuntimeError("append is broken")

    monkeypatch.setattr(RealtimeClient, "append", broken_append)
    monkeypatch.setattr(RealtimeClient, "append_now", lambda self, pcm: False)  # every frame through the task
    await w.calls.assign(Assignment(call_id=call_id, epoch=1, plan=plan(call_id, "slin")))
    session = w.calls.sessions[call_id]
    reader, writer = await asyncio.open_connection("127.0.0.1", w.server.port)
    writer.write(encode(0x01, uuid.UUID(call_id).bytes))
    try:
        await until(lambda: session.linked.is_set(), timeout=10)
        async with asyncio.timeout(10):  # the clock pads the missing caller audio: the uplink sends, and fails
            await session.finished.wait()
        assert session.end_reason == "session_error"
    finally:
        writer.close()
