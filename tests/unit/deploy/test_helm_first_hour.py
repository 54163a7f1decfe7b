"""The Helm path ends at a page (issue 22 item 11): the chart README says what the probes
really ask, NOTES.txt says how to reach the page, an Ingress can front the page and the query
API, the Segment receiver can autoscale, and the install example builds, pushes and names the
image. Also CRM_STATS_RETENTION as a chart value (item 13)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from crmstream.settings import Settings
from tests.unit.deploy.test_helm_chart import (
    CHART,
    REPO,
    Manifest,
    _of_kind,
    _one,
    _render_error,
    rc,
)

README = (CHART / "README.md").read_text()


@pytest.fixture(scope="module")
def all_enabled() -> list[Manifest]:
    return rc.render(rc.all_enabled_values())


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_chart_readme_names_the_probe_paths_the_manifests_use(
    all_enabled: list[Manifest],
) -> None:
    paths = set()
    for m in all_enabled:
        if m["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        for container in m["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    paths.add(container[probe]["httpGet"]["path"])
    assert paths == {"/livez", "/readyz"}
    probes = _section(README, "Probes and metrics")
    for path in paths:
        assert f"`{path}`" in probes, path
    assert "probe `/metrics`" not in probes and "probes its `/healthz`" not in probes


def test_notes_say_how_to_reach_the_page() -> None:
    notes = rc.notes({})
    forward = "kubectl -n crm-stream port-forward svc/crm-crm-stream-api 8080:8080"
    assert forward in notes
    assert "http://127.0.0.1:8080/" in notes
    assert "worker.api.ingress.enabled=true" in notes  # how to get an Ingress
    with_ingress = rc.notes(rc.all_enabled_values())
    assert "https://crm.example.com/" in with_ingress
    off = rc.notes({"worker": {"api": {"port": 0}}})
    assert "disabled (worker.api.port is 0)" in off and "port-forward" not in off


def test_an_ingress_fronts_the_page_and_the_api(all_enabled: list[Manifest]) -> None:
    ingress = _one(all_enabled, "Ingress", "-api")
    service = _one(all_enabled, "Service", "-api")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "crm.example.com"
    path = rule["http"]["paths"][0]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == service["spec"]["ports"][0]["name"] == "api"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "crm-tls", "hosts": ["crm.example.com"]}]
    assert not [m for m in rc.render({}) if m["kind"] == "Ingress"]  # off by default


def test_the_api_ingress_needs_the_api_service() -> None:
    values: dict[str, Any] = {"worker": {"api": {"ingress": {"enabled": True}}}}
    values["worker"]["api"]["service"] = {"enabled": False}
    message = _render_error(values)
    assert "worker.api.ingress.enabled needs worker.api.port" in message


def test_the_segment_receiver_can_autoscale(all_enabled: list[Manifest]) -> None:
    (hpa,) = _of_kind(all_enabled, "HorizontalPodAutoscaler")
    deployment = _one(all_enabled, "Deployment", "-segment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # The HPA owns the replica count; a helm upgrade must not reset it.
    assert "replicas" not in deployment["spec"]
    # It keeps a PDB (at least two pods).
    assert _one(all_enabled, "PodDisruptionBudget", "-segment")["spec"]["minAvailable"] == 1
    assert not _of_kind(rc.render({}), "HorizontalPodAutoscaler")


def test_autoscaling_is_refused_for_pulling_connectors_and_bad_bounds() -> None:
    values = rc.all_enabled_values()
    values["connectors"]["airship"]["autoscaling"] = {"enabled": True}
    assert "/connectors/airship" in _render_error(values)
    values = rc.all_enabled_values()
    values["connectors"]["segment"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 5,
        "maxReplicas": 2,
    }
    assert "minReplicas (5) exceeds maxReplicas (2)" in _render_error(values)


def test_the_install_example_builds_pushes_and_names_the_image() -> None:
    block = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert block is not None
    example = block.group(1)
    assert "docker build -t registry.example.com/data/crm-stream:0.1.0 ." in example
    assert "docker push registry.example.com/data/crm-stream:0.1.0" in example
    assert "--set image.repository=registry.example.com/data/crm-stream" in example
    assert "port-forward svc/crm-crm-stream-api" in example


def test_stats_retention_is_a_chart_value_and_documented() -> None:
    sts = _one(rc.render({"worker": {"statsRetention": "30d"}}), "StatefulSet")
    env = {
        e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CRM_STATS_RETENTION"] == "30d"
    assert "nope" in _render_error({"worker": {"statsRetention": "nope"}})
    assert "1m=3d,1h" in _render_error({"worker": {"statsRetention": "1m=3d,1h"}})
    default = _one(rc.render({}), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in default["env"]}
    assert env["CRM_STATS_RETENTION"] == "1m=3d,1h=90d"
    # What the chart passes, the worker accepts.
    assert Settings.from_env(
        {"CRM_STATS_RETENTION": env["CRM_STATS_RETENTION"]}
    ).stats_retention_seconds() == {"1m": 3 * 86400, "1h": 90 * 86400}
    assert "CRM_STATS_RETENTION" in README
    assert "CRM_STATS_RETENTION" in (REPO / "README.md").read_text()
