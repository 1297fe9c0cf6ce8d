"""The end-of-call emails: once a call has ended, enqueue its summary and the transcripts the caller asked for
as tool-worker jobs (`shared/email_queue.py`; stable job ids, so a repeated enqueue is a no-op). The media worker
only notes the requests in the call record (`summary_requested`, `transcript_to`) while the call is live: a
summary or transcript sent mid-call would miss the rest of the conversation.

RQ speaks through a synchronous Redis client, so the enqueueing runs in a thread, off the event loop."""

from __future__ import annotations

import asyncio
import logging

import redis

from shared.config.schema import Config
from shared.email_queue import enqueue_summary, enqueue_transcript
from shared.keys import Keys
from shared.metrics import EMAILS_ENQUEUED

log = logging.getLogger("emails")


class CallEmails:
    def __init__(self, config: Config, keys: Keys, redis_url: str):
        self.config = config
        self.keys = keys
        self.conn = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)

    async def call_ended(self, call_id: str, reason: str) -> list[str]:
        """Job ids enqueued for the call that just ended (`reason`: its end reason, for the log)."""
        jobs = await asyncio.to_thread(self._enqueue, call_id)
        log.info("call %s ended (%s): %d email job(s) enqueued", call_id, reason, len(jobs))
        return jobs

    def _enqueue(self, call_id: str) -> list[str]:
        requested, transcript_to = (
            _text(v) for v in self.conn.hmget(self.keys.call(call_id), "summary_requested", "transcript_to")
        )
        jobs: list[str] = []
        if requested == "1":
            # Asked for by the caller: sent even when `send_after_every_call` is off.
            jobs.append(enqueue_summary(self.conn, self.keys, call_id, reason="tool"))
            EMAILS_ENQUEUED.labels("summary").inc()
        elif self.config.tools.send_email_summary.send_after_every_call:
            jobs.append(enqueue_summary(self.conn, self.keys, call_id, reason="call_end"))
            EMAILS_ENQUEUED.labels("summary").inc()
        for address in dict.fromkeys(a.strip() for a in transcript_to.split(",")):
            if address:
                jobs.append(enqueue_transcript(self.conn, self.keys, call_id, address))
                EMAILS_ENQUEUED.labels("transcript").inc()
        return list(dict.fromkeys(jobs))

    def close(self) -> None:
        self.conn.close()


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
