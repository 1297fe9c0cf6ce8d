"""Write the Grafana dashboards (deploy/grafana/dashboards/*.json) from the panel lists below.

    python deploy/grafana/build_dashboards.py          # (re)write the JSON files
    python deploy/grafana/build_dashboards.py --check  # exit 1 if the committed files differ

Edit the lists here, not the JSON. A panel is (type, title, unit, targets[, thresholds]): a "stat" has one
PromQL expr, a "ts" (timeseries) a list of (legend, expr). Every row is split evenly across the 24 columns.
PromQL rules: fixed windows (no template variables); a sum over a labeled metric that may have no series yet
ends in `or vector(0)`; quantiles sum every replica's buckets by `le` first; the controllers' cluster gauges
(va_media_workers, va_rq_*, va_calls_waiting) are the same on every controller, so they are read with max().
The tool worker's job label is `task` (Prometheus keeps `job` for the scrape job).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "va-prometheus"}


def quantile(q: float, histogram: str, window: str = "5m", by: str = "") -> str:
    """The cluster's q-quantile of a histogram, optionally per label(s) `by`."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[{window}])))"


def percentiles(histogram: str, qs: tuple[float, ...] = (0.5, 0.95), window: str = "5m") -> list[tuple[str, str]]:
    """(legend, expr) per quantile, the legend made from the quantile so the two cannot disagree."""
    return [(f"p{q * 100:g}", quantile(q, histogram, window)) for q in qs]


def last_hour(counter: str, matchers: str = "") -> str:
    """Events in the last hour; 0 (not empty) before the first."""
    return f"sum(increase({counter}{matchers}[1h])) or vector(0)"


def per_minute(counter: str, by: str = "", window: str = "5m") -> str:
    """Events a minute; without `by` it is 0 (not empty) before the first event."""
    if by:
        return f"sum by ({by}) (rate({counter}[{window}])) * 60"
    return f"sum(rate({counter}[{window}])) * 60 or vector(0)"


# Stat colours: (colour, from value); the first step starts at -inf.
GOOD_HIGH = [("red", None), ("green", 1)]  # 0 is bad (free slots, connected)
BAD_HIGH = [("green", None), ("red", 1)]  # anything above 0 is bad (targets down, failures)
LATENCY = [("green", None), ("yellow", 1.5), ("red", 2)]  # the guide's "high latency" is over 2 s

