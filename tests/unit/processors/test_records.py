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
