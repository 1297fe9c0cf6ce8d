"""Which controller leads: a fenced leadership lease in Redis, and the fence every write of call state checks.

One controller holds the lease and serves the Stasis app; the others stand by, polling for it. The lease is a
STRING `{prefix}leader` = `{token}:{controller id}` with a TTL (`controller.leader_lease_ms`); `token` comes from
a counter `{prefix}leader:token`, INCR'd on every acquisition. The holder renews it every quarter of the TTL.

Fencing: every Redis write of call state the controller makes runs inside a Lua script that first checks the
lease still holds this process's value (`FENCE_LUA`, folded into the admission scripts and used by
`Fence.write` for the plain writes). A refused write raises `Fenced` (a RedisError, so the callers' existing
"Redis trouble: leave it to the next reconcile" paths apply) and deposes this process: it sends no further ARI
request (the gate, `Leadership.may_act`, closes) and the controller exits non-zero to come back as a standby.

A lease that is simply gone (it expired while this process was paused, or Redis restarted without its data) is
taken back by its last holder only if nobody acquired one since: the counter still holds the holder's token, or
is gone too (a restart without persistence; any acquisition would have re-created it). Otherwise the holder has
been deposed. The check compares the whole value (token and controller id), so two processes can never both
pass it, whatever the counter did across a restart.

The lease is also the gate for ARI: a leader that has not confirmed its lease within the TTL (Redis away, the
event loop stalled) confirms it before its next ARI request, and sends none if it cannot.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from controller.ari.errors import AriUnavailable
from shared.keys import Keys
from shared.metrics import FENCED_WRITES, LEADER, LEADER_CHANGES
from shared.redis_conn import UNAVAILABLE

log = logging.getLogger("leadership")

# Lua: fence_ok(lease key, counter key, our value, our token, ttl ms). True while the lease holds our value; a
# lease that is gone is ours again when nobody acquired one since (see the module docstring).
FENCE_LUA = """
local function fence_ok(lease, counter, mine, token, ttl)
  local held = redis.call('GET', lease)
  if held == mine then return true end
  if held then return false end
  local n = redis.call('GET', counter)
  if n and n ~= token then return false end
  redis.call('SET', lease, mine, 'PX', ttl)
  redis.call('SET', counter, token)
  return true
end
"""

_ACQUIRE = """
-- KEYS: 1 lease, 2 counter. ARGV: 1 controller id, 2 ttl ms. Returns {token, value} or {0, holder}.
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local token = redis.call('INCR', KEYS[2])
local mine = token .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
return {token, mine}
"""

_RENEW = (
    FENCE_LUA
    + """
