"""Write-behind stats windows (CRM_STATS_FLUSH_INTERVAL > 0, issue 21): when a window counted in
memory is written, how far a stats partition's position may be committed meanwhile, and that a
replay after a crash (what was only in memory lost) counts every increment exactly once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from processors import stats as stats_module
from processors.api.query import TimeRange
from processors.records import load_window, stats_updates_value
from processors.state.keys import window_key
from tests.unit.processors.fake_engine import FakeEvent, FakeMessage, Parts

OCCURRED = 1_780_000_000_000  # in one 1m and one 1h window
HOUR = 1_779_998_400_000  # its 1h window's start (UTC hours)


class Clock:
    """The tables' monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def behind(
    tmp_path: Path, interval: str = "1s", partitions: int = 2, *, hot: bool = True
) -> tuple[Parts, Clock]:
    """A worker writing its stats windows behind by ``interval``; ``hot``: one whose feed was
    hot, so it holds new windows too (the policy these tests are about: which windows held,
    and when, is test_write_behind_hot.py's), else as it starts (new windows written at once)."""
    parts = Parts(tmp_path, {"CRM_STATS_FLUSH_INTERVAL": interval})
    parts.stats.hot.hold_new = hot
    clock = Clock()
    parts.stats.monotonic = clock
    for p in range(partitions):
        tp = parts.stats_tp(p)
        parts.engine.assigned.add(tp)
        parts.positioning.tracker.start(tp, 0)
    return parts, clock


def record(
    parts: Parts, offset: int, increments: dict[str, list[int]], partition: int = 0
) -> FakeEvent:
    """One stats-updates record: per campaign, the raw offsets (raw.segment/0) of its OPENs."""
    value = stats_updates_value(
        {
            campaign: {"raw.segment/0": [[o, OCCURRED, "OPEN", "EMAIL"] for o in raw]}
            for campaign, raw in increments.items()
        },
        {
            campaign: {"raw.segment/0": [f"u{o}" for o in raw]}
            for campaign, raw in increments.items()
        },
        None,
    )
    return FakeEvent(FakeMessage(parts.stats_topic, partition, offset, b"%d" % partition, value))


def upserts(parts: Parts) -> list[tuple[bytes | None, bytes]]:
    return parts.outputs.topics(parts.settings.topic("campaign-stats"))


def stored_total(parts: Parts, campaign: str, label: str = "1h", partition: int = 0) -> int:
    table = parts.stats_tables[label]
    size = table.size_ms
    value = table.get_many(partition, [window_key(OCCURRED - OCCURRED % size, campaign.encode())])[
        0
    ]
    return -1 if value is None else load_window(value, 12).total


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the flush policy ---------------------------------------------------------------------------


def test_a_window_touched_by_many_batches_is_written_once_an_interval(tmp_path: Path) -> None:
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        for i in range(10):  # ten batches within 0.9 s: nothing written
            await parts.stats_path.process([record(parts, i, {"SEGMENT|a|1": [i]})])
            clock.now += 0.1
        assert upserts(parts) == []
        assert stored_total(parts, "SEGMENT|a|1") == -1
        clock.now += 0.05  # the window has been dirty for 1 s: the next batch writes it
        await parts.stats_path.process([record(parts, 10, {"SEGMENT|a|2": [100]})])

    run(scenario())
    keys = [key for key, _ in upserts(parts)]
    assert len(keys) == 2 and all(k and k.startswith(b"SEGMENT|a|1") for k in keys)  # 1m, 1h
    assert stored_total(parts, "SEGMENT|a|1") == 10
    assert stored_total(parts, "SEGMENT|a|2") == -1  # dirty since just now
    assert parts.stats.dirty_count == 2


def test_interval_zero_writes_every_batch_s_windows(tmp_path: Path) -> None:
    parts, _ = behind(tmp_path, "0")

    async def scenario() -> None:
        for i in range(3):
            await parts.stats_path.process([record(parts, i, {"SEGMENT|a|1": [i]})])

    run(scenario())
    assert len(upserts(parts)) == 3 * 2
    assert stored_total(parts, "SEGMENT|a|1") == 3
    assert parts.stats.dirty_count == 0
    assert parts.positioning.committable(parts.stats_tp()) == 3


