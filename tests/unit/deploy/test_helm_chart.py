"""The Helm chart, rendered by a real Helm engine (Helm v4 in-process via helm-python-sdk) and
validated offline against the Kubernetes schemas shipped in the kubernetes-validate wheel.

ServiceMonitor and PrometheusRule are Prometheus Operator CRDs with no schema in
kubernetes-validate: their schema validation is skipped explicitly (render_check.CRD_KINDS); the
ServiceMonitor is checked structurally here, the PrometheusRule by promtool in
test_prometheus_rules.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python
import pytest

REPO = Path(__file__).resolve().parents[3]


def _load_render_check() -> ModuleType:
    path = REPO / "deploy" / "helm" / "render_check.py"
    spec = importlib.util.spec_from_file_location("crm_render_check", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rc = _load_render_check()
CHART: Path = rc.CHART
CONNECTORS: tuple[str, ...] = rc.CONNECTORS
SECRET_NAME_HINT = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|ACCESS_KEY|CREDENTIAL")

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return rc.render({})


@pytest.fixture(scope="module")
def all_enabled() -> list[Manifest]:
    return rc.render(rc.all_enabled_values())


@pytest.fixture(scope="module")
def existing_secret() -> list[Manifest]:
    return rc.render(rc.all_enabled_values(existing_secret="crm-credentials"))


def _of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def _one(manifests: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    found = [m for m in _of_kind(manifests, kind) if m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[m['metadata'] for m in found]}"
    return found[0]


def _pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for m in manifests:
        if m["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            yield m["metadata"]["name"], m["spec"]["template"]


def _render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm_python.HelmError) as info:
        rc.render(values)
    return str(info.value)


# --- lint and schema validation ----------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "all-enabled"])
def test_lint_strict_has_no_errors_or_warnings(scenario: str) -> None:
    report = rc.lint(rc.SCENARIOS[scenario])
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
    assert worse_than_info == []


@pytest.mark.parametrize("scenario", sorted(rc.SCENARIOS))
def test_every_manifest_validates_against_the_kubernetes_schemas(scenario: str) -> None:
    manifests = rc.render(rc.SCENARIOS[scenario])
    results = rc.validate(manifests)
    invalid = [r for r in results if r.result not in {"valid", "crd-skipped"}]
    assert invalid == []
    # Only the CRDs are skipped, and each manifest was checked against every Kubernetes version.
    skipped = {(r.kind, r.name) for r in results if r.result == "crd-skipped"}
    assert {kind for kind, _ in skipped} <= {"ServiceMonitor", "PrometheusRule"}
    assert len(results) == len(manifests) * len(rc.KUBE_VERSIONS)


def test_the_validator_rejects_a_broken_manifest(default: list[Manifest]) -> None:
    """Proof that validation can fail: a misspelt field and a wrong type are caught."""
    sts = json.loads(json.dumps(_one(default, "StatefulSet")))
    sts["spec"]["replica"] = 2
    sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9108"
    results = rc.validate([sts])
    assert all(r.result not in {"valid", "crd-skipped"} for r in results), results


def test_default_render_is_small_and_safe(default: list[Manifest]) -> None:
    kinds = sorted(m["kind"] for m in default)
    assert kinds == [
        "ConfigMap",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    # No connector, no Secret (no credential configured), no CRD unless asked for.
    assert not _of_kind(default, "Deployment")
    assert not _of_kind(default, "Secret")


# --- worker ------------------------------------------------------------------------------------


def test_worker_serves_the_query_api_and_advertises_its_pod_address(
    default: list[Manifest],
) -> None:
    sts = _one(default, "StatefulSet", "-worker")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "api", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CRM_API_PORT"]["value"] == "8080"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    governing = _one(default, "Service", "-worker")
    assert sts["spec"]["serviceName"] == governing["metadata"]["name"]
    url = env["CRM_API_URL"]["value"]
    assert url.startswith(f"http://$(POD_NAME).{governing['metadata']['name']}.")
    assert url.endswith(".svc:8080")
    assert {"name": "api", "port": 8080, "targetPort": "api", "protocol": "TCP"} in governing[
        "spec"
    ]["ports"]
    api = _one(default, "Service", "-api")
    assert api["spec"]["ports"] == [
        {"name": "api", "port": 8080, "targetPort": "api", "protocol": "TCP"}
    ]
    assert api["spec"]["selector"] == governing["spec"]["selector"]


def test_worker_is_a_statefulset_with_a_pvc_for_rocksdb(default: list[Manifest]) -> None:
    sts = _one(default, "StatefulSet", "-worker")
    claims = sts["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["worker"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts["data"] == env["CRM_DATA_DIR"] == "/var/lib/crm-stream"
    # TAXONOMY §5: ids are remembered for at least a week.
    assert env["CRM_DEDUPE_WINDOW"] == "7d"
    headless = _one(default, "Service", "-worker")
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]


def test_worker_persistence_can_be_an_empty_dir() -> None:
    sts = _one(rc.render({"worker": {"persistence": {"enabled": False}}}), "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_worker_replicas_may_equal_partitions() -> None:
    sts = _one(rc.render({"worker": {"replicas": 6}, "kafka": {"partitions": 6}}), "StatefulSet")
    assert sts["spec"]["replicas"] == 6


def test_worker_replicas_above_partitions_fail_with_a_clear_message() -> None:
    message = _render_error({"worker": {"replicas": 7}, "kafka": {"partitions": 6}})
    assert "worker.replicas (7) must not exceed kafka.partitions (6)" in message


def test_worker_pdb_selects_the_workers(default: list[Manifest]) -> None:
    pdb = _one(default, "PodDisruptionBudget", "-worker")
    sts = _one(default, "StatefulSet")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- connectors --------------------------------------------------------------------------------


def test_one_deployment_per_enabled_connector(all_enabled: list[Manifest]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind(all_enabled, "Deployment")}
    assert sorted(deployments) == sorted(f"crm-crm-stream-{name}" for name in CONNECTORS)
    for name in CONNECTORS:
        container = deployments[f"crm-crm-stream-{name}"]["spec"]["template"]["spec"]["containers"]
        assert container[0]["args"][:2] == ["connect", name]


def test_only_enabled_connectors_are_deployed() -> None:
    airship = {"enabled": True, "appKey": "k"}
    manifests = rc.render(
        {"connectors": {"airship": airship}, "secrets": {"values": {"airship-token": "t"}}}
    )
    names = [d["metadata"]["name"] for d in _of_kind(manifests, "Deployment")]
    assert names == ["crm-crm-stream-airship"]
    # Without its token the connector would crash-loop; the chart refuses instead.
    message = _render_error({"connectors": {"airship": airship}})
    assert "CRM_AIRSHIP_TOKEN needs a credential: set secrets.values.airship-token" in message


def test_connector_args_are_real_cli_commands(all_enabled: list[Manifest]) -> None:
    """Every connector the CLI registers is in the chart, and the chart's args parse."""
    from connectors.registry import CONNECTORS as REGISTERED
    from crmcli import build_parser

    assert set(REGISTERED) <= set(CONNECTORS), "a registered connector is missing from the chart"
    parser = build_parser()
    parsed = 0
    for deployment in _of_kind(all_enabled, "Deployment"):
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[1] not in REGISTERED:
            continue  # the chart is ahead of the CLI (e.g. a connector still being written)
        namespace = parser.parse_args(args)
        assert namespace.connector == args[1]
        parsed += 1
    assert parsed >= 3


