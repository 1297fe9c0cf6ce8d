"""A real Prometheus (Debian's package, on loopback) scrapes the real cluster during a demo call; then every
dashboard panel query and every alert expression is run against it.

A query must return data, or be empty only because the label values it selects were never used (the metric
is exported - Prometheus has its metadata - but no reason/code/tool has happened yet): the "defined empty
result". A panel naming a metric that no process exports fails here. Alert rules must evaluate without error.
With VA_METRICS_SNAPSHOT=<file> it also writes one sample of every catalogue metric from the run, as a
markdown table (the figures the closing notes quote).
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from sim.cluster import free_port
from tests.conftest import ROOT
from tests.prom_exprs import PROMETHEUS as PROMETHEUS_DIR
from tests.prom_exprs import alert_rules, base_name, dashboard_queries, metric_names

# slow tier: a real Prometheus scrapes a demo call (measured 26 s)
pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
ALERTS = PROMETHEUS_DIR / "alerts.yml"
# A clean demo call has no Realtime error, tool call, control request, queued call or reconcile clean-up: the
# panels grouped by those labels are the only ones allowed to come back empty.
MAY_BE_EMPTY = {
    "va-overview / Realtime errors per minute",
    "va-call-quality / Realtime errors and reconnects per minute",
    "va-capacity / Admission queue",
    "va-capacity / Reconcile clean-ups (1h), by kind",
    "va-capacity / Callers sent to the fallback, by reason (per minute)",  # a labelled counter: no series until one
    "va-tools-email / Tool calls per minute, by tool and outcome",
    "va-tools-email / Tool call duration p95, by tool",
    "va-tools-email / Call-control requests per minute, by action and status",
    "va-tools-email / Call-control request p95, by action",
}
JOBS = {"controller": "controller", "media-worker": "media_worker", "tool-worker": "tool_worker"}


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _epoch(stamp: str) -> float:
    """Prometheus's RFC 3339 UTC times (nanosecond fractions) as epoch seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


class Prom:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> dict:
        return _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")

    def wait_past(self, moment: float, timeout: float = 30.0) -> None:
        """Until every target was scraped and every rule group evaluated after `moment` (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = _get(f"{self.url}/api/v1/targets")["data"]["activeTargets"]
            groups = _get(f"{self.url}/api/v1/rules")["data"]["groups"]
            stamps = [t["lastScrape"] for t in targets] + [g["lastEvaluation"] for g in groups]
            if targets and groups and min(_epoch(s) for s in stamps) > moment:
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not scrape and evaluate within {timeout} s")

    def exported(self, name: str) -> bool:
        """Some target exposes the metric family (with or without series)."""
        family = name.removesuffix("_total").removesuffix("_info")
        for candidate in {name, family}:
            data = _get(f"{self.url}/api/v1/targets/metadata?{urllib.parse.urlencode({'metric': candidate})}")
            if data["data"]:
                return True
        return False


def _write_targets(workdir: Path, sd_dir: Path, stop: threading.Event) -> None:
    """file_sd targets from the demo's health-port files (each role picks a free port and writes it there)."""
    seen: set[Path] = set()
    while not stop.wait(0.2):
        for port_file in workdir.glob("*.port"):
            text = port_file.read_text().strip() if port_file.exists() else ""
            if port_file in seen or not text:
                continue
            seen.add(port_file)
            role = next(r for r in JOBS if port_file.name.startswith(r))
            target = sd_dir / f"{JOBS[role]}-{port_file.stem}.json"
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{text}"], "labels": {"demo": "1"}}]))
            tmp.rename(target)  # file_sd must never read half a file


def _prometheus_config(path: Path, sd_dir: Path) -> None:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": job, "file_sd_configs": [{"files": [str(sd_dir / f"{job}-*.json")], "refresh_interval": "1s"}]}
            for job in JOBS.values()
        ],
    }
    path.write_text(yaml.safe_dump(config))