def test_a_batch_writes_a_bounded_number_of_due_windows_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_module, "FLUSH_MIN_WINDOWS", 4)
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        for i in range(6):  # six campaigns' windows (12), dirty 0.1 s apart
            await parts.stats_path.process([record(parts, i, {f"SEGMENT|a|{i}": [i]})])
            clock.now += 0.1
        clock.now += 5  # all due; a batch touching one window writes max(4, 2 * 2) of them
        await parts.stats_path.process([record(parts, 6, {"SEGMENT|a|9": [9]})])

    run(scenario())
    written = [key for key, _ in upserts(parts)]
    assert len(written) == 4
    assert {k.split(b"|")[2][:1] for k in written if k} == {b"0", b"1"}  # the oldest
    assert parts.stats.dirty_count == 14 - 4


def test_the_windows_in_memory_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_module, "DIRTY_MAX_WINDOWS", 6)
    parts, clock = behind(tmp_path, "1h")

    async def scenario() -> None:
        for i in range(5):  # 10 windows, none due
            await parts.stats_path.process([record(parts, i, {f"SEGMENT|a|{i}": [i]})])
            assert parts.stats.dirty_count <= 6
            clock.now += 0.1

    run(scenario())
    assert parts.stats.dirty_count == 6
    assert len(upserts(parts)) == 4
    assert stored_total(parts, "SEGMENT|a|0") == 1 and stored_total(parts, "SEGMENT|a|4") == -1


def test_the_timer_writes_due_windows_of_an_idle_feed(tmp_path: Path) -> None:
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        await parts.stats_path.flush()  # not due yet
        assert upserts(parts) == []
        clock.now += 1
        parts.engine.is_settled = False
        await parts.stats_path.flush()  # not while the group moves
        assert upserts(parts) == []
        parts.engine.is_settled = True
        await parts.stats_path.flush()

    run(scenario())
    assert len(upserts(parts)) == 2
    assert stored_total(parts, "SEGMENT|a|1") == 1
    assert parts.positioning.committable(parts.stats_tp()) == 1


def test_the_timer_stands_aside_while_batches_come(tmp_path: Path) -> None:
    """A live feed's batches write the due windows themselves, a bounded number each: the timer
    writes nothing then (all the windows due at once would be a burst between two batches)."""
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        clock.now += 0.9
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|2": [2]}, partition=1)])
        clock.now += 0.15  # the first window is due; a batch came 0.15 s ago
        await parts.stats_path.flush()
        assert upserts(parts) == []
        clock.now += 1  # no batch for a second: the timer writes both
        await parts.stats_path.flush()

    run(scenario())
    assert len(upserts(parts)) == 4


# -- the durability boundary ----------------------------------------------------------------------


def test_a_partition_is_committable_only_up_to_its_oldest_batch_not_written(
    tmp_path: Path,
) -> None:
    parts, clock = behind(tmp_path)
    tp0, tp1 = parts.stats_tp(0), parts.stats_tp(1)

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        assert parts.positioning.committable(tp0) == 0  # the window of offset 0 is in memory
        clock.now += 0.6
        await parts.stats_path.process(
            [
                record(parts, 1, {"SEGMENT|a|2": [2]}),
                record(parts, 2, {"SEGMENT|a|2": [3]}),
                record(parts, 0, {"SEGMENT|b|1": [1]}, partition=1),
            ]
        )
        assert parts.positioning.committable(tp0) == 0
        assert parts.positioning.committable(tp1) == 0
        clock.now += 0.5  # offset 0's windows are due (written), offsets 1-2's not
        await parts.stats_path.process([record(parts, 3, {"SEGMENT|a|2": [4]})])
        assert stored_total(parts, "SEGMENT|a|1") == 1
        assert parts.positioning.committable(tp0) == 1
        assert parts.positioning.committable(tp1) == 0
        clock.now += 1  # the timer writes the rest: both partitions committable to their end
        await parts.stats_path.flush()
        assert parts.positioning.committable(tp0) == 4
        assert parts.positioning.committable(tp1) == 1

    run(scenario())
    assert stored_total(parts, "SEGMENT|a|2") == 3


