"""The Segment sample set: its stated outcome matches what the normalizer + dedupe do."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from crmdemo.samples import SampleSet, campaigns
from crmdemo.samples import segment as samples
from processors.normalize import segment
from processors.normalize.model import Channel, EventType, NormalizeContext, Vendor
from tests.unit.crmdemo.samples_harness import (
    N,
    account,
    assert_campaigns_from,
    assert_counts_match,
    assert_deterministic,
    assert_keys_are_vendor_event_ids,
    assert_realistic_shares,
    assert_types_present,
    assert_valid_event,
    occurred_span_ms,
    seeded,
)

CTX = NormalizeContext(app_id="segment-src")


def generate(seed: int, n: int = N) -> SampleSet:
    return seeded(samples.generate, seed, n)


@pytest.mark.parametrize("seed", [7, 20261125])
def test_expected_counts_match_the_normalizer(seed: int) -> None:
    sample = generate(seed)
    result = account(sample, segment.normalize, CTX)
    assert_counts_match(sample, result, "segment")
    assert_realistic_shares(sample, result)


def test_events_are_valid_and_varied() -> None:
    events = account(generate(3), segment.normalize, CTX).events
    for event in events:
        assert_valid_event(event, Vendor.SEGMENT)
    types = assert_types_present(
        events,
        (
            EventType.DELIVERY,
            EventType.OPEN,
            EventType.CLICK,
            EventType.BOUNCE,
            EventType.UNSUBSCRIBE,
            EventType.EXPERIMENT_IMPRESSION,
            EventType.OTHER,
        ),
    )
    assert types[EventType.DELIVERY] > types[EventType.OPEN] > types[EventType.CLICK]
    assert Counter(e.channel for e in events)[Channel.PUSH] > 0
    assert occurred_span_ms(events) <= 2 * 3600 * 1000
    expected_ids = {str(samples.campaign_id(c)) for c in campaigns(random.Random(0))}
    assert_campaigns_from(events, expected_ids)


def test_duplicates_are_retries_with_new_sent_and_received_at() -> None:
    """Same messageId, different sentAt/receivedAt [X5]: deduped on the id only (§5)."""
    first: dict[bytes, dict[str, Any]] = {}
    retries = 0
    for key, value in generate(5).records:
        if key is None:
            continue
        try:
            record: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if key not in first:
            first[key] = record
            continue
        retries += 1
        original = first[key]
        assert record["sentAt"] > original["sentAt"]
        assert record["receivedAt"] != original["receivedAt"]
        strip = ("sentAt", "receivedAt")
        assert {k: v for k, v in record.items() if k not in strip} == {
            k: v for k, v in original.items() if k not in strip
        }
    assert retries > 0.04 * N


def test_keys_are_vendor_event_ids() -> None:
    assert_keys_are_vendor_event_ids(generate(11), segment.vendor_event_id)


def test_deterministic_per_seed() -> None:
    assert_deterministic(generate, 42)
