"""The worker's batch decisions (processors/plan.py), on plain data: no Kafka, no Faust."""

from __future__ import annotations

from processors.normalize.model import Channel, EventType, Vendor, make
from processors.plan import (
    Candidate,
    RawPlan,
    apply_increments,
    candidate,
    group_increments,
    mark_value,
    plan_raw_batch,
)
from processors.records import RawPosition, WindowCounts

WINDOW_MS = 7 * 86_400_000
NOW = 1_780_000_000_000
TOPIC = "crm.raw.airship"


def _candidate(vendor_id: str, offset: int, *, campaign: str = "c1", ts: int = NOW) -> Candidate:
    event = make(
        Vendor.AIRSHIP,
        vendor_id,
        vendor_event_type="SEND",
        event_type=EventType.SEND,
        channel=Channel.PUSH,
        occurred_at=NOW - 5_000,
        campaign_id=campaign,
        app_id="app",
    )
    pos = RawPosition(TOPIC, 2, offset, ts, {})
    return candidate(event, pos, "airship", b"{...}", vendor_id.encode(), WINDOW_MS)


def _plan(
    candidates: list[Candidate],
    marked: dict[bytes, bytes | None] | None = None,
    *,
    written: set[int] = frozenset(),  # type: ignore[assignment]
    limit: int = 10_000,
) -> RawPlan:
    return plan_raw_batch(
        candidates,
        marked or {},
        encode=lambda c: c.event.event_id.encode() * 10,
        size=lambda c, value: len(value) + len(c.id_bytes),
        max_record_bytes=limit,
        written=lambda c: c.pos.offset in written,
        stats_partition=lambda campaign: 3 if campaign.endswith("c1") else 4,
    )


def test_first_copies_are_written_marked_and_counted_later_copies_are_duplicates() -> None:
    batch = [_candidate("a", 10), _candidate("b", 11), _candidate("a", 12)]
    plan = _plan(batch)
    assert [c.pos.offset for c, _ in plan.emit] == [10, 11]
    assert plan.duplicates == {"airship": 1}
    assert plan.marks == {2: [(batch[0].current, b"@10"), (batch[1].current, b"@11")]}
    incs = plan.increments
    assert list(incs) == [3]
    (by_source,) = incs[3].values()
    assert by_source == {
        f"{TOPIC}/2": [[10, NOW - 5_000, "SEND", "PUSH"], [11, NOW - 5_000, "SEND", "PUSH"]]
    }


def test_a_mark_in_the_current_or_previous_window_or_in_flight_makes_a_duplicate() -> None:
    c = _candidate("a", 20)
    for key, value in [(c.current, b"@3"), (c.previous, b"@3"), (c.current, None)]:
        plan = _plan([c], {key: value})
        assert plan.duplicates == {"airship": 1} and not plan.emit


def test_a_record_meeting_its_own_mark_is_not_written_again_but_marked_and_counted() -> None:
    """Processed again after a restart: its output was acknowledged before its mark was
    written, so the mark's value is its own raw offset."""
    c = _candidate("a", 20)
    plan = _plan([c], {c.current: mark_value(20)})
    assert not plan.emit and plan.read_back == [c]
    assert plan.marks == {2: [(c.current, b"@20")]}
    assert plan.counted == [c]
    # A mark of "1" (earlier versions) or another offset is a duplicate, even for offset 1.
    one = _candidate("z", 1)
    assert _plan([one], {one.current: b"1"}).duplicates == {"airship": 1}


def test_events_read_back_after_a_restart_are_counted_not_written() -> None:
    batch = [_candidate("a", 30), _candidate("b", 31)]
    plan = _plan(batch, written={31})
    assert [c.pos.offset for c, _ in plan.emit] == [30]
    assert [c.pos.offset for c in plan.read_back] == [31]
    assert len(plan.marks[2]) == 2


def test_a_too_large_event_is_neither_written_nor_marked_nor_counted() -> None:
    big = _candidate("x" * 500, 40)
    plan = _plan([big, _candidate("b", 41)], limit=2_000)
    assert [(c.pos.offset, size) for c, size in plan.too_large] == [(40, len(big.id_bytes) * 11)]
    assert [c.pos.offset for c, _ in plan.emit] == [41]
    assert [k for k, _ in plan.marks[2]] == [_candidate("b", 41).current]
    # A later copy of a too-large event is again too large, not a duplicate of it.
    again = _plan([big, big], limit=2_000)
    assert len(again.too_large) == 2 and not again.duplicates


def test_increments_are_filed_per_window_and_partition_and_late_ones_counted() -> None:
    updates = [
        (0, [("K|a|c1", "raw/0", [[5, 61_000, "OPEN", "PUSH"], [6, 3_601_000, "OPEN", "PUSH"]])]),
        (0, [("K|a|c1", None, [[None, 10, "SEND", "PUSH"]])]),
    ]
    touched, late = group_increments(updates, [("1m", 60), ("1h", 3600)], oldest_ms=1_000)
    assert late == 1  # occurred at 10 ms, before the oldest open window
    assert touched[("1m", 0)] == {
        ("K|a|c1", 60_000): [("raw/0", 5, "OPEN", "PUSH")],
        ("K|a|c1", 3_600_000): [("raw/0", 6, "OPEN", "PUSH")],
    }
    assert touched[("1h", 0)] == {
        ("K|a|c1", 0): [("raw/0", 5, "OPEN", "PUSH")],
        ("K|a|c1", 3_600_000): [("raw/0", 6, "OPEN", "PUSH")],
    }


def test_a_replayed_increment_is_skipped_by_the_window_that_counted_it() -> None:
    counts = WindowCounts()
    assert (
        apply_increments(counts, [("raw/0", 5, "OPEN", "PUSH"), ("raw/0", 6, "CLICK", "PUSH")]) == 0
    )
    assert (
        apply_increments(counts, [("raw/0", 6, "CLICK", "PUSH"), ("raw/0", 7, "OPEN", "PUSH")]) == 1
    )
    assert counts.total == 3 and counts.by_type == {"OPEN": 2, "CLICK": 1}
