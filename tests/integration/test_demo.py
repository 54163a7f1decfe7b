"""`crm-stream demo --once` the way a user runs it, against the session broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.demo]


@pytest.mark.slow(seconds=35)
@pytest.mark.parametrize("workers", [1, 2])
def test_demo_once_balances_and_matches_the_samples(
    workers: int,
    crm_env_factory: Callable[..., dict[str, str]],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    summary_path = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(crm_env_factory(CRM_DATA_DIR=str(tmp_path / "state"), CRM_PARTITIONS="4"))
    del env["CRM_METRICS_PORT"]  # the demo picks a free port for its worker
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crmcli",
            "demo",
            "--once",
            "--events",
            "750",
            "--summary-json",
            str(summary_path),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--workers",
            str(workers),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["balanced"] is True
    assert set(summary["vendors"]) == {"leanplum", "pinpoint", "segment", "flarelane", "airship"}
    for vendor, row in summary["vendors"].items():
        accounted = (
            row["canonical_out"]
            + row["duplicates"]
            + sum(row["dead_letters"].values())
            + row["skipped"]
        )
        assert accounted == row["raw_in"] == row["published"] > 0, vendor
        expected = row["expected"]
        # What a connector refuses at the source (a webhook body that is not JSON gets 400 and
        # never reaches Kafka) is one of the sample's malformed records too.
        refused = sum(row["refused_by_connector"].values())
        # Stream-control lines (Airship OFFSET_UPDATE) are skipped by the connector already,
        # so they never reach the worker.
        assert row["skipped"] <= expected["skipped"], vendor
        not_published = expected["skipped"] - row["skipped"]
        assert row["published"] + refused + not_published == expected["records"], vendor
        assert row["canonical_out"] == expected["canonical_out"], vendor
        assert row["duplicates"] == expected["duplicates"] > 0, vendor
        assert sum(row["dead_letters"].values()) + refused == sum(
            expected["dead_letters"].values()
        ), vendor
        for reason, n in row["dead_letters"].items():
            assert n <= expected["dead_letters"][reason], (vendor, reason)
    assert summary["campaigns_with_stats"] >= 30
    # Issue 24 item 6: the demo's conversions, each credited to its user's last message, one
    # campaign clearly ahead.
    attribution = summary["attribution"]
    assert attribution["published"] > 0
    credited = attribution["conversions"] + attribution["control_conversions"]
    assert credited == attribution["published"], attribution
    top, second = attribution["campaigns"][:2]
    assert top["conversions"] >= 2 * second["conversions"] > 0, attribution["campaigns"][:3]
    assert "campaigns with stats" in result.stdout
    # Issue 22 item 10: the connector's control lines are the sample's skips, exactly, and
    # --once neither claims to be live nor shows a page that is gone when it ends.
    for vendor, row in summary["vendors"].items():
        skips = row["skipped"] + row["control_lines_not_published"]
        assert skips == row["expected"]["skipped"], vendor
        assert row["problems"] == [] and row["balanced"] is True, vendor
    assert "Ctrl-C" not in result.stdout
    assert "web view:" not in result.stdout and "web view and query API" not in result.stdout
    # Issue 22 item 13: no librdkafka lines when the demo stops.
    assert "rdkafka" not in result.stdout + result.stderr, result.stderr[-3000:]
