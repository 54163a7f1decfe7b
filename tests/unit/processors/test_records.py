"""The stats-updates record format between the worker's two agents."""

from __future__ import annotations

from processors.records import parse_stats_updates, stats_partition, stats_updates_value


def test_stats_updates_round_trip_and_earlier_format() -> None:
    value = stats_updates_value({"LEANPLUM|app|c1": [(1000, "SEND", "EMAIL")], "X|a|c": []})
    assert parse_stats_updates(b"3", value) == [
        ("LEANPLUM|app|c1", [[1000, "SEND", "EMAIL"]]),
        ("X|a|c", []),
    ]
    # Before: one record per campaign, keyed by it, the value a list of increments.
    assert parse_stats_updates(b"LEANPLUM|app|c1", b'[[5,"OPEN","PUSH"]]') == [
        ("LEANPLUM|app|c1", [[5, "OPEN", "PUSH"]])
    ]
    # The Java client's murmur2 partitioner: stable, and within range.
    parts = {stats_partition(f"c{i}".encode(), 6) for i in range(200)}
    assert parts == set(range(6))
    assert stats_partition(b"LEANPLUM|app|c1", 6) == stats_partition(b"LEANPLUM|app|c1", 6)


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
