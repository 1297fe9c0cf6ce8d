"""The soak's verdict (`bench/soak.py`): its samples against the leak budgets, as a table, Markdown and a plot.

Budgets (each process of the product; the simulators are shown, not judged):
- RSS flat: the least-squares slope of RSS over the samples under load after the warm-up, below
  `RSS_SLOPE_MB_PER_10MIN`, and the last RSS under load within `RSS_END_GROWTH` of the first after the warm-up.
  Judged only when at least `MIN_RSS_POINTS` samples span `MIN_RSS_SPAN_S` after the warm-up.
- back to idle after the calls stopped and the settle time: asyncio tasks at most `TASKS_OVER_IDLE` and open fds
  other than the Redis pool's at most `FDS_OVER_IDLE` above the idle baseline taken before the first call. The
  Redis connection pool keeps what the busiest moment opened (redis-py closes no idle connection), so its
  connections are shown apart (idle -> settled, peak), not judged: a leak there grows with the calls, which the
  peak under load shows.
- nothing left: every call ended; in Redis no call active, no slot in use, no RTP port held, the provider's
  session counter 0, nobody queued, no lease; no call on a worker; the emulator holds no session beyond the
  workers' prewarm pools; the simulator has no channel or bridge; the keys that are not retained by design
  at most `LIVE_KEYS_OVER_IDLE` above idle (the provider's session counter appears with the first call).
- every role process exits 0 on SIGTERM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RSS_SLOPE_MB_PER_10MIN = 5.0
RSS_END_GROWTH = 0.10
MIN_RSS_POINTS = 3
MIN_RSS_SPAN_S = 60.0
TASKS_OVER_IDLE = 5
FDS_OVER_IDLE = 10
LIVE_KEYS_OVER_IDLE = 1


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) in value per 10 minutes; None with fewer than two times."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 600


def idle(sample: dict) -> bool:
    """Everything a call holds is released in this sample (the settle loop stops waiting then)."""
    return not [name for name, ok in leftovers(sample).items() if not ok]


def back_to_idle(baseline: dict, sample: dict) -> bool:
    """Nothing left (`idle`), and every role process's tasks and fds within their budget over the baseline."""
    for pid_id, base in baseline["processes"].items():
        now = sample["processes"].get(pid_id, {})
        if base["role"] == "sim":
            continue
        if base.get("tasks") is not None and (now.get("tasks") or 0) > base["tasks"] + TASKS_OVER_IDLE:
            return False
        if (_own_fds(now) or 0) > (_own_fds(base) or 0) + FDS_OVER_IDLE:
            return False
    return idle(sample)


def _own_fds(entry: dict) -> int | None:
    """A process's open fds but its Redis pool's connections."""
    if entry.get("fds") is None:
        return None
    return entry["fds"] - (entry.get("redis_conns") or 0)


def leftovers(sample: dict) -> dict[str, bool]:
    """Each 'nothing left' check of one sample: name -> holds."""
    calls, redis, emulator = sample["calls"], sample["redis"], sample["emulator"]
    workers = sample["workers"].values()
    return {
        "every call ended (soak and simulator)": calls["live"] == 0 and calls["sim_channels"] == 0,
        "no bridge left in the simulator": calls["sim_bridges"] == 0,
        "controller: no call active": calls["controller_active"] == 0,
        "workers: va_worker_calls_active 0": all(w.get("calls_active") == 0 for w in workers),
        "Redis: no slot in use": all(w.get("slots_in_use") == 0 for w in workers),
        "Redis: no RTP port held": all(w.get("rtp_ports") == 0 for w in workers),
        "Redis: calls:active empty": redis["calls_active"] == 0,
        "Redis: provider session counter 0": redis["provider_sessions"] == 0,
        "Redis: admission queue empty": redis["admission_queue"] == 0,
        "Redis: no call lease": redis["leases"] == 0,
        "emulator: no session beyond the prewarm pools": emulator["beyond_pool"] <= 0,
    }


def _series(samples: list[dict], pid_id: str, what: str, since_s: float) -> list[tuple[float, float]]:
    out = []
    for s in samples:
        value = s["processes"].get(pid_id, {}).get(what)
        if s["phase"] == "load" and s["t"] >= since_s and value is not None:
            out.append((s["t"], float(value)))
    return out


