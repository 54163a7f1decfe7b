"""``make bench`` end to end on a tiny input: the passthrough limit, the crm-stream worker alone
and as two worker processes in one consumer group (``--workers 1,2``), and the Bytewax peer, on
the session broker. Checks the result file's shape and that the benchmark's own agreement check
passed (every run the same canonical event ids and campaign counts), so a broken harness fails CI
instead of producing wrong figures.

The Bytewax peer runs in ``.venv-bytewax``, which the first run creates (about 10 s) and later
runs reuse. The Quix peer is left out with ``--pipelines``: building its virtualenv (quixstreams
and its dependencies) takes longer than this test may."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench_run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.bench]

EVENTS = 2000


@pytest.mark.slow(seconds=60)
@pytest.mark.timeout(240)
def test_bench_smoke(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code = bench_run.main(
        [
            "--events",
            str(EVENTS),
            "--pipelines",
            "passthrough,crm-stream,bytewax",
            "--workers",
            "1,2",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--latency-seconds",
            "1",
            "--latency-rates",
            "200",
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

    assert run["crm_stream_workers"] == [1, 2]
    assert run["bytewax_version"] == bench_run.BYTEWAX_VERSION

    agreement = report["agreement"]
    assert agreement["passed"] is True
    for name in ("crm-stream", "crm-stream-2w", "bytewax"):
        assert agreement[name] == {
            "events": run["expected_canonical_events"],
            "duplicate_ids": 0,
        }, name
    assert agreement["compared_with"] == "crm-stream"
    assert agreement["same_event_ids"] is True
    assert agreement["same_campaign_counts"] is True
    assert agreement["passthrough"] == {"records": EVENTS, "expected": EVENTS}

    pipelines = report["pipelines"]
    assert set(pipelines) == {"passthrough", "crm-stream", "crm-stream-2w", "bytewax"}
    # The worker's CPU per event by stage: every stage ran and is in the report (its figures are
    # never checked against a time).
    for name in ("crm-stream", "crm-stream-2w"):
        by_stage = pipelines[name]["cpu_us_per_event_by_stage"]
        assert list(by_stage) == ["consume", "normalize", "dedupe", "encode", "produce", "stats"]
        assert all(us > 0 for us in by_stage.values()), (name, by_stage)
    for name in ("passthrough", "bytewax"):
        assert pipelines[name]["cpu_us_per_event_by_stage"] is None, name
    for name, result in pipelines.items():
        assert result["events_per_s"] > 0, name
        # The passthrough's throughput phase can be over in ~0.1 s: within a 10 ms clock tick of
        # CPU, read as 0 (a fresh-clone CI run). The others spend far more than a tick.
        assert result["cpu_s_per_million"] >= 0, name
        if name != "passthrough":
            assert result["cpu_s_per_million"] > 0, name
        assert result["peak_rss_mb"] > 10, name
        # The two-worker run also has a phase at the 1-worker run's half rate (the same load),
        # second, where the 1-worker run had its half-rate phase.
        same_load = [bench_run.SAME_LOAD] if name == "crm-stream-2w" else []
        assert list(result["latency"]) == ["full", *same_load, "half", "200/s"], name
        assert result["latency"]["200/s"]["target_rate"] == 200.0, name
        for phase in ("full", "half", "200/s", *same_load):
            latency = result["latency"][phase]
            assert latency["measured"] == latency["expected"] > 0, (name, phase)
            assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"], (name, phase)
            # The passthrough's few ms of CPU in a short phase can read 0 (clock ticks of 10 ms);
            # a crm-stream worker spends far more than a tick on every phase.
            assert latency["cpu_s_per_million"] >= 0, (name, phase)
            if name.startswith("crm-stream"):
                assert latency["cpu_s_per_million"] > 0, (name, phase)
    for name in ("crm-stream", "crm-stream-2w", "bytewax"):
        assert pipelines[name]["rocksdb_mb_per_million_keys"] > 0, name
        assert pipelines[name]["outputs"]["stats_total_1h"] == run["expected_canonical_events"]
    assert pipelines["passthrough"]["rocksdb_mb_per_million_keys"] is None
    crm = pipelines["crm-stream"]
    assert crm["workers"] == 1
    two = pipelines["crm-stream-2w"]
    assert two["workers"] == 2
    # Two processes were measured (both in the group; at this size one may have done it all).
    assert len(two["accounted_per_worker"]) == len(two["peak_rss_mb_per_worker"]) == 2
    assert sum(two["accounted_per_worker"]) >= EVENTS
    assert two["peak_rss_mb"] == pytest.approx(
        sum(two["peak_rss_mb_per_worker"]), abs=0.1 * len(two["peak_rss_mb_per_worker"]) + 0.1
    )  # each rounded to 0.1

    assert two["latency"][bench_run.SAME_LOAD]["target_rate"] == pytest.approx(
        max(50.0, crm["events_per_s"] * 0.5), rel=1e-3
    )
    # ... fed the very records of the 1-worker run's half-rate phase (same place, same seed).
    for stat in ("records", "expected"):
        assert two["latency"][bench_run.SAME_LOAD][stat] == crm["latency"]["half"][stat], stat
    assert bench_run._same_load(two, "p99_ms") == two["latency"][bench_run.SAME_LOAD]["p99_ms"]
    assert bench_run._same_load(crm, "p99_ms") == crm["latency"]["half"]["p99_ms"]
    assert bench_run._same_load(pipelines["bytewax"], "p99_ms") is None

    ratios = report["ratios"]
    assert set(ratios) == {"crm_over_passthrough", "crm_over_bytewax", "crm_2w_over_1w"}
    assert ratios["crm_over_passthrough"]["events_per_s"] == pytest.approx(
        crm["events_per_s"] / pipelines["passthrough"]["events_per_s"], rel=1e-2
    )
    assert ratios["crm_2w_over_1w"]["events_per_s"] == pytest.approx(
        two["events_per_s"] / crm["events_per_s"], rel=1e-2
    )
    table = bench_run.table(report)
    for label in (
        "crm-stream x2",
        "Bytewax",
        "crm/bwax",
        "2w/1w",
        "1 worker's half",
        "agreement: PASSED",
    ):
        assert label in table
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


@pytest.mark.timeout(120)
def test_broker_fetch_cost_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench.broker_fetch_cost`` (the embedded broker's own cost, README) runs on a
    broker of its own and reports Tansu's CPU for its three live phases."""
    from bench import broker_fetch_cost

    code = broker_fetch_cost.main(
        ["--preload", "2000", "--preload-batch", "10", "--rate", "500", "--seconds", "1"]
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith(" cores")]
    assert [line.split(":")[0] for line in lines] == [
        "fresh topic",
        "after 2000 records in batches of <= 10",
        "fresh topic again",
    ]
    assert all(float(line.split(":")[1].split()[0]) >= 0 for line in lines)