@pytest.mark.skipif(
    PROMETHEUS is None and os.environ.get("CI") != "true",
    reason="prometheus not installed (scripts/setup.sh installs it; CI must have it)",
)
def test_dashboards_and_alerts_against_a_real_prometheus_scraping_a_demo_call(tmp_path):
    assert PROMETHEUS, "prometheus is not installed: scripts/setup.sh installs Debian's prometheus package"
    workdir, sd_dir = tmp_path / "demo", tmp_path / "sd"
    workdir.mkdir()
    sd_dir.mkdir()
    _prometheus_config(tmp_path / "prometheus.yml", sd_dir)
    port = free_port()
    prom_log = open(tmp_path / "prometheus.log", "wb")
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
    )
    prom = Prom(f"http://127.0.0.1:{port}")
    stop = threading.Event()
    writer = threading.Thread(target=_write_targets, args=(workdir, sd_dir, stop), daemon=True)
    writer.start()
    demo = subprocess.Popen(
        [sys.executable, "-m", "voice_agent.cli", "demo", "--keep-running"],
        cwd=ROOT,
        env={**os.environ, "VA_DEMO_WORKDIR": str(workdir), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in demo.stdout:  # bounded: the demo ends by itself if the call fails
            output.append(line)
            if "running; press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert any("running; press Ctrl-C" in line for line in output), "".join(output)[-4000:]
        # Two scrapes and rule evaluations after the call and its email: rate() of a series the call's end
        # created needs two samples of it.
        for _ in range(2):
            prom.wait_past(time.time())

        targets = _get(f"{prom.url}/api/v1/targets")["data"]["activeTargets"]
        assert sorted(t["labels"]["job"] for t in targets) == [
            "controller",
            "media_worker",
            "media_worker",
            "tool_worker",
        ]
        assert all(t["health"] == "up" for t in targets), targets

        queries = dashboard_queries()
        assert len(queries) >= 40
        empty, failures = [], []
        for dashboard, title, expr in queries:
            reply = prom.query(expr)
            if reply["status"] != "success":
                failures.append(f"{dashboard} / {title}: {reply}")
            elif not reply["data"]["result"]:
                missing = [m for m in metric_names(expr) if not prom.exported(base_name(m))]
                if missing:
                    failures.append(f"{dashboard} / {title}: no process exports {missing}")
                else:
                    empty.append(f"{dashboard} / {title}")
        assert not failures, "\n".join(failures)
        assert set(empty) <= MAY_BE_EMPTY, sorted(set(empty) - MAY_BE_EMPTY)

        rules = _get(f"{prom.url}/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
        assert {name for name, _ in alert_rules()} <= set(loaded)
        for name, expr in alert_rules():
            assert loaded[name]["health"] == "ok", (name, loaded[name].get("lastError"))
            assert prom.query(expr)["status"] == "success", name
            missing = [m for m in metric_names(expr) if m != "up" and not prom.exported(base_name(m))]
            assert not missing, f"alert {name} names metrics no process exports: {missing}"

        # The figures behind the closing note: one sample per catalogue metric, from this run.
        snapshot = os.environ.get("VA_METRICS_SNAPSHOT")
        if snapshot:
            from shared.metrics import catalogue

            lines = []
            for name, (kind, role, _labels) in catalogue().items():
                if kind == "histogram":
                    count = prom.query(f"sum({name}_count)")["data"]["result"]
                    total = prom.query(f"sum({name}_sum)")["data"]["result"]
                    n = float(count[0]["value"][1]) if count else 0.0
                    value = f"count {n:g}" + (f", mean {float(total[0]['value'][1]) / n:.4g}" if n else "")
                else:
                    agg = "sum" if kind == "counter" else "max"
                    result = prom.query(f"{agg}({name})")["data"]["result"]
                    value = f"{agg} {float(result[0]['value'][1]):.6g}" if result else "no series (no such event)"
                lines.append(f"| `{name}` | {kind} | {role} | {value} |")
            lines += ["", f"{len(queries)} panel queries, {len(empty)} empty (label values never used):", *empty]
            Path(snapshot).write_text("\n".join(lines) + "\n")
    finally:
        stop.set()
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
        try:
            rest, _ = demo.communicate(timeout=60)
            output.append(rest or "")
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.communicate()
        prometheus.terminate()
        prometheus.wait(20)
        prom_log.close()
    assert demo.returncode == 0, "".join(output)[-4000:]
