"""Every Prometheus metric of the cluster, in one catalogue.

Names start with `va_`; labels are only small closed sets (reason, kind, tool, status, code…), never a call
id or a phone number: per-call detail goes to the call record and the logs. Each role exports the common
metrics plus its own group (`register(role)`), so a controller never shows a media worker's zeros.

Multi-process: the controller and each media worker are one process each, scraped one by one. The tool
worker runs each RQ job in a forked work horse whose counters die with it, so job outcomes are counted in
the parent once the horse has ended (`tool_worker.worker.ToolWorker.execute_job`), never in the job.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

_LATENCY = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5)
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)

# --- every role -----------------------------------------------------------------------------------------
BUILD = Info("va_build", "Version and role of this process", registry=None)
REDIS_UP = Gauge("va_redis_connected", "1 while this process reaches Redis", registry=None)
REGISTERED = Gauge("va_registered", "1 while this process is registered in Redis", registry=None)
LOOP_LAG = Histogram(
    "va_event_loop_lag_seconds",
    "How late the process's event loop ran a timer (sampled every 0.5 s)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=None,
)
# Set by the loop-lag watcher's tick: a count that keeps rising while the calls do not is a leaked task.
ASYNCIO_TASKS = Gauge(
    "va_process_asyncio_tasks", "Tasks not yet done on the process's event loop (sampled every 0.5 s)", registry=None
)
HTTP_DROPPED = Counter(
    "va_http_connections_dropped_total",
    "Connections to /healthz, /readyz or /metrics closed unanswered or refused, by why (head_timeout, "
    "response_timeout, evicted, over_capacity, bad_request: shared/http_server.py)",
    ["reason"],
    registry=None,
)
HTTP_DROP_REASONS = ("head_timeout", "response_timeout", "evicted", "over_capacity", "bad_request")
# Redis connection pools (shared/redis_conn.py), `kind` = commands | streams. Zero in the tool worker (RQ's own).
REDIS_POOL_WAIT = Histogram(
    "va_redis_pool_wait_seconds",
    "How long a Redis command waited for a pooled connection, counted only when none was free, by pool",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=None,
)
REDIS_POOL_TIMEOUTS = Counter(
    "va_redis_pool_timeouts_total",
    "Redis commands that found no free pooled connection within the wait timeout, by pool",
    ["kind"],
    registry=None,
)
# Inbox entries no reader could use (shared/dead_letters.py), `stream` = worker_inbox | controller_inbox.
DEAD_LETTERS = Counter(
    "va_stream_dead_letters_total",
    "Inbox stream entries moved to the dead-letter stream instead of handled, by stream and reason",
    ["stream", "reason"],
    registry=None,
)
COMMON = (
    BUILD,
    REDIS_UP,
    REGISTERED,
    LOOP_LAG,
    ASYNCIO_TASKS,
    HTTP_DROPPED,
    REDIS_POOL_WAIT,
    REDIS_POOL_TIMEOUTS,
    DEAD_LETTERS,
)

# --- controller: calls ----------------------------------------------------------------------------------
CALLS_ACTIVE = Gauge("va_calls_active", "Calls this controller is running (queued, setting up or up)", registry=None)
CALLS_ADMITTED = Counter("va_calls_admitted_total", "Calls given a media worker slot", registry=None)
CALLS_QUEUED = Counter(
    "va_calls_queued_total", "Calls that had to wait for capacity, by why", ["reason"], registry=None
)
CALLS_REJECTED = Counter(
    "va_calls_rejected_total",
    "Calls the agent did not take and sent to the fallback, by "
    "why (unknown context or provider, queue timeout, setup failed)",
    ["reason"],
    registry=None,
)
CALLS_ENDED = Counter("va_calls_ended_total", "Calls ended, by reason", ["reason"], registry=None)
SETUP_SECONDS = Histogram(
    "va_call_setup_seconds",
    "StasisStart to caller and media leg bridged",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=None,
)
QUEUE_WAIT = Histogram(
    "va_call_queue_wait_seconds",
    "Time queued calls waited for a slot",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
    registry=None,
)
RECONCILED = Counter(
    "va_reconcile_cleaned_total", "Objects reconcile removed or took over, by kind", ["kind"], registry=None
)
CONTROL_REQUESTS = Counter(
    "va_control_requests_total",
    "Call-control requests from the workers, by action and final status",
    ["action", "status"],
    registry=None,
)
CONTROL_SECONDS = Histogram(
    "va_control_request_seconds",
    "Call-control request received to final reply, by action",
    ["action"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60),
    registry=None,
)
EMAILS_ENQUEUED = Counter(
    "va_call_emails_enqueued_total", "End-of-call email jobs enqueued, by kind", ["kind"], registry=None
)
# --- controller: ARI ------------------------------------------------------------------------------------
ARI_REQUESTS = Counter(
    "va_ari_requests_total",
    "ARI REST requests by client method and outcome: a documented HTTP status, another by its class (4xx), "
    "timeout, unavailable, body_too_long",
    ["method", "status"],
    registry=None,
)
ARI_REQUEST_SECONDS = Histogram(
    "va_ari_request_seconds",
    "ARI REST request time by client method",
    ["method"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=None,
)
ARI_EVENTS = Counter(
    "va_ari_events_total", "ARI events received by type (unknown types as other)", ["type"], registry=None
)
ARI_RECONNECTS = Counter("va_ari_reconnects_total", "ARI events WebSocket reconnects", registry=None)
ARI_CONNECTED = Gauge("va_ari_connected", "1 while the ARI events WebSocket is connected", registry=None)
# --- controller: leadership (controller/leadership.py) ----------------------------------------------------
LEADER = Gauge("va_controller_leader", "1 while this controller holds a confirmed leadership lease", registry=None)
LEADER_CHANGES = Counter(
    "va_controller_leader_changes_total", "Times this controller became or stopped being the leader", registry=None
)
TAKEOVER_SECONDS = Histogram(
    "va_controller_takeover_seconds",
    "Lease acquired by a standby to ARI events connected and the calls reconciled",
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
    registry=None,
)
FENCED_WRITES = Counter(
    "va_controller_fenced_writes_total",
    "Writes of call state refused because this controller no longer held the leadership lease",
    registry=None,
)
# --- controller: the cluster as Redis shows it (refreshed every few seconds; the same on every controller) ---
CALLS_WAITING = Gauge("va_calls_waiting", "Calls in the admission queue now", registry=None)
MEDIA_WORKERS = Gauge(
    "va_media_workers", "Registered media workers by state (live, draining, stale)", ["state"], registry=None
)
RQ_JOBS = Gauge(
    "va_rq_jobs", "RQ jobs by queue and state (queued, started, scheduled, failed)", ["queue", "state"], registry=None
)
RQ_WORKERS = Gauge("va_rq_workers", "RQ tool workers registered", registry=None)
# --- controller: media workers that die, and the calls moved off them (controller/worker_watch.py, call.py) ----
WORKER_DEATHS = Counter(
    "va_worker_deaths_total",
    "Media workers the worker watch declared dead (no heartbeat for stale_after_ms), by whether they held calls",
    ["calls"],  # with_calls | idle
    registry=None,
)
TAKEOVERS = Counter(
    "va_call_takeovers_total",
    "Calls that lost their media worker after they were up: moved to another worker (reason: what was lost) "
    "or sent to the fallback (reason: why no move)",
    ["outcome", "reason"],
    registry=None,
)
FALLBACKS = Counter(
    "va_call_fallbacks_total",
    "Callers sent to the dialplan fallback (or its prompt), by the call's end reason",
    ["reason"],
    registry=None,
)
MOVE_WAITS = Counter(
    "va_call_move_waits_total",
    "Calls whose media worker was declared dead while no other worker had a free slot: how their wait "
    "(controller.move_wait_ms) ended",
    ["outcome"],  # resumed (the same worker beat again) | moved | fallback | ended (the call ended meanwhile)
    registry=None,
)
MOVE_WAIT_OUTCOMES = ("resumed", "moved", "fallback", "ended")
TAKEOVER_OUTCOMES = (
    ("moved", "worker_dead"),  # the worker watch found its worker dead
    ("moved", "media_lost"),  # its media leg ended with the worker not saying it ended the call
    ("moved", "media_failed"),  # its worker reported it could not keep the call
    ("fallback", "no_worker"),  # no other live worker with a free slot (never queued)
    ("fallback", "too_many_moves"),
    ("fallback", "move_failed"),  # the media setup on the new workers failed
)
CONTROLLER = (
    CALLS_ACTIVE,
    CALLS_ADMITTED,
    CALLS_QUEUED,
    CALLS_REJECTED,
    CALLS_ENDED,
    SETUP_SECONDS,
    QUEUE_WAIT,
    RECONCILED,
    CONTROL_REQUESTS,
    CONTROL_SECONDS,
    EMAILS_ENQUEUED,
    ARI_REQUESTS,
    ARI_REQUEST_SECONDS,
    ARI_EVENTS,
    ARI_RECONNECTS,
    ARI_CONNECTED,
    LEADER,
    LEADER_CHANGES,
    TAKEOVER_SECONDS,
    FENCED_WRITES,
    CALLS_WAITING,
    MEDIA_WORKERS,
    RQ_JOBS,
    RQ_WORKERS,
    WORKER_DEATHS,
    TAKEOVERS,
    MOVE_WAITS,
    FALLBACKS,
)

# --- media worker: capacity -----------------------------------------------------------------------------
WORKER_CAPACITY = Gauge(
    "va_worker_capacity",
    "Calls this media worker accepts at once, as configured (media_worker.capacity)",
    registry=None,
)
WORKER_CALLS = Gauge("va_worker_calls_active", "Calls on this media worker", registry=None)
WORKER_SLOTS_FREE = Gauge(
    "va_worker_slots_free",
    "Calls this media worker can still take: advertised capacity - calls (0 while draining)",
    registry=None,
)
TICK_LAG = Gauge("va_playout_tick_lag_p99_ms", "p99 lateness of the 20 ms playout tick (ms)", registry=None)
# --- media worker: conversation latency -----------------------------------------------------------------
GREETING_SECONDS = Histogram(
    "va_greeting_first_frame_seconds", "Media connected to first greeting frame sent", buckets=_LATENCY, registry=None
)
TURN_SECONDS = Histogram(
    "va_turn_latency_seconds", "Caller end of speech (server VAD) to first agent frame", buckets=_LATENCY, registry=None
)
BARGEIN_SECONDS = Histogram(
    "va_bargein_seconds",
    "Caller speech detected to agent audio stopped",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2),
    registry=None,
)
# Sampled (one frame in 25): the per-frame path stays free of histogram work.
INPUT_LATENCY = Histogram(
    "va_input_append_seconds", "Caller frame in to its append sent (sampled)", buckets=_FAST, registry=None
)
OUTPUT_LATENCY = Histogram(
    "va_output_first_frame_seconds",
    "Model audio delta in to its first frame sent to Asterisk (includes the wait for the next 20 ms tick)",
    buckets=_FAST,
    registry=None,
)
# --- media worker: audio health (added once per call, off the frame path) -------------------------------
GATE_CLOSURES = Counter(
    "va_echo_gate_closures_total", "Voiced bursts the echo gate held back as our own echo", registry=None
)
TRUNCATIONS = Counter("va_truncations_total", "Agent items truncated by a barge-in", registry=None)
AUDIOLESS = Counter(
    "va_audioless_responses_total", "Responses that finished with a transcript but no audio", registry=None
)
UNDERRUNS = Counter(
    "va_playout_underruns_total", "20 ms ticks with no model audio in the middle of an item", registry=None
)
PADDED = Counter(
    "va_input_padding_frames_total", "Silence frames appended where the caller's audio had gaps", registry=None
)
# Counted in plain ints on the frame path, published on the worker's 1 s tick.
UPLINK_DROPPED = Counter(
    "va_uplink_dropped_frames_total",
    "Caller frames dropped (oldest first) because the queue toward the model held its maximum (2 s)",
    registry=None,
)
CALL_LOG_BAD_ENTRIES = Counter(
    "va_call_log_bad_entries_total",
    "Call-log entries read back for a replay that were not as written: not_utf8 (kept, bad bytes replaced), "
    "malformed (skipped: no known role)",
    ["reason"],
    registry=None,
)
MEDIA_FLOODS = Counter(
    "va_media_floods_total",
    "Calls ended because their media peer sent audio faster than 2x real time for 3 s",
    registry=None,
)
# --- media worker: media refused (the drop paths only; an accepted frame counts nothing here) --------------
RTP_DROPPED = Counter(
    "va_rtp_dropped_total",
    "RTP packets dropped, by reason (host: not an allowed host; early: before Asterisk's address was reported; "
    "source: not the call's address and port; ssrc: another stream from that address; payload_type; "
    "own_ssrc: our audio looped back; malformed)",
    ["reason"],
    registry=None,
)
AUDIOSOCKET_REFUSED = Counter(
    "va_audiosocket_refused_total",
    "AudioSocket connections refused, by reason (host: not an allowed host; unknown_call; no_uuid; protocol)",
    ["reason"],
    registry=None,
)
# --- media worker: Realtime -----------------------------------------------------------------------------
REALTIME_ERRORS = Counter(
    "va_realtime_errors_total", "Realtime error events by code (benign races excluded)", ["code"], registry=None
)
REALTIME_RECONNECTS = Counter("va_realtime_reconnects_total", "Realtime reconnects by cause", ["cause"], registry=None)
REALTIME_CONNECT = Histogram(
    "va_realtime_connect_seconds",
    "WebSocket connect to session.updated",
    buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
    registry=None,
)
POOL_READY = Gauge("va_realtime_pool_ready", "Prewarmed Realtime connections waiting for a call", registry=None)
POOL_TAKES = Counter(
    "va_realtime_pool_takes_total", "Calls that got a connection, by source (pool, new)", ["source"], registry=None
)
RATE_LIMIT_REMAINING = Gauge(
    "va_realtime_rate_limit_remaining",
    "Remaining from the last rate_limits.updated, by limit (requests, tokens)",
    ["limit"],
    registry=None,
)
RATE_LIMIT_LIMIT = Gauge(
    "va_realtime_rate_limit_limit", "The limit from the last rate_limits.updated", ["limit"], registry=None
)
TOKENS = Counter(
    "va_realtime_tokens_total",
    "Tokens billed, from response.done usage, by kind (input_text, "
    "input_audio, input_cached, output_text, output_audio)",
    ["kind"],
    registry=None,
)
COST = Counter(
    "va_realtime_cost_usd_total", "Estimated Realtime cost in USD (usage x configured prices)", registry=None
)
CALL_COST = Histogram(
    "va_call_cost_usd",
    "Estimated Realtime cost of one call in USD",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=None,
)
# --- media worker: tools --------------------------------------------------------------------------------
TOOL_CALLS = Counter("va_tool_calls_total", "Tool calls by tool and outcome", ["tool", "status"], registry=None)
TOOL_SECONDS = Histogram(
    "va_tool_seconds",
    "Tool call to its output, by tool and outcome",
    ["tool", "status"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=None,
)
TAKEOVER_GAP = Histogram(
    "va_takeover_gap_seconds",
    "A moved call's takeover gap: from the last heartbeat of the worker that lost it (by Redis's clock; for a "
    "worker still beating, the move) to the first frame of agent audio the new worker sends (by this host's "
    "clock: assumes the hosts' clocks agree, NTP)",
    buckets=(0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10),
    registry=None,
)
MEDIA_WORKER = (
    TAKEOVER_GAP,
    WORKER_CAPACITY,
    WORKER_CALLS,
    WORKER_SLOTS_FREE,
    TICK_LAG,
    GREETING_SECONDS,
    TURN_SECONDS,
    BARGEIN_SECONDS,
    INPUT_LATENCY,
    OUTPUT_LATENCY,
    GATE_CLOSURES,
    TRUNCATIONS,
    AUDIOLESS,
    UNDERRUNS,
    PADDED,
    UPLINK_DROPPED,
    CALL_LOG_BAD_ENTRIES,
    MEDIA_FLOODS,
    RTP_DROPPED,
    AUDIOSOCKET_REFUSED,
    REALTIME_ERRORS,
    REALTIME_RECONNECTS,
    REALTIME_CONNECT,
    POOL_READY,
    POOL_TAKES,
    RATE_LIMIT_REMAINING,
    RATE_LIMIT_LIMIT,
    TOKENS,
    COST,
    CALL_COST,
    TOOL_CALLS,
    TOOL_SECONDS,
)

# --- tool worker (counted in the RQ parent process) -----------------------------------------------------
# `task`, not `job`: Prometheus's own `job` label would push ours aside (as exported_job).
JOBS = Counter(
    "va_tool_jobs_total",
    "Tool-worker jobs run, by task and outcome (finished, failed, retrying)",
    ["task", "status"],
    registry=None,
)
JOB_SECONDS = Histogram(
    "va_tool_job_seconds",
    "One run of a tool-worker job, by task",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=None,
)
TOOL_WORKER = (JOBS, JOB_SECONDS)

ROLES: dict[str, tuple[MetricWrapperBase, ...]] = {
    "controller": CONTROLLER,
    "media-worker": MEDIA_WORKER,
    "tool-worker": TOOL_WORKER,
}
POOL_KINDS = ("commands", "streams")  # shared/redis_conn.py
DEAD_LETTER_REASONS = ("not_utf8", "missing_field", "undecodable", "unknown_type", "handler_failed")


def _stream_readers(stream: str) -> tuple:
    """The label sets of a role that reads an inbox stream: its pools and its dead letters start at 0."""
    return (
        (REDIS_POOL_WAIT, tuple((kind,) for kind in POOL_KINDS)),
        (REDIS_POOL_TIMEOUTS, tuple((kind,) for kind in POOL_KINDS)),
        (DEAD_LETTERS, tuple((stream, reason) for reason in DEAD_LETTER_REASONS)),
    )


TOKEN_KINDS = ("input_text", "input_audio", "input_cached", "output_text", "output_audio")
# Label values known in advance start at 0, so rate() and increase() see the first event after a restart.
KNOWN_LABELS: dict[str, tuple[tuple[MetricWrapperBase, tuple[tuple[str, ...], ...]], ...]] = {
    "controller": (
        (
            CALLS_REJECTED,
            tuple(
                (reason,)
                for reason in (
                    "no_context",
                    "unknown_context",
                    "unknown_provider",
                    "provider_disabled",
                    "unknown_profile",
                    "queue_timeout",
                    "setup_failed",
                    # usage limits (shared/usage_limits.py): a cap reached
                    "limit_sessions_per_day",
                    "limit_spend_per_day",
                    "limit_spend_per_month",
                )
            ),
        ),
        (WORKER_DEATHS, (("with_calls",), ("idle",))),
        (TAKEOVERS, TAKEOVER_OUTCOMES),
        (MOVE_WAITS, tuple((outcome,) for outcome in MOVE_WAIT_OUTCOMES)),
        *_stream_readers("controller_inbox"),
    ),
    "media-worker": (
        (TOKENS, tuple((kind,) for kind in TOKEN_KINDS)),
        (CALL_LOG_BAD_ENTRIES, (("not_utf8",), ("malformed",))),
        *_stream_readers("worker_inbox"),
    ),
}  # the tool worker's job names live with its jobs: ToolWorker starts them at 0


def register(role: str) -> None:
    """Export the common metrics and `role`'s own in the default registry (idempotent)."""
    disable_created_metrics()  # no `_created` twin of every counter and histogram: half the series, unused
    for metric in COMMON + ROLES[role]:
        if metric not in REGISTRY._collector_to_names:  # noqa: SLF001 - no public "is registered"
            REGISTRY.register(metric)
    for reason in HTTP_DROP_REASONS:
        HTTP_DROPPED.labels(reason)
    for metric, label_sets in KNOWN_LABELS.get(role, ()):
        for values in label_sets:
            metric.labels(*values)


