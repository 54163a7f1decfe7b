"""The Grafana dashboard only queries metrics the code exports, and has the panels operators need.

The metric names come from the collectors declared in ``crmstream.metrics`` (the one module every
metric lives in), expanded to the series names Prometheus sees: counters get ``_total`` (and
``_created``), histograms ``_bucket``/``_sum``/``_count``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from crmstream import metrics

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "helm" / "crm-stream" / "dashboards" / "crm-stream.json"
METRIC_NAME = re.compile(r"\bcrm_[a-z0-9_]+")
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


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"${variable['name']}", query["query"] if isinstance(query, dict) else query


def test_exported_series_include_suffixes() -> None:
    series = exported_series()
    assert "crm_worker_records_in_total" in series
    assert "crm_worker_processing_seconds_bucket" in series
    assert "crm_worker_records_in" not in series, "counters are exposed with _total only"
    assert series["crm_worker_dead_letters_total"] == {"vendor", "reason"}


def test_every_panel_query_names_an_exported_metric(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    seen = set()
    for where, expr in queries(dashboard):
        names = METRIC_NAME.findall(expr)
        assert names, f"{where}: query names no crm_ metric: {expr}"
        for name in names:
            assert name in series, f"{where}: {name} is not exported by crmstream.metrics"
            seen.add(name)
    assert len(seen) >= 10


def test_queries_group_and_filter_only_by_labels_the_metric_has(dashboard: dict[str, Any]) -> None:
    """`sum by (vendor)` over a metric without a vendor label silently yields one empty series."""
    series = exported_series()
    generic = {"namespace", "pod", "instance", "job"}
    for where, expr in queries(dashboard):
        for name in METRIC_NAME.findall(expr):
            selector = re.search(re.escape(name) + r"\{([^}]*)\}", expr)
            used = set(re.findall(r"(\w+)\s*=~?", selector.group(1))) if selector else set()
            assert used - generic <= series[name], f"{where}: {name} has no label {used}"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")}
            metric_labels = set().union(*(series[n] for n in METRIC_NAME.findall(expr)))
            assert labels - generic <= metric_labels, f"{where}: grouped by {labels}"


def test_queries_are_balanced(dashboard: dict[str, Any]) -> None:
    for where, expr in queries(dashboard):
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), f"{where}: unbalanced {expr}"


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
    assert "vendor" in vendor["query"]["query"]
    assert variables["datasource"]["query"] == "prometheus"
    series = exported_series()
    for where, expr in queries(dashboard):
        for name in METRIC_NAME.findall(expr):
            if "vendor" in series[name] and not where.startswith("$"):
                assert f"{name}{{" in expr and 'vendor=~"$vendor"' in expr, where