DASHBOARDS = [
    {
        "uid": "va-overview",
        "file": "overview.json",
        "title": "Voice agent: overview",
        "rows": [
            [
                ("stat", "Active calls", "none", "sum(va_calls_active) or vector(0)"),
                ("stat", "Free media slots", "none", "sum(va_worker_slots_free) or vector(0)", GOOD_HIGH),
                ("stat", "Calls waiting for a slot", "none", "max(va_calls_waiting) or vector(0)", BAD_HIGH),
                ("stat", "Turn latency p95 (5m)", "s", quantile(0.95, "va_turn_latency_seconds"), LATENCY),
                ("stat", "Realtime cost, last hour", "currencyUSD", last_hour("va_realtime_cost_usd_total")),
                ("stat", "Targets down", "none", "count(up == 0) or vector(0)", BAD_HIGH),
            ],
            [
                (
                    "ts",
                    "Calls per minute: admitted and rejected",
                    "short",
                    [
                        ("admitted", per_minute("va_calls_admitted_total")),
                        ("rejected (all)", per_minute("va_calls_rejected_total")),
                        ("rejected: {{reason}}", per_minute("va_calls_rejected_total", "reason")),
                    ],
                ),
                (
                    "ts",
                    "Calls ended per minute, by reason",
                    "short",
                    [
                        ("{{reason}}", per_minute("va_calls_ended_total", "reason")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Concurrent calls",
                    "short",
                    [
                        ("on controllers", "sum(va_calls_active) or vector(0)"),
                        ("on media workers", "sum(va_worker_calls_active) or vector(0)"),
                        ("waiting for a slot", "max(va_calls_waiting) or vector(0)"),
                    ],
                ),
                (
                    "ts",
                    "Response latency",
                    "s",
                    [
                        ("turn p50", quantile(0.5, "va_turn_latency_seconds")),
                        ("turn p95", quantile(0.95, "va_turn_latency_seconds")),
                        ("greeting p95", quantile(0.95, "va_greeting_first_frame_seconds")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Realtime errors per minute",
                    "short",
                    [
                        ("all", per_minute("va_realtime_errors_total")),
                        ("{{code}}", per_minute("va_realtime_errors_total", "code")),
                    ],
                ),
                (
                    "ts",
                    "Realtime rate limit remaining",
                    "percentunit",
                    [
                        (
                            "{{limit}} (lowest worker)",
                            "min by (limit) (va_realtime_rate_limit_remaining / va_realtime_rate_limit_limit)",
                        ),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "OpenAI key state (media workers in each)",
                    "short",
                    [("{{state}}", "sum by (state) (va_realtime_key_state)")],
                ),
                (
                    "ts",
                    "Realtime opens refused per minute",
                    "short",
                    [
                        ("all", per_minute("va_realtime_open_failures_total")),
                        ("{{kind}}", per_minute("va_realtime_open_failures_total", "kind")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Realtime cost per hour (USD)",
                    "currencyUSD",
                    [
                        ("USD per hour", "sum(rate(va_realtime_cost_usd_total[5m])) * 3600 or vector(0)"),
                    ],
                ),
                (
                    "ts",
                    "Realtime cost per call (USD)",
                    "currencyUSD",
                    [
                        ("mean", "sum(rate(va_call_cost_usd_sum[15m])) / sum(rate(va_call_cost_usd_count[15m]))"),
                        *percentiles("va_call_cost_usd", (0.95,), window="15m"),
                    ],
                ),
                (
                    "ts",
                    "Targets up, by job",
                    "short",
                    [
                        ("{{job}} up", "sum by (job) (up)"),
                        ("{{job}} scraped", "count by (job) (up)"),
                    ],
                ),
            ],
        ],
    },
    {
        "uid": "va-call-quality",
        "file": "call-quality.json",
        "title": "Voice agent: call quality and latency",
        "rows": [
            [
                (
                    "ts",
                    "Turn latency (caller end of speech to first agent frame)",
                    "s",
                    [
                        *percentiles("va_turn_latency_seconds", (0.5, 0.95, 0.99)),
                    ],
                ),
                (
                    "ts",
                    "Greeting (media connected to first greeting frame)",
                    "s",
                    [
                        *percentiles("va_greeting_first_frame_seconds", window="15m"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Barge-in (caller speech to agent audio stopped)",
                    "s",
                    [
                        *percentiles("va_bargein_seconds", window="15m"),
                    ],
                ),
                (
                    "ts",
                    "Call setup (StasisStart to bridged)",
                    "s",
                    [
                        *percentiles("va_call_setup_seconds", window="15m"),
                    ],
                ),
                (
                    "ts",
                    "Realtime connect (WebSocket to session.updated)",
                    "s",
                    [
                        *percentiles("va_realtime_connect_seconds", window="15m"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Caller frame in to append sent (sampled)",
                    "s",
                    [
                        *percentiles("va_input_append_seconds", (0.5, 0.99)),
                    ],
                ),
                (
                    "ts",
                    "Model audio in to first frame out (incl. tick wait)",
                    "s",
                    [
                        *percentiles("va_output_first_frame_seconds", (0.5, 0.99)),
                    ],
                ),
                (
                    "ts",
                    "Playout tick lateness p99, by media worker",
                    "ms",
                    [
                        ("{{instance}}", "max by (instance) (va_playout_tick_lag_p99_ms)"),
                    ],
                ),
                (
                    "ts",
                    "Playout clock: wakeups > 5 ms late (share, 5 m), latest wakeup, skipped slots",
                    "short",
                    [
                        (
                            "{{instance}} share > 5 ms",
                            'max by (instance) (1 - delta(va_playout_tick_lag_wakeups{le_ms="5"}[5m]) '
                            '/ ignoring(le_ms) clamp_min(delta(va_playout_tick_lag_wakeups{le_ms="+Inf"}[5m]), 1))',
                        ),
                        ("{{instance}} latest wakeup (ms)", "max by (instance) (va_playout_tick_lag_max_ms)"),
                        ("{{instance}} skipped slots (5 m)", "max by (instance) (delta(va_playout_late_ticks[5m]))"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Audio gaps per minute",
                    "short",
                    [
                        ("playout underruns (20 ms ticks)", per_minute("va_playout_underruns_total")),
                        ("caller padding frames", per_minute("va_input_padding_frames_total")),
                        ("caller frames dropped (uplink full)", per_minute("va_uplink_dropped_frames_total")),
                        ("calls ended: media peer flooding", per_minute("va_media_floods_total")),
                    ],
                ),
                (
                    "ts",
                    "Conversation events per minute",
                    "short",
                    [
                        ("echo gate closures", per_minute("va_echo_gate_closures_total")),
                        ("barge-in truncations", per_minute("va_truncations_total")),
                        ("audio-less responses", per_minute("va_audioless_responses_total")),
                    ],
                ),
                (
                    "ts",
                    "Realtime errors and reconnects per minute",
                    "short",
                    [
                        ("error {{code}}", per_minute("va_realtime_errors_total", "code")),
                        ("reconnect {{cause}}", per_minute("va_realtime_reconnects_total", "cause")),
                    ],
                ),
                (
                    "ts",
                    "Media refused per minute (foreign RTP, AudioSocket connections)",
                    "short",
                    [
                        ("RTP {{reason}}", per_minute("va_rtp_dropped_total", "reason")),
                        ("AudioSocket {{reason}}", per_minute("va_audiosocket_refused_total", "reason")),
                    ],
                ),
            ],
        ],
    },
    {
        "uid": "va-capacity",
        "file": "capacity.json",
        "title": "Voice agent: capacity and workers",
        "rows": [
            [
                ("stat", "Media capacity (calls)", "none", "sum(va_worker_capacity) or vector(0)", GOOD_HIGH),
                ("stat", "Free media slots", "none", "sum(va_worker_slots_free) or vector(0)", GOOD_HIGH),
                ("stat", "Live media workers", "none", 'max(va_media_workers{state="live"}) or vector(0)', GOOD_HIGH),
                ("stat", "Stale media workers", "none", 'max(va_media_workers{state="stale"}) or vector(0)', BAD_HIGH),
                ("stat", "RQ tool workers", "none", "max(va_rq_workers) or vector(0)", GOOD_HIGH),
                ("stat", "ARI connected (controllers)", "none", "sum(va_ari_connected) or vector(0)", GOOD_HIGH),
            ],
            [
                (
                    "ts",
                    "Media slots, by worker",
                    "short",
                    [
                        ("free {{instance}}", "sum by (instance) (va_worker_slots_free)"),
                        ("capacity {{instance}}", "sum by (instance) (va_worker_capacity)"),
                        ("advertised {{instance}}", "sum by (instance) (va_worker_capacity_advertised)"),
                    ],
                ),
                (
                    "ts",
                    "Calls, by media worker",
                    "short",
                    [
                        ("{{instance}}", "sum by (instance) (va_worker_calls_active)"),
                        ("controllers' total", "sum(va_calls_active) or vector(0)"),
                    ],
                ),
                (
                    "ts",
                    "Media workers by state (Redis)",
                    "short",
                    [
                        ("{{state}}", "max by (state) (va_media_workers)"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Media worker deaths and call takeovers (per minute)",
                    "short",
                    [
                        ("worker deaths: {{calls}}", per_minute("va_worker_deaths_total", "calls")),
                        ("calls {{outcome}}: {{reason}}", per_minute("va_call_takeovers_total", "outcome, reason")),
                        # A lone worker declared dead: its calls waited (controller.move_wait_ms); how that ended.
                        ("waited for a worker: {{outcome}}", per_minute("va_call_move_waits_total", "outcome")),
                    ],
                ),
                (
                    "ts",
                    "Takeover gap (lost worker's last beat to the new worker's first agent frame)",
                    "s",
                    [
                        *percentiles("va_takeover_gap_seconds", (0.5, 0.95), window="15m"),
                    ],
                ),
                (
                    "ts",
                    "Callers sent to the fallback, by reason (per minute)",
                    "short",
                    [
                        ("{{reason}}", per_minute("va_call_fallbacks_total", "reason")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Media workers by admission state (saturated: CPU-bound, overloaded: tick lag over its limit)",
                    "short",
                    [
                        ("{{state}}", "sum by (state) (va_worker_load_state)"),
                    ],
                ),
                (
                    "ts",
                    "Media worker CPU over the admission window (% of one core)",
                    "short",
                    [
                        ("{{instance}}", "max by (instance) (va_worker_cpu_percent)"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Admission queue",
                    "short",
                    [
                        ("waiting now", "max(va_calls_waiting) or vector(0)"),
                        ("queued per minute: {{reason}}", per_minute("va_calls_queued_total", "reason")),
                    ],
                ),
                (
                    "ts",
                    "Queue wait of queued calls",
                    "s",
                    [
                        *percentiles("va_call_queue_wait_seconds", window="15m"),
                    ],
                ),
                (
                    "ts",
                    "Realtime prewarm pool",
                    "short",
                    [
                        ("ready connections", "sum(va_realtime_pool_ready) or vector(0)"),
                        ("takes per minute: {{source}}", per_minute("va_realtime_pool_takes_total", "source")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Event loop lag p99, by job",
                    "s",
                    [
                        ("{{job}}", quantile(0.99, "va_event_loop_lag_seconds", by="job")),
                    ],
                ),
                (
                    "ts",
                    "Health and metrics connections dropped per minute, by reason",
                    "short",
                    [
                        ("{{reason}}", per_minute("va_http_connections_dropped_total", "reason")),
                    ],
                ),
                (
                    "ts",
                    "Redis connected and registered (lowest process), by job",
                    "short",
                    [
                        ("redis {{job}}", "min by (job) (va_redis_connected)"),
                        ("registered {{job}}", "min by (job) (va_registered)"),
                    ],
                ),
                (
                    "ts",
                    "Asyncio tasks (largest process), by job",
                    "short",
                    [
                        ("{{job}}", "max by (job) (va_process_asyncio_tasks)"),
                    ],
                ),
                (
                    "ts",
                    "Processes, by role and version",
                    "short",
                    [
                        ("{{role}} {{version}}", "count by (role, version) (va_build_info)"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Redis pool: waits for a free connection, by job and pool",
                    "short",
                    [
                        ("p99 wait s {{job}} {{kind}}", quantile(0.99, "va_redis_pool_wait_seconds", by="job, kind")),
                        ("waits/min {{job}} {{kind}}", per_minute("va_redis_pool_wait_seconds_count", "job, kind")),
                        ("timeouts/min {{job}} {{kind}}", per_minute("va_redis_pool_timeouts_total", "job, kind")),
                    ],
                ),
                (
                    "ts",
                    "Inbox entries dead-lettered, call-log entries unusable (1h)",
                    "short",
                    [
                        (
                            "{{stream}} {{reason}}",
                            "sum by (stream, reason) (increase(va_stream_dead_letters_total[1h]))",
                        ),
                        (
                            "call log replay: {{reason}}",
                            "sum by (reason) (increase(va_call_log_bad_entries_total[1h]))",
                        ),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "ARI events WebSocket",
                    "short",
                    [
                        ("connected controllers", "sum(va_ari_connected) or vector(0)"),
                        ("reconnects (5m)", "sum(increase(va_ari_reconnects_total[5m])) or vector(0)"),
                    ],
                ),
                (
                    "ts",
                    "ARI request latency p95, by method",
                    "s",
                    [
                        ("{{method}}", quantile(0.95, "va_ari_request_seconds", by="method")),
                    ],
                ),
                (
                    "ts",
                    "ARI requests and events per minute",
                    "short",
                    [
                        ("requests {{status}}", per_minute("va_ari_requests_total", "status")),
                        ("events {{type}}", per_minute("va_ari_events_total", "type")),
                    ],
                ),
                (
                    "ts",
                    "Reconcile clean-ups (1h), by kind",
                    "short",
                    [
                        ("{{kind}}", "sum by (kind) (increase(va_reconcile_cleaned_total[1h]))"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Controller leadership: leaders (must be 1), changes, takeovers and fenced writes (1h)",
                    "short",
                    [
                        ("leading controllers", "sum(va_controller_leader) or vector(0)"),
                        ("leader changes (1h)", "sum(increase(va_controller_leader_changes_total[1h])) or vector(0)"),
                        ("fenced writes (1h)", "sum(increase(va_controller_fenced_writes_total[1h])) or vector(0)"),
                        ("takeovers (1h)", "sum(increase(va_controller_takeover_seconds_count[1h])) or vector(0)"),
                    ],
                ),
                (
                    "ts",
                    "Takeover: lease taken to ARI connected and calls reconciled, p95 (1h)",
                    "s",
                    [
                        ("p95", quantile(0.95, "va_controller_takeover_seconds", window="1h")),
                    ],
                ),
            ],
        ],
    },
    {
        "uid": "va-tools-email",
        "file": "tools-email.json",
        "title": "Voice agent: tools and email",
        "rows": [
            [
                ("stat", "Tool calls, last hour", "none", last_hour("va_tool_calls_total")),
                (
                    "stat",
                    "Failed tool calls, last hour",
                    "none",
                    last_hour("va_tool_calls_total", '{status!="ok"}'),
                    BAD_HIGH,
                ),
                ("stat", "Emails enqueued, last hour", "none", last_hour("va_call_emails_enqueued_total")),
                (
                    "stat",
                    "Failed tool-worker jobs, last hour",
                    "none",
                    last_hour("va_tool_jobs_total", '{status="failed"}'),
                    BAD_HIGH,
                ),
                ("stat", "RQ jobs queued", "none", 'sum(max by (queue) (va_rq_jobs{state="queued"})) or vector(0)'),
                ("stat", "Realtime tokens, last hour", "short", last_hour("va_realtime_tokens_total")),
            ],
            [
                (
                    "ts",
                    "Tool calls per minute, by tool and outcome",
                    "short",
                    [
                        ("{{tool}} {{status}}", per_minute("va_tool_calls_total", "tool, status")),
                    ],
                ),
                (
                    "ts",
                    "Tool call duration p95, by tool",
                    "s",
                    [
                        ("{{tool}}", quantile(0.95, "va_tool_seconds", "15m", by="tool")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Call-control requests per minute, by action and status",
                    "short",
                    [
                        ("{{action}} {{status}}", per_minute("va_control_requests_total", "action, status")),
                    ],
                ),
                (
                    "ts",
                    "Call-control request p95, by action",
                    "s",
                    [
                        ("{{action}}", quantile(0.95, "va_control_request_seconds", "15m", by="action")),
                    ],
                ),
                (
                    "ts",
                    "End-of-call emails enqueued (1h), by kind",
                    "short",
                    [
                        ("{{kind}}", "sum by (kind) (increase(va_call_emails_enqueued_total[1h]))"),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "Tool-worker jobs per minute, by job and outcome",
                    "short",
                    [
                        ("{{task}} {{status}}", per_minute("va_tool_jobs_total", "task, status")),
                    ],
                ),
                (
                    "ts",
                    "Tool-worker job duration p95, by job",
                    "s",
                    [
                        ("{{task}}", quantile(0.95, "va_tool_job_seconds", "15m", by="task")),
                    ],
                ),
            ],
            [
                (
                    "ts",
                    "RQ jobs by queue and state",
                    "short",
                    [
                        ("{{queue}} {{state}}", "max by (queue, state) (va_rq_jobs)"),
                        ("tool workers", "max(va_rq_workers) or vector(0)"),
                    ],
                ),
                (
                    "ts",
                    "Realtime tokens per minute, by kind",
                    "short",
                    [
                        ("{{kind}}", per_minute("va_realtime_tokens_total", "kind")),
                    ],
                ),
            ],
        ],
    },
]


def thresholds(steps) -> dict:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


def panel(spec: tuple, pid: int, grid: dict) -> dict:
    kind, title, unit, targets, *rest = spec
    defaults = {"unit": unit, "thresholds": thresholds(rest[0] if rest else [("green", None)])}
    if kind == "stat":
        targets = [("", targets)]
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
        defaults["color"] = {"mode": "thresholds"}
    else:
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
    return {
        "id": pid,
        "type": "stat" if kind == "stat" else "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {"datasource": DATASOURCE, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "range": True}
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard(spec: dict) -> dict:
    panels, y = [], 0
    for row in spec["rows"]:
        width = 24 // len(row)
        height = 4 if all(p[0] == "stat" for p in row) else 8
        for i, p in enumerate(row):
            panels.append(panel(p, len(panels) + 1, {"h": height, "w": width, "x": i * width, "y": y}))
        y += height
    return {
        "uid": spec["uid"],
        "title": spec["title"],
        "tags": ["voice-agent"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [
            {
                "title": "Voice agent",
                "type": "dashboards",
                "tags": ["voice-agent"],
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
                "targetBlank": False,
            }
        ],
        "panels": panels,
    }


def rendered() -> dict[Path, str]:
    return {OUT / spec["file"]: json.dumps(dashboard(spec), indent=2) + "\n" for spec in DASHBOARDS}


def main(argv: list[str]) -> int:
    files = rendered()
    if "--check" in argv:
        stale = [p.name for p, text in files.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(f"out of date (run python {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
