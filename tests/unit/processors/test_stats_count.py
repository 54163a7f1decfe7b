"""StatsTables.count: the yields between table partitions, and a batch whose windows are all
held (no campaign entry read), against counting the same increments another way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from processors import stats as stats_module
from processors.records import StatsUpdates, load_window, parse_stats_updates, stats_updates_value
from processors.state.keys import campaign_entry_key, window_key
from tests.unit.processors.fake_engine import Parts

T0 = 1_764_000_000_000  # a 1h window's start


def _batch(campaigns: list[str], first_offset: int, per_campaign: int = 1) -> StatsUpdates:
    """One stats-updates record: ``per_campaign`` increments of each campaign, one minute."""
    by_campaign = {
        c: {
            "raw.segment/0": [
                [first_offset + i * per_campaign + j, T0 + 1_000 * j, "SEND", "EMAIL"]
                for j in range(per_campaign)
            ]
        }
        for i, c in enumerate(campaigns)
    }
    recipients = {
        c: {"raw.segment/0": [f"u:{i}-{j}" for j in range(per_campaign)]}
        for i, c in enumerate(campaigns)
    }
    return parse_stats_updates(None, stats_updates_value(by_campaign, recipients))


def _count(parts: Parts, parsed: list[tuple[int, StatsUpdates]], now_ms: int) -> None:
    asyncio.run(parts.stats.count(parsed, parts.outputs, now_ms))


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The count's yields to the event loop (its ``asyncio.sleep(0)`` calls)."""
    seen: list[int] = []
    sleep = asyncio.sleep

    async def counting(delay: float, *args: object) -> None:
        if delay == 0:
            seen.append(1)
        await sleep(delay, *args)

    monkeypatch.setattr(stats_module.asyncio, "sleep", counting)
    return seen


def test_a_live_feed_s_small_batch_is_counted_without_a_yield(
    tmp_path: Path, yields: list[int]
) -> None:
    parts = Parts(tmp_path)  # two partitions, windows 1m and 1h: four table partitions
    _count(
        parts, [(0, _batch(["SEGMENT|a|1", "SEGMENT|a|2"], 0)), (1, _batch(["SEGMENT|a|3"], 9))], 5
    )
    assert yields == []
    assert len(parts.outputs.topics(parts.settings.topic("campaign-stats"))) == 3 * 2


def test_a_backlog_s_batch_yields_every_so_many_windows_between_table_partitions(
    tmp_path: Path, yields: list[int]
) -> None:
    parts = Parts(tmp_path)
    n = stats_module.YIELD_WINDOWS  # windows in each table partition
    parsed = [(p, _batch([f"SEGMENT|a|{p}-{i}" for i in range(n)], 1_000 * p)) for p in range(2)]
    _count(parts, parsed, 5)
    # Four table partitions of n windows each: a yield before each of the last three.
    assert len(yields) == 3
    assert len(parts.outputs.topics(parts.settings.topic("campaign-stats"))) == 4 * n


def test_a_batch_of_held_windows_counts_them_as_a_batch_with_new_windows_does(
    tmp_path: Path,
) -> None:
    """The second batch finds every window held (the campaign entries are not read): its
    windows hold both batches' counts, and its upserts are those of the windows."""
    parts = Parts(tmp_path)
    campaigns = ["SEGMENT|a|1", "SEGMENT|a|2"]
    _count(parts, [(0, _batch(campaigns, 0, per_campaign=2))], 5)
    table = parts.stats_tables["1m"]
    # New campaigns' windows write no campaign entry (one comes with a first expiry).
    entries = table.get_many(0, [campaign_entry_key(c) for c in campaigns])
    assert entries == [None, None]
    sent = len(parts.outputs.sent)
    _count(parts, [(0, _batch(campaigns, 10, per_campaign=2))], 6)
    assert len(parts.outputs.sent) == sent + 2 * 2  # each campaign's 1m and 1h window
    for label, table in parts.stats_tables.items():
        for c in campaigns:
            counts = load_window(table.get_many(0, [window_key(T0, c.encode())])[0], 12)
            assert (counts.total, counts.by_type, counts.applied) == (
                4,
                {"SEND": 4},
                {"raw.segment/0": 10 + (2 if c.endswith("2") else 0) + 1},
            ), label
    # A replay of the second batch counts nothing again.
    _count(parts, [(0, _batch(campaigns, 10, per_campaign=2))], 7)
    for table in parts.stats_tables.values():
        value = table.get_many(0, [window_key(T0, b"SEGMENT|a|1")])[0]
        assert load_window(value, 12).total == 4
