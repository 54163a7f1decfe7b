"""The sample feeds laid out as each vendor's bucket: every record comes back out, unchanged in
meaning, through the same reader the connectors use."""

from __future__ import annotations

import importlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.feeds import FEEDS
from connectors.objectstore.reader import ObjectReader
from connectors.objectstore.stores import LocalStore
from crmdemo.samplefeeds import leanplum_parquet_row, write_sample_feed
from crmdemo.samples import SampleSet, campaigns
from processors.normalize import EVENT_IDS

FEED_OF = {"leanplum": "leanplum", "flarelane": "flarelane", "pinpoint": "pinpoint-firehose"}


def _sample(vendor: str, n: int = 600) -> SampleSet:
    rng = random.Random(11)
    module = importlib.import_module(f"crmdemo.samples.{vendor}")
    sample: SampleSet = module.generate(rng, n, campaigns(rng))
    return sample


def _is_json_object(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


@pytest.mark.parametrize("vendor", sorted(FEED_OF))
def test_every_sample_record_survives_the_layout(vendor: str, tmp_path: Path) -> None:
    sample = _sample(vendor)
    profile = FEEDS[FEED_OF[vendor]]
    files = write_sample_feed(FEED_OF[vendor], sample, tmp_path, random.Random(3))
    assert files and all(f.is_file() for f in files)

    store = LocalStore(tmp_path)
    key_of = EVENT_IDS[profile.vendor]
    keys: Counter[Any] = Counter()
    raw_lines: Counter[bytes] = Counter()
    formats: Counter[str] = Counter()
    for obj in store.list_objects(""):
        assert profile.day_of(obj.key) is not None, f"{obj.key} is outside the {vendor} layout"
        reader = ObjectReader(store, obj)
        for row in reader:
            if isinstance(row.doc, dict):
                keys[key_of(row.doc)] += 1
            else:
                raw_lines[row.value] += 1
        formats[reader.fmt.split("+")[0] + ("+gzip" if "gzip" in reader.fmt else "")] += 1

    expected_keys = Counter(
        key_of(orjson.loads(v)) for _, v in sample.records if _is_json_object(v)
    )
    expected_raw = Counter(v.strip() for _, v in sample.records if not _is_json_object(v))
    assert keys == expected_keys
    assert raw_lines == expected_raw
    assert sum(keys.values()) + sum(raw_lines.values()) == len(sample.records)
    expected_formats = {
        "leanplum": {"json-lines", "json-array", "json-lines+gzip", "parquet"},
        "flarelane": {"json-lines", "json-lines+gzip", "parquet"},
        "pinpoint": {"json-lines", "json-lines+gzip"},
    }[vendor]
    assert set(formats) == expected_formats


def test_leanplum_parquet_row_follows_the_avro_record() -> None:
    doc = {
        "event_id": "e1",
        "name": "(Leanplum) Email Send",
        "properties": {
            "user_id": "",
            "device_id": "d",
            "time": "2024-03-05 10:00:00.250",
            "name": "Welcome",
            "message_id": 7,
            "event_type": "Send",
            "channel": "Email",
            "campaign_id": 0,
            "campaign_name": "",
            "email_id": "m1",
        },
    }
    row = leanplum_parquet_row(doc)
    assert row is not None
    assert row["time"] == 1709632800250 and row["schema_version"] == 1
    assert row["Message"]["id"] == 7 and row["Message"]["email_id"] == "m1"
    assert row["Campaign"] is None and row["AbTest"] is None
    # A field the Avro record has no place for, or the unset time, keeps the record JSON.
    assert leanplum_parquet_row({**doc, "extra": 1}) is None
    unset = {**doc, "properties": {**doc["properties"], "time": "1970-01-01 00:00:00.000"}}
    assert leanplum_parquet_row(unset) is None


def test_unknown_vendor_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sample feed layout for 'segment'"):
        write_sample_feed("segment", SampleSet(vendor="segment"), tmp_path, random.Random(1))


def test_leanplum_rows_written_as_parquet_normalize_like_their_json() -> None:
    """The Parquet shape must not change an event (issue 3 part 5): same canonical output."""
    from processors.normalize import leanplum
    from processors.normalize.model import NormalizeContext

    ctx = NormalizeContext(app_id="app-1")
    compared = 0
    for _, value in _sample("leanplum", 800).records:
        doc = orjson.loads(value) if _is_json_object(value) else None
        row = leanplum_parquet_row(doc) if doc and "properties" in doc else None
        if row is None:
            continue
        assert leanplum.normalize(orjson.dumps(row), ctx) == leanplum.normalize(value, ctx)
        compared += 1
    assert compared > 400


def test_flarelane_parquet_rows_normalize_like_their_json(tmp_path: Path) -> None:
    """FlareLane Parquet rows carry every column (null when the record had none): the
    normalizer must read them as the JSON records they came from."""
    from processors.normalize import flarelane
    from processors.normalize.model import NormalizeContext

    sample = _sample("flarelane", 500)
    write_sample_feed("flarelane", sample, tmp_path, random.Random(2))
    store = LocalStore(tmp_path)
    originals = {
        orjson.loads(v)["id"]: v
        for _, v in sample.records
        if _is_json_object(v) and isinstance(orjson.loads(v).get("id"), str)
    }
    ctx = NormalizeContext()
    compared = 0
    for obj in store.list_objects(""):
        reader = ObjectReader(store, obj)
        for row in reader:
            if reader.fmt == "parquet":
                expected = flarelane.normalize(originals[row.doc["id"]], ctx)
                assert flarelane.normalize(row.value, ctx) == expected
                compared += 1
    assert compared > 100
