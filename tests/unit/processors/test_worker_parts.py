"""The worker's orchestration on a fake engine (tests/unit/processors/fake_engine.py): placement
after a rebalance, gap repair, batches in flight, read-back, the stats path, and the risks of
issue 20 item 6 (seek failures, bounded caches)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors import raw as raw_module
from processors.engine import SeekError
from processors.placement import place, unplaced
from processors.positions import TopicPartition
from processors.raw import Lru, StatsPartitions
from processors.records import stats_updates_value
from processors.state.codecs import SavedPosition
from processors.state.keys import durable_key, position_key
from tests.unit.processors.fake_engine import FakeEvent, FakeMessage, Parts

RAW = TopicPartition("raw", 0)
STATS = TopicPartition("stats", 0)
OUT = TopicPartition("events", 0)


def segment(message_id: str, campaign: str = "c-1") -> bytes:
    """A Segment track call (an email open) that normalizes to a canonical event."""
    return orjson.dumps(
        {
            "type": "track",
            "event": "Email Opened",
            "messageId": message_id,
            "timestamp": "2026-05-01T10:00:00.123Z",
            "userId": "user-42",
            "properties": {"email_id": "em-1", "message_id": "m-1", "campaign_id": campaign},
        }
    )


def raw_event(parts: Parts, offset: int, value: bytes, partition: int = 0) -> FakeEvent:
    return FakeEvent(FakeMessage(parts.raw_topic, partition, offset, b"k%d" % offset, value))


def events_sent(parts: Parts) -> list[bytes | None]:
    return [key for key, _ in parts.outputs.topics(parts.settings.topic("events"))]


async def rebalance(parts: Parts) -> None:
    await parts.positioning.on_positioned(after_rebalance=True)


# -- placement (pure) ------------------------------------------------------------------------


def test_placement_starts_raw_at_saved_stats_at_committed_and_the_rest_at_first() -> None:
    raw_new = TopicPartition("raw", 1)
    stats_new = TopicPartition("stats", 1)
    saved = {RAW: SavedPosition(40, {OUT: 7}), raw_new: None}
    committed = {RAW: 35, raw_new: None, STATS: 12, stats_new: None}
    assert unplaced([RAW, raw_new], [STATS, stats_new], committed, saved) == [raw_new, stats_new]
    plan = place(
        [RAW, raw_new], [STATS, stats_new], committed, saved, {raw_new: 3, stats_new: 5}, {OUT: 9}
    )
    assert plan.starts == {RAW: 40, raw_new: 3, STATS: 12, stats_new: 5}
    assert plan.fresh == {raw_new: SavedPosition(3, {OUT: 9})}
    assert plan.resumed == {RAW: SavedPosition(40, {OUT: 7})}
    assert plan.read_back_floors == {OUT: 7}
    assert plan.lost == []


def test_placement_reads_back_from_the_lowest_floor_and_names_lost_state() -> None:
    other = TopicPartition("raw", 1)
    saved = {RAW: SavedPosition(4, {OUT: 7}), other: SavedPosition(9, {OUT: 3})}
    plan = place([RAW, other], [], {RAW: 4, other: 9}, saved, {}, {})
    assert plan.read_back_floors == {OUT: 3}
    lost = place([RAW], [], {RAW: 10}, {RAW: None}, {}, {})
    assert lost.lost == [RAW]
    assert lost.fresh[RAW].next == 10  # from the committed offset (with CRM_ALLOW_STATE_RESET)


# -- placement after a rebalance, through the engine ---------------------------------------------


def test_a_rebalance_saves_a_fresh_position_then_seeks_every_partition(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp, stats_tp = parts.raw_tp(), parts.stats_tp()
    parts.engine.assigned = {raw_tp, stats_tp}
    parts.engine.committed_offsets = {stats_tp: 8}
    parts.probe.first_offsets = {raw_tp: 2}
    asyncio.run(rebalance(parts))

    assert parts.engine.seeks == [{raw_tp: 2, stats_tp: 8}]
    assert parts.drained == 1  # the batches in flight were waited for first
    saved, durable = parts.dedupe.get_many(
        0, [position_key(raw_tp.topic), durable_key(raw_tp.topic)]
    )
    assert saved is not None and SavedPosition.decode(saved).next == 2
    assert durable == saved
    assert parts.positioning.tracker.expected(raw_tp) == 2
    assert parts.positioning.committable(stats_tp) == 8


def test_a_rebalance_resumes_from_the_saved_position_and_reads_back(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    out = TopicPartition(parts.settings.topic("events"), 0)
    parts.dedupe.write(0, [(durable_key(raw_tp.topic), SavedPosition(5, {out: 11}).encode())])
    parts.engine.assigned = {raw_tp}
    parts.engine.committed_offsets = {raw_tp: 5}
    parts.probe.landed = {raw_tp: {5, 6}}
    asyncio.run(rebalance(parts))

    assert parts.engine.seeks == [{raw_tp: 5}]
    assert parts.probe.read_backs == [({out: 11}, {raw_tp: 5})]
    assert parts.positioning.landed(raw_tp, 6) is True
    assert parts.positioning.landed(raw_tp, 6) is False  # once


def test_outside_a_rebalance_partitions_go_back_to_their_own_position(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.engine.assigned = {raw_tp}
    parts.positioning.tracker.start(raw_tp, 17)
    asyncio.run(parts.positioning.on_positioned(after_rebalance=False))
    assert parts.engine.seeks == [{raw_tp: 17}]


# -- the raw path: batches in flight, read-back ------------------------------------------------


def test_a_batch_in_flight_holds_its_records_and_marks_until_acknowledged(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.engine.assigned = {raw_tp}
    parts.positioning.tracker.start(raw_tp, 0)

    async def scenario() -> None:
        parts.outputs.gate.clear()  # Kafka acknowledges nothing yet
        first = [raw_event(parts, 0, segment("m-1")), raw_event(parts, 1, segment("m-2"))]
        await parts.raw.process(first)
        assert events_sent(parts) == [b"SEGMENT:m-1", b"SEGMENT:m-2"]
        assert parts.engine.held == first and parts.engine.released == []
        assert parts.raw.pending_keys
        # A copy arriving while the first awaits its acknowledgement is a duplicate.
        await parts.raw.process([raw_event(parts, 2, segment("m-1"))])
        assert events_sent(parts) == [b"SEGMENT:m-1", b"SEGMENT:m-2"]
        assert parts.positioning.committable(raw_tp) is None
        parts.outputs.gate.set()
        await parts.raw.written()
        assert parts.raw.last_in_flight is not None
        await parts.raw.last_in_flight.done

    asyncio.run(scenario())
    assert parts.engine.held == [] and len(parts.engine.released) == 3
    assert parts.raw.pending_keys == set()
    assert parts.positioning.committable(raw_tp) == 3
    saved = parts.dedupe.get_many(0, [durable_key(raw_tp.topic)])[0]
    assert saved is not None and SavedPosition.decode(saved).next == 3
    assert parts.engine.fatal_errors == []


def test_records_whose_outputs_an_earlier_run_wrote_are_not_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="crmstream.worker")
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 0, landed={0, 1})

    async def scenario() -> None:
        await parts.raw.process(
            [
                raw_event(parts, 0, segment("m-1")),
                raw_event(parts, 1, b"not json"),  # its dead letter was written too
                raw_event(parts, 2, segment("m-3")),
            ]
        )
        await parts.raw.written()

    asyncio.run(scenario())
    assert events_sent(parts) == [b"SEGMENT:m-3"]
    assert parts.outputs.topics(parts.settings.topic("dead-letter")) == []
    # The log names the record, and says its dead letter was there already.
    assert any(
        m.startswith(f"dead letter invalid_json at {parts.raw_topic}/0/1 (already written")
        for m in caplog.messages
    ), caplog.messages
    # Processed all the same: marks written, position past them.
    assert parts.positioning.tracker.expected(raw_tp) == 3


def position_records(parts: Parts, tp: TopicPartition) -> list[int]:
    """The positions of ``tp`` sent to the dedupe changelog, in order."""
    return [
        SavedPosition.decode(value).next
        for _, partition, key, value in parts.outputs.changelog
        if partition == tp.partition and key == position_key(tp.topic) and value is not None
    ]


def test_positions_are_saved_once_per_interval_and_an_older_one_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    """CRM_POSITIONS_INTERVAL: a batch within the interval writes its marks but not its
    partition's position; processing again from the older position (a restart) writes none of
    the records' events a second time (their own marks); the timer and the stop save it."""
    parts = Parts(tmp_path, {"CRM_POSITIONS_INTERVAL": "1s"})
    raw_tp = parts.raw_tp()
    parts.engine.assigned = {raw_tp}
    parts.positioning.tracker.start(raw_tp, 0)
    now = [100.0]
    parts.raw.clock = lambda: now[0]

    async def finished() -> None:
        last = parts.raw.last_in_flight
        assert last is not None
        await last.done

    def durable() -> int:
        value = parts.dedupe.get_many(0, [durable_key(raw_tp.topic)])[0]
        assert value is not None
        return SavedPosition.decode(value).next

    async def scenario() -> None:
        await parts.raw.process([raw_event(parts, 0, segment("m-1")), raw_event(parts, 1, b"x")])
        await finished()
        assert (parts.positioning.committable(raw_tp), durable()) == (2, 2)
        now[0] = 100.5
        await parts.raw.process([raw_event(parts, 2, segment("m-3"))])
        await finished()
        # Marked, not positioned: the saved position is still 2.
        assert (parts.positioning.committable(raw_tp), durable()) == (2, 2)
        assert position_records(parts, raw_tp) == [2]
        assert parts.raw.checkpoints.pending == {raw_tp: 3}
        # A restart from the older position: record 2 again. Its own mark says its event was
        # written: not again (the stats increment goes again; the stats path skips it).
        parts.raw.checkpoints.forget()
        parts.positioning.tracker.start(raw_tp, 2)
        await parts.raw.process([raw_event(parts, 2, segment("m-3"))])
        await finished()
        assert events_sent(parts) == [b"SEGMENT:m-1", b"SEGMENT:m-3"]
        assert len(parts.outputs.topics(parts.settings.topic("dead-letter"))) == 1
        # The first batch after a placement saves at once.
        assert (parts.positioning.committable(raw_tp), durable()) == (3, 3)
        now[0] = 100.6
        await parts.raw.process([raw_event(parts, 3, segment("m-4"))])
        await finished()
        assert durable() == 3
        # The timer saves what is pending (a quiet partition).
        await parts.raw.checkpoint()
        await finished()
        assert (parts.positioning.committable(raw_tp), durable()) == (4, 4)
        now[0] = 100.7
        await parts.raw.process([raw_event(parts, 4, segment("m-5"))])
        # The stop waits for the batch in flight and saves its position.
        await parts.raw.stopping()
        assert (parts.positioning.committable(raw_tp), durable()) == (5, 5)
        assert position_records(parts, raw_tp) == [2, 3, 4, 5]

    asyncio.run(scenario())
    assert parts.engine.fatal_errors == []


