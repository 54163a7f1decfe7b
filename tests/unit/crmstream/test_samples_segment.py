"""The Segment sample set: its stated outcome matches what the normalizer + dedupe do."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from crmstream.samples import SampleSet, campaigns
from crmstream.samples import segment as samples
from processors.normalize import segment
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


def generate(seed: int, n: int = N) -> SampleSet:
    rng = random.Random(seed)
    return samples.generate(random.Random(rng.random()), n, campaigns(rng))


def account(sample: SampleSet) -> tuple[list[CanonicalEvent], int, Counter[str], int]:
    """Normalize every record and dedupe by event_id, first seen wins (TAXONOMY §5)."""
    ctx = NormalizeContext(app_id="segment-src")
    seen: set[str] = set()
    events: list[CanonicalEvent] = []
    duplicates, skips = 0, 0
    rejects: Counter[str] = Counter()
    for _key, value in sample.records:
        outcome = segment.normalize(value, ctx)
        if isinstance(outcome, Rejected):
            rejects[outcome.reason.value] += 1
        elif isinstance(outcome, Skipped):
            skips += 1
        elif outcome.event_id in seen:
            duplicates += 1
        else:
            seen.add(outcome.event_id)
            events.append(outcome)
    return events, duplicates, rejects, skips


@pytest.mark.parametrize("seed", [7, 20261125])
def test_expected_counts_match_the_normalizer(seed: int) -> None:
    sample = generate(seed)
    events, duplicates, rejects, skips = account(sample)
    assert sample.vendor == "segment"
    assert len(sample.records) == N
    assert len(events) == sample.expected_events
    assert duplicates == sample.expected_duplicates
    assert dict(rejects) == sample.expected_rejects
    assert skips == sample.expected_skips == 0
    # about 5 % duplicates, about 1 % malformed, every reject reason present
    assert 0.04 * N <= duplicates <= 0.06 * N
    assert set(rejects) == {
        "invalid_json",
        "missing_event_id",
        "missing_event_type",
        "invalid_timestamp",
    }
    assert sum(rejects.values()) <= 0.015 * N


def test_events_are_valid_and_varied() -> None:
    sample = generate(3)
    events, *_ = account(sample)
    for event in events:
        assert event.vendor is Vendor.SEGMENT
        assert isinstance(event.event_type, EventType)
        assert isinstance(event.channel, Channel)
        assert event.event_id == f"SEGMENT:{event.vendor_event_id}"
        assert all(isinstance(v, str) for v in event.attributes.values())
    types = Counter(e.event_type for e in events)
    for expected in (
        EventType.DELIVERY,
        EventType.OPEN,
        EventType.CLICK,
        EventType.BOUNCE,
        EventType.UNSUBSCRIBE,
        EventType.EXPERIMENT_IMPRESSION,
        EventType.OTHER,
    ):
        assert types[expected] > 0, expected
    assert types[EventType.DELIVERY] > types[EventType.OPEN] > types[EventType.CLICK]
    assert Counter(e.channel for e in events)[Channel.PUSH] > 0
    occurred = [e.occurred_at for e in events]
    assert max(occurred) - min(occurred) <= 2 * 3600 * 1000
    campaign_ids = {e.campaign_id for e in events if e.campaign_id}
    expected_ids = {str(samples.campaign_id(c)) for c in campaigns(random.Random(0))}
    assert campaign_ids <= expected_ids and len(campaign_ids) > 20


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
    for key, value in generate(11).records:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            assert key is None
            continue
        event_id = segment.vendor_event_id(record)
        assert key == (event_id.encode() if event_id is not None else None)


def test_deterministic_per_seed() -> None:
    assert generate(42).records == generate(42).records
    assert generate(42).records != generate(43).records
