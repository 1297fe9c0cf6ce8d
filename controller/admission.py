"""Admission: reserve a slot on the least-loaded live media worker, atomically, in one Lua script.

The script also writes the call record, adds the call to the active set and puts the assignment in the chosen
worker's inbox, so a worker never sees a call it has no slot for, and a controller that dies between two steps
leaves nothing half-done. Calls that find no capacity (no free slot, or the provider's
`max_concurrent_sessions` reached) wait in a FIFO (a ZSET by arrival time): only the head may take a slot, so
a new call cannot overtake one that has waited. `release` undoes a reservation exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from controller.leadership import FENCE_LUA, Leadership
from shared.keys import Keys
from shared.config.schema import Limits
from shared.messages import MOVED, CallPlan
from shared.usage_limits import DAY_TTL_S, MONTH_TTL_S, Cap, cap_args, periods

# The worker admission gives a call to, shared by the scripts that must agree on it (reserve, move_options, and
# the worker watch's "is any other worker free").
PICK_WORKER_LUA = """
-- The least-loaded live (beat within stale_ms of `now`), non-draining worker with a free slot, not in the set
-- `excluded`: its id and its record's fields {capacity, active, draining, media_host, audiosocket_port,
-- rtp_port_min, rtp_port_max}; nil if there is none.
local function pick_worker(workers_key, prefix, stale_ms, now, excluded)
  local best, best_load, best_active, best_info = nil, nil, nil, nil
  for _, wid in ipairs(redis.call('ZRANGEBYSCORE', workers_key, now - stale_ms, '+inf')) do
    if not excluded[wid] then
      local f = redis.call('HMGET', prefix .. 'worker:' .. wid, 'capacity', 'active', 'draining', 'media_host',
                           'audiosocket_port', 'rtp_port_min', 'rtp_port_max')
      local cap, active = tonumber(f[1]), tonumber(f[2] or '0') or 0
      if cap and f[3] ~= '1' and active < cap then
        local load = active / cap
        if best == nil or load < best_load or (load == best_load and active < best_active) then
          best, best_load, best_active, best_info = wid, load, active, f
        end
      end
    end
  end
  return best, best_info
end
"""

_RESERVE = (
    FENCE_LUA
    + PICK_WORKER_LUA
    + """