def rss_figures(samples: list[dict], pid_id: str, warmup_s: float) -> dict[str, Any]:
    points = _series(samples, pid_id, "rss_mb", warmup_s)
    figures: dict[str, Any] = {"points": len(points)}
    if points:
        figures.update(warmup_mb=round(points[0][1], 1), end_mb=round(points[-1][1], 1))
        figures["peak_mb"] = round(max(v for _, v in points), 1)
    slope = slope_per_10min(points)
    figures["slope_mb_per_10min"] = None if slope is None else round(slope, 2)
    span = points[-1][0] - points[0][0] if points else 0.0
    figures["judged"] = len(points) >= MIN_RSS_POINTS and span >= MIN_RSS_SPAN_S
    if figures["judged"]:
        figures["slope_ok"] = figures["slope_mb_per_10min"] < RSS_SLOPE_MB_PER_10MIN
        figures["end_ok"] = points[-1][1] <= points[0][1] * (1 + RSS_END_GROWTH)
    return figures


def _peak(samples: list[dict], pid_id: str, what: str) -> float | None:
    values = [v for s in samples if (v := s["processes"].get(pid_id, {}).get(what)) is not None]
    return max(values) if values else None


def judge(result: dict, warmup_s: float) -> dict:
    """The report: per-process figures, the checks (name -> holds) and `ok`."""
    baseline, settled, samples = result["baseline"], result["settled"], result["samples"]
    checks: dict[str, bool] = dict(leftovers(settled))
    checks["every call ended after its hangup"] = result["left_up_after_hangup"] == 0 and not any(
        "not_ended_after_hangup" in kind for kind in result["errors"]
    )
    processes = {}
    for pid_id, base in baseline["processes"].items():
        end = settled["processes"].get(pid_id, {})
        entry: dict[str, Any] = {
            "role": base["role"],
            "rss": rss_figures(samples, pid_id, warmup_s),
            "rss_idle_mb": base["rss_mb"],
            "rss_settled_mb": end.get("rss_mb"),
            "tasks_idle": base.get("tasks"),
            "tasks_settled": end.get("tasks"),
            "tasks_peak": _peak(samples, pid_id, "tasks"),
            "fds_idle": _own_fds(base),
            "fds_settled": _own_fds(end),
            "redis_conns_idle": base.get("redis_conns"),
            "redis_conns_settled": end.get("redis_conns"),
            "redis_conns_peak": _peak(samples, pid_id, "redis_conns"),
            "fds_peak": _peak(samples, pid_id, "fds"),
        }
        processes[pid_id] = entry
        if base["role"] == "sim":
            continue  # shown, not judged: the simulators are not the product
        rss = entry["rss"]
        if rss["judged"]:
            checks[f"{pid_id}: RSS slope < {RSS_SLOPE_MB_PER_10MIN:g} MB/10 min"] = rss["slope_ok"]
            checks[f"{pid_id}: RSS end within {RSS_END_GROWTH:.0%} of warm-up"] = rss["end_ok"]
        if entry["tasks_idle"] is not None:
            checks[f"{pid_id}: tasks back to idle (+{TASKS_OVER_IDLE})"] = (
                entry["tasks_settled"] is not None and entry["tasks_settled"] <= entry["tasks_idle"] + TASKS_OVER_IDLE
            )
        checks[f"{pid_id}: fds back to idle (+{FDS_OVER_IDLE})"] = (
            entry["fds_settled"] is not None and entry["fds_settled"] <= entry["fds_idle"] + FDS_OVER_IDLE
        )
    checks[f"Redis: live keys back to idle (+{LIVE_KEYS_OVER_IDLE})"] = (
        settled["redis"]["live_keys"] <= baseline["redis"]["live_keys"] + LIVE_KEYS_OVER_IDLE
    )
    codes = result.get("exit_codes", {})
    checks["every role process exited 0"] = bool(codes) and all(code == 0 for code in codes.values())
    return {"processes": processes, "checks": checks, "ok": all(checks.values()), "warmup_s": warmup_s}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def process_rows(report: dict) -> list[tuple[str, ...]]:
    """(process, RSS warm-up -> end, slope, budget, tasks idle -> settled (peak), fds idle -> settled (peak),
    Redis connections idle -> settled (peak))."""
    rows = []
    for pid_id, p in report["processes"].items():
        rss = p["rss"]
        if p["role"] == "sim":
            verdict = "not judged (simulator)"
        elif not rss["judged"]:
            verdict = "not judged (too short)"
        else:
            verdict = "ok" if rss["slope_ok"] and rss["end_ok"] else "FAIL"
        rows.append(
            (
                pid_id,
                f"{_fmt(rss.get('warmup_mb'))} -> {_fmt(rss.get('end_mb'))} MB",
                f"{_fmt(rss['slope_mb_per_10min'])} MB/10min",
                f"< {RSS_SLOPE_MB_PER_10MIN:g}, end <= +{RSS_END_GROWTH:.0%}: {verdict}",
                f"{_fmt(p['tasks_idle'])} -> {_fmt(p['tasks_settled'])} (peak {_fmt(p['tasks_peak'])})",
                f"{_fmt(p['fds_idle'])} -> {_fmt(p['fds_settled'])} (peak {_fmt(p['fds_peak'])})",
                _span(p["redis_conns_idle"], p["redis_conns_settled"], p["redis_conns_peak"]),
            )
        )
    return rows


