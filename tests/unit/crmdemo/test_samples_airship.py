"""The Airship sample set says what a correct pipeline does with it; check that, exactly."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from crmdemo.samples import SampleSet, campaigns
from crmdemo.samples.airship import generate, group_id
from processors.normalize import airship
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Skipped,
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

CTX = NormalizeContext(app_id="sample-app-key")


@pytest.fixture(scope="module")
def sample() -> SampleSet:
    return generate(random.Random(11), N, campaigns(random.Random(3)))


@pytest.fixture(scope="module")
def accounting(sample: SampleSet) -> Accounting:
    return account(sample, airship.normalize, CTX)


def test_outcome_counts_match_the_expected_counts_exactly(
    sample: SampleSet, accounting: Accounting
) -> None:
    assert_counts_match(sample, accounting, "airship")
    assert all(skipped.reason == "OFFSET_UPDATE" for skipped in accounting.skipped)


def test_size_and_shares(sample: SampleSet) -> None:
    assert sample.expected_duplicates == N * 5 // 100
    assert sum(sample.expected_rejects.values()) == N // 100
    assert sample.expected_skips == 30


def test_every_event_is_valid_and_keyed_by_its_id(sample: SampleSet) -> None:
    shared = {group_id(c) for c in campaigns(random.Random(3))}
    for key, value in sample.records:
        outcome = airship.normalize(value, CTX)
        if isinstance(outcome, Skipped):
            assert key is None  # control lines are not events
            continue
        if not isinstance(outcome, CanonicalEvent):
            continue
        assert_valid_event(outcome, Vendor.AIRSHIP)
        assert key == outcome.vendor_event_id.encode()
        assert outcome.app_id == "sample-app-key"
        assert outcome.campaign_id is None or outcome.campaign_id in shared
        unattributed = outcome.vendor_event_type.startswith(("SUBSCRIPTION:", "COMPLIANCE:"))
        if outcome.event_type is not EventType.OTHER and not unattributed:
            assert outcome.campaign_id in shared, outcome  # every campaign event is attributed


def test_a_realistic_mix(accounting: Accounting) -> None:
    assert_types_present(
        accounting.events,
        (
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
        ),
    )
    assert {
        Channel.EMAIL,
        Channel.SMS,
        Channel.PUSH,
        Channel.IN_APP,
        Channel.INBOX,
        Channel.NONE,
        Channel.UNKNOWN,
    } <= {e.channel for e in accounting.events}


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


def test_occurred_times_span_about_two_hours(accounting: Accounting) -> None:
    assert 60 * 60_000 < occurred_span_ms(accounting.events) <= 3 * 3600_000


def test_deterministic_for_a_seed() -> None:
    shared = campaigns(random.Random(3))
    assert_deterministic(lambda seed: generate(random.Random(seed), 300, shared), 5)


@pytest.mark.parametrize("n", [0, 1, 10, 99])
def test_small_sets_still_add_up(n: int) -> None:
    assert_adds_up(generate(random.Random(n), n, campaigns(random.Random(3))))
