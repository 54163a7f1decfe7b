"""The chart's alert rules (templates/prometheusrule.yaml), checked by Prometheus' own promtool.

The chart is rendered by the real Helm engine (render_check, as in test_helm_chart.py), the
PrometheusRule's groups are written to a rule file, and ``promtool check rules`` validates it.
``promtool test rules`` then runs prometheus_rules_test.yaml beside this file: input series and
the alerts expected from them, a firing and a quiet case for every alert. Each alert's metrics
and labels are those crmstream.metrics exports, and its runbook link lands on a section of the
chart README's "Alerts".
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import promql_parser
import pytest
import yaml

from tests.prometheus_helpers import chart_rule_groups, require_binary, write_rule_file
from tests.unit.deploy.test_dashboard import TARGET_LABELS, _nodes, exported_series, selectors
from tests.unit.deploy.test_helm_chart import rc

HERE = Path(__file__).resolve().parent
RULE_TESTS = HERE / "prometheus_rules_test.yaml"
README = rc.CHART / "README.md"
ENABLED = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
ALERTS = {
    "CrmStreamWorkerLagHigh",
    "CrmStreamWorkerLagGrowing",
    "CrmStreamDeadLetterRate",
    "CrmStreamConnectorCheckpointStale",
    "CrmStreamReceiverErrors",
    "CrmStreamRecordsLostToRetention",
    "CrmStreamWorkerRewinding",
    "CrmStreamTargetDown",
    "CrmStreamWorkerAbsent",
}


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    return chart_rule_groups(rc.render(ENABLED))


def _rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rule_is_rendered_only_when_enabled(groups: list[dict[str, Any]]) -> None:
    assert not [m for m in rc.render({}) if m["kind"] == "PrometheusRule"]
    (rule,) = [m for m in rc.render(rc.all_enabled_values()) if m["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "crm-crm-stream"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert {r["alert"] for r in _rules(groups)} == ALERTS


def test_promtool_check_rules(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    path = write_rule_file(groups, tmp_path / "rules.yml")
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_check_rules_can_fail(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    broken = yaml.safe_load(yaml.safe_dump(groups))
    broken[0]["rules"][0]["expr"] = "sum by (vendor) (rate(crm_worker_records_in_total[5m])"
    path = write_rule_file(broken, tmp_path / "rules.yml")
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "unclosed left parenthesis" in result.stdout + result.stderr


def test_promtool_test_rules(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    """Every case of prometheus_rules_test.yaml: the right alerts, labels and annotations (with
    their $value rendered), and none where none is due."""
    write_rule_file(groups, tmp_path / "rules.yml")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_firing_tests_can_fail(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    """Without the `unless ... offset` half, a lost-records series created by its first loss
    never fires: promtool says so."""
    weakened = yaml.safe_load(yaml.safe_dump(groups))
    for rule in weakened[0]["rules"]:
        if rule["alert"] == "CrmStreamRecordsLostToRetention":
            rule["expr"] = re.sub(r"\(crm_worker[^\n]*offset 15m\)\s*or\s*", "", rule["expr"])
    write_rule_file(weakened, tmp_path / "rules.yml")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: CrmStreamRecordsLostToRetention, time: 21m" in result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case(groups: list[dict[str, Any]]) -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())
    assert cases["rule_files"] == ["rules.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for check in test["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in _rules(groups)}
    assert firing == alerts, alerts ^ firing
    assert quiet == alerts, alerts ^ quiet


def _readme_anchors() -> set[str]:
    """GitHub's anchors of the headings under "## Alerts" in the chart README."""
    text = README.read_text()
    match = re.search(r"^## Alerts\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "the chart README has no '## Alerts' section"
    headings = re.findall(r"^#{3,4} (.+)$", match.group(1), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_severity_summary_description_and_a_runbook(
    groups: list[dict[str, Any]],
) -> None:
    anchors = _readme_anchors()
    for rule in _rules(groups):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert all(annotations.values()), name
        url = annotations["runbook_url"]
        assert url == f"deploy/helm/crm-stream/README.md#{name.lower()}", name
        assert url.split("#")[1] in anchors, f"{name}: no README heading for {url}"
    assert len(anchors) >= len(ALERTS)


def test_alerts_use_exported_metrics_and_their_labels(groups: list[dict[str, Any]]) -> None:
    """A misspelt metric or label makes an alert silently never fire."""
    series = exported_series()
    series["up"] = set()
    for rule in _rules(groups):
        ast = promql_parser.parse(rule["expr"])
        found = selectors(ast)
        assert found, rule["alert"]
        for selector in found:
            assert selector.name in series, (rule["alert"], selector.name)
            used = {m.name for m in selector.matchers.matchers} - {"__name__"}
            assert used - TARGET_LABELS <= series[selector.name], (rule["alert"], used)
            # Every selector is limited to this release's targets.
            matchers = {m.name: m.value for m in selector.matchers.matchers}
            assert matchers["namespace"] == rc.NAMESPACE, rule["alert"]
            assert matchers["job"] == "crm-crm-stream-metrics", rule["alert"]
        for aggregation in _nodes(ast, promql_parser.AggregateExpr):
            if aggregation.modifier is None:
                continue
            grouped = set(aggregation.modifier.labels)
            available = set().union(*(series[s.name] for s in selectors(aggregation.expr)))
            assert grouped - TARGET_LABELS <= available, (rule["alert"], grouped)


def test_thresholds_labels_selector_and_runbook_come_from_values() -> None:
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "selector": 'cluster="eu-1", job="crm"',
                "alertLabels": {"team": "crm"},
                "runbookUrl": "https://git.example.com/crm-stream/README.md",
                "thresholds": {
                    "workerLagRecords": 250000,
                    "deadLetterRatio": 0.2,
                    "checkpointAgeSeconds": 900,
                    "receiver5xxRatio": 0.5,
                    "rewindsPer30m": 7,
                },
            }
        }
    }
    rules = {r["alert"]: r for r in _rules(chart_rule_groups(rc.render(values)))}
    assert rules["CrmStreamWorkerLagHigh"]["expr"].endswith("> 250000")
    assert "> 0.2\nand" in rules["CrmStreamDeadLetterRate"]["expr"]
    assert "more than 20% of" in rules["CrmStreamDeadLetterRate"]["annotations"]["description"]
    assert rules["CrmStreamConnectorCheckpointStale"]["expr"].endswith("> 900")
    assert rules["CrmStreamReceiverErrors"]["expr"].endswith("> 0.5")
    assert rules["CrmStreamWorkerRewinding"]["expr"].endswith(">= 7")
    for name, rule in rules.items():
        assert rule["labels"]["team"] == "crm", name
        assert rule["annotations"]["runbook_url"].startswith("https://git.example.com/"), name
        for selector in selectors(promql_parser.parse(rule["expr"])):
            matchers = {m.name: m.value for m in selector.matchers.matchers}
            assert (matchers["cluster"], matchers["job"]) == ("eu-1", "crm"), name


def test_rules_without_a_service_monitor_need_a_selector() -> None:
    with pytest.raises(helm_python.HelmError) as info:
        rc.render({"metrics": {"prometheusRule": {"enabled": True}}})
    assert "metrics.prometheusRule.enabled needs metrics.serviceMonitor.enabled" in str(info.value)
