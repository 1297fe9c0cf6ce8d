"""The PromQL of the monitoring files (dashboard panels, alert rules) and the metric names it selects.

A helper for the monitoring tests; it holds no tests itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from shared.metrics import catalogue
from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
# Label lists after a grouping or matching keyword: `by (job, le)`, `on ()`, `group_left (x)`.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:])(va_\w+|up)(?![\w:])(?!\s*\()")


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) of every target of every panel."""
    out = []
    for path in dashboard_files():
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((board["uid"], panel["title"], target["expr"]))
    return out


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expr) of every alerting rule in alerts.yml."""
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """The series names `expr` selects: identifiers starting va_, and up.

    Strings, label matchers and label lists go first, so label names and values are never taken for metrics;
    a name followed by `(` is a function.
    """
    bare = _STRING.sub('""', expr)
    bare = _MATCHERS.sub("", bare)
    bare = _LABEL_LIST.sub("", bare)
    return set(_NAME.findall(bare))


def base_name(series_name: str) -> str:
    """The catalogue name of an exposed series: x for x_bucket, x_sum, x_count of a histogram x."""
    kinds = catalogue()
    for suffix in HISTOGRAM_SUFFIXES:
        stem = series_name.removesuffix(suffix)
        if stem != series_name and kinds.get(stem, ("",))[0] == "histogram":
            return stem
    return series_name
