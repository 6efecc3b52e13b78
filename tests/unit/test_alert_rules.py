"""deploy/prometheus/ray-backup-alerts.yml: a valid rule file that queries only series we serve.

No PromQL parser is packaged for Python (the package lists hold none), so the check is a
small tokenizer: it drops strings, label matchers, ranges and grouping label lists, and
what is left that is not a function or keyword must be a series of the fleet's registry.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ray_backup import constants as C
from ray_backup.metrics import FleetMetrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "ray-backup-alerts.yml"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
WORD = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The series an expression reads (function calls, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    return {m.group(1) for m in WORD.finditer(text)
            if not m.group(2) and m.group(1).lower() not in KEYWORDS}


def balanced(expr: str) -> bool:
    depth = 0
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', "", expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
        depth = len(stack)
    return depth == 0


@pytest.fixture(scope="module")
def rules():
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    return [rule for group in doc["groups"] for rule in group["rules"]]


def fleet_series() -> set[str]:
    registry = FleetMetrics(list, dict, export_to_ray=False).registry
    return {s.name for family in registry.collect() for s in family.samples}


def test_the_tokenizer_finds_series_and_skips_functions_labels_and_ranges():
    expr = 'sum by (status) (rate(foo_total{status="x"}[5m])) / on(job) max(bar) > 2 and absent(baz)'
    assert metric_names(expr) == {"foo_total", "bar", "baz"}
    assert not balanced("sum(rate(x[5m])") and balanced(expr)


def test_rule_file_structure_is_valid(rules):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    names = [r["alert"] for r in rules]
    assert len(set(names)) == len(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["expr"], str) and balanced(rule["expr"]), rule["alert"]
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_every_series_the_rules_read_is_served_by_the_fleet(rules):
    served = fleet_series()
    assert C.METRIC_DEVICES_STALE in served and C.METRIC_SPOOL_PENDING in served
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']} reads no series"
        assert used <= served, f"{rule['alert']} reads {used - served}"


def test_the_rules_page_on_stale_devices_and_on_an_absent_job(rules):
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert any(C.METRIC_DEVICES_STALE in e and "absent(" not in e for e in exprs.values())
    assert any(re.search(r"absent\(\s*" + C.METRIC_DEVICES_STALE, e) for e in exprs.values())
