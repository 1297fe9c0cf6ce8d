"""Small parts of the media worker's call session: the call log in Redis (replay shape), transcript cuts at a
barge-in, wire format names."""

from __future__ import annotations

import redis.asyncio as aioredis

from media_worker.call_log import CallLog
from media_worker.call_audio import swap16 as _swap16
from media_worker.call_audio import wire_format
from media_worker.heard import cut as _cut
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