_SUFFIX = {"counter": "_total", "info": "_info"}


def catalogue() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Exposed name (`_total` on counters, `_info` on infos) -> (type, role, labels) of every metric."""
    out: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for role, group in (("all", COMMON), *ROLES.items()):
        for metric in group:
            # prometheus_client has no public accessors for these; every concrete metric class sets them.
            kind, name, labels = metric._type, metric._name, tuple(metric._labelnames)
            if kind is None:
                raise TypeError(f"metric {name} has no type")
            out[name + _SUFFIX.get(kind, "")] = (kind, role, labels)
    return out


# --- media worker: OpenAI key health (media_worker/realtime/key_health.py) ------------------------------------
# Kinds, not the server's codes, as the label: a short fixed list (the code and message go to the log line).
OPEN_FAILURE_KINDS = ("auth", "quota", "rate_limit", "server", "other")
KEY_STATES = ("unknown", "accepted", "rejected", "no_quota")
REALTIME_OPEN_FAILURES = Counter(
    "va_realtime_open_failures_total",
    "Realtime opens that failed, by kind (auth, quota: the key is blocked; rate_limit, server, other: retried)",
    ["kind"],
    registry=None,
)
REALTIME_KEY_STATE = Gauge(
    "va_realtime_key_state",
    "The OpenAI key as the worker's last opens saw it: 1 on the current state (unknown, accepted, rejected, no_quota)",
    ["state"],
    registry=None,
)
ROLES["media-worker"] += (REALTIME_OPEN_FAILURES, REALTIME_KEY_STATE)
KNOWN_LABELS["media-worker"] += (
    (REALTIME_OPEN_FAILURES, tuple((kind,) for kind in OPEN_FAILURE_KINDS)),
    (REALTIME_KEY_STATE, tuple((state,) for state in KEY_STATES)),
)


# --- media worker: playout clock lateness in full (issue 19, bench/pinned_capacity.py) ------------------------
# The lag histogram's cumulative bucket counts (media_worker/audio/lag.py's bounds, all set on the first beat),
# published on the worker's 1 s beat, never per frame: two scrapes give the lag percentiles over any window, where
# TICK_LAG above is a p99 over the process's whole life.
TICK_LAG_WAKEUPS = Gauge(
    "va_playout_tick_lag_wakeups",
    "Playout clock wakeups at most `le_ms` ms late since the worker started (cumulative, like histogram buckets)",
    ["le_ms"],
    registry=None,
)
TICK_LAG_MAX = Gauge(
    "va_playout_tick_lag_max_ms", "Latest playout clock wakeup since the worker started (ms)", registry=None
)
LATE_TICKS = Gauge(
    "va_playout_late_ticks",
    "20 ms frame slots the playout clock skipped (a wakeup a whole frame late or more) since the worker started",
    registry=None,
)
ROLES["media-worker"] += (TICK_LAG_WAKEUPS, TICK_LAG_MAX, LATE_TICKS)


# --- media worker: admission from measurement (media_worker/load_governor.py) --------------------------------
# va_worker_capacity stays the configured figure; this is the one the worker advertises to admission.
LOAD_STATES = ("ok", "saturated", "overloaded")  # media_worker.load_governor.LoadState's values
WORKER_CAPACITY_ADVERTISED = Gauge(
    "va_worker_capacity_advertised",
    "Calls this media worker advertises to admission: the configured capacity, lowered while its measured tick "
    "lag or CPU says it cannot take more (never below its calls in progress)",
    registry=None,
)
WORKER_LOAD_STATE = Gauge(
    "va_worker_load_state",
    "The worker's admission state from its measurements: 1 on the current one (ok, saturated: CPU-bound, "
    "overloaded: tick lag over its limit)",
    ["state"],
    registry=None,
)
WORKER_CPU = Gauge(
    "va_worker_cpu_percent", "The media worker process's CPU over the admission window (% of one core)", registry=None
)
ROLES["media-worker"] += (WORKER_CAPACITY_ADVERTISED, WORKER_LOAD_STATE, WORKER_CPU)
KNOWN_LABELS["media-worker"] += ((WORKER_LOAD_STATE, tuple((state,) for state in LOAD_STATES)),)
