"""The stats-updates record format between the worker's two agents."""

from __future__ import annotations

import random

import orjson
import pytest

from crmstream.errors import SerdeError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.campaigns import campaign_key, stats_partition
from processors.records import (
    STATS_SCHEMA_VERSION,
    StatsUpdates,
    StatsUpserts,
    WindowCounts,
    encode_window,
    load_window,
    parse_stats_updates,
    stats_record,
    stats_updates_value,
    window_updated_ms,
    window_value,
)


def test_stats_updates_round_trip_and_earlier_formats() -> None:
    value = stats_updates_value(
        {
            "LEANPLUM|app|c1": {"crm.raw.leanplum/3": [[17, 1000, "SEND", "EMAIL"]]},
            "X|a|c": {"crm.raw.x/0": []},
        }
    )
    assert parse_stats_updates(b"3", value) == StatsUpdates(
        [
            ("LEANPLUM|app|c1", "crm.raw.leanplum/3", [[17, 1000, "SEND", "EMAIL", None, {}]]),
            ("X|a|c", "crm.raw.x/0", []),
        ],
        {},
    )
    # With recipients (one per increment, in order) and the campaign's latest name.
    value = stats_updates_value(
        {"K|a|c": {"raw/0": [[1, 5, "OPEN", "PUSH"], [2, 6, "OPEN", "PUSH"]]}},
        {"K|a|c": {"raw/0": ["u:alice", None]}},
        {"K|a|c": (6, "Spring sale")},
    )
    assert parse_stats_updates(b"0", value) == StatsUpdates(
        [
            (
                "K|a|c",
                "raw/0",
                [[1, 5, "OPEN", "PUSH", "u:alice", {}], [2, 6, "OPEN", "PUSH", None, {}]],
            )
        ],
        {"K|a|c": (6, "Spring sale")},
    )
    # Version 1: a dict of campaign -> [occurred_at, type, channel]; no raw position.
    assert parse_stats_updates(b"3", b'{"LEANPLUM|app|c1":[[1000,"SEND","EMAIL"]]}').increments == [
        ("LEANPLUM|app|c1", None, [[None, 1000, "SEND", "EMAIL", None, {}]])
    ]
    # Before that: one record per campaign, keyed by it, the value a list of increments.
    assert parse_stats_updates(b"LEANPLUM|app|c1", b'[[5,"OPEN","PUSH"]]').increments == [
        ("LEANPLUM|app|c1", None, [[None, 5, "OPEN", "PUSH", None, {}]])
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
        b'{"v":2,"c":{"K|a|c":{"s/0":[[1,2,"OPEN",3]]}}}',  # channel not a string
        b'{"v":2,"c":{"K|a|c":{"s/0":[[1,2,"OPEN","PUSH","x"]]}}}',  # a field too many
        b'{"v":2,"c":{"K|a|c":{"s/0":[7]}}}',  # an increment that is a number
        b'{"v":2,"c":{"K|a|c":{"s/0":[{"a":1,"b":2,"c":3,"d":4}]}}}',  # an object
        b'{"v":2,"c":{"K|a|c":[]}}',
        b'{"K|a|c":[[1.5,"OPEN","PUSH"]]}',
        b'{"v":2,"c":{"K|a|c":{"s/0":[[1,2,"OPEN","PUSH"]]}},"r":{"K|a|c":{"s/0":[]}}}',
        b'{"v":2,"c":{"K|a|c":{"s/0":[[1,2,"OPEN","PUSH"]]}},"r":{"K|a|c":{"s/0":[7]}}}',
        b'{"v":2,"c":{},"n":{"K|a|c":["1","name"]}}',
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


def test_a_window_value_round_trips_with_its_sketches_and_update_time() -> None:
    counts = WindowCounts(lg_k=12)
    for offset, (kind, who) in enumerate(
        [("SEND", "u:1"), ("SEND", "u:2"), ("OPEN", "u:1"), ("OPEN", "d:9"), ("SEND", None)]
    ):
        counts.apply("raw/0", offset, kind, "EMAIL", who)
    counts.named((5, "Spring sale"))
    value = window_value(counts, updated_ms=1_234)
    assert window_updated_ms(value) == 1_234
    loaded = load_window(value, lg_k=10)  # a stored window keeps its own precision
    assert loaded.lg_k == 12
    assert (loaded.total, loaded.by_type, loaded.applied) == (
        5,
        {"SEND": 3, "OPEN": 2},
        {"raw/0": 4},
    )
    assert loaded.name == (5, "Spring sale")
    assert loaded.uniques() == counts.uniques()
    uniques = loaded.uniques()
    assert uniques is not None
    assert (uniques["recipients"], uniques["by_event_type"], uniques["unattributed"]) == (
        3,
        {"OPEN": 2, "SEND": 2},
        1,
    )
    # A replay after loading changes nothing, sketches included.
    assert not loaded.apply("raw/0", 2, "OPEN", "EMAIL", "u:7")
    assert window_value(loaded, 1_234) == value


def test_a_window_of_the_json_format_loads_with_its_events_unattributed() -> None:
    old = orjson.dumps({"n": 4, "t": {"OPEN": 4}, "c": {"PUSH": 4}, "w": {"raw/0": 9}})
    assert window_updated_ms(old) is None
    counts = load_window(old, lg_k=12)
    assert (counts.total, counts.unattributed, counts.applied) == (4, 4, {"raw/0": 9})
    counts.apply("raw/0", 10, "OPEN", "PUSH", "u:1")
    uniques = counts.uniques()
    assert uniques is not None
    assert (uniques["recipients"], uniques["unattributed"]) == (1, 4)


def test_stats_record_carries_the_uniques_and_the_sketches() -> None:
    counts = WindowCounts(lg_k=12)
    counts.apply("raw/0", 1, "OPEN", "PUSH", "u:1")
    counts.apply("raw/0", 2, "OPEN", "PUSH", "u:1")
    record = stats_record("LEANPLUM|app|c1", "1m", 60_000, 60, counts, 99)
    assert record["schema_version"] == STATS_SCHEMA_VERSION == 3
    assert (record["total"], record["unique_recipients"]) == (2, 1)
    assert record["unique_event_type_counts"] == {"OPEN": 1}
    assert record["unattributed"] == 0 and record["hll_lg_k"] == 12
    assert record["error_bound"] == pytest.approx(0.0162, abs=0.0005)
    assert isinstance(record["recipients_sketch"], bytes)
    assert set(record["event_type_sketches"]) == {"OPEN"}


def _window(seed: int, events: int, lg_k: int | None = 12) -> WindowCounts:
    """A window of ``events`` random events: types, channels, recipients (some missing),
    messages and variants (kept, overflowing a bound of 2, none, the control group)."""
    rng = random.Random(seed)
    counts = WindowCounts(lg_k=lg_k, max_keys={"message": 3, "variant": 2})
    for offset in range(events):
        event_type = rng.choice(["SEND", "OPEN", "CLICK", "CONTROL", "BOUNCE"])
        recipient = rng.choice([None, f"u:{rng.randrange(500)}", f"d:é{rng.randrange(9)}"])
        dims = {"message": rng.choice([None, "m1", "m2", "m3", "m4"])}
        if rng.random() < 0.7:
            dims["variant"] = rng.choice([None, "A", "B", "C", "0"])
        counts.apply(
            "raw.x/0",
            offset,
            event_type,
            rng.choice(["EMAIL", "PUSH"]),
            recipient if lg_k else None,
            dims,
        )
    if seed % 2:
        counts.named((seed, f"campaign é {seed}"))
    return counts


@pytest.mark.parametrize("events", [0, 1, 2, 7, 60, 900])
def test_an_upsert_written_by_hand_is_the_generic_encoders_bytes(events: int) -> None:
    serde = AvroSerde(Settings.from_env({}))
    upserts = StatsUpserts(serde, "campaign-stats")
    assert upserts.by_hand  # the shipped schema is the one written by hand
    for seed in range(12):
        counts = _window(seed * 1000 + events, events)
        if seed % 3 == 0:  # as stored and loaded again: sketches from their images
            counts = load_window(window_value(counts, 5), 12)
        for campaign, label, start, size in (
            ("LEANPLUM|app|c1", "1m", 60_000, 60),
            ("AIRSHIP||", "1h", 1_764_000_000_000, 3600),
            (campaign_key("SEGMENT", "a|p", "é c%"), "1d", 9_000_000_000_000, 86_400),
        ):
            now = 1_764_000_123_456 + seed
            record = stats_record(campaign, label, start, size, counts, now)
            expected = serde.encode("CampaignStats", record, "campaign-stats")
            assert upserts.value(campaign, label, start, size, counts, now) == expected
            assert serde.decode(expected)[1]["total"] == events


def test_an_upsert_the_hand_writer_cannot_write_goes_through_the_generic_encoder() -> None:
    serde = AvroSerde(Settings.from_env({}))
    upserts = StatsUpserts(serde, "campaign-stats")
    without_sketches = _window(3, 5, lg_k=None)
    record = stats_record("PINPOINT|a|b", "1m", 0, 60, without_sketches, 1)
    assert upserts.value("PINPOINT|a|b", "1m", 0, 60, without_sketches, 1) == serde.encode(
        "CampaignStats", record, "campaign-stats"
    )
    # A vendor the schema has no symbol for: the generic encoder's error, as before.
    with pytest.raises(SerdeError):
        upserts.value("NOPE|a|b", "1m", 0, 60, _window(4, 3), 1)
    upserts.by_hand = False  # another schema: every upsert through AvroSerde.encode
    counts = _window(5, 40)
    record = stats_record("LEANPLUM|a|b", "1h", 0, 3600, counts, 1)
    assert upserts.value("LEANPLUM|a|b", "1h", 0, 3600, counts, 1) == serde.encode(
        "CampaignStats", record, "campaign-stats"
    )


def _increments(seed: int, events: int) -> list[tuple]:
    """``_window``'s events as increments (some replayed: offsets repeat)."""
    rng = random.Random(seed)
    out = []
    for _ in range(events):
        dims: dict[str, str | None] = {"message": rng.choice([None, "m1", "m2", "m3", "m4"])}
        if rng.random() < 0.7:
            dims["variant"] = rng.choice([None, "A", "B", "C", "0"])
        out.append(
            (
                rng.choice(["raw.x/0", "raw.x/1", None]),
                rng.randrange(events),
                rng.choice(["SEND", "OPEN", "CLICK", "CONTROL", "BOUNCE"]),
                rng.choice(["EMAIL", "PUSH"]),
                rng.choice([None, f"u:{rng.randrange(500)}", f"d:{rng.randrange(9)}"]),
                dims,
            )
        )
    return out


@pytest.mark.parametrize("lg_k", [12, None])
@pytest.mark.parametrize("events", [1, 2, 7, 60, 900])
def test_counting_a_batch_s_increments_at_once_is_counting_them_one_by_one(
    events: int, lg_k: int | None
) -> None:
    for seed in range(6):
        increments = _increments(seed * 100 + events, events)
        if lg_k is None:
            increments = [(*i[:4], None, i[5]) for i in increments]
        one_by_one = WindowCounts(lg_k=lg_k, max_keys={"message": 3, "variant": 2})
        at_once = WindowCounts(lg_k=lg_k, max_keys={"message": 3, "variant": 2})
        if seed % 2:  # a stored window, loaded: a few increments counted before
            for counts in (one_by_one, at_once):
                counts.apply_all(increments[: events // 3])
            one_by_one = load_window(window_value(one_by_one, 1), 12, one_by_one.max_keys)
            at_once = load_window(window_value(at_once, 1), 12, at_once.max_keys)
        replayed = sum(1 for i in increments if not one_by_one.apply(*i))
        assert at_once.apply_all(increments) == replayed
        assert (at_once.total, at_once.unattributed) == (one_by_one.total, one_by_one.unattributed)
        assert window_value(at_once, 7) == window_value(one_by_one, 7)


@pytest.mark.parametrize("events", [0, 1, 2, 7, 60, 900])
def test_an_upsert_from_the_sketches_its_window_value_wrote_is_the_same_upsert(
    events: int,
) -> None:
    serde = AvroSerde(Settings.from_env({}))
    upserts = StatsUpserts(serde, "campaign-stats")
    for seed in range(8):
        counts = _window(seed * 1000 + events, events)
        if seed % 3 == 0:  # as stored and loaded again: sketches from their images
            counts = load_window(window_value(counts, 5), 12)
        if seed % 4 == 1:  # a sketch whose key sorts before the recipients' ("*")
            counts.apply("raw.x/9", 1, "!", "EMAIL", "u:1")
        value, sketched = encode_window(counts, 5)
        assert value == window_value(counts, 5)
        keys, images, estimates = sketched
        assert keys == sorted(counts.sketches)
        assert images == [counts.sketches[k].image() for k in keys]
        assert estimates == [counts.sketches[k].estimate() for k in keys]
        for start, size in ((60_000, 60), (1_764_000_000_000, 3600), (60_000, 3600)):
            now = 1_764_000_123_456 + seed
            expected = serde.encode(
                "CampaignStats",
                stats_record("LEANPLUM|app|c1", "1m", start, size, counts, now),
                "campaign-stats",
            )
            assert upserts.value("LEANPLUM|app|c1", "1m", start, size, counts, now) == expected
            assert (
                upserts.value("LEANPLUM|app|c1", "1m", start, size, counts, now, sketched)
                == expected
            )


# A window as main (9ff75b1) stored it and upserted it: four events of two recipients and one
# without, a message and a variant, the control group, a name (tests/unit/processors/
# test_records.py, ``_main_window``).
MAIN_STORED = bytes.fromhex(
    "c5020000019ab699ca400000021d7b226e223a342c2274223a7b2253454e44223a322c224f50454e223a312c"
    "22434f4e54524f4c223a317d2c2263223a7b22454d41494c223a322c2250555348223a327d2c2277223a7b22"
    "7261772e7365676d656e742f30223a382c227261772e7365676d656e742f31223a347d2c2275223a312c226b"
    "223a31322c2273223a5b5b222a222c31365d2c5b22434f4e54524f4c222c31325d2c5b224f50454e222c3132"
    "5d2c5b2253454e44222c31325d5d2c2265223a5b322c312c312c315d2c226d223a5b31373634303030303030"
    "3030302c22537072696e67225d2c2262223a7b226d657373616765223a7b226b223a7b226d31223a7b225345"
    "4e44223a312c224f50454e223a317d2c226d32223a7b2253454e44223a317d7d2c2278223a7b22434f4e5452"
    "4f4c223a317d7d2c2276617269616e74223a7b226b223a7b2241223a7b2253454e44223a312c224f50454e22"
    "3a317d7d2c2267223a7b22636f6e74726f6c223a7b22434f4e54524f4c223a317d7d7d7d2c226273223a5b5b"
    "2276617269616e74222c2267222c22636f6e74726f6c222c222a222c31325d2c5b2276617269616e74222c22"
    "67222c22636f6e74726f6c222c22434f4e54524f4c222c31325d2c5b2276617269616e74222c2276222c2241"
    "222c222a222c31325d2c5b2276617269616e74222c2276222c2241222c224f50454e222c31325d2c5b227661"
    "7269616e74222c2276222c2241222c2253454e44222c31325d5d7d0201070c0318020008f1080627ee270b02"
    "01070c0318010027ee270b0201070c0318010008f108060201070c0318010008f108060201070c0318010027"
    "ee270b0201070c0318010027ee270b0201070c0318010008f108060201070c0318010008f108060201070c03"
    "18010008f10806"
)
MAIN_UPSERT = bytes.fromhex(
    "c301ffc352b12f0ce09a0402066170700204633104316880a0bfe9d66680daf6ecd66608060853454e440408"
    "4f50454e020e434f4e54524f4c0200040a454d41494c040850555348040080a9cee9d666020c537072696e67"
    "0204060e434f4e54524f4c02084f50454e020853454e440200020202180282e2c798bb96903f02200201070c"
    "0318020008f1080627ee270b060e434f4e54524f4c180201070c0318010027ee270b084f50454e180201070c"
    "0318010008f108060853454e44180201070c0318010008f1080600040202410a76616c756504040853454e44"
    "02084f50454e020002180201070c0318010008f10806040853454e44180201070c0318010008f10806084f50"
    "454e180201070c0318010008f1080600000e636f6e74726f6c02020e434f4e54524f4c020002180201070c03"
    "18010027ee270b020e434f4e54524f4c180201070c0318010027ee270b000006"
)


def _main_window() -> WindowCounts:
    counts = WindowCounts(lg_k=12, max_keys={"message": 100, "variant": 20})
    counts.apply("raw.segment/0", 7, "SEND", "EMAIL", "u:1", {"message": "m1", "variant": "A"})
    counts.apply("raw.segment/0", 8, "OPEN", "EMAIL", "u:1", {"message": "m1", "variant": "A"})
    counts.apply("raw.segment/1", 3, "CONTROL", "PUSH", "d:2", {"message": None, "variant": "A"})
    counts.apply("raw.segment/1", 4, "SEND", "PUSH", None, {"message": "m2"})
    counts.named((1_764_000_000_000, "Spring"))
    return counts


def test_a_window_is_written_and_loaded_as_main_wrote_it() -> None:
    """The stored value's format did not change: a value main wrote loads, and is written
    again byte for byte (with its upsert), and a window counted here is stored as main stored
    it (old values in RocksDB and on the changelogs stay readable both ways)."""
    serde = AvroSerde(Settings.from_env({}))
    upserts = StatsUpserts(serde, "campaign-stats")
    args = ("SEGMENT|app|c1", "1h", 1_764_000_000_000, 3600)
    assert upserts.window(*args, _main_window(), 1_764_000_123_456) == (MAIN_STORED, MAIN_UPSERT)
    loaded = load_window(MAIN_STORED, 12, {"message": 100, "variant": 20})
    assert window_updated_ms(MAIN_STORED) == 1_764_000_123_456
    # (Loaded, a bucket's sketches come back sorted by key: its upsert lists them so.)
    upsert = serde.encode(
        "CampaignStats", stats_record(*args, loaded, 1_764_000_123_456), "campaign-stats"
    )
    assert upserts.window(*args, loaded, 1_764_000_123_456) == (MAIN_STORED, upsert)
    assert (loaded.total, loaded.unattributed, loaded.name) == (4, 1, (1_764_000_000_000, "Spring"))


@pytest.mark.parametrize("events", [0, 1, 2, 7, 60, 900])
def test_a_window_written_at_once_is_its_stored_value_and_its_upsert(events: int) -> None:
    """:meth:`StatsUpserts.window`: :func:`window_value` and the generic encoder's upsert, on
    windows of every shape (new, loaded, a sketch key before ``*``, without sketches, another
    schema)."""
    serde = AvroSerde(Settings.from_env({}))
    upserts = StatsUpserts(serde, "campaign-stats")
    for seed in range(10):
        counts = _window(seed * 1000 + events, events, lg_k=None if seed == 9 else 12)
        if seed % 3 == 0:  # as stored and loaded again: sketches from their images
            counts = load_window(window_value(counts, 5), 12)
        if seed % 4 == 1:  # a sketch whose key sorts before the recipients' ("*")
            counts.apply("raw.x/9", 1, "!", "EMAIL", "u:1")
        if seed == 8:
            upserts.by_hand = False  # another schema: the upsert through AvroSerde.encode
        for campaign, label, start, size in (
            ("LEANPLUM|app|c1", "1m", 60_000, 60),
            ("AIRSHIP||", "1h", 1_764_000_000_000, 3600),
            (campaign_key("SEGMENT", "a|p", "é c%"), "1d", 9_000_000_000_000, 86_400),
        ):
            now = 1_764_000_123_456 + seed
            upsert = serde.encode(
                "CampaignStats",
                stats_record(campaign, label, start, size, counts, now),
                "campaign-stats",
            )
            written = upserts.window(campaign, label, start, size, counts, now)
            assert written == (window_value(counts, now), upsert)
        upserts.new_batch()
    with pytest.raises(SerdeError):  # a vendor the schema has no symbol for, as before
        upserts.window("NOPE|a|b", "1m", 0, 60, _window(4, 3), 1)
