"""What one raw batch adds to the worker's metrics (processors/raw.py ``_count_batch``): every
record and event counted once, each histogram observation where one ``observe`` per record put
it."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from processors.raw import Tally, _count_batch


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_counts_each_record_and_event_once() -> None:
    vendor, other = "count-test-a", "count-test-b"
    tally = Tally(
        records_in={vendor: 3, other: 1},
        duplicates={vendor: 1},
        out={(vendor, "open"): 2},
        # Acknowledged at 10,000 ms: 0.05 s, 0.5 s and (an ingest time after it) 0 s.
        ingested=[(vendor, 9_950), (vendor, 9_500), (vendor, 10_100)],
    )
    names = (
        ("crm_worker_records_in_total", {"vendor": vendor}),
        ("crm_worker_records_in_total", {"vendor": other}),
        ("crm_worker_duplicates_total", {"vendor": vendor}),
        ("crm_worker_events_out_total", {"vendor": vendor, "event_type": "open"}),
        ("crm_worker_end_to_end_seconds_count", {"vendor": vendor}),
        ("crm_worker_end_to_end_seconds_count", {"vendor": other}),
        ("crm_worker_end_to_end_seconds_sum", {"vendor": vendor}),
        ("crm_worker_end_to_end_seconds_bucket", {"vendor": vendor, "le": "0.01"}),
        ("crm_worker_end_to_end_seconds_bucket", {"vendor": vendor, "le": "0.05"}),
        ("crm_worker_end_to_end_seconds_bucket", {"vendor": vendor, "le": "0.25"}),
        ("crm_worker_end_to_end_seconds_bucket", {"vendor": vendor, "le": "0.5"}),
        ("crm_worker_processing_seconds_count", {"vendor": vendor}),
        ("crm_worker_processing_seconds_count", {"vendor": other}),
        ("crm_worker_processing_seconds_bucket", {"vendor": vendor, "le": "+Inf"}),
    )
    for _ in range(2):  # the second batch through the children cached by the first
        before = [_value(n, **labels) for n, labels in names]
        _count_batch(tally, 10_000, time.perf_counter())
        added = [_value(n, **labels) - b for (n, labels), b in zip(names, before, strict=True)]
        assert added[:4] == [3, 1, 1, 2]
        assert added[4:6] == [3, 0]  # a vendor without events: its series, nothing observed
        assert abs(added[6] - 0.55) < 1e-9
        assert added[7:11] == [1, 2, 2, 3]  # cumulative buckets
        assert added[11:] == [3, 1, 3]
    assert REGISTRY.get_sample_value("crm_worker_end_to_end_seconds_count", {"vendor": other}) == 0