def test_a_clean_stop_writes_every_window_and_makes_every_batch_committable(
    tmp_path: Path,
) -> None:
    parts, _ = behind(tmp_path, "1h")

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1, 2]})])
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|b|1": [1]}, partition=1)])
        await parts.stats_path.stopping()

    run(scenario())
    assert parts.stats.dirty_count == 0
    assert stored_total(parts, "SEGMENT|a|1") == 2
    assert stored_total(parts, "SEGMENT|b|1", partition=1) == 1
    assert parts.positioning.committable(parts.stats_tp(0)) == 1
    assert parts.positioning.committable(parts.stats_tp(1)) == 1


def test_a_rebalance_drops_the_windows_in_memory_and_writes_none_of_a_revoked_partition(
    tmp_path: Path,
) -> None:
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|b|1": [1]}, partition=1)])
        parts.engine.assigned.discard(parts.stats_tp(1))  # revoked
        clock.now += 2
        await parts.stats_path.flush()  # partition 0's windows only
        assert stored_total(parts, "SEGMENT|a|1") == 1
        assert stored_total(parts, "SEGMENT|b|1", partition=1) == -1
        await parts.positioning.on_positioned(after_rebalance=True)
        assert parts.stats.dirty_count == 0
        await parts.stats_path.flush()

    run(scenario())
    assert stored_total(parts, "SEGMENT|b|1", partition=1) == -1
    assert all(k and not k.startswith(b"SEGMENT|b") for k, _ in upserts(parts))


# -- every reader sees the windows in memory ------------------------------------------------------


def test_the_query_api_reads_through_the_windows_in_memory(tmp_path: Path) -> None:
    parts, clock = behind(tmp_path)
    r = TimeRange("1h", HOUR, HOUR + 3_600_000)

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        clock.now += 2
        await parts.stats_path.flush()  # written: 1
        await parts.stats_path.process([record(parts, 1, {"SEGMENT|a|1": [2, 3]})])  # memory: 3

    run(scenario())
    assert stored_total(parts, "SEGMENT|a|1") == 1
    found = parts.stats.campaigns("1h", [0], r, lambda key, name: True)
    assert [c["totals"]["total"] for c in found] == [3]
    from processors.api.query import CampaignKey

    one = parts.stats.campaign("1h", 0, CampaignKey.from_key("SEGMENT|a|1"), r, series=False)
    assert one is not None and one["totals"]["total"] == 3
    new = parts.stats.campaign("1h", 0, CampaignKey.from_key("SEGMENT|a|7"), r, series=False)
    assert new is None


def test_the_expiry_writes_the_windows_in_memory_before_it_decides(tmp_path: Path) -> None:
    """A window stored long ago and counted again in memory just now is not idle: the expiry
    must not delete it (nor write it back afterwards)."""
    parts, _ = behind(tmp_path, "1h")
    parts.stats_path.clock = lambda: 10_000_000_000_000  # the windows' update clock (epoch ms)

    async def scenario() -> None:
        stats = parts.stats
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        await parts.stats_path.stopping()  # written, updated at 10,000,000,000,000
        late = 10_000_000_000_000 + 100 * 86_400_000  # past every retention
        parts.stats_path.clock = lambda: late
        await parts.stats_path.process([record(parts, 1, {"SEGMENT|a|1": [2]})])  # in memory
        assert stats.dirty_count == 2
        await parts.stats_path.expire()

    run(scenario())
    assert stored_total(parts, "SEGMENT|a|1") == 2
    assert stored_total(parts, "SEGMENT|a|1", "1m") == 2
    assert parts.stats.dirty_count == 0


# -- replay exactness -----------------------------------------------------------------------------


def _feed(seed: int, n: int) -> list[tuple[int, int, dict[str, list[int]]]]:
    """``n`` stats-updates records (partition, offset, increments): a few campaigns, each raw
    offset once, in raw-offset order per campaign, over two stats partitions."""
    rng = random.Random(seed)
    offsets = {0: 0, 1: 0}
    raw = 0
    out = []
    for _ in range(n):
        p = rng.randrange(2)
        campaigns = [f"SEGMENT|a|{p}{rng.randrange(4)}" for _ in range(rng.randint(1, 3))]
        increments: dict[str, list[int]] = {}
        for c in campaigns:
            raw += 1
            increments.setdefault(c, []).append(raw)
        out.append((p, offsets[p], increments))
        offsets[p] += 1
    return out