def test_a_rebalance_saves_the_pending_positions_of_the_partitions_still_assigned(
    tmp_path: Path,
) -> None:
    parts = Parts(tmp_path, {"CRM_POSITIONS_INTERVAL": "1s"})
    kept, revoked = parts.raw_tp(), parts.raw_tp(1)
    parts.engine.assigned = {kept, revoked}
    for tp in (kept, revoked):
        parts.positioning.tracker.start(tp, 0)
    now = [100.0]
    parts.raw.clock = lambda: now[0]

    async def scenario() -> None:
        await parts.raw.process(
            [raw_event(parts, 0, segment("m-1")), raw_event(parts, 0, segment("m-2"), 1)]
        )
        now[0] = 100.1
        await parts.raw.process(
            [raw_event(parts, 1, segment("m-3")), raw_event(parts, 1, segment("m-4"), 1)]
        )
        parts.engine.assigned = {kept}
        await parts.raw.written()  # as the placement after a rebalance does

    asyncio.run(scenario())
    assert position_records(parts, kept) == [1, 2]
    assert position_records(parts, revoked) == [1]  # not written once revoked
    assert parts.positioning.committable(kept) == 2
    assert parts.positioning.committable(revoked) == 1
    assert parts.raw.checkpoints.pending == {}


def test_a_failing_finish_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = Parts(tmp_path)
    parts.positioning.tracker.start(parts.raw_tp(), 0)

    def broken(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(parts.dedupe, "put_many", broken)

    async def scenario() -> None:
        await parts.raw.process([raw_event(parts, 0, segment("m-1"))])
        await parts.raw.written()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [what for _, what in parts.engine.fatal_errors] == ["finishing a raw batch"]


# -- gap repair ------------------------------------------------------------------------------


def test_a_gap_with_records_in_it_is_read_again(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 4)
    parts.probe.records = {raw_tp: [4, 6, 7, 8]}  # 5: a transaction marker; 6, 7 were dropped
    batch = [raw_event(parts, 4, b""), raw_event(parts, 8, b"")]
    admitted = asyncio.run(parts.positioning.admit(batch, "raw"))
    assert admitted == batch[:1]
    assert parts.engine.seeks == [{raw_tp: 6}]
    assert parts.positioning.tracker.expected(raw_tp) == 6


def test_a_gap_without_records_is_passed_over(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 4)
    parts.probe.records = {raw_tp: [4, 8]}
    batch = [raw_event(parts, 4, b""), raw_event(parts, 8, b"")]
    assert asyncio.run(parts.positioning.admit(batch, "raw")) == batch
    assert parts.engine.seeks == []
    assert parts.positioning.tracker.expected(raw_tp) == 9


def test_a_stalled_partition_is_sought_back(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 5)
    parts.engine.highwaters = {raw_tp: 9}
    parts.probe.records = {raw_tp: [5, 6, 7, 8]}
    for _ in range(4):  # the first check only notes what was processed
        asyncio.run(parts.positioning.watch())
    assert parts.engine.seeks == [{raw_tp: 5}]


def test_a_stall_check_does_not_rewind_over_records_processed_while_it_asked(
    tmp_path: Path,
) -> None:
    """The stall check asks the broker in a thread; the agent may meanwhile process the records
    it was about to read again (the fetch caught up). Seeking back then would process them a
    second time: events are held off by their dedupe marks, but a dead letter has no mark and
    was written twice (31 dead letters for 30 malformed records in the scale-out test)."""
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.engine.assigned = {raw_tp}
    parts.positioning.tracker.start(raw_tp, 5)
    parts.engine.highwaters = {raw_tp: 9}
    parts.probe.records = {raw_tp: [5, 6, 7, 8]}
    asking, answer = threading.Event(), threading.Event()
    first_offset = parts.probe.first_offset

    def slow_first_offset(tp: Any, offset: int) -> int | None:
        asking.set()
        answer.wait(30)
        return first_offset(tp, offset)

    batch = [raw_event(parts, 5, b"not json"), raw_event(parts, 6, segment("m-6"))]

    async def scenario() -> None:
        for _ in range(3):  # idle checks: the third one finds the partition stalled
            await parts.positioning.watch()
        parts.probe.first_offset = slow_first_offset  # type: ignore[method-assign]
        check = asyncio.ensure_future(parts.positioning.watch())
        assert await asyncio.to_thread(asking.wait, 30)
        await parts.raw.process(batch)  # the records arrive while the broker is asked
        answer.set()
        await check
        await parts.raw.process(batch)  # leftovers of the fetch: below the position now
        await parts.raw.written()

    asyncio.run(scenario())
    assert len(parts.outputs.topics(parts.settings.topic("dead-letter"))) == 1
    assert parts.engine.seeks == []
    assert parts.positioning.tracker.expected(raw_tp) == 7
    assert events_sent(parts) == [b"SEGMENT:m-6"]


# -- seek failures (issue 20 item 6: never swallowed) -----------------------------------------


def test_a_failed_seek_of_an_assigned_partition_is_fatal(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.engine.assigned = {raw_tp}
    parts.positioning.tracker.start(raw_tp, 5)
    parts.engine.seek_error = RuntimeError("fetcher gone")
    with pytest.raises(SeekError):
        asyncio.run(parts.positioning.seek({raw_tp: 3}))


def test_a_failed_seek_of_a_revoked_partition_forgets_it(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 5)
    parts.engine.seek_error = RuntimeError("not assigned")
    asyncio.run(parts.positioning.seek({raw_tp: 3}))
    assert parts.positioning.tracker.tracked() == []
    assert parts.positioning.committable(raw_tp) is None


# -- the stats path ------------------------------------------------------------------------------


def stats_event(parts: Parts, offset: int, campaign: str, raw_offset: int) -> FakeEvent:
    increment = [raw_offset, 1_780_000_000_000, "OPEN", "EMAIL"]
    value = stats_updates_value({campaign: {"raw.segment/0": [increment]}}, None, None)
    return FakeEvent(FakeMessage(parts.stats_topic, 0, offset, b"0", value))


def test_the_stats_path_counts_once_upserts_and_makes_the_batch_committable(
    tmp_path: Path,
) -> None:
    parts = Parts(tmp_path)
    stats_tp = parts.stats_tp()
    parts.positioning.tracker.start(stats_tp, 0)
    campaign = "SEGMENT|app|c-1"

    async def scenario() -> None:
        await parts.stats_path.process([stats_event(parts, 0, campaign, 10)])
        await parts.stats_path.process([stats_event(parts, 1, campaign, 10)])  # a replay
        await parts.stats_path.process(
            [FakeEvent(FakeMessage(parts.stats_topic, 0, 2, b"0", b"{"))]
        )

    asyncio.run(scenario())
    upserts = parts.outputs.topics(parts.settings.topic("campaign-stats"))
    assert upserts and all(key and key.startswith(campaign.encode()) for key, _ in upserts)
    found = parts.stats.campaigns(
        "1h", [0], _range(), lambda key, name: True
    )  # one campaign, counted once
    assert [c["totals"]["total"] for c in found] == [1]
    assert parts.positioning.committable(stats_tp) == 3
    assert len(parts.outputs.topics(parts.settings.topic("dead-letter"))) == 1


def _range() -> Any:
    from processors.api.query import TimeRange

    return TimeRange("1h", 1_779_998_400_000, 1_780_005_600_000)


# -- bounded caches (issue 20 item 6) ------------------------------------------------------------


def test_the_lru_keeps_the_most_recent_entries() -> None:
    cache: Lru[str, int] = Lru(2)
    made: list[str] = []

    def make(key: str) -> int:
        made.append(key)
        return len(made)

    assert cache.get("a", make) == 1
    assert cache.get("b", make) == 2
    assert cache.get("a", make) == 1  # a is now the most recent
    assert cache.get("c", make) == 3  # b goes
    assert len(cache) == 2
    assert cache.get("b", make) == 4
    with pytest.raises(ValueError):
        Lru(0)


def test_the_worker_caches_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partitions = StatsPartitions(6, cache=10)
    for i in range(100):
        partitions.of(f"SEGMENT|app|c{i}")
    assert len(partitions._cache) == 10
    partitions.learn(3)
    assert len(partitions._cache) == 0
    assert partitions.of("SEGMENT|app|c1") in range(3)

    monkeypatch.setattr(raw_module, "MAX_CACHED_CONTEXTS", 5)
    parts = Parts(tmp_path)
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 0)
    batch = [
        FakeEvent(
            FakeMessage(
                parts.raw_topic, 0, i, b"k", segment(f"m-{i}"), headers=[("app_id", b"a%d" % i)]
            )
        )
        for i in range(50)
    ]

    async def scenario() -> None:
        await parts.raw.process(batch)
        await parts.raw.written()

    asyncio.run(scenario())
    assert len(parts.raw.contexts) <= 5


# -- the attribution's part of the raw path ----------------------------------------------------


def track(message_id: str, event: str, user: str = "user-42") -> bytes:
    return orjson.dumps(
        {
            "type": "track",
            "event": event,
            "messageId": message_id,
            "timestamp": "2026-05-01T10:00:00.123Z",
            "userId": user,
            "properties": {"campaign_id": "c-1", "variant_id": "B"},
        }
    )


def test_the_raw_path_hands_its_touches_and_conversions_over_with_its_outputs(
    tmp_path: Path,
) -> None:
    """The batch's first-seen events, written now or by an earlier run (read back), go to
    attribution-inputs in the batch's own outputs (one record per partition, each user's items in
    order); duplicates, opens and events without a user do not; nothing is acknowledged apart."""
    from processors.attribution import Conversion, Touch, decode_record
    from processors.attribution_path import RawFeed

    parts = Parts(tmp_path)
    inputs = parts.settings.topic("attribution-inputs")
    parts.raw.attribution = RawFeed(
        parts.outputs, inputs_topic=inputs, conversion_events={"order completed": "Order Completed"}
    ).send
    raw_tp = parts.raw_tp()
    parts.positioning.tracker.start(raw_tp, 0, landed={1})

    async def scenario() -> None:
        await parts.raw.process(
            [
                raw_event(parts, 0, track("d-1", "Email Delivered")),
                raw_event(parts, 1, track("d-2", "Email Delivered", "user-7")),  # read back
                raw_event(parts, 2, track("d-1", "Email Delivered")),  # a duplicate
                raw_event(parts, 3, track("o-1", "Email Opened")),  # not a touch
                raw_event(parts, 4, track("p-1", "Order Completed")),  # a listed conversion
                raw_event(parts, 5, segment("n-1")),
            ]
        )
        await parts.raw.written()

    asyncio.run(scenario())
    assert events_sent(parts) == [b"SEGMENT:d-1", b"SEGMENT:o-1", b"SEGMENT:p-1", b"SEGMENT:n-1"]
    got: dict[str, list[Any]] = {}
    for key, value in parts.outputs.topics(inputs):
        for user, items in decode_record(key, value):
            got.setdefault(user, []).extend(items)
    assert {u: [type(i).__name__ for i in items] for u, items in got.items()} == {
        "user-42": ["Touch", "Conversion"],
        "user-7": ["Touch"],
    }
    first, conversion = got["user-42"]
    assert isinstance(first, Touch) and isinstance(conversion, Conversion)
    assert (first.event_id, first.campaign_id, first.variant_id) == ("SEGMENT:d-1", "c-1", "B")
    assert (conversion.conversion_id, conversion.name) == ("SEGMENT:p-1", "Order Completed")
    assert parts.engine.fatal_errors == []


def test_the_parts_count_with_the_workers_stats_wiring(tmp_path: Path) -> None:
    """The fake engine's stats tables are built by the worker's own wiring (build_stats): the
    settings' windows, retention and limits reach them as they reach the worker's."""
    parts = Parts(
        tmp_path,
        {
            "CRM_STATS_WINDOWS": "1m,1h",
            "CRM_STATS_RETENTION": "1m=2d,1h=30d",
            "CRM_STATS_MAX_MESSAGES": "7",
            "CRM_STATS_MAX_VARIANTS": "3",
        },
    )
    assert parts.stats.max_keys == {"message": 7, "variant": 3}
    assert parts.stats.windows == [("1m", 60), ("1h", 3600)]
    assert parts.stats.retention_ms == {"1m": 2 * 86_400_000, "1h": 30 * 86_400_000}
    assert {label: t.keep_ms for label, t in parts.stats_tables.items()} == parts.stats.retention_ms
