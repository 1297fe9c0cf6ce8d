"""The load test's figures, without I/O: percentiles of the call records, Prometheus text, /proc samples,
errors by kind, the printed report and the plot (matplotlib PNG when importable, else a hand-written SVG)."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

# End reasons of a call that simply ran its course (the caller hung up); anything else is an error kind.
NORMAL_END = {"caller_hangup"}
NORMAL_WORKER_END = {"caller_hangup", "media_closed", "done", "controller_end", "ended"}
LATENCIES = ("setup", "greeting", "turn", "bargein")
# ARI answers that are not errors: a 404 to the controller's probe of a channel-driver module means "not loaded"
# (a real Asterisk before 22.6 has no chan_websocket), an answer the controller asks for and takes. The simulator,
# like the real 22.10.1, has both modules and answers 200 (tests/test_sim_modules.py): a clean run sends no 404.
ARI_ANSWERS = {("module", "404")}


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between order statistics (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict:
    """n, p50, p95, p99, max of a list of milliseconds (None where there are none)."""

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "n": len(values),
        "p50": r(percentile(values, 0.5)),
        "p95": r(percentile(values, 0.95)),
        "p99": r(percentile(values, 0.99)),
        "max": r(max(values) if values else None),
    }


def numbers(text: str | None) -> list[float]:
    """'12.5,40,7' -> [12.5, 40.0, 7.0]; empty or missing -> []."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            try:
                out.append(float(part))
            except ValueError:
                continue
    return out


def latencies(records: list[dict]) -> dict[str, dict]:
    """Setup, greeting, turn and barge-in latency summaries over the call hashes."""
    fields = {"setup": "setup_ms", "greeting": "greeting_ms", "turn": "turn_ms", "bargein": "bargein_ms"}
    return {name: summary([v for rec in records for v in numbers(rec.get(field))]) for name, field in fields.items()}


def underruns_by_worker(records: list[dict]) -> Counter:
    """Underruns from the call records, by the worker that played each call (the `worker` field)."""
    out: Counter = Counter()
    for rec in records:
        out[rec.get("worker") or "?"] += int(float(rec.get("underruns") or 0))
    return out


def end_errors(records: list[dict]) -> Counter:
    """End reasons other than the normal ones, as `end:<reason>` (controller) and `worker_end:<reason>`."""
    kinds: Counter = Counter()
    for rec in records:
        reason = rec.get("end_reason")
        if reason and reason not in NORMAL_END:
            kinds[f"end:{reason}"] += 1
        if not reason:
            kinds["end:not_ended"] += 1
        worker = rec.get("worker_end_reason")
        # "controller: <reason>": the worker was told the call ended; normal when that reason is
        if worker and worker not in NORMAL_WORKER_END and worker.removeprefix("controller: ") not in NORMAL_END:
            kinds[f"worker_end:{worker}"] += 1
    return kinds


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> [(name, labels, value)], comments skipped."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match:
            labels = dict(_LABEL.findall(match.group(2) or ""))
            out.append((match.group(1), labels, float(match.group(3))))
    return out


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 when none)."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def ari_errors(samples: list[tuple[str, dict[str, str], float]]) -> Counter:
    """The controller's ARI requests answered with an error status (or none at all), as `ari:<method>:<status>`."""
    kinds: Counter = Counter()
    for name, labels, value in samples:
        status = labels.get("status", "")
        method = labels.get("method", "?")
        if (
            name == "va_ari_requests_total"
            and value
            and not status.startswith(("2", "1"))
            and (method, status) not in ARI_ANSWERS
        ):
            kinds[f"ari:{method}:{status or '?'}"] += int(value)
    return kinds


def realtime_errors(samples: list[tuple[str, dict[str, str], float]]) -> Counter:
    kinds: Counter = Counter()
    for name, labels, value in samples:
        if name == "va_realtime_errors_total" and value:
            kinds[f"realtime:{labels.get('code', '?')}"] += int(value)
    return kinds


