"""The Prometheus rules and the Grafana dashboard against the hub: promtool checks and unit-tests the rules
(a firing and a silent case for each), and every metric a rule or a panel names is one a running hub
exports, with the labels it matches and groups by."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.api.test_metrics_route import FAMILIES, _exercise
from tests.promtool import promtool
from tests.support import LiveHub

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "rules_test.yml"
DASHBOARDS = ROOT / "ops" / "grafana" / "dashboards"

# Series Prometheus makes itself for every target, and the labels it (or prometheus.yml) adds to each.
SYNTHETIC = {"up"}
TARGET_LABELS = {"job", "instance", "service"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*$")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_NAME = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
_KEYWORDS |= {"bool", "offset", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


class Query:
    """The metric names a PromQL expression reads, and the label names it matches on or groups by."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        values = _LABEL_VALUES.match(expr)  # Grafana's label_values(selector, label)
        if values:
            expr = values[1]
        self.grouped = {label for labels in _GROUPING.findall(expr) for label in _labels(labels)}
        if values:
            self.grouped.add(values[2])
        # Label values are strings: blank them (keeping the quotes) before reading names and matchers.
        blank = _STRING.sub('""', _GROUPING.sub(" ", expr))
        self.matched: dict[str, set[str]] = {}
        for name, matchers in _SELECTOR.findall(blank):
            labels = {m[1] for part in matchers.split('""') if (m := _MATCHER.search(part))}
            self.matched.setdefault(name, set()).update(labels)
        bare = _RANGE.sub(" ", _SELECTOR.sub(lambda m: f" {m[1]} ", blank))
        self.names = {
            m[0]
            for m in _NAME.finditer(bare)
            if m[0] not in _KEYWORDS and not bare[m.end() :].lstrip().startswith("(")
        }


def _labels(text: str) -> set[str]:
    return {label.strip() for label in text.split(",") if label.strip()}


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                yield f"{path.name}: panel {panel['title']!r} {target['refId']}", target["expr"]
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                query = variable["query"]
                yield f"{path.name}: variable ${variable['name']}", query.get("query", query)


def _family(series: str, exported: dict[str, str]) -> str | None:
    """The exported family ``series`` belongs to: itself, or a histogram's ``_bucket``/``_sum``/``_count``."""
    if series in exported:
        return series
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and exported.get(base) == "histogram":
            return base
    return None


def test_the_query_reader_finds_names_and_labels() -> None:
    query = Query(
        'histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{job="x", instance=~"$i"}[5m]))) > 1'
        ' and on (job) max without (instance) (deriv(b{field="pending}{"}[10m])) * 60 > 1e3'
        " or sum(rate(c_total[$__rate_interval])) / ignoring(code) d unless up == 0"
    )
    assert query.names == {"a_seconds_bucket", "b", "c_total", "d", "up"}
    assert query.matched == {"a_seconds_bucket": {"job", "instance"}, "b": {"field"}}
    assert query.grouped == {"job", "le", "instance", "code"}
    variable = Query('label_values(tickstock_ready{job="tickstock-hub"}, instance)')
    assert (variable.names, variable.grouped) == ({"tickstock_ready"}, {"instance"})


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = [name for name, _ in _rule_exprs()]
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_promtool_rule_tests_fire_and_stay_silent_for_every_rule() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kinds = cases.setdefault(case["alertname"], {"firing": 0, "silent": 0})
            kinds["firing" if case.get("exp_alerts") else "silent"] += 1
    alerts = [name.removeprefix("rule ") for name, _ in _rule_exprs()]
    for alert in alerts:
        print(f"{alert}: {cases.get(alert)}")
    covered = {a for a in alerts if cases.get(a, {}).get("firing", 0) >= 1 and cases[a]["silent"] >= 1}
    assert covered == set(alerts)


async def test_every_metric_in_the_rules_and_dashboards_is_exported(live_hub: LiveHub) -> None:
    await _exercise(live_hub)
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, re.M))
    queries = [*_rule_exprs(), *_dashboard_exprs()]
    assert len(queries) > 20
    checked: dict[str, set[str]] = {}
    problems = []
    for where, expr in queries:
        query = Query(expr)
        assert query.names, (where, expr)
        labels_here = set(TARGET_LABELS)
        for series in sorted(query.names):
            family = "up" if series in SYNTHETIC else _family(series, exported)
            if family is None:
                problems.append(f"{where}: {series} is not exported by the hub")
                continue
            checked.setdefault(family, set()).add(series)
            if family in SYNTHETIC:
                continue
            known = FAMILIES[family][1] | TARGET_LABELS | ({"le"} if series.endswith("_bucket") else set())
            labels_here |= known
            unknown = query.matched.get(series, set()) - known
            if unknown:
                problems.append(f"{where}: {series} has no label {sorted(unknown)}")
        if query.grouped - labels_here:
            problems.append(f"{where}: groups by {sorted(query.grouped - labels_here)}, which no metric has")
    print(f"checked {len(queries)} queries ({len(list(_rule_exprs()))} rules, the rest from dashboards)")
    for family in sorted(checked):
        kind = "prometheus" if family in SYNTHETIC else exported[family]
        print(f"  {family} ({kind}) as {', '.join(sorted(checked[family]))}")
    assert problems == []
    assert "up" in checked and "tickstock_ready" in checked