-- KEYS: 1 workers zset, 2 calls:active set, 3 admission queue zset, 4 provider session counter, 5 leader lease,
--       6 leader token counter, 7 today's usage hash, 8 this month's usage hash (shared/usage_limits.py)
-- ARGV: 1 prefix, 2 call id, 3 stale_after_ms, 4 provider limit, 5 needs rtp (0/1), 6 queue stale ms,
--       7 plan json, 8 call fields json, 9 moves (0: a new call), 10 lost_at_ms, 11-13 the fence (our lease
--       value, token, ttl), 14-16 the caps (sessions per day, spend per day, spend per month; 0: off),
--       17 context, 18 day ttl s, 19 month ttl s, 20.. excluded worker ids
if not fence_ok(KEYS[5], KEYS[6], ARGV[11], ARGV[12], ARGV[13]) then return {'fenced'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, call_id = ARGV[1], ARGV[2]
local moves = tonumber(ARGV[9])
local call_key = prefix .. 'call:' .. call_id
-- A call being moved already holds its provider session (drop_worker keeps it): it neither counts again nor
-- waits in the line (the caller is mid-conversation: a worker now, or the fallback).
local counted = moves > 0 and redis.call('HGET', call_key, 'provider_counted') == '1'
    and redis.call('HGET', call_key, 'state') ~= 'ended'

-- Only a call's first attempt waits in the admission line. A move, or a retry after a worker failed the setup
-- (it names the workers it leaves out), was admitted once already: it never queues. Queued, it would hold the
-- head of the line with workers it may not use, and every new call behind it would wait for nothing.
local first_attempt = moves == 0 and #ARGV < 20
local function wait(reason)
  if not first_attempt then return {'unavailable', reason} end
  redis.call('ZADD', KEYS[3], 'NX', now, call_id)
  return {'queued', reason, redis.call('ZRANK', KEYS[3], call_id)}
end
if moves == 0 and redis.call('HEXISTS', call_key, 'usage_day') == 0 then
  -- Usage caps: a new call is refused once one is reached. A call already counted (one in progress, moving, or
  -- retried on another worker) is never cut off. `crossed:<cap>` is set by the first refusal only, so the
  -- controller logs each crossing once.
  local function limited(cap, hash)
    redis.call('ZREM', KEYS[3], call_id)
    return {'limited', cap, redis.call('HSETNX', hash, 'crossed:' .. cap, '1')}
  end
  local day = redis.call('HMGET', KEYS[7], 'sessions', 'spend_usd')
  local cap_sessions, cap_day, cap_month = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
  if cap_sessions > 0 and (tonumber(day[1]) or 0) >= cap_sessions then return limited('sessions_per_day', KEYS[7]) end
  if cap_day > 0 and (tonumber(day[2]) or 0) >= cap_day then return limited('spend_per_day', KEYS[7]) end
  if cap_month > 0 and (tonumber(redis.call('HGET', KEYS[8], 'spend_usd')) or 0) >= cap_month then
    return limited('spend_per_month', KEYS[8])
  end
end
if first_attempt then
  -- A head left by a controller that died long ago must not block the line forever.
  local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  while head[1] and head[1] ~= call_id and tonumber(head[2]) < now - tonumber(ARGV[6]) do
    redis.call('ZREM', KEYS[3], head[1])
    head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  end
  if head[1] and head[1] ~= call_id then return wait('behind') end
end
if not counted and (tonumber(redis.call('GET', KEYS[4]) or '0')) >= tonumber(ARGV[4]) then
  return wait('provider_limit')
end

local excluded = {}
for i = 20, #ARGV do excluded[ARGV[i]] = true end
local best, best_info = pick_worker(KEYS[1], prefix, tonumber(ARGV[3]), now, excluded)
if best == nil then return wait('no_capacity') end

local rtp_port = 0
if ARGV[5] == '1' then
  local used = prefix .. 'worker:' .. best .. ':rtp_ports'
  -- Ports the worker could not bind (another process held them) are skipped until their time is up.
  local blocked = prefix .. 'worker:' .. best .. ':rtp_blocked'
  for p = tonumber(best_info[6]), tonumber(best_info[7]) do
    if redis.call('SISMEMBER', used, p) == 0 and (tonumber(redis.call('ZSCORE', blocked, p)) or 0) <= now then
      rtp_port = p; break
    end
  end
  if rtp_port == 0 then return wait('no_rtp_port') end
  redis.call('SADD', used, rtp_port)
end

local epoch = redis.call('HINCRBY', call_key, 'epoch', 1)
redis.call('HINCRBY', prefix .. 'worker:' .. best, 'active', 1)
if not counted then redis.call('INCR', KEYS[4]) end
redis.call('SADD', KEYS[2], call_id)
redis.call('ZREM', KEYS[3], call_id)
local fields = cjson.decode(ARGV[8])
for k, v in pairs(fields) do redis.call('HSET', call_key, k, v) end
redis.call('HSET', call_key, 'state', 'admitted', 'worker', best, 'rtp_port', rtp_port, 'admitted_ms', now,
           'provider_counted', '1', 'moves', moves, 'plan', ARGV[7])  -- kept: an adopting controller can move it
redis.call('PERSIST', call_key)
if redis.call('HEXISTS', call_key, 'usage_day') == 0 then
  -- One session per call, counted where it is admitted (not again on a retry or a move); its seconds are
  -- added to the same day and month by the release (record_minutes).
  for i, ttl in ipairs({ARGV[18], ARGV[19]}) do
    redis.call('HINCRBY', KEYS[6 + i], 'sessions', 1)
    redis.call('HINCRBY', KEYS[6 + i], 'ctx:' .. ARGV[17] .. ':sessions', 1)
    redis.call('EXPIRE', KEYS[6 + i], ttl)
  end
  redis.call('HSET', call_key, 'usage_day', KEYS[7], 'usage_month', KEYS[8])
end
if redis.call('HEXISTS', call_key, 'usage_from_ms') == 0 then redis.call('HSET', call_key, 'usage_from_ms', now) end
redis.call('XADD', prefix .. 'worker:' .. best .. ':inbox', 'MAXLEN', '~', 10000, '*', 'type', 'assign',
           'data', '{"call_id":' .. cjson.encode(call_id) .. ',"epoch":' .. epoch .. ',"rtp_port":' .. rtp_port
           .. ',"moves":' .. moves .. ',"lost_at_ms":' .. (tonumber(ARGV[10]) > 0 and ARGV[10] or now)
           .. ',"plan":' .. ARGV[7] .. '}')  -- the plan verbatim: cjson would turn [] into {}
return {'ok', best, best_info[4], best_info[5], rtp_port, epoch}
"""
)

_FREE = """
-- Free a call's worker slot and RTP port, and tell the worker (ARGV[1] prefix, ARGV[2] call id, ARGV[3] reason).
local function free_worker(call_key, wid)
  local wkey = ARGV[1] .. 'worker:' .. wid
  if redis.call('EXISTS', wkey) == 1 and tonumber(redis.call('HGET', wkey, 'active') or '0') > 0 then
    redis.call('HINCRBY', wkey, 'active', -1)
  end
  local port = redis.call('HGET', call_key, 'rtp_port')
  if port and port ~= '0' then redis.call('SREM', wkey .. ':rtp_ports', port) end
  redis.call('XADD', wkey .. ':inbox', 'MAXLEN', '~', 10000, '*', 'type', 'end',
             'data', cjson.encode({call_id = ARGV[2], reason = ARGV[3]}))
end
-- The call's seconds with the AI since `usage_from_ms`, into the usage hashes its session was counted in.
local function record_minutes(call_key)
  local f = redis.call('HMGET', call_key, 'usage_day', 'usage_month', 'usage_from_ms', 'context')
  if not (f[1] and f[2] and f[3]) then return end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local seconds = math.max(now - tonumber(f[3]), 0) / 1000
  for _, hash in ipairs({f[1], f[2]}) do
    redis.call('HINCRBYFLOAT', hash, 'seconds', seconds)
    redis.call('HINCRBYFLOAT', hash, 'ctx:' .. (f[4] or '') .. ':seconds', seconds)
  end
  redis.call('HDEL', call_key, 'usage_from_ms')
end
local function free_session(call_key, counter)
  if redis.call('HGET', call_key, 'provider_counted') == '1' and tonumber(redis.call('GET', counter) or '0') > 0 then
    redis.call('DECR', counter)
  end
end
"""

_RELEASE = (
    FENCE_LUA
    + _FREE
    + """
-- KEYS: 1 call hash, 2 calls:active, 3 provider session counter, 4 admission queue, 5 call log, 6 leader lease,
--       7 leader token counter, 8 calls whose emails are pending
-- ARGV: 1 prefix, 2 call id, 3 reason, 4 retention ms, 5-7 the fence (our lease value, token, ttl), 8 emails (0/1)
if not fence_ok(KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7]) then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[4], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'ended' then return 0 end
local wid = redis.call('HGET', KEYS[1], 'worker')
if wid and wid ~= '' and redis.call('HGET', KEYS[1], 'worker_released') ~= '1' then free_worker(KEYS[1], wid) end
free_session(KEYS[1], KEYS[3])
record_minutes(KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'ended', 'ended_ms', now, 'end_reason', ARGV[3], 'provider_counted', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('PEXPIRE', KEYS[5], ARGV[4]) end
if ARGV[8] == '1' then redis.call('SADD', KEYS[8], ARGV[2]) end
return 1
"""
)

_RELEASE_WORKER = (
    FENCE_LUA
    + _FREE
    + """
-- A call that no longer needs its media worker (transferred to a person): free the worker's slot, RTP port and
-- the provider session now, not when the caller hangs up. KEYS: 1 call hash, 2 provider session counter,
-- 3 leader lease, 4 leader token counter. ARGV: 1 prefix, 2 call id, 3 reason, 4-6 the fence
if not fence_ok(KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6]) then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == false or state == 'ended' or redis.call('HGET', KEYS[1], 'worker_released') == '1' then return 0 end
local wid = redis.call('HGET', KEYS[1], 'worker')
if wid and wid ~= '' then free_worker(KEYS[1], wid) end
free_session(KEYS[1], KEYS[2])
record_minutes(KEYS[1])  -- the AI's part of the call ends here
redis.call('HSET', KEYS[1], 'worker_released', '1', 'provider_counted', '0')
return 1
"""
)


_DROP_WORKER = (
    FENCE_LUA
    + _FREE
    + """