-- KEYS: 1 lease, 2 counter. ARGV: 1 our value, 2 our token, 3 ttl ms. 1 renewed, 0 deposed.
if not fence_ok(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_RESIGN = """
-- KEYS: 1 lease. ARGV: 1 our value. A clean stop hands the lease over at once instead of after its TTL.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_WRITE = (
    FENCE_LUA
    + """
-- KEYS: 1 lease, 2 counter. ARGV: 1 our value, 2 our token, 3 ttl ms, 4 the commands (JSON list of lists).
-- {0}: refused, nothing written; else {1, each command's reply}.
if not fence_ok(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]) then return {0} end
local out = {1}
for _, command in ipairs(cjson.decode(ARGV[4])) do out[#out + 1] = redis.call(unpack(command)) end
return out
"""
)


class LeaderState(enum.Enum):
    STARTING = "starting"  # has not asked for the lease yet: neither leads nor stands by (not ready)
    STANDBY = "standby"  # waiting for the lease; no ARI events connection, no control requests
    LEADING = "leading"  # holds the lease, confirmed within its TTL
    LAPSED = "lapsed"  # held it, but could not confirm it within the TTL (Redis away): no ARI request until it does
    DEPOSED = "deposed"  # another controller holds it (or held it since): this process acts no more and exits


class Fenced(RedisError):
    """A write of call state refused: this process no longer holds the leadership lease."""


class AriGated(AriUnavailable):
    """An ARI request this process may not send: it does not hold a confirmed leadership lease. Status 0, like
    an unreachable Asterisk: what the request was for is left to the leader's next reconcile."""


class Leadership:
    """This process's side of the lease: acquire (standby), renew (leader), the fence values, the ARI gate."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, controller_id: str, lease_ms: int):
        self.redis = redis
        self.lease_key = keys.leader
        self.counter_key = keys.leader_token
        self.controller_id = controller_id
        self.lease_ms = lease_ms
        self.state = LeaderState.STARTING
        self.token = 0
        self.value = ""  # `{token}:{controller id}` while we hold (or held) the lease
        self.valid_until = 0.0  # monotonic: the lease surely holds until then (renewal sent + TTL)
        self.deposed = asyncio.Event()
        self.on_regained: Callable[[], None] | None = None  # Redis came back after failed renewals: reconcile
        self.why_deposed = ""
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._resign = redis.register_script(_RESIGN)
        self._write = redis.register_script(_WRITE)
        self._confirming = asyncio.Lock()
        self._unconfirmed = False  # a renewal failed since the last success: Redis may have lost writes meanwhile
        self._failed_at = 0.0  # monotonic: when the last renewal failed
        LEADER.set(0)

    @property
    def renew_every_s(self) -> float:
        return self.lease_ms / 4000

    def holds(self) -> bool:
        return self.state is LeaderState.LEADING and time.monotonic() < self.valid_until

    # --- standby ------------------------------------------------------------------------------------------
    async def try_acquire(self) -> bool:
        """One attempt: True when this process now leads."""
        sent = time.monotonic()
        token, value = await self._acquire(
            keys=[self.lease_key, self.counter_key], args=[self.controller_id, self.lease_ms]
        )
        if int(token) == 0:
            if self.state is LeaderState.STARTING:
                self.state = LeaderState.STANDBY
            return False
        self.token, self.value = int(token), _text(value)
        self.valid_until = sent + self.lease_ms / 1000
        self.state = LeaderState.LEADING
        LEADER.set(1)
        LEADER_CHANGES.inc()
        log.info("leading the cluster (lease token %d)", self.token)
        return True

    async def wait_to_lead(self, stopping: asyncio.Event) -> bool:
        """Poll for the lease until this process holds it (True) or `stopping` is set (False)."""
        holder = ""
        poll_s = min(self.lease_ms / 5000, 0.2)  # a dead leader's lease is taken within its TTL + one poll
        # After Redis was away, the leader's lease has lapsed too, through no fault of the leader: it gets one TTL
        # to confirm it again before this standby competes (a race won here would depose a healthy leader).
        defer_until = 0.0
        while not stopping.is_set():
            try:
                if time.monotonic() >= defer_until and await self.try_acquire():
                    return True
                current = _text(await self.redis.get(self.lease_key) or b"")
                if current != holder:
                    holder = current
                    log.info("standing by: %s leads", holder.partition(":")[2] or "nobody")
            except (RedisError, OSError) as exc:  # Redis away or loading: poll again
                log.debug("standby: Redis unavailable (%s)", exc)
                defer_until = time.monotonic() + self.lease_ms / 1000
            try:
                async with asyncio.timeout(poll_s):
                    await stopping.wait()
            except TimeoutError:
                pass
        return False

    # --- leader ------------------------------------------------------------------------------------------
    async def keep(self, stopping: asyncio.Event) -> None:
        """Renew the lease every quarter TTL until `stopping` or deposed."""
        while not stopping.is_set() and self.state is not LeaderState.DEPOSED:
            try:
                async with asyncio.timeout(self.renew_every_s):
                    await stopping.wait()
                return
            except TimeoutError:
                pass
            await self.confirm(force=True)

    async def confirm(self, *, force: bool = False) -> bool:
        """Renew now; True when the lease is confirmed. Without `force` (the ARI gate), callers that waited for a
        renewal under way share its outcome instead of each sending one."""
        if self.state is LeaderState.DEPOSED:
            return False
        asked = time.monotonic()
        async with self._confirming:
            started = time.monotonic()
            if not force and self.holds() and self.valid_until - started > self.lease_ms / 1000 * 0.75:
                return True  # renewed by another caller a moment ago
            if not force and self._failed_at >= asked:
                return False  # a renewal that failed while this caller waited answers it too (no queue of timeouts)
            try:
                async with asyncio.timeout(self.lease_ms / 2000):
                    ok = await self._renew(
                        keys=[self.lease_key, self.counter_key], args=[self.value, self.token, self.lease_ms]
                    )
            except (TimeoutError, RedisError, OSError) as exc:
                self._failed_at = time.monotonic()
                self._unconfirmed = True
                if self.state is LeaderState.LEADING and time.monotonic() >= self.valid_until:
                    self.state = LeaderState.LAPSED
                    LEADER.set(0)
                    log.warning(
                        "leadership lease not confirmed (Redis: %s): no ARI request until it is", exc or "timeout"
                    )
                return False
            if not int(ok):
                self.depose("the leadership lease is held by another controller")
                return False
            self.valid_until = started + self.lease_ms / 1000
            if self.state is LeaderState.LAPSED:
                self.state = LeaderState.LEADING
                LEADER.set(1)
                log.info("leadership lease confirmed again (token %d)", self.token)
            if self._unconfirmed:  # Redis came back: what failed to be written meanwhile is for reconcile
                self._unconfirmed = False
                if self.on_regained is not None:
                    self.on_regained()
            return True

    async def may_act(self) -> None:
        """The ARI gate: returns while this process holds a confirmed lease, else raises AriGated."""
        if self.holds():
            return
        if self.state in (LeaderState.LEADING, LeaderState.LAPSED) and await self.confirm():
            return
        raise AriGated(0, f"not the leading controller ({self.state.value})", "-", "-")

    def depose(self, why: str) -> None:
        if self.state is LeaderState.DEPOSED:
            return
        was = self.state
        self.state = LeaderState.DEPOSED
        self.why_deposed = why
        LEADER.set(0)
        if was not in (LeaderState.STARTING, LeaderState.STANDBY):
            LEADER_CHANGES.inc()
        log.error("deposed: %s (lease token %d); acting no more, exiting to restart as a standby", why, self.token)
        self.deposed.set()

    async def resign(self) -> None:
        """On a clean stop: free the lease so a standby takes over at once (best effort)."""
        if self.state is not LeaderState.LEADING:
            return
        self.state = LeaderState.STANDBY
        LEADER.set(0)
        try:
            async with asyncio.timeout(1):
                await self._resign(keys=[self.lease_key], args=[self.value])
        except (TimeoutError, *UNAVAILABLE):
            pass

    # --- the fence ---------------------------------------------------------------------------------------
    def fence_keys(self) -> list[str]:
        return [self.lease_key, self.counter_key]

    def fence_args(self) -> list[str | int]:
        """What a fenced Lua script passes to fence_ok after its keys: our value, token and the TTL."""
        return [self.value, self.token, self.lease_ms]

    def refused(self) -> Fenced:
        """A fenced script said no: depose this process; the caller raises what this returns."""
        FENCED_WRITES.inc()
        self.depose("a write of call state was refused by the fence")
        return Fenced("write refused: this controller no longer holds the leadership lease")

    async def write(self, *commands: Sequence[Any]) -> list:
        """Run Redis commands atomically, only if this process holds the lease; their replies in order."""
        if self.state is LeaderState.DEPOSED:
            raise Fenced("write refused: this controller has been deposed")
        encoded = _json([[_plain(part) for part in command] for command in commands])
        reply = await self._write(keys=self.fence_keys(), args=[*self.fence_args(), encoded])
        if not int(reply[0]):
            raise self.refused()
        return list(reply[1:])

    async def hset(self, key: str, mapping: Mapping[str, str | int]) -> None:
        await self.write(("HSET", key, *(part for pair in mapping.items() for part in pair)))

    async def xadd(self, stream: str, fields: Mapping[Any, Any], maxlen: int) -> None:
        """XADD with an approximate MAXLEN, fenced."""
        await self.write(("XADD", stream, "MAXLEN", "~", maxlen, "*", *(p for pair in fields.items() for p in pair)))


_json = msgspec.json.Encoder().encode


def _plain(part: Any) -> str | int | float:
    if isinstance(part, bytes):
        return part.decode()
    if isinstance(part, (str, int, float)):
        return part
    raise TypeError(f"not a Redis argument: {type(part).__name__}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
