"""The worker's inbox stream (`va:worker:{wid}:inbox`): assignments and controller commands, in order.

The stream is the worker's own (its id is new each start), so it is read from the beginning; a Redis outage
only pauses reading: the position is kept and nothing is skipped.

It is read as bytes and decoded entry by entry: an entry that cannot be used (not UTF-8, fields missing, JSON
that is not its message, an unknown type, or a handler that raised) is dead-lettered (shared/dead_letters.py)
and skipped, never the end of the reader. An assignment this worker could not use is reported to the
controller (`media_failed`, through `refuse`), which gives the call to another worker at once instead of
leaving the caller in silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis

from shared import dead_letters
from shared.keys import Keys

log = logging.getLogger("inbox")

Handler = Callable[[str, bytes], Awaitable[None]]
Refuse = Callable[[str, int, str], Awaitable[None]]  # (call id, epoch, why): CallManager.media_failed


class _CallRef(msgspec.Struct):
    """What a refusal needs from an assignment that could not be used: which call (and epoch, if readable)."""

    call_id: str
    epoch: int = 0


class Inbox:
    """The reader of one worker's inbox; its position outlives a restart of `consume` (shared/supervisor.py),
    so a restarted reader neither replays nor skips an entry."""

    def __init__(self, streams: aioredis.Redis, keys: Keys, worker_id: str, handler: Handler, refuse: Refuse):
        self.streams = streams  # a bytes client
        self.keys = keys
        self.key = keys.worker_inbox(worker_id)
        self.handler = handler  # gets each entry's type and data
        self.refuse = refuse  # tells the controller about an assignment that could not be used
        self.last: bytes | str = "0-0"  # the id of the last entry handled (or dead-lettered)

    async def consume(self, stopping: asyncio.Event, block_ms: int = 1000) -> None:
        failing = False
        while not stopping.is_set():
            try:
                batches = await self.streams.xread({self.key: self.last}, count=100, block=block_ms)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                if not failing:
                    log.warning("cannot read the inbox (%s); retrying", exc)
                failing = True
                try:
                    async with asyncio.timeout(0.5):  # the retry's pause, cut short by a stop
                        await stopping.wait()
                except TimeoutError:
                    pass
                continue
            if failing:
                log.info("reading the inbox again")
                failing = False
            if batches is None:
                continue  # nothing new within block_ms
            if not isinstance(batches, list):  # RESP2, the connection's protocol: [[stream, [(id, fields), ...]]]
                raise TypeError(f"XREAD answered a {type(batches).__name__}, not RESP2's list")
            for _, entries in batches:
                for entry_id, fields in entries:
                    self.last = entry_id
                    await self._one(entry_id, fields)

    async def _one(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        kind = ""
        try:
            kind, data = dead_letters.message(fields)
            await self.handler(kind, data)
        except Exception as exc:
            reason = await dead_letters.dead_letter(
                self.streams,
                self.keys,
                stream=self.key,
                label="worker_inbox",
                entry_id=entry_id,
                fields=fields,
                exc=exc,
            )
            if kind == "assign" or fields.get(b"type") == b"assign":
                await self._refuse(fields.get(b"data"), reason)

    async def _refuse(self, data: bytes | None, reason: str) -> None:
        try:
            ref = msgspec.json.decode(data or b"", type=_CallRef)
        except msgspec.DecodeError:
            log.error("an assignment without a readable call id was dead-lettered: the controller cannot be told")
            return
        await self.refuse(ref.call_id, ref.epoch, f"the assignment could not be used ({reason})")
