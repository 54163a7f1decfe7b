"""A campaign window's breakdown per message id (processors/records.py ``Breakdown``,
processors/figures.py ``merged_breakdown``): bounded, with overflow and no-message buckets, in
the window's one value, and rows that add up to the campaign's totals."""

from __future__ import annotations

import orjson
import pytest

from processors.figures import HeldWindow, campaign_figures, merged_breakdown
from processors.records import (
    Breakdown,
    WindowCounts,
    load_window,
    parse_stats_updates,
    window_value,
)


def _window(
    events: list[tuple[str, str | None]], max_keys: int = 2, first: int = 0
) -> WindowCounts:
    counts = WindowCounts(lg_k=12, max_keys=max_keys)
    for offset, (kind, message) in enumerate(events, start=first):
        counts.apply("raw/0", offset, kind, "PUSH", f"u:{offset}", {"message": message})
    return counts


def test_a_window_keeps_at_most_max_keys_message_ids_and_counts_the_rest_as_overflow() -> None:
    counts = _window(
        [
            ("SEND", "m1"),
            ("SEND", "m2"),
            ("SEND", "m3"),
            ("OPEN", "m1"),
            ("OPEN", "m3"),
            ("SEND", None),
            ("OPEN", "m4"),
        ]
    )
    b = counts.breakdowns["message"]
    assert b.kept == {"m1": {"SEND": 1, "OPEN": 1}, "m2": {"SEND": 1}}  # the first two seen
    assert b.overflow == {"SEND": 1, "OPEN": 2}  # m3 and m4
    assert b.missing == {"SEND": 1}
    # Every event is in exactly one bucket.
    buckets = [*b.kept.values(), b.overflow, b.missing]
    assert sum(sum(x.values()) for x in buckets) == counts.total == 7


def test_the_breakdown_is_in_the_window_value_and_a_replay_changes_it_no_more() -> None:
    counts = _window([("SEND", "m1"), ("SEND", "m2"), ("SEND", "m3"), ("OPEN", None)])
    value = window_value(counts, updated_ms=5)
    loaded = load_window(value, lg_k=12, max_keys=2)
    assert loaded.breakdowns == counts.breakdowns
    # Replayed increments (offsets already applied) leave the value as it was.
    for offset, kind, message in [(1, "SEND", "m2"), (3, "OPEN", None)]:
        assert not loaded.apply("raw/0", offset, kind, "PUSH", None, {"message": message})
    assert window_value(loaded, 5) == value
    # A new one counts, under the bound the window keeps.
    assert loaded.apply("raw/0", 4, "OPEN", "PUSH", None, {"message": "m9"})
    assert loaded.breakdowns["message"].overflow == {"SEND": 1, "OPEN": 1}


def test_windows_stored_before_breakdowns_load_with_none_and_keep_their_bytes() -> None:
    # Binary format without "b" (what the version before wrote): no breakdown.
    plain = WindowCounts(lg_k=12)
    plain.apply("raw/0", 1, "SEND", "PUSH", "u:1")
    value = window_value(plain, 7)
    assert b'"b"' not in value  # no breakdown, no field: the bytes of the version before
    assert load_window(value, lg_k=12).breakdowns == {}
    # JSON format (older still).
    old = orjson.dumps({"n": 2, "t": {"OPEN": 2}, "c": {"PUSH": 2}, "w": {"raw/0": 3}})
    loaded = load_window(old, lg_k=12, max_keys=5)
    assert loaded.breakdowns == {} and loaded.max_keys == 5
    loaded.apply("raw/0", 4, "OPEN", "PUSH", "u:1", {"message": "m1"})
    assert loaded.breakdowns["message"].kept == {"m1": {"OPEN": 1}}


def test_an_increment_without_breakdown_values_counts_in_the_totals_only() -> None:
    """A stats-updates record of the version before has no ``d``."""
    value = b'{"v":2,"c":{"K|a|c":{"raw/0":[[1,5,"OPEN","PUSH"]]}}}'
    ((_, _, (inc,)),) = parse_stats_updates(b"0", value).increments
    assert inc[5] == {}
    counts = WindowCounts(lg_k=12)
    counts.apply("raw/0", *inc[0:1], *inc[2:4], inc[4], inc[5])
    assert counts.total == 1 and counts.breakdowns == {}


@pytest.mark.parametrize(
    "d",
    [
        b'"x"',
        b'{"message":{"K|a|c":{"raw/0":["m1","m2"]}}}',  # two values for one increment
        b'{"message":{"K|a|c":{"raw/0":[7]}}}',  # not a string
    ],
)
def test_bad_breakdown_values_make_the_record_invalid(d: bytes) -> None:
    value = b'{"v":2,"c":{"K|a|c":{"raw/0":[[1,5,"OPEN","PUSH"]]}},"d":' + d + b"}"
    with pytest.raises(ValueError):
        parse_stats_updates(b"0", value)


def test_rows_over_a_range_sum_the_windows_are_bounded_and_add_up_to_the_totals() -> None:
    one = _window([("SEND", "m1"), ("SEND", "m2"), ("SEND", "m3"), ("OPEN", None)])
    two = _window([("SEND", "m3"), ("OPEN", "m3"), ("CLICK", "m3"), ("SEND", "m1")], first=10)
    legacy = load_window(orjson.dumps({"n": 2, "t": {"SEND": 2}, "c": {}, "w": {}}), 12)
    windows = [one, two, legacy]
    by_type = {"SEND": 7, "OPEN": 2, "CLICK": 1}
    rows = merged_breakdown("message", windows, by_type, max_keys=2)
    assert rows == [
        # m3: the second window's own counts (the first counted it in its overflow).
        {
            "message_id": "m3",
            "kind": "value",
            "total": 3,
            "event_type_counts": {"CLICK": 1, "OPEN": 1, "SEND": 1},
        },
        {"message_id": "m1", "kind": "value", "total": 2, "event_type_counts": {"SEND": 2}},
        # m2 (cut by the bound over the range) and the first window's m3.
        {"message_id": None, "kind": "overflow", "total": 2, "event_type_counts": {"SEND": 2}},
        # Counted before windows kept breakdowns.
        {
            "message_id": None,
            "kind": "not_broken_down",
            "total": 2,
            "event_type_counts": {"SEND": 2},
        },
        {"message_id": None, "kind": "none", "total": 1, "event_type_counts": {"OPEN": 1}},
    ]
    summed: dict[str, int] = {}
    for row in rows:
        for kind, n in row["event_type_counts"].items():
            summed[kind] = summed.get(kind, 0) + n
    assert summed == by_type
    assert sum(row["total"] for row in rows) == 10


def test_a_campaigns_detail_has_its_messages_and_its_list_row_has_not() -> None:
    held = [HeldWindow(0, _window([("SEND", "m1"), ("OPEN", "m1")]), 1)]
    detail = campaign_figures({"vendor": "AIRSHIP"}, held, 60_000, 12, series=True, max_keys=5)
    assert detail["messages"] == [
        {
            "message_id": "m1",
            "kind": "value",
            "total": 2,
            "event_type_counts": {"OPEN": 1, "SEND": 1},
        }
    ]
    listed = campaign_figures({"vendor": "AIRSHIP"}, held, 60_000, 12, series=False)
    assert "messages" not in listed


def test_an_empty_breakdown_dumps_and_loads() -> None:
    assert Breakdown.load(Breakdown().dump()) == Breakdown()