def proc_cpu_seconds(stat_text: str, clock_ticks: int) -> float:
    """utime + stime of a /proc/<pid>/stat line (the command name may hold spaces and parentheses)."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clock_ticks


def proc_rss_mb(status_text: str) -> float:
    """VmRSS of a /proc/<pid>/status, in MB (0 when absent: the process is gone or a zombie)."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", status_text, re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def report_lines(result: dict) -> list[str]:
    """The human-readable report of a run's results (the JSON written to --out)."""
    p, s = result["params"], result["setup"]
    lines = [
        f"{p['calls']} calls, ramp {p['ramp']} s, hold {p['hold']} s, {p['workers']} media worker(s), "
        f"{p['tool_workers']} tool worker(s), profile {p['profile']}, target {p['target']}",
        f"call setup: {s['set_up']}/{s['placed']} set up ({100 * s['success_rate']:.1f}%), "
        f"{s['answered']} answered, {s['failed']} failed, peak {result['peak_up']} up at once",
        "latencies (ms, from the call records)        n      p50      p95      p99      max",
    ]
    labels = {
        "setup": "call setup (StasisStart -> bridged)",
        "greeting": "answer -> first greeting frame",
        "turn": "end of caller speech -> agent frame",
        "bargein": "barge-in -> agent audio stopped",
    }
    for name in LATENCIES:
        v = result["latency_ms"][name]
        lines.append(
            f"  {labels[name]:<40} {v['n']:>5} {fmt_ms(v['p50']):>8} {fmt_ms(v['p95']):>8} "
            f"{fmt_ms(v['p99']):>8} {fmt_ms(v['max']):>8}"
        )
    lines.append(
        f"playout underruns: {result['underruns']} (call records), by worker: "
        + ", ".join(f"{w['id']} {w['underruns']:.0f}" for w in result["workers"])
    )
    lines.append(
        "tick lag p99 per worker (ms, process lifetime): "
        + ", ".join(f"{w['id']} {w['tick_lag_p99_ms']:.2f}" for w in result["workers"])
    )
    lines.append("processes                           CPU s   % core  ms/call-s  RSS peak MB  MB/call")
    for proc in result["processes"]:
        lines.append(
            f"  {proc['id']:<32} {proc['cpu_s']:>6.1f} {proc['core_pct']:>7.1f} "
            f"{fmt_ms(proc['cpu_ms_per_call_s']):>10} {proc['rss_peak_mb']:>12.1f} "
            f"{proc['rss_mb_per_call']:>8.2f}"
        )
    heard = result.get("caller_heard")
    if heard:  # the real PBX's callers record what they hear
        onset = summary(heard["greeting_onset_ms"])
        lines.append(
            f"callers who heard the agent: {heard['heard_agent']} of {heard['answered']} answered; answer -> "
            f"first voiced frame at the caller p50 {fmt_ms(onset['p50'])}, p95 {fmt_ms(onset['p95'])}, "
            f"max {fmt_ms(onset['max'])} ms"
        )
    e = result["emails"]
    lines.append(f"emails delivered: {e['delivered']} of {e['expected']}")
    errors = result["errors"]
    lines.append("errors by kind: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
    left = result["left"]
    where = "the simulator" if result["params"]["target"] == "sim" else "Asterisk (GET /channels, /bridges)"
    lines.append(
        f"calls dropped: {result['dropped']}; left in {where}: {left.get('channels')} channels, "
        f"{left.get('bridges')} bridges; calls still active in Redis: {result['active_left']}"
    )
    return lines


def write_plot(path: Path, result: dict) -> Path:
    """Calls up over time and the latency percentiles: a PNG with matplotlib, else an SVG (returned path)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        svg = path.with_suffix(".svg")
        svg.write_text(svg_plot(result), encoding="utf-8")
        return svg
    timeline = result["timeline"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    top.plot([t["t"] for t in timeline], [t["up"] for t in timeline], label="calls up")
    top.plot([t["t"] for t in timeline], [t["set_up"] for t in timeline], label="set up (total)")
    top.set_xlabel("s")
    top.legend()
    names = [n for n in LATENCIES if result["latency_ms"][n]["n"]]
    for i, q in enumerate(("p50", "p95", "p99")):
        bottom.bar(
            [j + 0.25 * i for j in range(len(names))], [result["latency_ms"][n][q] for n in names], 0.25, label=q
        )
    bottom.set_xticks([j + 0.25 for j in range(len(names))], names)
    bottom.set_ylabel("ms")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def svg_plot(result: dict, width: int = 720, height: int = 520) -> str:
    """Two panels by hand: calls up / set up against time, and p50/p95/p99 bars per latency."""
    timeline = result["timeline"] or [{"t": 0, "up": 0, "set_up": 0}]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    x0, y0, w, h = 50, 30, width - 80, 180
    t_max = max(t["t"] for t in timeline) or 1
    n_max = max(max(t["set_up"], t["up"]) for t in timeline) or 1
    out.append(
        f'<text x="{x0}" y="18">calls up (blue) and set up in total (green) over {t_max:.0f} s; max {n_max}</text>'
    )
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for key, colour in (("up", "#1f77b4"), ("set_up", "#2ca02c")):
        points = " ".join(f"{x0 + w * t['t'] / t_max:.1f},{y0 + h - h * t[key] / n_max:.1f}" for t in timeline)
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    names = [n for n in LATENCIES if result["latency_ms"][n]["n"]]
    by, bh = y0 + h + 60, 200
    v_max = max([result["latency_ms"][n][q] or 0 for n in names for q in ("p50", "p95", "p99")] or [1]) or 1
    out.append(f'<text x="{x0}" y="{by - 12}">latency p50 / p95 / p99 (ms), max {v_max:.0f} ms</text>')
    out.append(f'<rect x="{x0}" y="{by}" width="{w}" height="{bh}" fill="none" stroke="#999"/>')
    slot = w / max(len(names), 1)
    for i, name in enumerate(names):
        for j, (q, colour) in enumerate((("p50", "#1f77b4"), ("p95", "#ff7f0e"), ("p99", "#d62728"))):
            v = result["latency_ms"][name][q] or 0
            bar_h = bh * v / v_max
            x = x0 + i * slot + 10 + j * (slot - 20) / 3
            out.append(
                f'<rect x="{x:.1f}" y="{by + bh - bar_h:.1f}" width="{(slot - 20) / 3 - 2:.1f}" '
                f'height="{bar_h:.1f}" fill="{colour}"><title>{name} {q} {v} ms</title></rect>'
            )
        out.append(f'<text x="{x0 + i * slot + slot / 2 - 20:.1f}" y="{by + bh + 14}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)
