"""The stats-updates record format between the worker's two agents."""

from __future__ import annotations

import orjson
import pytest

from processors.records import (
    WindowCounts,
    parse_stats_updates,
    stats_partition,
    stats_updates_value,
)


def test_stats_updates_round_trip_and_earlier_formats() -> None:
    value = stats_updates_value(
        {
            "LEANPLUM|app|c1": {"crm.raw.leanplum/3": [[17, 1000, "SEND", "EMAIL"]]},
            "X|a|c": {"crm.raw.x/0": []},
        }
    )
    assert parse_stats_updates(b"3", value) == [
        ("LEANPLUM|app|c1", "crm.raw.leanplum/3", [[17, 1000, "SEND", "EMAIL"]]),
        ("X|a|c", "crm.raw.x/0", []),
    ]
    # Version 1: a dict of campaign -> [occurred_at, type, channel]; no raw position.
    assert parse_stats_updates(b"3", b'{"LEANPLUM|app|c1":[[1000,"SEND","EMAIL"]]}') == [
        ("LEANPLUM|app|c1", None, [[None, 1000, "SEND", "EMAIL"]])
    ]
    # Before that: one record per campaign, keyed by it, the value a list of increments.
    assert parse_stats_updates(b"LEANPLUM|app|c1", b'[[5,"OPEN","PUSH"]]') == [
        ("LEANPLUM|app|c1", None, [[None, 5, "OPEN", "PUSH"]])
    ]
    # The Java client's murmur2 partitioner: stable, and within range.
    parts = {stats_partition(f"c{i}".encode(), 6) for i in range(200)}
    assert parts == set(range(6))
    assert stats_partition(b"LEANPLUM|app|c1", 6) == stats_partition(b"LEANPLUM|app|c1", 6)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'"a string"',
        b'{"v":2,"c":{"K|a|c":{"s/0":[[1,2,"OPEN"]]}}}',  # an increment lacks a field
        b'{"v":2,"c":{"K|a|c":{"s/0":[["1",2,"OPEN","PUSH"]]}}}',  # offset not an int
        b'{"v":2,"c":{"K|a|c":{"s/0":[[1,99999999999999999,"OPEN","PUSH"]]}}}',  # year > 9999
        b'{"v":2,"c":{"K|a|c":[]}}',
        b'{"K|a|c":[[1.5,"OPEN","PUSH"]]}',
    ],
)
def test_a_stats_updates_record_that_is_not_one_raises_value_error(value: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError, AttributeError)):
        parse_stats_updates(b"0", value)


def test_a_window_counts_each_raw_record_once() -> None:
    """Increments come from each raw partition in offset order; a replay (after a crash of the
    worker or of the stats agent) re-sends some of them, and they are not counted again."""
    counts = WindowCounts()
    first = [(10, "SEND"), (11, "OPEN"), (15, "CLICK")]
    assert [counts.apply("raw/0", o, t, "EMAIL") for o, t in first] == [True, True, True]
    # Another raw partition's offsets are its own.
    assert counts.apply("raw/1", 11, "OPEN", "PUSH")
    # The replay from an earlier position: 11 and 15 were counted, 16 is new.
    replay = [(11, "OPEN"), (15, "CLICK"), (16, "CLICK")]
    assert [counts.apply("raw/0", o, t, "EMAIL") for o, t in replay] == [False, False, True]
    assert (counts.total, counts.by_type) == (5, {"SEND": 1, "OPEN": 2, "CLICK": 2})
    assert counts.by_channel == {"EMAIL": 4, "PUSH": 1}
    # Stored and loaded, it still knows what it counted; increments of the earlier formats
    # (no raw position) are counted as they come.
    loaded = WindowCounts.load(orjson.loads(orjson.dumps(counts.dump())))
    assert loaded == counts
    assert not loaded.apply("raw/0", 16, "CLICK", "EMAIL")
    assert loaded.apply(None, None, "CLICK", "EMAIL")
    assert loaded.apply(None, None, "CLICK", "EMAIL")
    assert loaded.total == 7
    # A value stored before windows remembered raw positions.
    assert WindowCounts.load({"n": 2, "t": {"OPEN": 2}, "c": {"PUSH": 2}}).applied == {}


def test_campaign_keys_with_separators_stay_distinct_and_round_trip() -> None:
    from processors.normalize.model import CanonicalEvent, Channel, EventType, Vendor, make
    from processors.records import WindowCounts, campaign_key, stats_record

    def event(app_id: str | None, campaign_id: str | None) -> CanonicalEvent:
        return make(
            Vendor.SEGMENT,
            "e1",
            vendor_event_type="x",
            event_type=EventType.OPEN,
            channel=Channel.EMAIL,
            occurred_at=0,
            app_id=app_id,
            campaign_id=campaign_id,
        )

    pairs = [("a|b", "c"), ("a", "b|c"), ("a%7Cb", "c"), ("a", "b"), (None, "50%off"), (None, None)]
    keys = [campaign_key(event(a, c)) for a, c in pairs]
    assert len(set(keys)) == len(keys)
    assert keys[3] == "SEGMENT|a|b"  # plain ids are unchanged
    for (app_id, campaign_id), key in zip(pairs, keys, strict=True):
        assert key.count("|") == 2
        record = stats_record(key, "1m", 0, 60, WindowCounts(1, {"OPEN": 1}, {"EMAIL": 1}), 5)
        assert (record["vendor"], record["app_id"], record["campaign_id"]) == (
            "SEGMENT",
            app_id,
            campaign_id,
        )
