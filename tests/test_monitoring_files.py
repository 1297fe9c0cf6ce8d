"""Static checks of the monitoring files: Prometheus config, alert rules and Grafana dashboards.

Every metric a panel or an alert reads is one the cluster exports (shared.metrics.catalogue), every exported
metric is on a dashboard, and promtool accepts the config, the rules, the rules' unit tests and every panel's
PromQL. Whether the queries return data from a running cluster is the real-Prometheus test's job.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from shared.metrics import catalogue
from tests.prom_exprs import PROMETHEUS, ROOT, alert_rules, base_name, dashboard_files, dashboard_queries, metric_names

JOBS = {"controller", "media_worker", "tool_worker", "prometheus"}
DATASOURCE = {"type": "prometheus", "uid": "va-prometheus"}


def all_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every alert."""
    return ([(f"{uid} / {title}", expr) for uid, title, expr in dashboard_queries()]
            + [(f"alert {name}", expr) for name, expr in alert_rules()])


def promtool(*args: str, cwd=PROMETHEUS) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:  # CI installs it: a missing promtool is a broken setup, not a reason to skip
        pytest.fail("promtool not found on PATH: install Debian's prometheus package (scripts/setup.sh does)")
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- the expression parser the checks rely on -------------------------------------------------------------

def test_metric_names_takes_series_not_labels_functions_or_groupings():
    expr = ('histogram_quantile(0.95, sum by (job, le) (rate(va_tool_seconds_bucket{status!="ok",tool=~"va_.*"}'
            '[5m]))) / on (instance) group_left (version) va_build_info or absent(up{job="controller"})'
            ' or vector(0)')
    assert metric_names(expr) == {"va_tool_seconds_bucket", "va_build_info", "up"}
    assert metric_names("sum without (limit) (va_realtime_rate_limit_remaining)") == {
        "va_realtime_rate_limit_remaining"}


def test_base_name_maps_only_histogram_series():
    assert base_name("va_turn_latency_seconds_bucket") == "va_turn_latency_seconds"
    assert base_name("va_call_cost_usd_count") == "va_call_cost_usd"
    assert base_name("va_tool_calls_total") == "va_tool_calls_total"
    assert base_name("va_calls_active_count") == "va_calls_active_count"  # a gauge has no _count series


# --- (a) and (b): every metric used exists, every metric exported is used ------------------------------------

def test_every_metric_used_is_exported_and_histograms_only_through_their_series():
    kinds = catalogue()
    problems = []
    for where, expr in all_exprs():
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: selects no metric: {expr}")
        for name in names:
            base = base_name(name)
            if name != "up" and base not in kinds:
                problems.append(f"{where}: {name} is not in shared.metrics.catalogue()")
            elif base == name and kinds.get(name, ("",))[0] == "histogram":
                problems.append(f"{where}: histogram {name} used without _bucket/_sum/_count")
    assert not problems, "\n".join(problems)


def test_panels_that_sum_a_labeled_metric_have_a_defined_empty_result():
    # A labeled metric has no series before its first label value is used: an ungrouped sum must show 0 then.
    labeled = {name for name, (_, _, labels) in catalogue().items() if labels}
    for uid, title, expr in dashboard_queries():
        if re.search(r"\bby\s*\(", expr) is None and {base_name(n) for n in metric_names(expr)} & labeled:
            assert expr.endswith("or vector(0)"), f"{uid} / {title}: {expr}"


def test_every_exported_metric_is_on_a_dashboard():
    shown = {base_name(name) for _, _, expr in dashboard_queries() for name in metric_names(expr)}
    missing = sorted(set(catalogue()) - shown)
    assert not missing, f"exported but on no dashboard panel: {missing}"


def test_jobs_named_in_queries_are_scrape_jobs():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS
    for where, expr in all_exprs():
        for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr):
            assert job in JOBS, f"{where}: job {job!r} is no scrape job"


# --- (c) dashboards -----------------------------------------------------------------------------------------

def test_dashboards_are_valid_with_datasource_on_every_panel_and_target():
    files = dashboard_files()
    assert {p.name for p in files} == {"overview.json", "call-quality.json", "capacity.json", "tools-email.json"}
    uids = []
    for path in files:
        board = json.loads(path.read_text())
        uids.append(board["uid"])
        assert board["refresh"] == "10s" and board["time"] == {"from": "now-1h", "to": "now"}, path.name
        assert board["templating"]["list"] == [], f"{path.name}: exprs use fixed windows, no variables"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        cells = set()
        for panel in board["panels"]:
            where = f"{path.name} / {panel['title']}"
            assert panel["type"] in ("timeseries", "stat"), where
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], f"{where}: no query"
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, where
                assert "$" not in target["expr"], f"{where}: template variable in {target['expr']}"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the dashboard"
            mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                    for y in range(grid["y"], grid["y"] + grid["h"])}
            assert not mine & cells, f"{where}: overlaps another panel"
            cells |= mine
    assert sorted(uids) == ["va-call-quality", "va-capacity", "va-overview", "va-tools-email"]


def test_dashboards_are_what_the_build_script_writes():
    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "build_dashboards.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(s["name"], s["uid"], s["url"], s["isDefault"]) for s in sources] == [
        ("Prometheus", "va-prometheus", "http://prometheus:9090", True)]
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [("file", "/var/lib/grafana/dashboards")]


# --- (d) and (e): promtool ----------------------------------------------------------------------------------

def test_promtool_accepts_the_config_and_its_rule_files():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in done.stdout  # the config's rule file was checked with it


def test_promtool_accepts_the_alert_rules():
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_unit_tests_pass():
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_made_to_fire_by_a_unit_test_and_is_complete():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = [name for name, _ in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert sorted(set(names) - fired) == [], "alerts no unit test makes fire"
    assert len(quiet) >= 5, "too few cases where an alert must not fire"
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for rule in (r for group in doc["groups"] for r in group["rules"]):
        assert rule.get("for"), f"{rule['alert']}: no for"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_panel_expr_is_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:panel_{i}", "expr": expr} for i, (_, _, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout
