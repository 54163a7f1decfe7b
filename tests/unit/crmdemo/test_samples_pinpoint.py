"""The Pinpoint sample set says what a correct pipeline does with it; check that, exactly."""

from __future__ import annotations

import random

import orjson
import pytest

from crmdemo.samples import SampleSet, campaigns
from crmdemo.samples.pinpoint import campaign_id, generate
from processors.normalize import pinpoint
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Vendor,
)
from tests.unit.crmdemo.samples_harness import (
    Accounting,
    N,
    account,
    assert_adds_up,
    assert_counts_match,
    assert_deterministic,
    assert_types_present,
    assert_valid_event,
    occurred_span_ms,
)


@pytest.fixture(scope="module")
def sample() -> SampleSet:
    return generate(random.Random(11), N, campaigns(random.Random(3)))


@pytest.fixture(scope="module")
def accounting(sample: SampleSet) -> Accounting:
    return account(sample, pinpoint.normalize, NormalizeContext())


def test_outcome_counts_match_the_expected_counts_exactly(
    sample: SampleSet, accounting: Accounting
) -> None:
    assert_counts_match(sample, accounting, "pinpoint")
    assert sample.expected_skips == 0


def test_size_and_shares(sample: SampleSet) -> None:
    assert sample.expected_duplicates == N * 5 // 100
    assert sum(sample.expected_rejects.values()) == N // 100


def test_every_event_is_valid_and_keyed_by_its_vendor_event_id(sample: SampleSet) -> None:
    shared = {campaign_id(c) for c in campaigns(random.Random(3))}
    for key, value in sample.records:
        outcome = pinpoint.normalize(value, NormalizeContext())
        if not isinstance(outcome, CanonicalEvent):
            continue
        assert_valid_event(outcome, Vendor.PINPOINT)
        assert key == outcome.vendor_event_id.encode()
        assert outcome.campaign_id is None or outcome.campaign_id in shared
        assert outcome.app_id is not None and outcome.app_id.startswith("app-")
        if outcome.vendor_event_type.startswith("_campaign.send"):
            assert outcome.campaign_id in shared


def test_a_realistic_mix(accounting: Accounting) -> None:
    assert_types_present(
        accounting.events,
        (
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
        ),
    )
    channels = {e.channel for e in accounting.events}
    assert {Channel.EMAIL, Channel.SMS, Channel.PUSH} <= channels


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


def test_occurred_times_span_about_two_hours(accounting: Accounting) -> None:
    assert 60 * 60_000 < occurred_span_ms(accounting.events) <= 3 * 3600_000


def test_deterministic_for_a_seed() -> None:
    shared = campaigns(random.Random(3))

    def make(seed: int) -> SampleSet:
        return generate(random.Random(seed), 300, shared)

    assert_deterministic(make, 5)
    assert orjson.loads(make(5).records[0][1]) == orjson.loads(make(5).records[0][1])


@pytest.mark.parametrize("n", [0, 1, 10, 99])
def test_small_sets_still_add_up(n: int) -> None:
    assert_adds_up(generate(random.Random(n), n, campaigns(random.Random(3))))
