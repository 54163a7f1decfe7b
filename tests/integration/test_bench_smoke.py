"""``make bench`` end to end on a tiny input: the passthrough limit and the crm-stream worker on
the session broker (the Quix peer is left out with ``--pipelines``: building its virtualenv
takes longer than this test may). Checks the result file's shape and that the benchmark's own
agreement check passed, so a broken harness fails CI instead of producing wrong figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 2000


@pytest.mark.timeout(150)
def test_bench_smoke(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code = bench_run.main(
        [
            "--events",
            str(EVENTS),
            "--pipelines",
            "passthrough,crm-stream",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--latency-seconds",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0

    report = json.loads((out / "results.json").read_text())
    run = report["run"]
    assert run["events"] == EVENTS
    assert sum(run["per_vendor"].values()) == EVENTS
    # 5% duplicates and 0.5% malformed, give or take the randomness of a small sample.
    assert 0.02 * EVENTS < run["duplicates"] < 0.08 * EVENTS
    assert 1 <= run["malformed"] <= 0.01 * EVENTS
    assert run["expected_canonical_events"] == EVENTS - run["duplicates"] - run["malformed"]

    agreement = report["agreement"]
    assert agreement["passed"] is True
    assert agreement["crm-stream"] == {
        "events": run["expected_canonical_events"],
        "duplicate_ids": 0,
    }
    assert agreement["passthrough"] == {"records": EVENTS, "expected": EVENTS}

    pipelines = report["pipelines"]
    assert set(pipelines) == {"passthrough", "crm-stream"}
    for name, result in pipelines.items():
        assert result["events_per_s"] > 0, name
        assert result["cpu_s_per_million"] > 0, name
        assert result["peak_rss_mb"] > 10, name
        for phase in ("full", "half"):
            latency = result["latency"][phase]
            assert latency["measured"] == latency["expected"] > 0, (name, phase)
            assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"], (name, phase)
    crm = pipelines["crm-stream"]
    assert crm["rocksdb_mb_per_million_keys"] > 0
    assert crm["outputs"]["stats_total_1h"] == run["expected_canonical_events"]
    assert pipelines["passthrough"]["rocksdb_mb_per_million_keys"] is None

    ratios = report["ratios"]["crm_over_passthrough"]
    assert ratios["events_per_s"] == pytest.approx(
        crm["events_per_s"] / pipelines["passthrough"]["events_per_s"], rel=1e-2
    )
    assert (out / "results.png").stat().st_size > 10_000


@pytest.mark.timeout(120)
def test_faust_floor_smoke(kafka_bootstrap: str) -> None:
    """``python -m bench.faust_floor`` reads every generated record and reports a rate (in a
    child process: a Faust worker owns its process's event loop and signal handlers)."""
    import re
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.faust_floor",
            "--events",
            "3000",
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    match = re.search(r"3000 raw records, ([\d,]+) records/s", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert int(match.group(1).replace(",", "")) > 0
