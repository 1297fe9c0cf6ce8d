"""Jobs the tool workers run. Each job is idempotent: a retry after a crash must not repeat a side effect."""

from __future__ import annotations

import time

from rq import get_current_job


def selftest(sent_ms: int) -> dict[str, object]:
    """A round trip through a queue, proof that a tool worker consumes it (the tests and the cluster metrics use
    it): who ran it, how long it waited."""
    job = get_current_job()
    now = int(time.time() * 1000)
    return {"worker": job.worker_name if job else None, "queued_ms": now - sent_ms}
