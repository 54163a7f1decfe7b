"""The FlareLane sample set: its stated outcome matches what the normalizer + dedupe do."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from crmdemo.samples import SampleSet, campaigns
from crmdemo.samples import flarelane as samples
from processors.normalize import flarelane
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

CTX = NormalizeContext(app_id="config-app")


def generate(seed: int, n: int = N) -> SampleSet:
    return seeded(samples.generate, seed, n)


@pytest.mark.parametrize("seed", [7, 20261125])
def test_expected_counts_match_the_normalizer(seed: int) -> None:
    sample = generate(seed)
    result = account(sample, flarelane.normalize, CTX)
    assert_counts_match(sample, result, "flarelane")
    assert_realistic_shares(sample, result)


def test_events_are_valid_and_varied() -> None:
    events = account(generate(3), flarelane.normalize, CTX).events
    for event in events:
        assert_valid_event(event, Vendor.FLARELANE)
    types = assert_types_present(
        events,
        (
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
        ),
    )
    assert types[EventType.SEND] > types[EventType.OPEN] > types[EventType.CLICK]
    channels = Counter(e.channel for e in events)
    for channel in (Channel.PUSH, Channel.SMS, Channel.KAKAO, Channel.EMAIL, Channel.IN_APP):
        assert channels[channel] > 0, channel
    assert {e.app_id for e in events} == {"app-1", "app-2", "app-3"}  # projectid
    assert occurred_span_ms(events) <= 2 * 3600 * 1000
    expected_ids = {samples.campaign_uuid(c) for c in campaigns(random.Random(0))}
    assert_campaigns_from(events, expected_ids)


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
    events = account(sample, flarelane.normalize, CTX).events
    for event in events:
        dumped = orjson.dumps(event.to_record()).decode()
        assert "recipient" not in event.attributes and "body" not in event.attributes
        assert "+8210" not in dumped and "@mail.example" not in dumped


def test_keys_are_vendor_event_ids() -> None:
    assert_keys_are_vendor_event_ids(generate(11), flarelane.vendor_event_id)


def test_deterministic_per_seed() -> None:
    assert_deterministic(generate, 42)
