"""The benchmark's generator against the real normalizers: what it promises (distinct canonical
events, duplicates, malformed records, keys) must be what the pipeline will find, or the
benchmark's agreement check would compare against a wrong number."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.generate import MALFORMED_KINDS, generate
from crmstream.topics import VENDORS
from processors.normalize import NORMALIZERS, CanonicalEvent, NormalizeContext, Rejected


@pytest.mark.parametrize("n", [500, 12_345])
def test_expected_outcome_matches_the_normalizers(n: int) -> None:
    data = generate(n, seed=n, campaigns=300)
    assert data.total == n
    assert set(data.records) == set(VENDORS)
    assert max(data.per_vendor().values()) - min(data.per_vendor().values()) <= 1

    ctx = NormalizeContext()
    seen: set[str] = set()
    duplicates = 0
    rejects: Counter[str] = Counter()
    campaigns: set[tuple[str, str | None]] = set()
    for vendor, records in data.records.items():
        for key, value in records:
            outcome = NORMALIZERS[vendor](value, ctx)
            if isinstance(outcome, Rejected):
                rejects[outcome.reason.value] += 1
                continue
            assert isinstance(outcome, CanonicalEvent), (vendor, value[:200])
            # Raw records are keyed by the vendor event id, as every connector does: the
            # worker's dedupe relies on it.
            assert key == outcome.vendor_event_id.encode(), vendor
            if outcome.event_id in seen:
                duplicates += 1
            else:
                seen.add(outcome.event_id)
                campaigns.add((vendor, outcome.campaign_id))
    assert len(seen) == data.expected_events
    assert duplicates == data.duplicates
    assert sum(rejects.values()) == data.malformed
    if n > 10_000:
        assert set(rejects) == set(MALFORMED_KINDS)
        assert 0.04 < data.duplicates / n < 0.06
        assert 0.004 < data.malformed / n < 0.006
        assert len({c for _, c in campaigns}) > 250


def test_duplicates_repeat_earlier_records_byte_for_byte() -> None:
    data = generate(5000, seed=7)
    for records in data.records.values():
        firsts: set[tuple[bytes | None, bytes]] = set()
        for record in records:
            if record in firsts:
                assert record[0] is not None
            firsts.add(record)


def test_id_salt_gives_disjoint_ids_and_seed_repeats() -> None:
    a = generate(1000, seed=3)
    assert generate(1000, seed=3).records == a.records
    b = generate(1000, seed=3, id_salt=1)
    keys_a = {k for r in a.records.values() for k, _ in r if k}
    keys_b = {k for r in b.records.values() for k, _ in r if k}
    assert not keys_a & keys_b


def test_too_few_events_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        generate(3)


@pytest.mark.parametrize("span_ms", [10_000, 3_600_000])
def test_occurred_times_span_the_given_time_before_the_base(span_ms: int) -> None:
    """A latency phase's records occur over its own length (a live feed), the preload's over an
    hour: every event's occurred_at lies in the span, and the events reach both of its ends."""
    base = 1_800_000_000_000
    data = generate(2000, seed=5, base_ms=base, span_ms=span_ms, malformed_rate=0.0)
    ctx = NormalizeContext()
    times = []
    for vendor, records in data.records.items():
        for _, value in records:
            outcome = NORMALIZERS[vendor](value, ctx)
            assert isinstance(outcome, CanonicalEvent), vendor
            times.append(outcome.occurred_at)
    assert base - span_ms <= min(times) < base - span_ms * 0.9
    # Pinpoint's occurred_at is its arrival_timestamp, generated up to 0.9 s after the event.
    assert base - span_ms * 0.1 < max(times) <= base + 900
