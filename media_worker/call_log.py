"""The call's conversation log in Redis (`va:call:{id}:log`): every finished utterance and tool call.

It is the source of the summary emails and of the replay that rebuilds the conversation on a new Realtime
session (after a reconnect, a rotation, or on another worker), so nothing the caller said lives only in this
process. Writes are fire-and-forget tasks kept in order by one writer, so the audio path never waits on Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.client import NEVER_DECODE
from redis.typing import EncodableT, FieldT

from shared.keys import Keys
from shared.metrics import CALL_LOG_BAD_ENTRIES

log = logging.getLogger("call_log")

MAX_ENTRIES = 5000  # a two-hour call has a few hundred; the cap only guards against a runaway loop
# Entries waiting for Redis (an outage: each waits up to ~3 s of retries). A call adds a few a minute, so the bound
# is only reached by a runaway loop; then the newest entry is refused, counted in `failed` and logged once.
MAX_PENDING = 1000


class CallLog:
    def __init__(self, redis: aioredis.Redis, keys: Keys, call_id: str, started: float | None = None):
        self.redis = redis
        self.key = keys.call_log(call_id)
        self.started = time.monotonic() if started is None else started
        self._pending: asyncio.Queue[dict[FieldT, EncodableT]] = asyncio.Queue(MAX_PENDING)
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        self.failed = 0

    def _t_ms(self) -> str:
        return str(int((time.monotonic() - self.started) * 1000))

    def utterance(self, role: str, text: str, item_id: str = "") -> None:
        if text.strip():
            self._put({"role": role, "text": text.strip(), "item_id": item_id, "t_ms": self._t_ms()})

    def tool(self, name: str, arguments: str, output: str, call_id: str) -> None:
        self._put(
            {
                "role": "tool",
                "text": f"{name}({arguments}) -> {output}",
                "name": name,
                "arguments": arguments,
                "output": output,
                "item_id": call_id,
                "t_ms": self._t_ms(),
            }
        )

    def _put(self, entry: dict[str, str]) -> None:
        try:
            self._pending.put_nowait({key: value for key, value in entry.items()})
        except asyncio.QueueFull:
            self.failed += 1
            if self.failed == 1:
                log.error("call log: %d entries wait for Redis already; dropping new ones", MAX_PENDING)
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="call-log")

    async def _write(self) -> None:
        while not self._pending.empty():
            entry = self._pending.get_nowait()
            for attempt in range(5):
                try:
                    await self.redis.xadd(self.key, entry, maxlen=MAX_ENTRIES, approximate=True)
                    self.written += 1
                    break
                except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                    log.warning("call log write failed (%s); retrying", exc)
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                self.failed += 1
                log.error("call log entry lost after retries: %s", entry.get("role"))

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything logged so far is in Redis (call end)."""
        if self._writer is not None and not self._writer.done():
            # asyncio.wait, not wait_for: the writer goes on (the entries still get written) if we stop waiting.
            _, pending = await asyncio.wait([self._writer], timeout=timeout)
            if pending:
                log.warning("call log still has %d entries unwritten", self._pending.qsize())

    async def close(self, timeout: float = 5.0) -> None:
        """The call is over: write what is left (bounded by flush's wait), then stop the writer."""
        await self.flush(timeout)
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.wait([self._writer])

    async def history(self) -> list[dict[str, Any]]:
        """The conversation so far, in the shape `RealtimeProtocol.replay` takes. Read as bytes and decoded field
        by field: an entry that is not UTF-8 (a corrupt entry, a Redis shared with something else) is kept with
        its bad bytes replaced, one without a known role is skipped; both counted, neither fails the replay."""
        await self.flush()
        items: list[dict[str, Any]] = []
        # NEVER_DECODE: this read alone in bytes, whatever the client (a decoding one would raise on the whole read)
        entries = await self.redis.execute_command("XRANGE", self.key, "-", "+", **{NEVER_DECODE: True}) or []
        not_utf8 = malformed = 0
        for _, fields in entries:
            if not isinstance(fields, dict):
                continue  # an entry deleted while we read
            f, clean = _decoded(fields)
            not_utf8 += not clean
            if f.get("role") == "tool":
                items.append(
                    {
                        "call_id": f.get("item_id", ""),
                        "name": f.get("name", ""),
                        "arguments": f.get("arguments", "{}"),
                        "output": f.get("output"),
                    }
                )
            elif f.get("role") in ("user", "assistant"):
                items.append({"role": f["role"], "text": f.get("text", "")})
            else:
                malformed += 1
        if not_utf8 or malformed:
            CALL_LOG_BAD_ENTRIES.labels("not_utf8").inc(not_utf8)
            CALL_LOG_BAD_ENTRIES.labels("malformed").inc(malformed)
            log.warning(
                "call log %s: %d entries not UTF-8 (bad bytes replaced), %d skipped", self.key, not_utf8, malformed
            )
        return items


def _decoded(fields: dict[bytes, bytes]) -> tuple[dict[str, str], bool]:
    """An entry's fields as text, bytes that are not UTF-8 replaced (U+FFFD); and whether none needed it."""
    out: dict[str, str] = {}
    clean = True
    for name, value in fields.items():
        try:
            out[name.decode()] = value.decode()
        except UnicodeDecodeError:
            clean = False
            out[name.decode(errors="replace")] = value.decode(errors="replace")
    return out, clean
