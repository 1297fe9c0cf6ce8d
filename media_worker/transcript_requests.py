"""The caller's transcript requests on one call: when a `request_transcript` call may schedule an email.

Three rules, so that neither the caller nor a confused model can turn the agent into a mailer:

- **Read back, then a yes.** A new address is never scheduled on the call that brings it, `confirmed` or not:
  that call answers with the spelling to read back. Only a later confirmed call for the same address counts,
  and only once the caller has spoken since the read-back (a caller turn committed in between): two calls in
  one response, or a confirmation in the response right after the read-back, cannot skip the caller.
- **A few addresses.** At most `tools.request_transcript.max_addresses` distinct addresses per call; the model
  is told plainly when no more fit. The count that holds is the one in Redis (`store_address`, one script),
  so parallel calls can neither lose an address nor exceed it.
- **A rate limit.** At most `max_calls_per_minute` calls in any 60 s of the call.

`TranscriptRequests` is sans-I/O (times and caller turns come in as numbers); the tool runner carries out its
verdicts and stores confirmed addresses with `store_address`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import redis.asyncio as aioredis

WINDOW_S = 60.0


class Verdict(Enum):
    READ_BACK = "read_back"  # a new (or corrected) address: read it back and ask the caller
    UNCONFIRMED = "unconfirmed"  # confirmed true, but the address was never read back
    AWAITING_CALLER = "awaiting_caller"  # read back, but the caller has not answered yet
    STORE = "store"  # read back and confirmed after the caller spoke: store it (atomically, with the limit)
    FULL = "full"  # max_addresses reached
    TOO_OFTEN = "too_often"  # max_calls_per_minute reached


@dataclass
class TranscriptRequests:
    max_addresses: int
    max_calls_per_minute: int

    def __post_init__(self) -> None:
        self._calls: deque[float] = deque(maxlen=self.max_calls_per_minute)  # times of the last calls
        self._read_back: dict[str, int] = {}  # casefolded address -> caller turns when it was read back
        self.stored: list[str] = []  # the addresses in the call record, as the last store returned them

    def decide(self, address: str, confirmed: bool, caller_turns: int, now: float) -> Verdict:
        """What to do with one call for `address` (already parsed and valid); `caller_turns` counts the
        caller's committed turns so far, `now` is monotonic seconds."""
        if len(self._calls) == self._calls.maxlen and now - self._calls[0] < WINDOW_S:
            return Verdict.TOO_OFTEN
        self._calls.append(now)
        key = address.casefold()
        if any(a.casefold() == key for a in self.stored):
            return Verdict.STORE  # already there: storing again changes nothing and says so
        if len(self.stored) >= self.max_addresses:
            return Verdict.FULL
        read_at = self._read_back.get(key)
        if not confirmed or read_at is None:
            self._read_back[key] = caller_turns
            return Verdict.READ_BACK if not confirmed else Verdict.UNCONFIRMED
        if caller_turns <= read_at:
            return Verdict.AWAITING_CALLER
        return Verdict.STORE


# KEYS[1] the call record; ARGV[1] the address, ARGV[2] max_addresses. Returns {added, list}: added 1 (new),
# 0 (there already), -1 (full), -2 (no call record: the call is over). Addresses compare casefolded (ASCII,
# as validate_email allows): the same address in another case is the same transcript job.
_STORE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, ''} end
local current = redis.call('HGET', KEYS[1], 'transcript_to') or ''
local wanted = string.lower(ARGV[1])
local n = 0
for address in string.gmatch(current, '[^,]+') do
  if string.lower(address) == wanted then return {0, current} end
  n = n + 1
end
if n >= tonumber(ARGV[2]) then return {-1, current} end
local updated = current == '' and ARGV[1] or current .. ',' .. ARGV[1]
redis.call('HSET', KEYS[1], 'transcript_to', updated)
return {1, updated}
"""

ADDED, ALREADY, FULL, NO_CALL = 1, 0, -1, -2


async def store_address(redis: aioredis.Redis, call_key: str, address: str, limit: int) -> tuple[int, list[str]]:
    """Add `address` to the call record's `transcript_to` in one step, unless `limit` addresses are there
    already; returns (ADDED | ALREADY | FULL | NO_CALL, the addresses stored now)."""
    outcome, stored = await redis.eval(_STORE, 1, call_key, address, str(limit))
    text = stored.decode() if isinstance(stored, bytes) else str(stored)
    return int(outcome), [a for a in text.split(",") if a]
