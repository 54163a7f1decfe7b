"""The FlareLane sample set: its stated outcome matches what the normalizer + dedupe do."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from crmstream.samples import SampleSet, campaigns
from crmstream.samples import flarelane as samples
from processors.normalize import flarelane
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
    ctx = NormalizeContext(app_id="config-app")
    seen: set[str] = set()
    events: list[CanonicalEvent] = []
    duplicates, skips = 0, 0
    rejects: Counter[str] = Counter()
    for _key, value in sample.records:
        outcome = flarelane.normalize(value, ctx)
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
    assert sample.vendor == "flarelane"
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
        assert event.vendor is Vendor.FLARELANE
        assert isinstance(event.event_type, EventType)
        assert isinstance(event.channel, Channel)
        assert event.event_id == f"FLARELANE:{event.vendor_event_id}"
        assert all(isinstance(v, str) for v in event.attributes.values())
    types = Counter(e.event_type for e in events)
    for expected in (
        EventType.SEND_REQUESTED,
        EventType.SEND,
        EventType.SEND_ABORTED,
        EventType.SEND_FAILED,
        EventType.DELIVERY,
        EventType.DELIVERY_FAILURE,
        EventType.OPEN,
        EventType.CLICK,
        EventType.IMPRESSION,
        EventType.DISMISS,
        EventType.OTHER,
    ):
        assert types[expected] > 0, expected
    assert types[EventType.SEND] > types[EventType.OPEN] > types[EventType.CLICK]
    channels = Counter(e.channel for e in events)
    for channel in (Channel.PUSH, Channel.SMS, Channel.KAKAO, Channel.EMAIL, Channel.IN_APP):
        assert channels[channel] > 0, channel
    assert {e.app_id for e in events} == {"app-1", "app-2", "app-3"}  # projectid
    occurred = [e.occurred_at for e in events]
    assert max(occurred) - min(occurred) <= 2 * 3600 * 1000
    campaign_ids = {e.campaign_id for e in events if e.campaign_id}
    expected_ids = {samples.campaign_uuid(c) for c in campaigns(random.Random(0))}
    assert campaign_ids <= expected_ids and len(campaign_ids) > 20


def test_pii_columns_present_in_rows_but_not_in_events() -> None:
    sample = generate(5)
    recipients = set()
    for _key, value in sample.records:
        try:
            row: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if row.get("recipient"):
            recipients.add(row["recipient"])
    assert len(recipients) > 50
    events, *_ = account(sample)
    for event in events:
        dumped = orjson.dumps(event.to_record()).decode()
        assert "recipient" not in event.attributes and "body" not in event.attributes
        assert "+8210" not in dumped and "@mail.example" not in dumped


def test_keys_are_vendor_event_ids() -> None:
    for key, value in generate(11).records:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            assert key is None
            continue
        event_id = flarelane.vendor_event_id(record)
        assert key == (event_id.encode() if event_id is not None else None)


def test_deterministic_per_seed() -> None:
    assert generate(42).records == generate(42).records
    assert generate(42).records != generate(43).records
