"""Enqueueing the email jobs (used by the controller at call end and the media worker on the model's tools).

Stable job ids make a repeated enqueue a no-op: `send_email_summary-{call_id}` and
`request_transcript-{call_id}-{n}`, n = 1, 2 ... per distinct confirmed address. (RQ 2 accepts only letters,
digits, `_` and `-` in a job id, and uses `:` itself, hence `-` where other keys use `:`.)

A request made while the call is still live waits in `{call}:email_jobs` and is released when the call has
ended (`enqueue_summary` at call end does it, or `release_call_jobs`): a summary or transcript sent mid-call
would miss the rest of the conversation. The controller marks the call ended before it enqueues the summary;
the check-and-park is one Lua script, so a request racing the call end is never stranded.
"""

from __future__ import annotations

import json
import os
import re

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import DuplicateJobError

from shared.keys import Keys

QUEUE = "email"
JOB_TIMEOUT_S = 60
RESULT_TTL_S = 24 * 3600
FAILURE_TTL_S = 7 * 24 * 3600
PARKED_TTL_S = 24 * 3600  # a call that never ends (its record lost) does not keep requests forever
RETRY_INTERVALS = (2, 5, 15, 60)
# Tests (and impatient operators) shorten the backoff: "1,1,1,1".
RETRY_ENV = "VA_EMAIL_RETRY_INTERVALS"
SUMMARY_FUNC = "tool_worker.email_jobs.send_email_summary"
TRANSCRIPT_FUNC = "tool_worker.email_jobs.send_transcript"
FAILURE_CALLBACK = "tool_worker.email_jobs.on_job_failure"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

_PARK = """
local state = redis.call('HGET', KEYS[1], 'state')
local ended = redis.call('HGET', KEYS[1], 'ended_ms')
if state == false or state == 'ended' or (ended and ended ~= '') then return 1 end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 0
"""
_NUMBER = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
if not n then
  n = redis.call('HLEN', KEYS[1]) + 1
  redis.call('HSET', KEYS[1], ARGV[1], n)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return tonumber(n)
"""


def _safe(call_id: str) -> str:
    return _UNSAFE.sub("_", call_id)


def summary_job_id(call_id: str) -> str:
    return f"send_email_summary-{_safe(call_id)}"


def transcript_job_id(call_id: str, n: int) -> str:
    return f"request_transcript-{_safe(call_id)}-{n}"


def transcripts_key(keys: Keys, call_id: str) -> str:
    """HASH: casefolded confirmed address -> n (1, 2 ...): the same address is the same transcript job."""
    return f"{keys.call(call_id)}:transcripts"


def parked_key(keys: Keys, call_id: str) -> str:
    """HASH: job id -> {func, args} of requests made while the call was live."""
    return f"{keys.call(call_id)}:email_jobs"


def retry_intervals() -> list[int]:
    raw = os.environ.get(RETRY_ENV, "")
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        values = []
    return values if values and all(v >= 0 for v in values) else list(RETRY_INTERVALS)


def _enqueue_now(conn: redis.Redis, keys: Keys, job_id: str, func: str, args: list[str]) -> None:
    queue = Queue(keys.queue(QUEUE), connection=conn)
    try:
        queue.enqueue_call(
            func,
            args=args,
            job_id=job_id,
            timeout=JOB_TIMEOUT_S,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            retry=Retry(max=4, interval=retry_intervals()),
            on_failure=Callback(FAILURE_CALLBACK),
            unique=True,
            description=job_id,
        )
    except DuplicateJobError:
        pass  # queued, running, scheduled for a retry, finished or failed: never a second send


def _submit(conn: redis.Redis, keys: Keys, call_id: str, job_id: str, func: str, args: list[str]) -> bool:
    """Enqueue now if the call has ended (or has no record), else park; True when enqueued."""
    spec = json.dumps({"func": func, "args": args})
    if conn.eval(_PARK, 2, keys.call(call_id), parked_key(keys, call_id), job_id, spec, PARKED_TTL_S):
        _enqueue_now(conn, keys, job_id, func, args)
        return True
    return False


def call_ended(conn: redis.Redis, keys: Keys, call_id: str) -> bool:
    state, ended_ms = conn.hmget(keys.call(call_id), "state", "ended_ms")
    return state is None or state in (b"ended", "ended") or bool(ended_ms)


def release_call_jobs(conn: redis.Redis, keys: Keys, call_id: str) -> list[str]:
    """Enqueue the requests parked while the call was live; nothing while it still is."""
    if not call_ended(conn, keys, call_id):
        return []
    key = parked_key(keys, call_id)
    released = []
    for raw_id, raw_spec in conn.hgetall(key).items():
        job_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        spec = json.loads(raw_spec)
        _enqueue_now(conn, keys, job_id, spec["func"], spec["args"])
        conn.hdel(key, job_id)  # after the enqueue: a crash in between re-enqueues, a no-op
        released.append(job_id)
    return released


def enqueue_summary(conn: redis.Redis, keys: Keys, call_id: str, *, reason: str = "call_end") -> str:
    """The call summary to `tools.send_email_summary.recipients`; returns the job id."""
    job_id = summary_job_id(call_id)
    # Released first: a summary the model asked for during the call keeps its reason ("tool"), which
    # counts even when `send_after_every_call` is off; this call-end request is then a no-op.
    release_call_jobs(conn, keys, call_id)
    _submit(conn, keys, call_id, job_id, SUMMARY_FUNC, [call_id, keys.prefix, reason])
    return job_id


def enqueue_transcript(conn: redis.Redis, keys: Keys, call_id: str, address: str) -> str:
    """A transcript to the caller's confirmed `address` (+ `tools.request_transcript.bcc`); returns the job id."""
    n = int(conn.eval(_NUMBER, 1, transcripts_key(keys, call_id), address.casefold(), 7 * 24 * 3600))
    job_id = transcript_job_id(call_id, n)
    _submit(conn, keys, call_id, job_id, TRANSCRIPT_FUNC, [call_id, keys.prefix, address])
    return job_id