def _span(idle: Any, settled: Any, peak: Any) -> str:
    return f"{_fmt(idle)} -> {_fmt(settled)} (peak {_fmt(peak)})"


HEADER = (
    "process",
    "RSS warm-up -> end",
    "slope",
    "RSS budget",
    "tasks idle -> settled",
    "fds idle -> settled",
    "Redis conns",
)


def table_lines(report: dict) -> list[str]:
    rows = [HEADER, *process_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"  {'ok  ' if ok else 'FAIL'}  {name}" for name, ok in report["checks"].items()]
    return lines


def progress_line(sample: dict) -> str:
    workers = sample["workers"].values()
    rss = sum(p["rss_mb"] or 0 for p in sample["processes"].values() if p["role"] != "sim")
    return (
        f"t={sample['t']:7.1f}s  up {sample['calls']['up']:>4}  placed {sample['calls']['placed']:>6}  "
        f"slots {sum(w.get('slots_in_use') or 0 for w in workers):>4}  "
        f"emulator {sample['emulator']['sessions']:>4}  roles RSS {rss:7.1f} MB  keys {sample['redis']['keys']}"
    )


def markdown(result: dict, report: dict) -> str:
    p = result["params"]
    calls = result["calls"]
    lines = [
        f"# Soak: {p['calls']} calls for {p['minutes']:g} min ({p['workers']} media workers, {p['cores']} cores)",
        "",
        f"{calls['placed']} calls placed ({calls['answered']} answered, {calls['failed']} failed), "
        f"emails delivered: {result['emails']}; verdict: **{'OK' if report['ok'] else 'FAILED'}** "
        f"(RSS judged from {report['warmup_s'] / 60:g} min on).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(row) + " |" for row in process_rows(report)),
        "",
        "| check | holds |",
        "|---|---|",
        *(f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in report["checks"].items()),
        "",
        f"Calls by kind: {calls['by_kind']}; by transport: {calls['by_transport']}.",
        "",
        f"Errors: {result['errors'] or 'none'}.",
        "",
        f"Channels left in the simulator: {result.get('leftover_channels') or 'none'}.",
        "",
        "End reasons (state: controller / worker): " + ", ".join(f"{k} × {v}" for k, v in calls["end_reasons"].items()),
        "",
    ]
    return "\n".join(lines)


def write_plot(path: Path, result: dict) -> Path | None:
    """RSS per process, tasks per role and the calls over time: a PNG when matplotlib is importable, else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    samples = result["samples"]
    ts = [s["t"] / 60 for s in samples]
    fig, (ax_rss, ax_tasks, ax_calls) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for pid_id in samples[0]["processes"]:
        ax_rss.plot(ts, [s["processes"][pid_id]["rss_mb"] for s in samples], label=pid_id)
        tasks = [s["processes"][pid_id].get("tasks") for s in samples]
        if any(t is not None for t in tasks):
            ax_tasks.plot(ts, tasks, label=pid_id)
    ax_calls.plot(ts, [s["calls"]["up"] for s in samples], label="calls up")
    ax_calls.plot(ts, [s["emulator"]["sessions"] for s in samples], label="emulator sessions")
    ax_calls.plot(
        ts, [sum(w.get("slots_in_use") or 0 for w in s["workers"].values()) for s in samples], label="slots in use"
    )
    for ax, title in ((ax_rss, "RSS (MB)"), (ax_tasks, "asyncio tasks"), (ax_calls, "calls")):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left")
    ax_calls.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
