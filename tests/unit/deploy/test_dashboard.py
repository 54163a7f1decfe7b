"""The Grafana dashboard only queries metrics the code exports, and has the panels operators need.

The metric names come from the collectors declared in ``crmstream.metrics`` (the one module every
metric lives in), expanded to the series names Prometheus sees: counters get ``_total`` (and
``_created``), histograms ``_bucket``/``_sum``/``_count``. Panel queries are parsed with a real
PromQL parser (promql-parser, a port of Prometheus' own), after Grafana's macros are replaced the
way Grafana does before sending them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client.metrics import MetricWrapperBase

from crmstream import metrics

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "helm" / "crm-stream" / "dashboards" / "crm-stream.json"
METRIC_NAME = re.compile(r"\bcrm_[a-z0-9_]+")
LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")
# Labels Prometheus adds at scrape time (ServiceMonitor / kubernetes_sd relabelling).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "endpoint"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_series() -> dict[str, set[str]]:
    """Series name -> the label names it carries, for every metric crmstream.metrics declares."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        for family in value.describe():
            for suffix in SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = labels | extra
    return series


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(panel title, PromQL text, parsed PromQL) for every panel target."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            sent = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            try:
                ast = promql_parser.parse(sent)
            except Exception as exc:  # the parser raises its own exception types
                pytest.fail(f"{panel['title']}: not valid PromQL ({exc}): {expr}")
            yield panel["title"], expr, ast


def _nodes(ast: Any, kind: type) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, kind):
            found.append(node)

    promql_parser.walk(ast, pre_visit=visit)
    return found


def selectors(ast: Any) -> list[Any]:
    return _nodes(ast, promql_parser.VectorSelector)


def test_exported_series_include_suffixes() -> None:
    series = exported_series()
    assert "crm_worker_records_in_total" in series
    assert "crm_worker_processing_seconds_bucket" in series
    assert "crm_worker_records_in" not in series, "counters are exposed with _total only"
    assert series["crm_worker_dead_letters_total"] == {"vendor", "reason"}


def test_every_panel_query_names_an_exported_metric(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    seen = set()
    for where, expr, ast in panel_queries(dashboard):
        names = [s.name for s in selectors(ast)]
        assert names, f"{where}: query selects no metric"
        for name in names:
            assert name in series, f"{where}: {name} is not exported by crmstream.metrics"
            seen.add(name)
        # The text agrees with the parser: no crm_ name hidden where the parser did not look.
        assert set(METRIC_NAME.findall(expr)) == set(names), where
    assert len(seen) >= 10


def test_variables_read_exported_labels(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    checked = 0
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["query"]["query"])
        assert match, variable["query"]
        metric, label = match.groups()
        assert metric in series, f"${variable['name']}: {metric} is not exported"
        assert label in series[metric] | TARGET_LABELS, f"${variable['name']}: no label {label}"
        checked += 1
    assert checked >= 2


def test_queries_filter_and_group_only_by_labels_the_metric_has(
    dashboard: dict[str, Any],
) -> None:
    """`sum by (vendor)` over a metric without a vendor label silently yields one empty series,
    and a matcher on a missing label silently matches nothing (or everything)."""
    series = exported_series()
    for where, _, ast in panel_queries(dashboard):
        for selector in selectors(ast):
            used = {m.name for m in selector.matchers.matchers} - {"__name__"}
            assert used - TARGET_LABELS <= series[selector.name], (where, selector.name, used)
        for aggregation in _nodes(ast, promql_parser.AggregateExpr):
            if aggregation.modifier is None:
                continue
            grouped = set(aggregation.modifier.labels)
            available = set().union(*(series[s.name] for s in selectors(aggregation.expr)))
            assert grouped - TARGET_LABELS <= available, (where, grouped, available)


def test_the_query_checks_can_fail() -> None:
    """The parser catches what a hand-written dashboard gets wrong."""
    with pytest.raises(Exception, match="parenthes"):
        promql_parser.parse("sum(rate(crm_worker_records_in_total[5m])")
    ast = promql_parser.parse("sum by (reason) (rate(crm_worker_duplicates_total[5m]))")
    (aggregation,) = _nodes(ast, promql_parser.AggregateExpr)
    assert set(aggregation.modifier.labels) - exported_series()["crm_worker_duplicates_total"]


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(dashboard)}

    def exprs(title: str) -> str:
        return " ".join(t["expr"] for t in by_title[title]["targets"])

    assert "by (vendor)" in exprs("Throughput by vendor")
    assert "crm_worker_records_in_total" in exprs("Throughput by vendor")
    dedupe = exprs("Dedupe ratio by vendor")
    assert "crm_worker_duplicates_total" in dedupe and "/" in dedupe
    assert "by (vendor, reason)" in exprs("Dead letters by reason")
    assert "crm_worker_raw_topic_lag_records" in exprs("Consumer lag by raw topic")
    assert "by (connector)" in exprs("Source lag per connector")
    assert "histogram_quantile(0.99" in exprs("p99 processing latency")
    assert "crm_worker_end_to_end_seconds_bucket" in exprs("p99 end-to-end latency")
    # Recovery and data loss: the worker's exactness machinery at work.
    assert "by (stream, cause) (crm_worker_rewinds_total" in exprs("Rewinds by cause")
    assert "crm_worker_records_lost_to_retention_total" in exprs("Records lost to retention")
    assert "by (vendor) (crm_worker_too_large_total" in exprs("Too large for Kafka")
    replays = exprs("Replays after a restart")
    assert "crm_worker_outputs_read_back_total" in replays
    assert "crm_worker_stats_replayed_total" in replays
    # Every panel has a unique id and sits on the 24-column grid.
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_vendor_template_variable_filters_every_worker_panel(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    vendor = variables["vendor"]
    assert vendor["multi"] is True and vendor["includeAll"] is True
    assert vendor["query"]["query"] == "label_values(crm_worker_records_in_total, vendor)"
    assert variables["datasource"]["query"] == "prometheus"
    series = exported_series()
    filtered = 0
    for where, _, ast in panel_queries(dashboard):
        for selector in selectors(ast):
            if "vendor" not in series[selector.name]:
                continue
            matchers = {m.name: m.value for m in selector.matchers.matchers}
            assert matchers.get("vendor") == "$vendor", (where, selector.name)
            filtered += 1
    assert filtered >= 10
