"""Poison entries of the inbox streams: an entry no reader can use is logged once, copied to the dead-letter
stream (`{prefix}dead-letters`, with the stream it came from, its id and why) and counted
(`va_stream_dead_letters_total`); the reader then acknowledges or skips it and goes on. One bad entry never
ends a reader, nor is it retried forever.

The readers use a bytes client (`shared.redis_conn.stream_client`) and decode each entry here, field by field:
a decoding client would fail the whole read on one byte that is not UTF-8, and again on every retry.
"""

from __future__ import annotations

import logging

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.keys import Keys
from shared.metrics import DEAD_LETTERS

log = logging.getLogger("dead-letters")

MAXLEN = 10_000  # approximate: the oldest dead letters go first
DETAIL_MAX = 200  # characters of the reason's detail, in the log line and the dead letter

# Why an entry was dead-lettered: a closed set (the metric's label).
NOT_UTF8 = "not_utf8"  # a field name or value is not UTF-8
MISSING_FIELD = "missing_field"  # no `type` or no `data`
UNDECODABLE = "undecodable"  # `data` is not JSON, or not the message its type names
UNKNOWN_TYPE = "unknown_type"
HANDLER_FAILED = "handler_failed"  # handling it raised: a bug, contained to the one entry
REASONS = (NOT_UTF8, MISSING_FIELD, UNDECODABLE, UNKNOWN_TYPE, HANDLER_FAILED)  # = metrics.DEAD_LETTER_REASONS


class PoisonEntry(Exception):
    """An entry that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def message(fields: dict[bytes, bytes]) -> tuple[str, bytes]:
    """The (type, data) of an inbox entry read as bytes; raises PoisonEntry when it has none. `data` stays
    bytes (msgspec decodes JSON from bytes, and rejects invalid UTF-8 in it as a DecodeError)."""
    kind, data = fields.get(b"type"), fields.get(b"data")
    if kind is None or data is None:
        names = ", ".join(repr(k)[:40] for k in list(fields)[:5])
        raise PoisonEntry(MISSING_FIELD, f"needs the fields type and data; has {names or 'none'}")
    try:
        return kind.decode(), data
    except UnicodeDecodeError as exc:
        raise PoisonEntry(NOT_UTF8, f"the type is not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def reason_of(exc: BaseException) -> tuple[str, str]:
    """(reason, detail) for the exception handling an entry raised."""
    if isinstance(exc, PoisonEntry):
        return exc.reason, exc.detail
    if isinstance(exc, UnicodeError):
        return NOT_UTF8, str(exc)
    if isinstance(exc, msgspec.DecodeError):  # ValidationError included: JSON of the wrong shape
        return UNDECODABLE, str(exc)
    return HANDLER_FAILED, f"{type(exc).__name__}: {exc}"


async def dead_letter(
    redis: aioredis.Redis,
    keys: Keys,
    *,
    stream: str,
    label: str,
    entry_id: bytes | str,
    fields: dict,
    exc: BaseException,
) -> str:
    """Log, copy and count one poison entry (`label` names the stream in the metric). Best effort: Redis being
    down loses the copy, never the reader. Returns the reason."""
    reason, detail = reason_of(exc)
    detail = detail[:DETAIL_MAX]
    entry = entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else str(entry_id)
    DEAD_LETTERS.labels(label, reason).inc()
    # The detail names what is wrong, never the entry's content (a call plan holds the caller's number).
    log.warning(
        "%s entry %s moved to %s (%s): %s",
        label,
        entry,
        keys.dead_letters,
        reason,
        detail,
        exc_info=exc if reason == HANDLER_FAILED else None,
    )
    copy: dict = {b"stream": stream, b"entry_id": entry, b"reason": reason, b"detail": detail}
    for name, value in list(fields.items())[:20]:  # bounded: the inbox messages have two fields
        copy[b"field:" + (name if isinstance(name, bytes) else str(name).encode(errors="replace"))] = value
    try:
        await redis.xadd(keys.dead_letters, copy, maxlen=MAXLEN, approximate=True)
    except (RedisError, OSError) as err:
        log.warning("could not write the dead letter of %s entry %s: %s", label, entry, err)
    return reason