def test_pulling_connectors_need_their_source() -> None:
    message = _render_error(
        {"connectors": {"flarelane": {"enabled": True}}, "aws": {"credentialsFromSecret": False}}
    )
    assert "connectors.flarelane.source is required" in message
    message = _render_error(
        {
            "connectors": {"pinpoint-kinesis": {"enabled": True}},
            "aws": {"credentialsFromSecret": False},
        }
    )
    assert "connectors.pinpoint-kinesis.stream is required" in message


def test_pulling_connectors_run_one_replica_with_recreate(all_enabled: list[Manifest]) -> None:
    for deployment in _of_kind(all_enabled, "Deployment"):
        if deployment["metadata"]["name"].endswith("-segment"):
            assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
            continue
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    values = rc.all_enabled_values()
    values["connectors"]["airship"]["replicas"] = 2
    assert "must run 1 replica" in _render_error(values)


def test_segment_receiver_has_a_service_and_an_ingress(all_enabled: list[Manifest]) -> None:
    deployment = _one(all_enabled, "Deployment", "-segment")
    service = _one(all_enabled, "Service", "-segment")
    ingress = _one(all_enabled, "Ingress", "-segment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The receiver must listen on the pod address and on the port the Service targets.
    assert env["CRM_SEGMENT_HOST"] == "0.0.0.0"
    assert int(env["CRM_SEGMENT_PORT"]) == ports["http"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]
    assert ingress["spec"]["tls"][0]["secretName"] == "segment-tls"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    for name in ("leanplum", "airship"):
        other = _one(all_enabled, "Deployment", f"-{name}")["spec"]["template"]["spec"]
        probes = other["containers"][0]
        assert probes["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert other["terminationGracePeriodSeconds"] == 75  # room for the final flush
    # Two replicas of the receiver: a PDB keeps one up during drains.
    pdb = _one(all_enabled, "PodDisruptionBudget", "-segment")
    assert pdb["spec"]["minAvailable"] == 1


def test_ingress_without_service_fails() -> None:
    values = rc.all_enabled_values()
    values["connectors"]["segment"]["service"] = {"enabled": False}
    assert "ingress.enabled needs connectors.segment.service.enabled" in _render_error(values)


def test_aws_settings_reach_only_aws_connectors(all_enabled: list[Manifest]) -> None:
    for deployment in _of_kind(all_enabled, "Deployment"):
        env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        is_aws = not deployment["metadata"]["name"].endswith(("-segment", "-airship"))
        assert ("AWS_ACCESS_KEY_ID" in env) is is_aws
        assert ("AWS_REGION" in env) is is_aws


# --- security ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "all-enabled"])
def test_every_pod_is_non_root_read_only_without_escalation(scenario: str) -> None:
    pods = list(_pod_specs(rc.render(rc.SCENARIOS[scenario])))
    assert pods
    for name, template in pods:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] >= 1000, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"], name
            assert container["livenessProbe"] and container["readinessProbe"], name
            # Probes name ports the container declares.
            declared = {p["name"] for p in container["ports"]}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                action = container.get(probe, {}).get("httpGet") or container.get(probe, {}).get(
                    "tcpSocket"
                )
                if action:
                    assert action["port"] in declared, (name, probe)
            # A read-only root needs a writable /tmp.
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, name


@pytest.mark.parametrize("scenario", ["all-enabled", "all-enabled-existing-secret"])
def test_credentials_only_by_secret_key_ref(scenario: str) -> None:
    values = rc.SCENARIOS[scenario]
    manifests = rc.render(values)
    secret_name = values["secrets"].get("existingSecret") or "crm-crm-stream"
    secrets = {s["metadata"]["name"]: s for s in _of_kind(manifests, "Secret")}
    if values["secrets"].get("existingSecret"):
        assert secrets == {}, "with existingSecret the chart creates no Secret"
    else:
        assert set(secrets) == {secret_name}
    dumped = json.dumps([m for m in manifests if m["kind"] != "Secret"])
    for plain in rc.SECRET_VALUES.values():
        assert plain not in dumped, "a credential leaked outside the Secret"
    refs = set()
    for name, template in _pod_specs(manifests):
        for container in template["spec"]["containers"]:
            for env in container["env"]:
                if SECRET_NAME_HINT.search(env["name"]):
                    assert "value" not in env, (name, env["name"])
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == secret_name
                    refs.add(ref["key"])
            assert "envFrom" not in container
    assert refs == {
        "kafka-sasl-password",
        "kafka-ssl-key-password",
        "schema-registry-auth",
        "aws-access-key-id",
        "aws-secret-access-key",
        "airship-token",
        "segment-shared-secret",
    }
    if not values["secrets"].get("existingSecret"):
        assert refs <= set(secrets[secret_name]["data"]), "a reference to a missing key"


def test_missing_credential_fails_with_the_value_to_set() -> None:
    message = _render_error(
        {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "crm"}}}
    )
    assert "set secrets.values.kafka-sasl-password, or secrets.existingSecret" in message
    message = _render_error({"kafka": {"securityProtocol": "SASL_SSL"}})
    assert "kafka.sasl.username is required" in message


