"""The Airship sample set says what a correct pipeline does with it; check that, exactly."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from crmstream.samples import SampleSet, campaigns
from crmstream.samples.airship import generate, group_id
from processors.normalize import airship
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Rejected,
    Skipped,
    Vendor,
)

N = 2000
CTX = NormalizeContext(app_id="sample-app-key")


@pytest.fixture(scope="module")
def sample() -> SampleSet:
    return generate(random.Random(11), N, campaigns(random.Random(3)))


def test_outcome_counts_match_the_expected_counts_exactly(sample: SampleSet) -> None:
    seen: set[str] = set()
    events = duplicates = skips = 0
    rejects: Counter[str] = Counter()
    for _key, value in sample.records:
        outcome = airship.normalize(value, CTX)
        if isinstance(outcome, CanonicalEvent):
            if outcome.event_id in seen:
                duplicates += 1
            else:
                seen.add(outcome.event_id)
                events += 1
        elif isinstance(outcome, Rejected):
            rejects[outcome.reason.value] += 1
        else:
            assert isinstance(outcome, Skipped)
            assert outcome.reason == "OFFSET_UPDATE"
            skips += 1
    assert events == sample.expected_events
    assert duplicates == sample.expected_duplicates
    assert dict(rejects) == {k: v for k, v in sample.expected_rejects.items() if v}
    assert skips == sample.expected_skips


def test_size_and_shares(sample: SampleSet) -> None:
    assert sample.vendor == "airship"
    assert len(sample.records) == N
    assert sample.expected_duplicates == N * 5 // 100
    assert sum(sample.expected_rejects.values()) == N // 100
    assert sample.expected_skips == 30
    assert all(count > 0 for count in sample.expected_rejects.values())
    assert set(sample.expected_rejects) == {
        "invalid_json",
        "missing_event_id",
        "missing_event_type",
        "invalid_timestamp",
    }


def test_every_event_is_valid_and_keyed_by_its_id(sample: SampleSet) -> None:
    shared = {group_id(c) for c in campaigns(random.Random(3))}
    for key, value in sample.records:
        outcome = airship.normalize(value, CTX)
        if isinstance(outcome, Skipped):
            assert key is None  # control lines are not events
            continue
        if not isinstance(outcome, CanonicalEvent):
            continue
        assert outcome.vendor is Vendor.AIRSHIP
        assert EventType(outcome.event_type.value) is outcome.event_type
        assert Channel(outcome.channel.value) is outcome.channel
        assert key == outcome.vendor_event_id.encode()
        assert outcome.app_id == "sample-app-key"
        assert outcome.campaign_id is None or outcome.campaign_id in shared
        assert all(isinstance(v, str) for v in outcome.attributes.values())
        unattributed = outcome.vendor_event_type.startswith(("SUBSCRIPTION:", "COMPLIANCE:"))
        if outcome.event_type is not EventType.OTHER and not unattributed:
            assert outcome.campaign_id in shared, outcome  # every campaign event is attributed


def test_a_realistic_mix(sample: SampleSet) -> None:
    types: Counter[EventType] = Counter()
    channels: Counter[Channel] = Counter()
    for _key, value in sample.records:
        outcome = airship.normalize(value, CTX)
        if isinstance(outcome, CanonicalEvent):
            types[outcome.event_type] += 1
            channels[outcome.channel] += 1
    for wanted in (
        EventType.SEND,
        EventType.DELIVERY,
        EventType.OPEN,
        EventType.CLICK,
        EventType.BOUNCE,
        EventType.IMPRESSION,
        EventType.DISMISS,
        EventType.CONTROL,
        EventType.SEND_ABORTED,
        EventType.OTHER,
    ):
        assert types[wanted] > 0, wanted
    assert {
        Channel.EMAIL,
        Channel.SMS,
        Channel.PUSH,
        Channel.IN_APP,
        Channel.INBOX,
        Channel.NONE,
        Channel.UNKNOWN,
    } <= set(channels)


def test_duplicates_differ_only_in_offset_and_processed(sample: SampleSet) -> None:
    first: dict[bytes, dict[str, object]] = {}
    repeats = 0
    for key, value in sample.records:
        if key is None:
            continue
        try:
            line = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if key in first:
            original = first[key]
            assert line["offset"] != original["offset"]
            assert line["processed"] != original["processed"]
            strip = ("offset", "processed")
            assert {k: v for k, v in line.items() if k not in strip} == {
                k: v for k, v in original.items() if k not in strip
            }
            repeats += 1
        elif "type" in line:
            first[key] = line
    assert repeats == sample.expected_duplicates


def test_offsets_increase_in_stream_order(sample: SampleSet) -> None:
    offsets = []
    for _key, value in sample.records:
        try:
            offsets.append(int(orjson.loads(value)["offset"]))
        except orjson.JSONDecodeError:
            continue
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)


def test_timestamps_use_one_to_three_fraction_digits(sample: SampleSet) -> None:
    widths: Counter[int] = Counter()
    for _key, value in sample.records:
        try:
            occurred = orjson.loads(value).get("occurred", "")
        except orjson.JSONDecodeError:
            continue
        if occurred.endswith("Z") and "." in occurred:
            widths[len(occurred.rsplit(".", 1)[1]) - 1] += 1
    assert set(widths) <= {1, 2, 3}
    assert widths[3] > widths[2] > 0


def test_occurred_times_span_about_two_hours(sample: SampleSet) -> None:
    times = [
        o.occurred_at
        for o in (airship.normalize(v, CTX) for _k, v in sample.records)
        if isinstance(o, CanonicalEvent)
    ]
    assert 60 * 60_000 < max(times) - min(times) <= 3 * 3600_000


def test_deterministic_for_a_seed() -> None:
    shared = campaigns(random.Random(3))
    a = generate(random.Random(5), 300, shared)
    b = generate(random.Random(5), 300, shared)
    c = generate(random.Random(6), 300, shared)
    assert a.records == b.records
    assert a.records != c.records


@pytest.mark.parametrize("n", [0, 1, 10, 99])
def test_small_sets_still_add_up(n: int) -> None:
    sample = generate(random.Random(n), n, campaigns(random.Random(3)))
    accounted = (
        sample.expected_events
        + sample.expected_duplicates
        + sum(sample.expected_rejects.values())
        + sample.expected_skips
    )
    assert accounted == len(sample.records)
