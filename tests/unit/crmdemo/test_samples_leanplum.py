"""The Leanplum sample set: its stated outcome matches what the normalizer + dedupe do."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from crmdemo.samples import SampleSet, campaigns
from crmdemo.samples import leanplum as samples
from processors.normalize import leanplum
from processors.normalize.model import EventType, NormalizeContext, Vendor
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

CTX = NormalizeContext(app_id="lp-app")


def generate(seed: int, n: int = N) -> SampleSet:
    return seeded(samples.generate, seed, n)


@pytest.mark.parametrize("seed", [7, 20261125])
def test_expected_counts_match_the_normalizer(seed: int) -> None:
    sample = generate(seed)
    result = account(sample, leanplum.normalize, CTX)
    assert_counts_match(sample, result, "leanplum")
    assert_realistic_shares(sample, result)


def test_events_are_valid_and_varied() -> None:
    events = account(generate(3), leanplum.normalize, CTX).events
    for event in events:
        assert_valid_event(event, Vendor.LEANPLUM)
    types = assert_types_present(
        events,
        (
            EventType.SEND,
            EventType.DELIVERY,
            EventType.OPEN,
            EventType.CLICK,
            EventType.BOUNCE,
            EventType.UNSUBSCRIBE,
            EventType.CAMPAIGN_ENTER,
            EventType.EXPERIMENT_IMPRESSION,
            EventType.OTHER,
        ),
    )
    assert types[EventType.SEND] > types[EventType.CLICK]
    assert occurred_span_ms(events) <= 2 * 3600 * 1000
    expected_ids = {str(samples.campaign_id(c)) for c in campaigns(random.Random(0))}
    assert_campaigns_from(events, expected_ids)


def test_both_record_shapes_present() -> None:
    shapes: Counter[str] = Counter()
    for _key, value in generate(5).records:
        try:
            record: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        shapes["json" if "properties" in record else "row"] += 1
    assert shapes["json"] > shapes["row"] > 0.1 * N


def test_keys_are_vendor_event_ids() -> None:
    assert_keys_are_vendor_event_ids(generate(11), leanplum.vendor_event_id)


def test_deterministic_per_seed() -> None:
    assert_deterministic(generate, 42)