def test_tls_material_is_mounted_from_its_secret(all_enabled: list[Manifest]) -> None:
    sts = _one(all_enabled, "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-tls"
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-tls")
    assert mount["readOnly"] is True
    for var in ("CRM_SSL_CA_LOCATION", "CRM_SSL_CERT_LOCATION", "CRM_SSL_KEY_LOCATION"):
        assert env[var].startswith(mount["mountPath"] + "/")


# --- metrics, dashboard, network policy ---------------------------------------------------------


def test_metrics_service_selects_every_pod(all_enabled: list[Manifest]) -> None:
    service = _one(all_enabled, "Service", "-metrics")
    selector = service["spec"]["selector"]
    pods = list(_pod_specs(all_enabled))
    assert len(pods) == len(CONNECTORS) + 1
    for name, template in pods:
        assert selector.items() <= template["metadata"]["labels"].items(), name
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert service["spec"]["ports"][0]["targetPort"] in ports, name


def test_service_monitor_targets_the_metrics_service(all_enabled: list[Manifest]) -> None:
    """Structural check of the CRD that kubernetes-validate has no schema for."""
    monitor = _one(all_enabled, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = _one(all_enabled, "Service", "-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    # It must not also select the headless worker Service (double scrape).
    headless = _one(all_enabled, "Service", "-worker")
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= headless["metadata"]["labels"].items()
    )
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [rc.NAMESPACE]


def test_dashboard_configmap_for_the_grafana_sidecar(default: list[Manifest]) -> None:
    configmap = _one(default, "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = configmap["data"].values()
    shipped = json.loads((CHART / "dashboards" / "crm-stream.json").read_text())
    assert json.loads(content) == shipped
    assert shipped["panels"], "the shipped dashboard has panels"


def test_network_policy_opens_only_metrics_and_http(all_enabled: list[Manifest]) -> None:
    policy = _one(all_enabled, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    segment = _one(all_enabled, "Deployment", "-segment")["spec"]["template"]["spec"]
    http_port = next(p for p in segment["containers"][0]["ports"] if p["name"] == "http")
    # The workers' query API: for users (httpFrom) and from the other workers (forwarding).
    assert ports == ["metrics", http_port["containerPort"], 8080, 8080]
    assert all(rule.get("from") for rule in policy["spec"]["ingress"])
    dns = policy["spec"]["egress"][0]["ports"]
    assert {(p["port"], p["protocol"]) for p in dns} == {(53, "UDP"), (53, "TCP")}
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for name, template in _pod_specs(all_enabled):
        assert selector.items() <= template["metadata"]["labels"].items(), name


def test_egress_lockdown_without_rules_fails() -> None:
    message = _render_error({"networkPolicy": {"enabled": True, "egress": {"enabled": True}}})
    assert "networkPolicy.egress.to" in message


# --- values.schema.json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"worker": {"replicas": "two"}}, "at '/worker/replicas': got string, want integer"),
        ({"worker": {"replicas": 0}}, "/worker/replicas"),
        ({"connectors": {"mailchimp": {"enabled": True}}}, "'mailchimp' not allowed"),
        ({"connectors": {"segment": {"enable": True}}}, "'enable' not allowed"),
        ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
        ({"kafka": {"partitions": 0}}, "/kafka/partitions"),
        ({"kafka": {"bootstrapServers": "kafka"}}, "/kafka/bootstrapServers"),
        ({"metrics": {"port": 0}}, "/metrics/port"),
        ({"logs": {"format": "xml"}}, "/logs/format"),
        ({"extraEnv": {"CRM_SASL_PASSWORD": "hunter2"}}, "/extraEnv/CRM_SASL_PASSWORD"),
        (
            {"connectors": {"airship": {"env": {"CRM_AIRSHIP_TOKEN": "t"}}}},
            "/connectors/airship/env/CRM_AIRSHIP_TOKEN",
        ),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"worker": {"dedupeWindow": "a week"}}, "/worker/dedupeWindow"),
        ({"connectors": {"leanplum": {"source": "http://bucket"}}}, "/connectors/leanplum/source"),
        ({"connectors": {"pinpoint-kinesis": {"start": "EARLIEST"}}}, "/start"),
        # Another connector's field (the connector definitions share one, values.schema.json).
        ({"connectors": {"segment": {"url": "US"}}}, "/connectors/segment/url"),
        ({"connectors": {"airship": {"appId": "a"}}}, "/connectors/airship/appId"),
        ({"unknownTopLevel": 1}, "'unknownTopLevel' not allowed"),
        ({"metrics": {"prometheusRule": {"enable": True}}}, "'enable' not allowed"),
        (
            {"metrics": {"prometheusRule": {"thresholds": {"deadLetterRatio": 5}}}},
            "/metrics/prometheusRule/thresholds/deadLetterRatio",
        ),
        (
            {"metrics": {"prometheusRule": {"thresholds": {"workerLagRecords": "10k"}}}},
            "/metrics/prometheusRule/thresholds/workerLagRecords",
        ),
        (
            {"metrics": {"prometheusRule": {"alertLabels": {"severity": "page"}}}},
            "/metrics/prometheusRule/alertLabels/severity",
        ),
        (
            {"metrics": {"prometheusRule": {"selector": "{job}"}}},
            "/metrics/prometheusRule/selector",
        ),
    ],
)
def test_schema_rejects_bad_values_with_a_message(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        rc.render(values)
    message = str(info.value)
    assert "don't meet the specifications of the schema" in message
    assert expected in message


def test_schema_accepts_the_shipped_defaults_and_scenarios() -> None:
    with helm_python.Chart.load(CHART) as chart:
        for values in rc.SCENARIOS.values():
            chart.validate_schema(chart.merge_values(values))


# --- the query API's token (issue 23 item 4) ---------------------------------------------------

API_TOKEN = "chart-test-api-token-0001 app-1,app-2"


@pytest.mark.parametrize("existing", [None, "crm-credentials"])
def test_the_api_token_comes_from_the_secret(existing: str | None) -> None:
    secrets: dict[str, Any] = (
        {"existingSecret": existing} if existing else {"values": {"api-token": API_TOKEN}}
    )
    manifests = rc.render({"worker": {"api": {"auth": True}}, "secrets": secrets})
    sts = _one(manifests, "StatefulSet", "-worker")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CRM_API_TOKEN"] == {
        "name": "CRM_API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": existing or "crm-crm-stream", "key": "api-token"}},
    }
    assert API_TOKEN not in json.dumps([m for m in manifests if m["kind"] != "Secret"])
    if not existing:
        (secret,) = _of_kind(manifests, "Secret")
        assert "api-token" in secret["data"]
    # The probes stay on the metrics port, without a token.
    container = sts["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics", probe


def test_without_auth_the_api_has_no_token(default: list[Manifest]) -> None:
    sts = _one(default, "StatefulSet", "-worker")
    names = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "CRM_API_TOKEN" not in names


def test_auth_without_a_token_fails_with_the_value_to_set() -> None:
    message = _render_error({"worker": {"api": {"auth": True}}})
    assert "set secrets.values.api-token, or secrets.existingSecret" in message
    assert "worker.api.auth is true" in message
