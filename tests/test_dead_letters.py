"""How an inbox entry is judged poison (shared/dead_letters.py), and what the dead letter keeps."""

from __future__ import annotations

import msgspec
import pytest
import redis.asyncio as aioredis

from shared import dead_letters, metrics
from shared.keys import Keys
from shared.messages import CallEnded


def test_the_reasons_are_the_metrics_label_values():
    assert dead_letters.REASONS == metrics.DEAD_LETTER_REASONS  # each starts at 0


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({b"type": b"\xff", b"data": b"{}"}, "not_utf8"),
        ({b"data": b"{}"}, "missing_field"),
        ({b"type": b"end"}, "missing_field"),
    ],
)
def test_entries_without_a_usable_type_and_data_are_poison(fields, reason):
    with pytest.raises(dead_letters.PoisonEntry) as caught:
        dead_letters.message(fields)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "data, reason",
    [
        (b'{"call_id":"\xff","reason":"x"}', "undecodable"),  # invalid UTF-8 inside the JSON
        (b"not json", "undecodable"),
        (b'{"call_id":1}', "undecodable"),  # JSON, but not the message
    ],
)
def test_data_that_is_not_its_message_is_undecodable(data, reason):
    kind, raw = dead_letters.message({b"type": b"end", b"data": data})
    with pytest.raises(msgspec.DecodeError) as caught:
        msgspec.json.decode(raw, type=CallEnded)
    assert dead_letters.reason_of(caught.value)[0] == reason


def test_any_other_exception_is_a_handler_failure():
    assert dead_letters.reason_of(KeyError("x"))[0] == "handler_failed"


async def test_the_dead_letter_keeps_the_entry_its_stream_id_and_reason(redis_url, prefix):
    keys = Keys(prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        before = metrics.DEAD_LETTERS.labels("worker_inbox", "not_utf8")._value.get()
        fields = {b"type": b"\xff", b"data": b"{}"}
        with pytest.raises(dead_letters.PoisonEntry) as caught:
            dead_letters.message(fields)
        await dead_letters.dead_letter(
            client, keys, stream="s", label="worker_inbox", entry_id=b"1-0", fields=fields, exc=caught.value
        )
        ((_, letter),) = await client.xrange(keys.dead_letters)
        assert letter[b"stream"] == b"s" and letter[b"entry_id"] == b"1-0" and letter[b"reason"] == b"not_utf8"
        assert letter[b"field:type"] == b"\xff" and letter[b"field:data"] == b"{}"
        assert metrics.DEAD_LETTERS.labels("worker_inbox", "not_utf8")._value.get() == before + 1
    finally:
        await client.aclose()
