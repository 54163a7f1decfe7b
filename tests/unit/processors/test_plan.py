"""The worker's batch decisions (processors/plan.py), on plain data: no Kafka, no Faust."""

from __future__ import annotations

import orjson

from processors.normalize.model import Channel, EventType, Vendor, make
from processors.plan import (
    Candidate,
    Counted,
    RawPlan,
    WindowWork,
    admit_windows,
    apply_increments,
    candidate,
    group_increments,
    mark_value,
    plan_expiry,
    plan_raw_batch,
)
from processors.records import (
    RawPosition,
    StatsUpdates,
    WindowCounts,
    parse_stats_updates,
    stats_updates_value,
    window_value,
)
from processors.state.codecs import CampaignEntry
from processors.state.keys import upgrade_mark, window_key

WINDOW_MS = 7 * 86_400_000
NOW = 1_780_000_000_000
TOPIC = "crm.raw.airship"


def _candidate(
    vendor_id: str,
    offset: int,
    *,
    campaign: str = "c1",
    ts: int = NOW,
    message_id: str | None = None,
) -> Candidate:
    event = make(
        Vendor.AIRSHIP,
        vendor_id,
        vendor_event_type="SEND",
        event_type=EventType.SEND,
        channel=Channel.PUSH,
        occurred_at=NOW - 5_000,
        campaign_id=campaign,
        app_id="app",
        message_id=message_id,
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
    assert plan.marks == {
        2: [(batch[0].current, mark_value(10)), (batch[1].current, mark_value(11))]
    }
    incs = plan.increments
    assert list(incs) == [3]
    (by_source,) = incs[3].values()
    assert by_source == {
        f"{TOPIC}/2": [[10, NOW - 5_000, "SEND", "PUSH"], [11, NOW - 5_000, "SEND", "PUSH"]]
    }


def test_each_increment_travels_with_its_message_id_and_arrives_with_it() -> None:
    batch = [
        _candidate("a", 10, message_id="push-1"),
        _candidate("b", 11),
        _candidate("a", 12, message_id="push-1"),  # a duplicate: not counted, no value sent
        _candidate("c", 13, message_id="push-2"),
    ]
    plan = _plan(batch)
    source = f"{TOPIC}/2"
    campaign = next(iter(plan.increments[3]))
    assert plan.dimensions == {
        3: {
            "message": {campaign: {source: ["push-1", None, "push-2"]}},
            "variant": {campaign: {source: [None, None, None]}},
        }
    }
    value = stats_updates_value(
        plan.increments[3], plan.recipients[3], plan.names.get(3), plan.dimensions[3]
    )
    parsed = parse_stats_updates(b"3", value)
    assert [inc[5] for _, _, incs in parsed.increments for inc in incs] == [
        {"message": "push-1", "variant": None},
        {"message": None, "variant": None},
        {"message": "push-2", "variant": None},
    ]


def test_a_mark_in_the_current_or_previous_window_or_in_flight_makes_a_duplicate() -> None:
    c = _candidate("a", 20)
    for key, value in [(c.current, mark_value(3)), (c.previous, mark_value(3)), (c.current, None)]:
        plan = _plan([c], {key: value})
        assert plan.duplicates == {"airship": 1} and not plan.emit


def test_a_record_meeting_its_own_mark_is_not_written_again_but_marked_and_counted() -> None:
    """Processed again after a restart: its output was acknowledged before its mark was
    written, so the mark's value is its own raw offset."""
    c = _candidate("a", 20)
    plan = _plan([c], {c.current: mark_value(20)})
    assert not plan.emit and plan.read_back == [c]
    assert plan.marks == {2: [(c.current, mark_value(20))]}
    assert plan.counted == [c]
    # A mark of another offset is a duplicate; so is a mark of "1" (versions before raw offsets
    # were kept) as the engine upgrades it, even for offset 49, whose mark value is b"1".
    assert _plan([c], {c.current: mark_value(19)}).duplicates == {"airship": 1}
    one = _candidate("z", 49)
    assert mark_value(49) == b"1"
    legacy = window_key(one.pos.timestamp_ms - one.pos.timestamp_ms % WINDOW_MS, one.id_bytes)
    key, value = upgrade_mark(legacy, b"1")
    assert key == one.current
    assert _plan([one], {key: value}).duplicates == {"airship": 1}


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


def test_increments_are_filed_per_window_and_partition_with_their_recipients() -> None:
    updates = [
        (
            0,
            StatsUpdates(
                [
                    (
                        "K|a|c1",
                        "raw/0",
                        [
                            [5, 61_000, "OPEN", "PUSH", "u:1", {"message": "m1"}],
                            [6, 3_601_000, "OPEN", "PUSH", None, {}],
                        ],
                    )
                ],
                {"K|a|c1": (61_000, "Name")},
            ),
        ),
    ]
    touched = group_increments(updates, [("1m", 60), ("1h", 3600)])
    assert touched[("1m", 0)] == {
        ("K|a|c1", 60_000): WindowWork(
            [("raw/0", 5, "OPEN", "PUSH", "u:1", {"message": "m1"})], (61_000, "Name")
        ),
        ("K|a|c1", 3_600_000): WindowWork([("raw/0", 6, "OPEN", "PUSH", None, {})]),
    }
    assert touched[("1h", 0)] == {
        ("K|a|c1", 0): WindowWork(
            [("raw/0", 5, "OPEN", "PUSH", "u:1", {"message": "m1"})], (61_000, "Name")
        ),
        ("K|a|c1", 3_600_000): WindowWork([("raw/0", 6, "OPEN", "PUSH", None, {})]),
    }


def test_a_replayed_increment_is_skipped_by_the_window_that_counted_it() -> None:
    counts = WindowCounts(lg_k=12)
    first: list[Counted] = [
        ("raw/0", 5, "OPEN", "PUSH", "u:a", {"message": "m1"}),
        ("raw/0", 6, "CLICK", "PUSH", "u:b", {"message": None}),
    ]
    assert apply_increments(counts, first) == 0
    again: list[Counted] = [
        ("raw/0", 6, "CLICK", "PUSH", "u:b", {"message": None}),
        ("raw/0", 7, "OPEN", "PUSH", None, {"message": "m1"}),
    ]
    assert apply_increments(counts, again) == 1
    assert counts.total == 3 and counts.by_type == {"OPEN": 2, "CLICK": 1}
    uniques = counts.uniques()
    assert uniques is not None
    assert uniques["recipients"] == 2
    assert uniques["by_event_type"] == {"OPEN": 1, "CLICK": 1}
    assert uniques["unattributed"] == 1  # the event with no recipient counts in total only
    # The breakdown is in the same value as the counts: the replay changed it no more.
    assert counts.breakdowns["message"].kept == {"m1": {"OPEN": 2}}
    assert counts.breakdowns["message"].missing == {"CLICK": 1}


def test_a_window_not_held_is_refused_when_its_campaign_expired_it() -> None:
    windows = [("A", 0), ("A", 60_000), ("A", 120_000), ("B", 0)]
    held = {("A", 120_000)}
    admission = admit_windows(
        windows,
        lambda w: w in held,
        {"A": CampaignEntry(expired_through=60_000, written_ms=1), "B": None},
        lambda w: 3,
    )
    # B has no entry (nothing of it expired; none is written when a campaign is first seen):
    # its window counts.
    assert admission.refused == {("A", 0): 3, ("A", 60_000): 3}


def test_windows_expire_after_their_last_update_and_entries_remember_them() -> None:
    keep = 10_000
    now = 1_000_000
    fresh = window_value(WindowCounts(lg_k=12), updated_ms=now - 1_000)
    idle = window_value(WindowCounts(lg_k=12), updated_ms=now - 20_000)
    old_format = orjson.dumps({"n": 1, "t": {}, "c": {}})  # no update time: expires by its end
    plan = plan_expiry(
        [
            (window_key(0, b"A"), fresh),  # old start, but updated recently: kept
            (window_key(60_000, b"A"), idle),
            (window_key(980_000, b"B"), old_format),  # ends at 990_000 > now - keep: kept
            (window_key(900_000, b"B"), old_format),  # ends at 960_000: expired
            (window_key(990_000, b"C"), fresh),
        ],
        [("C", CampaignEntry(5, now - 6_000)), ("D", CampaignEntry(5, now - 1_000))],
        now,
        keep,
        size_ms=60_000,
    )
    assert plan.deletes == [window_key(60_000, b"A"), window_key(900_000, b"B")]
    assert plan.entries == {
        "A": CampaignEntry(60_000, now),
        "B": CampaignEntry(900_000, now),
        "C": CampaignEntry(5, now),  # rewritten: older than keep / 2
    }


def test_an_entry_is_forgotten_the_retention_after_its_campaign_held_no_window() -> None:
    keep = 10_000
    now = 1_000_000
    fresh = window_value(WindowCounts(lg_k=12), updated_ms=now - 1_000)
    plan = plan_expiry(
        [(window_key(0, b"held"), fresh)],
        [
            ("held", CampaignEntry(-1, now - 11_000)),  # holds a window: written again
            ("gone", CampaignEntry(5, now - 11_000)),  # no window for longer than keep
            ("recent", CampaignEntry(5, now - 9_000)),  # no window, but lost it recently
        ],
        now,
        keep,
        size_ms=60_000,
    )
    assert plan.deletes == []
    assert plan.forgets == ["gone"]
    # Not written again without a window: its last write dates the loss of its last window.
    assert plan.entries == {"held": CampaignEntry(-1, now)}
