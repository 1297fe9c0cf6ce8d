"""The email queue: the contract between the controller, which enqueues a call's emails once the call has
ended, and the tool workers, which run them. Both sides import it from here, so neither imports the other.

A job is named by its function's import path (a string: RQ imports it in the tool worker) and takes positional
arguments `[call_id, key_prefix, reason]` (summary) or `[call_id, key_prefix, address]` (transcript).

Stable job ids make a repeated enqueue a no-op: `send_email_summary-{call_id}` and
`request_transcript-{call_id}-{n}`, n = 1, 2 ... per distinct confirmed address. (RQ 2 accepts only letters,
digits, `_` and `-` in a job id, and uses `:` itself, hence `-` where other keys use `:`.)

RQ speaks through a synchronous Redis client: callers on an event loop run these in a thread.
"""

from __future__ import annotations

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
# A job that never starts (no tool worker) expires from Redis after this long instead of staying forever, and
# RQ then skips it without a word: so it is long. A week: the call record and log the job needs are kept that
# long by default (call_retention_days), as is the sent-marker that keeps a late run from sending twice; and
# RqNoWorkers alerts within minutes of the last tool worker going, so an operator has days to bring one back.
QUEUED_TTL_S = 7 * 24 * 3600
TRANSCRIPTS_TTL_S = 7 * 24 * 3600
RETRY_INTERVALS = (2, 5, 15, 60)
# Tests (and impatient operators) shorten the backoff: "1,1,1,1".
RETRY_ENV = "VA_EMAIL_RETRY_INTERVALS"
SUMMARY_FUNC = "tool_worker.email_jobs.send_email_summary"
TRANSCRIPT_FUNC = "tool_worker.email_jobs.send_transcript"
FAILURE_CALLBACK = "tool_worker.email_jobs.on_job_failure"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# The number of a confirmed address, given on first sight and kept: the same address is the same job.
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


def retry_intervals() -> list[int]:
    raw = os.environ.get(RETRY_ENV, "")
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        values = []
    return values if values and all(v >= 0 for v in values) else list(RETRY_INTERVALS)


def _enqueue(conn: redis.Redis, keys: Keys, job_id: str, func: str, args: list[str]) -> None:
    queue = Queue(keys.queue(QUEUE), connection=conn)
    try:
        queue.enqueue_call(
            func,
            args=args,
            job_id=job_id,
            timeout=JOB_TIMEOUT_S,
            ttl=QUEUED_TTL_S,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            retry=Retry(max=4, interval=retry_intervals()),
            on_failure=Callback(FAILURE_CALLBACK),
            unique=True,
            description=job_id,
        )
    except DuplicateJobError:
        pass  # queued, running, scheduled for a retry, finished or failed: never a second send


def enqueue_summary(conn: redis.Redis, keys: Keys, call_id: str, *, reason: str = "call_end") -> str:
    """The call summary to `tools.send_email_summary.recipients`; returns the job id. `reason`: "tool" (the
    caller asked for it: sent even when `send_after_every_call` is off) or "call_end"."""
    job_id = summary_job_id(call_id)
    _enqueue(conn, keys, job_id, SUMMARY_FUNC, [call_id, keys.prefix, reason])
    return job_id


def enqueue_transcript(conn: redis.Redis, keys: Keys, call_id: str, address: str) -> str:
    """A transcript to the caller's confirmed `address` (+ `tools.request_transcript.bcc`); returns the job id."""
    n = int(conn.eval(_NUMBER, 1, transcripts_key(keys, call_id), address.casefold(), TRANSCRIPTS_TTL_S))
    job_id = transcript_job_id(call_id, n)
    _enqueue(conn, keys, job_id, TRANSCRIPT_FUNC, [call_id, keys.prefix, address])
    return job_id