-- A call moving off its worker (dead, or it gave the call up): free that worker's slot and RTP port and tell it
-- the call moved (it stops the session without hanging up), while the call itself stays live and keeps its
-- provider session for the next worker. KEYS: 1 call hash, 2 leader lease, 3 leader token counter.
-- ARGV: 1 prefix, 2 call id, 3 reason (moved), 4-6 the fence
if not fence_ok(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6]) then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == false or state == 'ended' or redis.call('HGET', KEYS[1], 'worker_released') == '1' then return 0 end
local wid = redis.call('HGET', KEYS[1], 'worker')
if not wid or wid == '' then return 0 end
free_worker(KEYS[1], wid)
redis.call('HSET', KEYS[1], 'worker', '', 'rtp_port', 0, 'state', 'moving')
return 1
"""
)


_MOVE_OPTIONS = (
    PICK_WORKER_LUA
    + """
-- Where a call whose worker was declared dead can go (read only). KEYS: 1 workers zset. ARGV: 1 prefix,
-- 2 stale_after_ms, 3 the lost worker's id. Returns {1 if it beats again (live), else 0, its process's
-- started_ms ('' without a record), 1 if another worker has a free slot, else 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale_ms, lost = tonumber(ARGV[2]), ARGV[3]
local beat = redis.call('ZSCORE', KEYS[1], lost)
local live = (beat and tonumber(beat) >= now - stale_ms) and 1 or 0
local started = redis.call('HGET', ARGV[1] .. 'worker:' .. lost, 'started_ms') or ''
local other = pick_worker(KEYS[1], ARGV[1], stale_ms, now, {[lost] = true})
return {live, started, other and 1 or 0}
"""
)


@dataclass(frozen=True)
class Reserved:
    worker_id: str
    media_host: str
    audiosocket_port: int
    rtp_port: int
    epoch: int


@dataclass(frozen=True)
class Queued:
    reason: str  # behind | provider_limit | no_capacity | no_rtp_port
    position: int  # 0 = head of the line


@dataclass(frozen=True)
class Limited:
    """A usage cap is reached (shared/usage_limits.py): the new call goes to the fallback."""

    cap: Cap
    first: bool  # this refusal is the cap's first in its period: the one to log


@dataclass(frozen=True)
class Unavailable:
    """A move, or a retry after a failed setup, found no worker: the call goes to the fallback (a caller already
    answered never waits in the admission line, where it would hold up the calls behind it; a worker declared
    dead is waited for before the move, `Call._await_worker`)."""

    reason: str  # provider_limit | no_capacity | no_rtp_port


@dataclass(frozen=True)
class MoveOptions:
    """What a call whose worker was declared dead can do now (`Admission.move_options`)."""

    lost_is_live: bool  # the lost worker beats again (a stalled loop that woke up, or a restart under its id)
    lost_started_ms: str  # its process's start: tells a worker that woke up from one restarted under the same id
    other_free: bool  # another live worker has a free slot: the move can go ahead


_json = msgspec.json.Encoder()


class Admission:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        stale_after_ms: int,
        provider_limit: int,
        queue_timeout_ms: int,
        retention_ms: int,
        fence: Leadership,
        limits: Limits | None = None,
    ):
        self.redis = redis
        self.fence = fence  # every script checks this process still leads (controller/leadership.py)
        self.keys = keys
        self.stale_after_ms = stale_after_ms
        self.provider_limit = provider_limit
        # A queue entry older than this belongs to a call nobody is waiting for any more.
        self.queue_stale_ms = queue_timeout_ms + 10_000
        self.retention_ms = retention_ms
        self.limits = limits or Limits()
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        self._release_worker = redis.register_script(_RELEASE_WORKER)
        self._drop_worker = redis.register_script(_DROP_WORKER)
        self._move_options = redis.register_script(_MOVE_OPTIONS)

    async def reserve(
        self,
        plan: CallPlan,
        call_fields: dict[str, str],
        *,
        exclude: tuple[str, ...] = (),
        moves: int = 0,
        lost_at_ms: int = 0,
    ) -> Reserved | Queued | Unavailable | Limited:
        """Take a slot for `plan` (or a place in the line). `call_fields` go into the call record. `moves` > 0:
        the call is moving off a worker (`drop_worker` first): never queued (`Unavailable` instead), and the
        assignment tells the new worker to resume the conversation. `exclude` (a retry after workers failed the
        setup): never queued either."""
        now = periods(self.limits)
        keys = [
            self.keys.workers,
            self.keys.calls_active,
            self.keys.admission_queue,
            self.keys.provider_sessions(plan.provider),
            *self.fence.fence_keys(),
            self.keys.usage_day(now.day),
            self.keys.usage_month(now.month),
        ]
        args = [
            self.keys.prefix,
            plan.call_id,
            self.stale_after_ms,
            self.provider_limit,
            "1" if plan.transport == "rtp" else "0",
            self.queue_stale_ms,
            _json.encode(plan),
            _json.encode(call_fields),
            moves,
            lost_at_ms,
            *self.fence.fence_args(),
            *cap_args(self.limits),
            plan.context,
            DAY_TTL_S,
            MONTH_TTL_S,
            *exclude,
        ]
        result = await self._reserve(keys=keys, args=args)
        kind = _text(result[0])
        if kind == "fenced":
            raise self.fence.refused()
        if kind == "queued":
            return Queued(_text(result[1]), int(result[2]))
        if kind == "limited":
            return Limited(Cap(_text(result[1])), int(result[2]) == 1)
        if kind == "unavailable":
            return Unavailable(_text(result[1]))
        return Reserved(_text(result[1]), _text(result[2]), int(result[3]), int(result[4]), int(result[5]))

    async def release(self, call_id: str, provider: str, reason: str, *, emails: bool = False) -> bool:
        """End the call's reservation (idempotent); True the first time. `emails`: the call is to get its end-of-call
        emails: the release that ends it also marks them pending (`keys.mail_pending`), in the same script, until
        they are enqueued (`emails_enqueued`), so a controller that dies in between leaves them to a reconcile."""
        keys = [
            self.keys.call(call_id),
            self.keys.calls_active,
            self.keys.provider_sessions(provider),
            self.keys.admission_queue,
            self.keys.call_log(call_id),
            *self.fence.fence_keys(),
            self.keys.mail_pending,
        ]
        args = [self.keys.prefix, call_id, reason, self.retention_ms, *self.fence.fence_args(), "1" if emails else "0"]
        return self._fenced(int(await self._release(keys=keys, args=args)))

    async def release_worker(self, call_id: str, provider: str, reason: str) -> bool:
        """Free the call's worker slot, RTP port and provider session while the call goes on without AI (an
        answered transfer); `release` later ends the call without freeing them twice."""
        keys = [self.keys.call(call_id), self.keys.provider_sessions(provider), *self.fence.fence_keys()]
        args = [self.keys.prefix, call_id, reason, *self.fence.fence_args()]
        return self._fenced(int(await self._release_worker(keys=keys, args=args)))

    async def emails_enqueued(self, call_id: str) -> None:
        await self.fence.write(("SREM", self.keys.mail_pending, call_id))

    async def mail_pending(self) -> list[str]:
        return [_text(m) for m in await self.redis.smembers(self.keys.mail_pending)]

    async def drop_worker(self, call_id: str) -> bool:
        """The call moves off its worker: that worker's slot and port are freed and it is told (`end`, reason
        `moved`); the call stays live with its provider session. False if the call had no worker to drop."""
        keys = [self.keys.call(call_id), *self.fence.fence_keys()]
        args = [self.keys.prefix, call_id, MOVED, *self.fence.fence_args()]
        return self._fenced(int(await self._drop_worker(keys=keys, args=args)))

    async def move_options(self, lost_worker: str) -> MoveOptions:
        """Whether `lost_worker` (declared dead) beats again, and whether another worker could take its calls now."""
        live, started, other = await self._move_options(
            keys=[self.keys.workers], args=[self.keys.prefix, self.stale_after_ms, lost_worker]
        )
        return MoveOptions(int(live) == 1, _text(started), int(other) == 1)

    async def leave_queue(self, call_id: str) -> None:
        await self.fence.write(("ZREM", self.keys.admission_queue, call_id))

    def _fenced(self, result: int) -> bool:
        """A release script's answer: -1 refused by the fence (raises Fenced), else whether it released."""
        if result < 0:
            raise self.fence.refused()
        return bool(result)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
