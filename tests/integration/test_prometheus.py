"""The shipped Grafana dashboard against a real Prometheus (Debian's ``prometheus`` package).

``crm-stream demo`` runs as a user runs it (connectors on the sample feeds in the demo process,
the worker as its child, each serving /metrics); a ``prometheus`` server scrapes both every second
with the labels the chart's ServiceMonitor gives (namespace, job, pod) and loads the chart's alert
rules. What the demo's sources never produce is added, so that those panels show something too:
the worker's consumer drops a block of raw records once (tests/integration/faults; the worker
rewinds and reads them again), one raw record's canonical event is too large for Kafka (a
too_large dead letter), and one Airship OFFSET_UPDATE line reaches raw.airship (the worker skips
it; crm-stream's own Airship connector never publishes those, another producer might).

Then every panel query of the dashboard, with Grafana's variables substituted as Grafana does
with "All" selected, goes through Prometheus' HTTP API over the run and must return a number:
not only parse, but draw something. The one query that cannot have data in the demo is listed in
NO_DATA_IN_THE_DEMO with the reason, and must stay empty (else the list is out of date).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from crmstream.broker import free_port
from crmstream.settings import Settings
from crmstream.topics import VENDORS
from tests.integration.harness import Feed
from tests.integration.test_poison import _pinpoint
from tests.prometheus_helpers import (
    PrometheusServer,
    chart_rule_groups,
    numbers,
    require_binary,
    write_rule_file,
)
from tests.unit.deploy.test_dashboard import DASHBOARD, panels
from tests.unit.deploy.test_helm_chart import rc

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.demo]

FAULTS = Path(__file__).parent / "faults"
# What the chart's ServiceMonitor makes of release "crm" in namespace "crm-stream".
NAMESPACE = rc.NAMESPACE
JOB = "crm-crm-stream-metrics"
WORKER_POD = "crm-crm-stream-worker-0"
SCRAPE_INTERVAL_S = 1
# Grafana: $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
CONNECTORS = set(rc.CONNECTORS)
DROP = "raw.airship:0:10:29"

NO_DATA_IN_THE_DEMO = {
    ("Records lost to retention", "A"): (
        "the worker creates the series when retention deleted raw records it had not read yet "
        "(a worker down longer than the raw topics' retention); the demo's worker never is, and "
        "the embedded broker has no retention"
    ),
    ("Replays after a restart", "A"): (
        "outputs are read back only when a restarted worker reprocesses records it had written "
        "outputs for; the demo never restarts its worker (tests/integration/test_crash.py does)"
    ),
}


def grafana(expr: str) -> str:
    """The query Grafana sends: its interval macros and this test's variable values."""
    sent = expr.replace("$__rate_interval", RATE_INTERVAL).replace(
        "$__interval", f"{SCRAPE_INTERVAL_S}s"
    )
    # namespace: the one value the variable offers; vendor and connector: "All" (allValue .*).
    sent = re.sub(r"\$\{?namespace\}?", NAMESPACE, sent)
    sent = re.sub(r"\$\{?(vendor|connector)\}?", ".*", sent)
    assert "$" not in sent, f"a Grafana variable this test does not know: {sent}"
    return sent


def dashboard_targets() -> list[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _scrape_config(worker_port: int, connector_port: int, rules: Path) -> dict[str, Any]:
    interval = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{worker_port}"],
                        "labels": {"namespace": NAMESPACE, "pod": WORKER_POD},
                    },
                    {
                        "targets": [f"127.0.0.1:{connector_port}"],
                        "labels": {"namespace": NAMESPACE, "pod": "crm-crm-stream-demo"},
                    },
                ],
            }
        ],
    }


