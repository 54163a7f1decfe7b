"""The stats digest (``python -m bench.stats_digest``): deterministic, and it sees a change in
what the stats path writes."""

from __future__ import annotations

import asyncio

import pytest

from bench import stats_digest


def test_the_digests_are_the_same_run_after_run_and_count_what_was_written() -> None:
    first = asyncio.run(stats_digest.run(2_000, 50, 4, 4))
    second = asyncio.run(stats_digest.run(2_000, 50, 4, 4))
    assert first == second | {"cpu_us_per_event": first["cpu_us_per_event"]}
    # Every counted event is in a 1m and a 1h window; 50 campaign ids of 5 vendors and apps.
    assert first["events"] > 1_800
    assert first["upserts"] >= first["events"] * 2 // 50
    # A campaign's entry is written at its first expiry, and nothing expires here: each
    # changelog record is a window's.
    assert first["entries"] == 0
    assert first["changelog"] == first["upserts"]


def test_the_digest_changes_with_one_upsert_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    before = asyncio.run(stats_digest.run(1_000, 20, 4, 4))
    from processors.records import StatsUpserts

    window = StatsUpserts.window  # a window's stored value and upsert, written at once

    def one_more_byte(*args: object) -> tuple[bytes, bytes]:
        stored, upsert = window(*args)  # type: ignore[arg-type]
        return stored, upsert + b"\x00"

    monkeypatch.setattr(StatsUpserts, "window", one_more_byte)
    after = asyncio.run(stats_digest.run(1_000, 20, 4, 4))
    assert after["upserts_sha256"] != before["upserts_sha256"]
    assert after["changelog_sha256"] == before["changelog_sha256"]


def test_a_live_feed_s_small_batches_over_a_short_span_are_many_stats_batches() -> None:
    """``--raw-batch 15 --span-s 20 --raw-batches-per-stats-batch 1``: a 300/s feed's shape."""
    backlog = asyncio.run(stats_digest.run(1_000, 20, 4, 4))
    live = asyncio.run(stats_digest.run(1_000, 20, 4, 1, raw_batch=15, span_ms=20_000))
    again = asyncio.run(stats_digest.run(1_000, 20, 4, 1, raw_batch=15, span_ms=20_000))
    assert live == again | {"cpu_us_per_event": live["cpu_us_per_event"]}
    # Every raw batch of 15 records (each vendor's 200 in 14 batches) is a stats batch.
    assert live["stats_batches"] == 5 * 14
    assert backlog["stats_batches"] == 2  # 5 raw batches of 500 (one per vendor), 4 at a time
    # The same events, counted in more touches of the same windows, over 20 s of event time.
    assert live["events"] == backlog["events"]
    assert live["upserts"] > backlog["upserts"]
    assert live["upserts_sha256"] != backlog["upserts_sha256"]


def test_write_behind_writes_fewer_upserts_and_ends_in_the_same_state() -> None:
    """``--flush-interval``: a live feed's batches counted into windows in memory, each written
    once it has been dirty for 1 s (20 batches): fewer upserts, the same final windows and last
    upserts (CRM_STATS_FLUSH_INTERVAL, issue 21)."""
    every = asyncio.run(stats_digest.run(1_000, 20, 4, 1, raw_batch=15, span_ms=20_000))
    behind = asyncio.run(
        stats_digest.run(1_000, 20, 4, 1, raw_batch=15, span_ms=20_000, flush_interval_s=1.0)
    )
    assert behind["upserts"] < every["upserts"]
    assert behind["final_sha256"] == every["final_sha256"]
    assert behind["upserts_sha256"] != every["upserts_sha256"]
