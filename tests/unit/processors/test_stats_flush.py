"""The stats path's flush interval (``CRM_STATS_FLUSH_INTERVAL``, processors/stats_path.py): a
window counted by several batches is written and upserted once per flush, a batch's position
becomes committable only once a flush covered it, and what a rebalance places again is dropped
unwritten and counted from the committed position."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from processors.outputs import Offsets
from processors.records import stats_updates_value
from tests.unit.processors.fake_engine import FakeEvent, FakeMessage, Parts

CAMPAIGN = "SEGMENT|app|c-1"
T = 1_780_000_000_000  # an occurred_at; its 1h window starts at HOUR
HOUR = T - T % 3_600_000


def stats_event(parts: Parts, offset: int, raw_offsets: list[int], campaign: str = CAMPAIGN) -> Any:
    increments = [[o, T, "OPEN", "EMAIL"] for o in raw_offsets]
    recipients = [f"u:user-{o}" for o in raw_offsets]
    value = stats_updates_value(
        {campaign: {"raw.segment/0": increments}}, {campaign: {"raw.segment/0": recipients}}
    )
    return FakeEvent(FakeMessage(parts.stats_topic, 0, offset, b"0", value))


def deferred(tmp_path: Path) -> Parts:
    parts = Parts(tmp_path)
    parts.stats_path.flush_interval_s = 60.0  # flushed by the timer only, in these tests
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    return parts


def upserts(parts: Parts) -> list[tuple[bytes | None, bytes]]:
    return parts.outputs.topics(parts.settings.topic("campaign-stats"))


def totals(parts: Parts) -> list[int]:
    from processors.api.query import TimeRange

    r = TimeRange("1h", HOUR, HOUR + 3_600_000)
    return [c["totals"]["total"] for c in parts.stats.campaigns("1h", [0], r, lambda k, n: True)]


def decoded(parts: Parts, value: bytes) -> dict[str, Any]:
    name, record = parts.serde.decode(value)
    assert name == "CampaignStats"
    return record


def test_batches_between_flushes_write_each_window_once_and_commit_only_when_flushed(
    tmp_path: Path,
) -> None:
    parts = deferred(tmp_path)
    tp = parts.stats_tp()

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [10, 11])])
        await parts.stats_path.process([stats_event(parts, 1, [12])])
        await parts.stats_path.process([stats_event(parts, 2, [12, 13])])  # 12: a replay
        # Counted, not written: nothing sent, nothing in the table, nothing committable.
        assert upserts(parts) == [] and parts.outputs.changelog == []
        assert totals(parts) == []
        assert parts.positioning.committable(tp) is None
        await parts.stats_path.flush()

    asyncio.run(scenario())
    sent = upserts(parts)
    # One upsert per window (1m and 1h), with every increment counted once.
    assert sorted(key for key, _ in sent) == [
        f"{CAMPAIGN}|1h|{HOUR}".encode(),
        f"{CAMPAIGN}|1m|{T - T % 60_000}".encode(),
    ]
    assert [decoded(parts, v)["total"] for _, v in sent] == [4, 4]
    assert [decoded(parts, v)["unique_recipients"] for _, v in sent] == [4, 4]
    assert totals(parts) == [4]
    assert parts.positioning.committable(tp) == 3
    # Each table's window and the campaign's new entry in it, once each.
    assert sorted((topic, key[:6]) for topic, _, key, _ in parts.outputs.changelog) == [
        ("stats-1h-changelog", str(HOUR).encode()[:6]),
        ("stats-1h-changelog", b"__crm/"),
        ("stats-1m-changelog", str(T - T % 60_000).encode()[:6]),
        ("stats-1m-changelog", b"__crm/"),
    ]


def test_counting_then_flushing_gives_the_figures_of_a_flush_after_every_batch(
    tmp_path: Path,
) -> None:
    each = Parts(tmp_path / "each")  # CRM_STATS_FLUSH_INTERVAL=0
    each.positioning.tracker.start(each.stats_tp(), 0)
    parts = deferred(tmp_path / "deferred")
    batches = [[1, 2], [3], [2, 4, 5]]

    async def scenario() -> None:
        for offset, raw in enumerate(batches):
            await each.stats_path.process([stats_event(each, offset, raw)])
            await parts.stats_path.process([stats_event(parts, offset, raw)])
        await parts.stats_path.flush()

    asyncio.run(scenario())
    assert len(upserts(each)) == 6 and len(upserts(parts)) == 2

    def last(p: Parts) -> dict[str, dict[str, Any]]:
        out = {}
        for key, value in upserts(p):
            record = decoded(p, value)
            record.pop("updated_at")
            out[(key or b"").decode()] = record
        return out

    assert last(parts) == last(each)
    table = parts.stats_tables["1h"]
    assert table.scan(0, _windows()) and list(table.scan(0, _windows())) == list(
        each.stats_tables["1h"].scan(0, _windows())
    )


def _windows() -> Any:
    from processors.state.keys import WINDOWS

    return WINDOWS


def test_a_partition_placed_again_drops_its_open_windows_and_counts_from_the_committed_position(
    tmp_path: Path,
) -> None:
    parts = deferred(tmp_path)
    tp = parts.stats_tp()

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        await parts.stats_path.flush()
        await parts.stats_path.process([stats_event(parts, 1, [2, 3])])
        # A rebalance places the partition again at its committed position (1).
        parts.positioning.tracker.start(tp, 1, committed=1)
        await parts.stats_path.flush()
        assert totals(parts) == [1]  # the open batch was dropped, not written
        assert parts.positioning.committable(tp) == 1
        await parts.stats_path.process([stats_event(parts, 1, [2, 3])])
        await parts.stats_path.flush()

    asyncio.run(scenario())
    assert totals(parts) == [3]
    assert parts.positioning.committable(tp) == 2


def test_a_revoked_partition_writes_nothing_it_counted_since_the_last_flush(
    tmp_path: Path,
) -> None:
    parts = deferred(tmp_path)
    tp = parts.stats_tp()

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        parts.positioning.tracker.forget(tp)
        await parts.stats_path.flush()

    asyncio.run(scenario())
    assert upserts(parts) == [] and parts.outputs.changelog == [] and totals(parts) == []
    assert parts.stats.open_windows() == 0


def test_a_batch_admitted_before_a_rebalance_and_counted_after_it_is_not_counted(
    tmp_path: Path,
) -> None:
    parts = deferred(tmp_path)
    tp = parts.stats_tp()

    async def scenario() -> None:
        await parts.stats.lock.acquire()  # the batch waits for the lock after its admission
        batch = asyncio.ensure_future(parts.stats_path.process([stats_event(parts, 0, [1])]))
        for _ in range(20):
            await asyncio.sleep(0)
        parts.positioning.tracker.start(tp, 0, committed=None)
        parts.stats.lock.release()
        await batch
        await parts.stats_path.flush()

    asyncio.run(scenario())
    assert parts.stats.open_windows() == 0 and totals(parts) == []
    assert parts.positioning.committable(tp) is None


def test_a_batch_with_a_dead_letter_flushes_at_once(tmp_path: Path) -> None:
    parts = deferred(tmp_path)

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        await parts.stats_path.process(
            [FakeEvent(FakeMessage(parts.stats_topic, 0, 1, b"0", b"{"))]
        )

    asyncio.run(scenario())
    assert len(parts.outputs.topics(parts.settings.topic("dead-letter"))) == 1
    assert totals(parts) == [1] and len(upserts(parts)) == 2
    assert parts.positioning.committable(parts.stats_tp()) == 2


def test_a_batch_flushes_once_the_interval_is_over(tmp_path: Path) -> None:
    parts = deferred(tmp_path)

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        assert upserts(parts) == []
        parts.stats_path.flushed_at -= 61.0
        await parts.stats_path.process([stats_event(parts, 1, [2])])

    asyncio.run(scenario())
    assert totals(parts) == [2] and len(upserts(parts)) == 2
    assert parts.positioning.committable(parts.stats_tp()) == 2


def test_an_expiry_writes_the_open_windows_first(tmp_path: Path) -> None:
    parts = deferred(tmp_path)
    now = [T]
    parts.stats_path.clock = lambda: now[0]

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        # Not idle: counted just now. Written (and kept) by the expiry, not expired.
        assert await parts.stats.expire(parts.outputs, [0], now[0] + 60_000) == 0

    asyncio.run(scenario())
    assert totals(parts) == [1] and len(upserts(parts)) == 2
    assert parts.positioning.committable(parts.stats_tp()) == 1


def test_a_failed_flush_is_fatal(tmp_path: Path) -> None:
    parts = deferred(tmp_path)

    async def failing() -> Offsets:
        raise RuntimeError("not acknowledged")

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        parts.outputs.seal = failing  # type: ignore[method-assign,assignment]
        await parts.stats_path.flush()

    asyncio.run(scenario())
    assert [what for _, what in parts.engine.fatal_errors] == ["flushing the stats windows"]
    assert parts.positioning.committable(parts.stats_tp()) is None


def test_the_flush_waits_while_the_group_moves(tmp_path: Path) -> None:
    parts = deferred(tmp_path)
    parts.engine.is_settled = False

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, [1])])
        await parts.stats_path.flush()
        assert upserts(parts) == []
        parts.engine.is_settled = True
        await parts.stats_path.flush()

    asyncio.run(scenario())
    assert len(upserts(parts)) == 2
