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
from urllib.parse import urlsplit

import pytest
import yaml

from shared.metrics import catalogue
from tests.prom_exprs import PROMETHEUS, ROOT, alert_rules, base_name, dashboard_files, dashboard_queries, metric_names


def all_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every alert."""
    return [(f"{uid} / {title}", expr) for uid, title, expr in dashboard_queries()] + [
        (f"alert {name}", expr) for name, expr in alert_rules()
    ]


def promtool(*args: str, cwd=PROMETHEUS) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:  # CI installs it: a missing promtool is a broken setup, not a reason to skip
        pytest.fail("promtool not found on PATH: install Debian's prometheus package (scripts/setup.sh does)")
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- the expression parser the checks rely on -------------------------------------------------------------


def test_metric_names_takes_series_not_labels_functions_or_groupings():
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(va_tool_seconds_bucket{status!="ok",tool=~"va_.*"}'
        '[5m]))) / on (instance) group_left (version) va_build_info or absent(up{job="controller"})'
        " or vector(0)"
    )
    assert metric_names(expr) == {"va_tool_seconds_bucket", "va_build_info", "up"}
    assert metric_names("sum without (limit) (va_realtime_rate_limit_remaining)") == {
        "va_realtime_rate_limit_remaining"
    }


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
        ungrouped = re.match(r"(sum|max|min|count)\s*\(", expr)  # the outermost aggregation keeps no label
        if ungrouped and {base_name(n) for n in metric_names(expr)} & labeled:
            assert expr.endswith("or vector(0)"), f"{uid} / {title}: {expr}"


def test_every_exported_metric_is_on_a_dashboard():
    shown = {base_name(name) for _, _, expr in dashboard_queries() for name in metric_names(expr)}
    missing = sorted(set(catalogue()) - shown)
    assert not missing, f"exported but on no dashboard panel: {missing}"


def test_jobs_named_in_queries_are_scrape_jobs():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for where, expr in all_exprs():
        for job in re.findall(r'\bjob\s*=\s*"([^"]*)"', expr):
            assert job in jobs, f"{where}: job {job!r} is no scrape job"


# --- (c) dashboards -----------------------------------------------------------------------------------------


def test_every_panel_queries_the_provisioned_datasource_with_fixed_windows():
    # Ids and layout come from build_dashboards.py mechanically; what a hand edit of its lists could break is here.
    uid = provisioned_datasources()[0]["uid"]
    boards = [json.loads(path.read_text()) for path in dashboard_files()]
    assert len({board["uid"] for board in boards}) == len(boards), "two dashboards with one uid"
    for board in boards:
        for panel in board["panels"]:
            where = f"{board['uid']} / {panel['title']}"
            assert panel["targets"], f"{where}: no query"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"]["uid"] == uid, where
            for target in panel["targets"]:
                assert "$" not in target["expr"], f"{where}: template variable in {target['expr']}"


def test_dashboards_are_what_the_build_script_writes():
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "grafana" / "build_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def provisioned_datasources() -> list[dict]:
    path = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    return yaml.safe_load(path.read_text())["datasources"]


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_the_compose_prometheus():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = dict(volume.split(":")[:2] for volume in compose["grafana"]["volumes"])
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert [p["options"]["path"] for p in providers["providers"]] == [mounts["./deploy/grafana/dashboards"]]
    [source] = provisioned_datasources()
    url = urlsplit(source["url"])
    assert url.hostname in compose and source["isDefault"], source
    # the port Prometheus listens on in its container: its default, since compose gives it no command
    assert url.port == 9090 and "command" not in compose[url.hostname], source


# --- (d) and (e): promtool ----------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_its_rule_files():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in done.stdout  # the config's rule file was checked with it


def test_alert_unit_tests_pass():
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_made_to_fire_by_a_unit_test_and_is_complete():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    names = [name for name, _ in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert sorted(set(names) - fired) == [], "alerts no unit test makes fire"
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
