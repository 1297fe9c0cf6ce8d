"""The controller's call metrics (`va_` prefix; labels are reasons, never ids or numbers)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS_ACTIVE = Gauge("va_calls_active", "Calls this controller is running (queued, setting up or up)")
CALLS_ADMITTED = Counter("va_calls_admitted_total", "Calls given a media worker slot")
CALLS_QUEUED = Counter("va_calls_queued_total", "Calls that had to wait for capacity, by why", ["reason"])
CALLS_FALLBACK = Counter("va_calls_fallback_total", "Calls sent to the fallback, by why", ["reason"])
CALLS_ENDED = Counter("va_calls_ended_total", "Calls ended, by reason", ["reason"])
SETUP_SECONDS = Histogram("va_call_setup_seconds", "StasisStart to caller and media leg bridged",
                          buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
QUEUE_WAIT = Histogram("va_call_queue_wait_seconds", "Time queued calls waited for a slot",
                       buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120))
RECONCILED = Counter("va_reconcile_cleaned_total", "Objects reconcile removed or took over, by kind", ["kind"])
CONTROL_REQUESTS = Counter("va_control_requests_total", "Call-control requests from the workers, by action and "
                           "final status", ["action", "status"])
CONTROL_SECONDS = Histogram("va_control_request_seconds", "Call-control request received to final reply, by action",
                            ["action"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60))
EMAILS_ENQUEUED = Counter("va_call_emails_enqueued_total", "End-of-call email jobs enqueued, by kind", ["kind"])
