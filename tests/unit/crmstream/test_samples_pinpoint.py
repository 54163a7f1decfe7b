"""The Pinpoint sample set says what a correct pipeline does with it; check that, exactly."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from crmstream.samples import SampleSet, campaigns
from crmstream.samples.pinpoint import campaign_id, generate
from processors.normalize import pinpoint
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


@pytest.fixture(scope="module")
def sample() -> SampleSet:
    return generate(random.Random(11), N, campaigns(random.Random(3)))


def test_outcome_counts_match_the_expected_counts_exactly(sample: SampleSet) -> None:
    seen: set[str] = set()
    events = duplicates = skips = 0
    rejects: Counter[str] = Counter()
    for _key, value in sample.records:
        outcome = pinpoint.normalize(value, NormalizeContext())
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
            skips += 1
    assert events == sample.expected_events
    assert duplicates == sample.expected_duplicates
    assert dict(rejects) == {k: v for k, v in sample.expected_rejects.items() if v}
    assert skips == sample.expected_skips == 0


def test_size_and_shares(sample: SampleSet) -> None:
    assert sample.vendor == "pinpoint"
    assert len(sample.records) == N
    assert sample.expected_duplicates == N * 5 // 100
    assert sum(sample.expected_rejects.values()) == N // 100
    assert set(sample.expected_rejects) == {
        "invalid_json",
        "missing_event_id",
        "missing_event_type",
        "invalid_timestamp",
    }
    assert all(count > 0 for count in sample.expected_rejects.values())


def test_every_event_is_valid_and_keyed_by_its_vendor_event_id(sample: SampleSet) -> None:
    shared = {campaign_id(c) for c in campaigns(random.Random(3))}
    for key, value in sample.records:
        outcome = pinpoint.normalize(value, NormalizeContext())
        if not isinstance(outcome, CanonicalEvent):
            continue
        assert outcome.vendor is Vendor.PINPOINT
        assert EventType(outcome.event_type.value) is outcome.event_type
        assert Channel(outcome.channel.value) is outcome.channel
        assert key == outcome.vendor_event_id.encode()
        assert outcome.campaign_id is None or outcome.campaign_id in shared
        assert outcome.app_id is not None and outcome.app_id.startswith("app-")
        assert all(isinstance(v, str) for v in outcome.attributes.values())
        if outcome.vendor_event_type.startswith("_campaign.send"):
            assert outcome.campaign_id in shared


def test_a_realistic_mix(sample: SampleSet) -> None:
    types: Counter[EventType] = Counter()
    channels: Counter[Channel] = Counter()
    for _key, value in sample.records:
        outcome = pinpoint.normalize(value, NormalizeContext())
        if isinstance(outcome, CanonicalEvent):
            types[outcome.event_type] += 1
            channels[outcome.channel] += 1
    for wanted in (
        EventType.SEND,
        EventType.SEND_REQUESTED,
        EventType.DELIVERY,
        EventType.OPEN,
        EventType.CLICK,
        EventType.BOUNCE,
        EventType.UNSUBSCRIBE,
        EventType.CONTROL,
        EventType.SEND_FAILED,
        EventType.SEND_ABORTED,
        EventType.OTHER,
    ):
        assert types[wanted] > 0, wanted
    assert {Channel.EMAIL, Channel.SMS, Channel.PUSH} <= set(channels)


def test_duplicates_are_byte_identical_and_follow_their_original(sample: SampleSet) -> None:
    first: dict[bytes, int] = {}
    repeats = 0
    for index, (key, value) in enumerate(sample.records):
        if key is None:
            continue
        if key in first:
            assert sample.records[first[key]][1] == value
            repeats += 1
        else:
            first[key] = index
    assert repeats >= sample.expected_duplicates


def test_occurred_times_span_about_two_hours(sample: SampleSet) -> None:
    times = [
        o.occurred_at
        for o in (pinpoint.normalize(v, NormalizeContext()) for _k, v in sample.records)
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
    assert orjson.loads(a.records[0][1]) == orjson.loads(b.records[0][1])


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
