"""Small parts of the media worker's call session: the call log in Redis (replay shape), transcript cuts at a
barge-in, wire format names."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from media_worker.call_log import CallLog
from media_worker.call_audio import swap16 as _swap16
from media_worker.call_audio import wire_format
from media_worker.flood import FLOOD_SECONDS, FloodGuard
from media_worker.heard import cut as _cut
from media_worker.uplink import MAX_MS, Uplink
from shared.keys import Keys


async def test_call_log_round_trips_into_the_replay_shape(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    try:
        log = CallLog(client, Keys(prefix), "call-1")
        log.utterance("assistant", "Hello, how can I help?", "item_a")
        log.utterance("user", "  When are you open?  ", "item_u")
        log.utterance("user", "   ")  # nothing said: nothing logged
        log.tool("transfer", '{"destination":"sales"}', '{"ok":true}', "call_x")
        assert await log.history() == [
            {"role": "assistant", "text": "Hello, how can I help?"},
            {"role": "user", "text": "When are you open?"},
            {"call_id": "call_x", "name": "transfer", "arguments": '{"destination":"sales"}', "output": '{"ok":true}'},
        ]
        entries = [f for _, f in await client.xrange(Keys(prefix).call_log("call-1"))]
        assert [e[b"role"] for e in entries] == [b"assistant", b"user", b"tool"]
        assert all(int(e[b"t_ms"]) >= 0 for e in entries) and log.written == 3 and log.failed == 0
    finally:
        await client.aclose()


async def test_the_replay_survives_call_log_entries_that_are_not_utf8_or_malformed(redis_url, prefix):
    """The session's client decodes (as the worker's does): one non-UTF-8 entry used to fail the whole replay,
    and with it the rebuilt conversation of a reconnect or a move to another worker."""
    from shared import metrics

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    raw = aioredis.Redis.from_url(redis_url)
    key = Keys(prefix).call_log("call-1")
    bad = metrics.CALL_LOG_BAD_ENTRIES
    before = bad.labels("not_utf8")._value.get(), bad.labels("malformed")._value.get()
    try:
        await raw.xadd(key, {b"role": b"user", b"text": b"caf\xe9 au lait", b"t_ms": b"1"})  # Latin-1, not UTF-8
        await raw.xadd(key, {b"something": b"else"})  # not ours: no role
        await raw.xadd(key, {b"role": b"assistant", b"text": b"Here you are.", b"t_ms": b"2"})
        history = await CallLog(client, Keys(prefix), "call-1").history()
    finally:
        await client.aclose()
        await raw.aclose()
    assert history == [{"role": "user", "text": "caf\ufffd au lait"}, {"role": "assistant", "text": "Here you are."}]
    after = bad.labels("not_utf8")._value.get(), bad.labels("malformed")._value.get()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_call_log_holds_a_bounded_backlog_while_redis_is_away(monkeypatch):
    """Redis unreachable (a port nothing listens on): the entries wait, at most MAX_PENDING of them; the rest are
    counted as failed, not held without bound."""
    from media_worker import call_log

    monkeypatch.setattr(call_log, "MAX_PENDING", 5)
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    log = CallLog(client, Keys("va-test:"), "call-1")
    try:
        for i in range(12):
            log.utterance("user", f"utterance {i}")
        assert log._pending.qsize() == 5 and log.failed == 7  # the writer has not run yet
    finally:
        await log.close(timeout=0.1)
        await client.aclose()


def test_a_cut_transcript_ends_at_a_whole_word():
    text = "We are open on weekdays from eight in the morning until six."
    assert _cut(text, 1.0) == text
    assert _cut(text, 0.4) == "We are open on weekdays…"
    assert _cut(text, 0.0) == ""
    assert _cut("Hi.", 0.5) == "H…"


def test_wire_formats_and_byte_swap():
    assert wire_format("rtp", "slin") == "slin_be" and wire_format("rtp", "ulaw") == "ulaw"
    assert wire_format("audiosocket", "slin") == "slin" and wire_format("audiosocket", "slin24") == "slin24"
    assert _swap16(b"\x01\x02\x03\x04") == b"\x02\x01\x04\x03"


def test_the_uplink_holds_at_most_two_seconds_dropping_the_oldest():
    """Frames come faster than they are sent (a flooding peer, a stalled socket): the queue toward the model
    stops at MAX_MS of audio, the oldest frames go first, and each drop is counted."""
    uplink = Uplink(bytes_per_ms=48)  # pcm16 24 kHz: 960 bytes a 20 ms frame
    frames = [bytes([i % 256]) * 960 for i in range(1000)]  # 20 s of audio, nobody sending
    for frame in frames:
        uplink.put(frame)
    assert len(uplink) == MAX_MS // 20 and uplink.dropped == 1000 - MAX_MS // 20
    assert list(uplink._frames) == frames[-(MAX_MS // 20) :]  # the most recent speech is what is kept


async def test_the_uplink_writes_at_once_when_nothing_waits_and_keeps_the_order_when_something_does():
    """A frame that finds the uplink idle goes out through `send_now`, with no task hop; while the task awaits a
    send (a full socket, a reconnect) later frames queue behind it, and `send_now` is not used until it is done."""
    wire: list[bytes] = []
    gate = asyncio.Event()
    gate.set()

    async def send(pcm: bytes) -> None:
        await gate.wait()
        wire.append(pcm)

    def send_now(pcm: bytes) -> bool:
        if pcm.startswith(b"slow"):
            return False  # as RealtimeClient.append_now when the socket would make it wait
        wire.append(pcm)
        return True

    uplink = Uplink(bytes_per_ms=48)
    task = asyncio.create_task(uplink.run(send, send_now))
    try:
        await asyncio.sleep(0)
        uplink.put(b"a")
        assert wire == [b"a"]  # written within put()
        gate.clear()
        uplink.put(b"slow b")  # declined: queued for the task, whose send now waits
        await asyncio.sleep(0)
        uplink.put(b"c")  # must not overtake b
        uplink.put(b"d")
        assert wire == [b"a"] and len(uplink) == 2
        gate.set()
        async with asyncio.timeout(5):
            while len(wire) < 4:
                await asyncio.sleep(0)
        assert wire == [b"a", b"slow b", b"c", b"d"]
        uplink.put(b"e")
        assert wire[-1] == b"e"  # idle again: at once
        uplink.put(b"pad f", at_once=False)  # the clock's padding: left to the task even when idle
        uplink.put(b"g")  # and what follows it waits its turn
        assert wire[-1] == b"e"
        async with asyncio.timeout(5):
            while len(wire) < 7:
                await asyncio.sleep(0)
        assert wire[-3:] == [b"e", b"pad f", b"g"]
    finally:
        task.cancel()


async def test_a_failing_direct_send_hands_the_uplink_to_its_task():
    """A bug in the direct send must not cost the caller's audio: it is logged, and the task sends from then on."""
    wire: list[bytes] = []

    async def send(pcm: bytes) -> None:
        wire.append(pcm)

    def broken(pcm: bytes) -> bool:
        raise RuntimeError("direct send is broken")

    uplink = Uplink(bytes_per_ms=48)
    task = asyncio.create_task(uplink.run(send, broken))
    try:
        await asyncio.sleep(0)
        for frame in (b"a", b"b", b"c"):
            uplink.put(frame)
        async with asyncio.timeout(5):
            while len(wire) < 3:
                await asyncio.sleep(0)
        assert wire == [b"a", b"b", b"c"]
    finally:
        task.cancel()


def test_a_backlog_is_not_a_flood_but_a_steady_flood_is():
    guard = FloodGuard()
    per_ms = 16  # slin 8 kHz
    sent, t = 0, 0.0
    assert not guard.check(sent, per_ms, t)
    # Real time, then a 1.5 s backlog delivered at once after a stall, then real time again: never a flood.
    for seconds_of_audio in (1.0, 1.0, 2.5, 1.0, 1.0, 1.0):
        sent += int(seconds_of_audio * 1000 * per_ms)
        t += 1.0
        assert not guard.check(sent, per_ms, t)
    # 20x real time: a flood once it has lasted FLOOD_SECONDS checks in a row.
    verdicts = []
    for _ in range(FLOOD_SECONDS):
        sent += 20 * 1000 * per_ms
        t += 1.0
        verdicts.append(guard.check(sent, per_ms, t))
    assert verdicts == [False] * (FLOOD_SECONDS - 1) + [True]
    assert guard.peak_ratio == pytest.approx(20.0)
