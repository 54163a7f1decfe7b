"""The checks every vendor's sample set must pass, shared by the ``test_samples_<vendor>`` files.

A :class:`SampleSet` states what a correct pipeline does with it: how many events, duplicates,
rejects (by reason) and skips. :func:`account` runs the vendor's normalizer and the dedupe of
TAXONOMY §5 over it; the ``assert_*`` helpers compare that with the stated outcome and check
that every event is well formed. What only one vendor promises (which event types and channels
appear, how its duplicates look) stays in that vendor's test file.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from crmdemo.samples import Campaign, SampleSet, campaigns
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Outcome,
    Rejected,
    Skipped,
    Vendor,
)

N = 2000
REJECT_REASONS = frozenset(
    {"invalid_json", "missing_event_id", "missing_event_type", "invalid_timestamp"}
)

Normalize = Callable[[bytes, NormalizeContext], Outcome]
Generate = Callable[[random.Random, int, list[Campaign]], SampleSet]


def seeded(generate: Generate, seed: int, n: int = N) -> SampleSet:
    """The sample set of one seed: the campaigns and the records are both drawn from it."""
    rng = random.Random(seed)
    return generate(random.Random(rng.random()), n, campaigns(rng))


@dataclass
class Accounting:
    """What the normalizer and the dedupe made of a sample set."""

    events: list[CanonicalEvent] = field(default_factory=list)  # first of each event_id
    duplicates: int = 0
    rejects: Counter[str] = field(default_factory=Counter)  # by reason
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def skips(self) -> int:
        return len(self.skipped)


def account(sample: SampleSet, normalize: Normalize, ctx: NormalizeContext) -> Accounting:
    """Normalize every record and dedupe by event_id, first seen wins (TAXONOMY §5)."""
    result = Accounting()
    seen: set[str] = set()
    for _key, value in sample.records:
        outcome = normalize(value, ctx)
        if isinstance(outcome, CanonicalEvent):
            if outcome.event_id in seen:
                result.duplicates += 1
            else:
                seen.add(outcome.event_id)
                result.events.append(outcome)
        elif isinstance(outcome, Rejected):
            result.rejects[outcome.reason.value] += 1
        else:
            assert isinstance(outcome, Skipped)
            result.skipped.append(outcome)
    return result


def assert_counts_match(sample: SampleSet, accounting: Accounting, vendor: str, n: int = N) -> None:
    """The stated outcome is exactly what happened, and every reject reason is present."""
    assert sample.vendor == vendor
    assert len(sample.records) == n
    assert len(accounting.events) == sample.expected_events
    assert accounting.duplicates == sample.expected_duplicates
    assert dict(accounting.rejects) == {k: v for k, v in sample.expected_rejects.items() if v}
    assert accounting.skips == sample.expected_skips
    assert set(sample.expected_rejects) == REJECT_REASONS
    assert all(count > 0 for count in sample.expected_rejects.values())


def assert_realistic_shares(sample: SampleSet, accounting: Accounting, n: int = N) -> None:
    """No skips, about 5 % duplicates and about 1 % malformed records."""
    assert sample.expected_skips == 0
    assert 0.04 * n <= accounting.duplicates <= 0.06 * n
    assert sum(accounting.rejects.values()) <= 0.015 * n


def assert_valid_event(event: CanonicalEvent, vendor: Vendor) -> None:
    """Enums are enum members, the id is ``<VENDOR>:<vendor event id>``, attributes strings."""
    assert event.vendor is vendor
    assert EventType(event.event_type.value) is event.event_type
    assert Channel(event.channel.value) is event.channel
    assert event.event_id == f"{vendor.value}:{event.vendor_event_id}"
    assert all(isinstance(v, str) for v in event.attributes.values())


def assert_types_present(
    events: Iterable[CanonicalEvent], wanted: Iterable[EventType]
) -> Counter[EventType]:
    """Each wanted event type occurs at least once; returns the count of every type."""
    types = Counter(e.event_type for e in events)
    for event_type in wanted:
        assert types[event_type] > 0, event_type
    return types


def occurred_span_ms(events: Iterable[CanonicalEvent]) -> int:
    occurred = [e.occurred_at for e in events]
    return max(occurred) - min(occurred)


def assert_campaigns_from(events: Iterable[CanonicalEvent], known: set[str]) -> None:
    """Campaign ids come from the shared campaigns, and many of them are used."""
    campaign_ids = {e.campaign_id for e in events if e.campaign_id}
    assert campaign_ids <= known and len(campaign_ids) > 20


def assert_keys_are_vendor_event_ids(
    sample: SampleSet, vendor_event_id: Callable[[Any], str | None]
) -> None:
    """A record's key is its vendor event id; a record that is not JSON has none."""
    for key, value in sample.records:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            assert key is None
            continue
        event_id = vendor_event_id(record)
        assert key == (event_id.encode() if event_id is not None else None)


def assert_deterministic(make: Callable[[int], SampleSet], seed: int) -> None:
    """The same seed gives the same records, the next seed others."""
    assert make(seed).records == make(seed).records
    assert make(seed).records != make(seed + 1).records


def assert_adds_up(sample: SampleSet) -> None:
    """Every record is counted once: as an event, a duplicate, a reject or a skip."""
    accounted = (
        sample.expected_events
        + sample.expected_duplicates
        + sum(sample.expected_rejects.values())
        + sample.expected_skips
    )
    assert accounted == len(sample.records)
