"""Render the crm-stream chart with a real Helm engine and validate every manifest offline.

    .venv/bin/python deploy/helm/render_check.py            # default and all-enabled values
    .venv/bin/python deploy/helm/render_check.py --json     # the same, machine-readable

Helm v4 runs in-process through ``helm-python-sdk`` (no helm binary is needed or available);
Kubernetes schemas come from the ``kubernetes-validate`` wheel, so nothing is downloaded. The
unit tests (tests/unit/deploy/test_helm_chart.py) import this module, so the figures printed
here are the ones CI checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent / "crm-stream"
RELEASE = "crm"
NAMESPACE = "crm-stream"
# The chart's kubeVersion floor and the newest schemas the validator ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
# Custom resources have no schema in kubernetes-validate; the tests check them structurally
# instead (test_helm_chart.py::test_service_monitor_targets_the_metrics_service) and, for the
# PrometheusRule, with promtool (test_prometheus_rules.py).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

CONNECTORS = (
    "leanplum",
    "flarelane",
    "pinpoint-firehose",
    "pinpoint-kinesis",
    "segment",
    "airship",
)

SECRET_VALUES = {
    "kafka-sasl-password": "sasl-pass-0001",
    "kafka-ssl-key-password": "key-pass-0002",
    "schema-registry-auth": "user:registry-pass-0003",
    "aws-access-key-id": "AKIAEXAMPLE0004",
    "aws-secret-access-key": "aws-secret-0005",
    "airship-token": "airship-token-0006",
    "segment-shared-secret": "segment-secret-0007",
}


def all_enabled_values(existing_secret: str | None = None) -> dict[str, Any]:
    """Every connector and every optional feature switched on, as a platform team would."""
    values: dict[str, Any] = {
        "kafka": {
            "bootstrapServers": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "crm-stream"},
            "tls": {"existingSecret": "kafka-tls", "clientAuth": True, "keyPassword": True},
            "partitions": 12,
            "replicationFactor": 3,
        },
        "schemaRegistry": {"url": "https://registry.internal:8081", "auth": True},
        "aws": {"region": "eu-west-1"},
        "worker": {
            "replicas": 3,
            "api": {
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "hosts": [
                        {"host": "crm.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}
                    ],
                    "tls": [{"secretName": "crm-tls", "hosts": ["crm.example.com"]}],
                }
            },
        },
        "connectors": {name: {"enabled": True} for name in CONNECTORS},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "httpFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                    }
                }
            ],
            "egress": {
                "enabled": True,
                "to": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 9096}]}],
            },
        },
    }
    connectors = values["connectors"]
    connectors["leanplum"].update(source="s3://crm-feeds/leanplum/", appId="lp-app")
    connectors["flarelane"]["source"] = "s3://crm-feeds/flarelane/"
    connectors["pinpoint-firehose"]["source"] = "s3://crm-feeds/pinpoint/"
    connectors["pinpoint-kinesis"]["stream"] = "pinpoint-events"
    connectors["airship"].update(appKey="ua-app-key", url="EU")
    connectors["segment"]["appId"] = "segment-source"
    connectors["segment"]["autoscaling"] = {"enabled": True, "minReplicas": 2, "maxReplicas": 8}
    connectors["segment"]["ingress"] = {
        "enabled": True,
        "className": "nginx",
        "hosts": [
            {
                "host": "segment.crm.example.com",
                "paths": [{"path": "/segment", "pathType": "Prefix"}],
            }
        ],
        "tls": [{"secretName": "segment-tls", "hosts": ["segment.crm.example.com"]}],
    }
    if existing_secret:
        values["secrets"] = {"existingSecret": existing_secret}
    else:
        values["secrets"] = {"values": dict(SECRET_VALUES)}
    return values


SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "all-enabled": all_enabled_values(),
    "all-enabled-existing-secret": all_enabled_values(existing_secret="crm-credentials"),
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's manifests as parsed objects (NOTES.txt and empty documents dropped)."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    manifests = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests.append(doc)
    return manifests


def notes(values: dict[str, Any] | None = None) -> str:
    """The chart's NOTES.txt as ``helm install`` prints it."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``helm lint --strict``: warnings count as errors."""
    return helm_python.lint(CHART, values or {}, strict=True)


@dataclass(frozen=True)
class Validation:
    kind: str
    name: str
    version: str
    result: str  # "valid", "crd-skipped" or the validation error


def validate(manifests: list[dict[str, Any]]) -> list[Validation]:
    """Each manifest against the strict (no unknown fields) schemas of every KUBE_VERSIONS."""
    out = []
    for doc in manifests:
        kind, name = doc["kind"], doc["metadata"]["name"]
        for version in KUBE_VERSIONS:
            if (doc["apiVersion"], kind) in CRD_KINDS:
                out.append(Validation(kind, name, version, "crd-skipped"))
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                out.append(Validation(kind, name, version, "valid"))
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                out.append(Validation(kind, name, version, f"{path}: {exc.message}"))
            except kubernetes_validate.SchemaNotFoundError as exc:
                out.append(Validation(kind, name, version, exc.message))
    return out


def summary() -> dict[str, Any]:
    report: dict[str, Any] = {"kube_versions": list(KUBE_VERSIONS), "lint": lint()}
    for scenario, values in SCENARIOS.items():
        manifests = render(values)
        results = validate(manifests)
        report[scenario] = {
            "manifests": len(manifests),
            "kinds": dict(sorted(Counter(m["kind"] for m in manifests).items())),
            "valid": sum(r.result == "valid" for r in results),
            "crd_skipped": sum(r.result == "crd-skipped" for r in results),
            "invalid": [
                f"{r.kind}/{r.name} @{r.version}: {r.result}"
                for r in results
                if r.result not in {"valid", "crd-skipped"}
            ],
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = summary()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        lint_report = report["lint"]
        print(
            f"helm {helm_python.helm_sdk_version()} lint --strict: "
            f"{len(lint_report['errors'])} errors, {len(lint_report['messages'])} messages"
        )
        for message in lint_report["messages"]:
            print(f"  [{message['severity']}] {message['path']}: {message['error']}")
        versions = ", ".join(report["kube_versions"])
        for scenario in SCENARIOS:
            r = report[scenario]
            kinds = ", ".join(f"{n} {k}" for k, n in r["kinds"].items())
            print(
                f"{scenario}: {r['manifests']} manifests ({kinds}); against Kubernetes {versions}: "
                f"{r['valid']} valid, {r['crd_skipped']} CRD checks skipped, "
                f"{len(r['invalid'])} invalid"
            )
            for line in r["invalid"]:
                print(f"  INVALID {line}")
    failed = report["lint"]["errors"] or any(report[s]["invalid"] for s in SCENARIOS)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