class Demo:
    """``crm-stream demo`` (not --once: it keeps serving metrics) in a child process."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crmcli", "demo", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children: list[psutil.Process] = []

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def published(self) -> dict[str, int] | None:
        """Raw records each vendor's connector published, once the demo printed them all."""
        found = dict(re.findall(r"^(\w+) +(\d+) raw records", self.text(), re.M))
        if set(found) != set(VENDORS):
            return None
        return {vendor: int(n) for vendor, n in found.items()}

    def alive(self) -> bool:
        if self.proc.poll() is None:
            # The worker is the demo's child: remember it, to stop it if the demo cannot.
            try:
                known = {p.pid for p in self.children}
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    if child.pid not in known:
                        self.children.append(child)
            except psutil.NoSuchProcess:
                pass
            return True
        return False

    def stop(self) -> None:
        """Ctrl-C, as a user stops it (the demo then stops its worker)."""
        self.alive()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in self.children:
            try:
                child.wait(timeout=30)
            except psutil.TimeoutExpired:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def _wait(
    what: str, condition: Callable[[], bool], timeout: float, context: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s\n{context()}")
        time.sleep(1)


@pytest.mark.slow(seconds=35)
@pytest.mark.timeout(480)
def test_every_dashboard_panel_query_returns_data_from_a_real_prometheus(
    crm_env_factory: Callable[..., dict[str, str]], kafka_bootstrap: str, tmp_path: Path
) -> None:
    require_binary("prometheus")
    worker_port, connector_port, prometheus_port = free_port(), free_port(), free_port()
    rules = write_rule_file(
        chart_rule_groups(rc.render(rc.all_enabled_values())), tmp_path / "rules.yml"
    )
    prometheus = PrometheusServer(
        _scrape_config(worker_port, connector_port, rules), tmp_path, prometheus_port
    )
    prometheus.start()
    start = time.time()

    crm_env = crm_env_factory(CRM_DATA_DIR=str(tmp_path / "state"), CRM_TEST_DROP=DROP)
    del crm_env["CRM_METRICS_PORT"]  # the demo sets the worker's from --worker-metrics-port
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(crm_env)
    env["PYTHONPATH"] = str(FAULTS)  # the worker's consumer drops DROP once (sitecustomize)
    demo = Demo(
        env,
        [
            "--events",
            "750",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--metrics-port",
            str(connector_port),
            "--worker-metrics-port",
            str(worker_port),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        tmp_path / "demo.log",
    )
    worker_log = tmp_path / "demo" / "worker.log"

    def context() -> str:
        worker = worker_log.read_text(errors="replace")[-3000:] if worker_log.exists() else ""
        return (
            f"--- demo\n{demo.text()[-3000:]}\n--- worker\n{worker}\n"
            f"--- prometheus\n{prometheus.log()}"
        )

    try:
        _wait("the demo's feeds", lambda: bool(demo.alive() and demo.published()), 240, context)
        published: dict[str, int] = demo.published() or {}

        # A Pinpoint event whose synthesized id holds a 400,000-character campaign activity id:
        # over CRM_MAX_MESSAGE_BYTES, so the worker dead-letters it as too_large.
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("CRM_")})
        huge = _pinpoint(
            event_type="_campaign.send",
            attributes={"campaign_activity_id": "a" * 400_000, "delivery_type": "PUSH"},
        )
        feed = Feed(settings)
        feed.publish("pinpoint", [(b"huge-prometheus", huge)])
        published["pinpoint"] += 1
        # A stream-control line, as a relay other than crm-stream's connector might forward it.
        control = orjson.dumps(
            {"type": "OFFSET_UPDATE", "offset": "999999", "occurred": "2026-01-31T12:00:00Z"}
        )
        feed.publish("airship", [(b"offset-update-prometheus", control)])
        published["airship"] += 1

        selector = f'namespace="{NAMESPACE}", job="{JOB}"'

        def processed_everything() -> bool:
            assert demo.alive(), context()
            records_in = {
                s["metric"]["vendor"]: float(s["value"][1])
                for s in prometheus.query(
                    f"sum by (vendor) (crm_worker_records_in_total{{{selector}}})"
                )
            }
            return (
                all(records_in.get(v, 0) >= n for v, n in published.items())
                and prometheus.scalar(f"sum(crm_worker_too_large_total{{{selector}}})") >= 1
                and prometheus.scalar(f"sum(crm_worker_skipped_total{{{selector}}})") >= 1
                and prometheus.scalar(f"sum(crm_worker_raw_topic_lag_records{{{selector}}})") == 0
            )

        # Every record in, the dropped block included (it can only be read again by a rewind).
        _wait("Prometheus seeing every record processed", processed_everything, 180, context)
        assert prometheus.scalar(f"sum(crm_worker_rewinds_total{{{selector}}})") >= 1, context()
        time.sleep(5 * SCRAPE_INTERVAL_S)  # rates over the last records, a few points more
        end = time.time()

        # Both targets are up, with the ServiceMonitor's labels.
        up = {s["metric"]["pod"]: s["value"][1] for s in prometheus.query(f"up{{{selector}}}")}
        assert up == {WORKER_POD: "1", "crm-crm-stream-demo": "1"}, up

        # The template variables offer what the processes export.
        def label_values(metric: str, label: str) -> set[str]:
            return set(prometheus.api(f"label/{label}/values", **{"match[]": metric}))

        assert label_values("crm_worker_records_in_total", "namespace") == {NAMESPACE}
        assert label_values("crm_worker_records_in_total", "vendor") == set(VENDORS)
        assert label_values("crm_connector_records_total", "connector") == CONNECTORS

        # Every panel query, over the run.
        targets = dashboard_targets()
        assert len(targets) >= 30
        without_data: dict[tuple[str, str], str] = {}
        for title, ref, expr in targets:
            result = prometheus.query_range(grafana(expr), start, end, step=SCRAPE_INTERVAL_S)
            if not numbers(result):
                without_data[(title, ref)] = f"{grafana(expr)} -> {result[:2]}"
        unexpected = {k: v for k, v in without_data.items() if k not in NO_DATA_IN_THE_DEMO}
        assert not unexpected, "panel queries without data:\n" + "\n".join(
            f"  {title} [{ref}]: {why}" for (title, ref), why in unexpected.items()
        )
        stale = set(NO_DATA_IN_THE_DEMO) - set(without_data)
        assert not stale, f"listed as without data, but they have data now: {stale}"
        # The listed ones are queries of existing panels, not leftovers.
        assert set(NO_DATA_IN_THE_DEMO) <= {(title, ref) for title, ref, _ in targets}

        # The chart's alert rules loaded and evaluate against the real series without error.
        loaded = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert {r["name"] for r in loaded} == {
            r["alert"]
            for g in chart_rule_groups(rc.render(rc.all_enabled_values()))
            for r in g["rules"]
        }
        for rule in loaded:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            assert not rule["lastEvaluation"].startswith("0001-"), rule["name"]
    finally:
        demo.stop()
        prometheus.stop()