def _totals(parts: Parts) -> dict[tuple[str, int, str], int]:
    """Every stored window's total."""
    out = {}
    for label, table in parts.stats_tables.items():
        for p in (0, 1):
            for key, value in table.scan(p, stats_module.keys.WINDOWS):
                out[label, p, key.decode()] = load_window(value, 12).total
    return out


async def _replay_after_crash(parts: Parts, clock: Clock, feed: Any, crash_at: int) -> None:
    """Process ``feed`` up to ``crash_at`` records (batches of 1-3, 0.3 s apart), lose what is
    in memory, then replay each partition from its committable offset and stop cleanly."""
    rng = random.Random(crash_at)
    i = 0
    while i < crash_at:
        n = min(rng.randint(1, 3), crash_at - i)
        await parts.stats_path.process([record(parts, o, inc, p) for p, o, inc in feed[i : i + n]])
        clock.now += 0.3
        i += n
    committable = {p: parts.positioning.committable(parts.stats_tp(p)) or 0 for p in (0, 1)}
    parts.stats.drop_dirty()  # the crash: what was only in memory is gone
    parts.stats_path.seen.clear()
    for p in (0, 1):
        parts.positioning.tracker.start(parts.stats_tp(p), committable[p])
    for p in (0, 1):
        replay = [(q, o, inc) for q, o, inc in feed if q == p and o >= committable[p]]
        for j in range(0, len(replay), 2):
            await parts.stats_path.process(
                [record(parts, o, inc, q) for q, o, inc in replay[j : j + 2]]
            )
            clock.now += 0.3
    await parts.stats_path.stopping()


def _counted_at_zero(path: Path, feed: list[tuple[int, int, dict[str, list[int]]]]) -> Parts:
    """The feed counted with write-behind off (interval 0): what every replay must equal."""
    parts, _ = behind(path, "0")

    async def count() -> None:
        for p, o, inc in feed:
            await parts.stats_path.process([record(parts, o, inc, p)])

    run(count())
    return parts


@pytest.mark.parametrize("hot", [True, False], ids=["holding", "as-started"])
@pytest.mark.parametrize("crash_at", [5, 17, 29, 40])
def test_a_crash_while_windows_are_in_memory_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, crash_at: int, hot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding new windows, and as a worker starts: writing each new window at once and
    holding it from its next touch within the interval (the feed's few campaigns never make
    an interval of HOT_MIN_TOUCHES: the worker never switches)."""
    feed = _feed(21, 40)
    expected_parts = _counted_at_zero(tmp_path / "expected", feed)
    parts, clock = behind(tmp_path / "behind", hot=hot)
    held = 0
    split = stats_module.HotWindows.split

    def counting(self: stats_module.HotWindows, *args: Any) -> tuple[dict, dict]:
        nonlocal held
        h, a = split(self, *args)
        held += len(h)
        return h, a

    monkeypatch.setattr(stats_module.HotWindows, "split", counting)
    run(_replay_after_crash(parts, clock, feed, crash_at))
    assert held  # windows were in memory
    assert parts.stats.hot.hold_new is hot
    assert _totals(parts) == _totals(expected_parts)
    assert sum(_totals(parts).values()) == 2 * sum(
        len(v) for _, _, inc in feed for v in inc.values()
    )


def test_a_position_committed_past_the_windows_in_memory_would_lose_increments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of the test above: with each batch's end made committable at once (the
    boundary ignored), the crash loses what was only in memory."""
    feed = _feed(21, 40)
    monkeypatch.setattr(stats_module.StatsTables, "pending_from", lambda self, partition: None)
    parts, clock = behind(tmp_path)
    run(_replay_after_crash(parts, clock, feed, 29))
    assert sum(_totals(parts).values()) < 2 * sum(
        len(v) for _, _, inc in feed for v in inc.values()
    )


def test_the_timer_does_not_wait_for_a_batch_writing(tmp_path: Path) -> None:
    """While a batch holds the tables' lock the timer's tick returns at once (it waited for the
    batch before, outlasting its interval); the next tick writes what is due."""
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        await parts.stats_path.process([record(parts, 0, {"SEGMENT|a|1": [1]})])
        clock.now += 2  # due, and no batch for two seconds
        async with parts.stats.lock:
            await asyncio.wait_for(parts.stats_path.flush(), timeout=1)
            assert upserts(parts) == []
        await parts.stats_path.flush()

    run(scenario())
    assert len(upserts(parts)) == 2
