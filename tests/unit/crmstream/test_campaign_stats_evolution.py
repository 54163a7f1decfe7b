"""CampaignStats version 2 (unique recipients) read by a version 1 reader, and version 1 records
read by version 2: the compatible evolution of issue 15. The v1 schema is the one released
before (tests/unit/crmstream/schemas/CampaignStats.v1.avsc, byte for byte)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasketches as ds

from crmstream.serde import AvroSerde, default_schema_dir
from crmstream.settings import Settings
from processors.records import WindowCounts, stats_record

V1 = Path(__file__).parent / "schemas" / "CampaignStats.v1.avsc"
TOPIC = "crm.campaign-stats"


def _v1_serde(tmp_path: Path) -> AvroSerde:
    shutil.copy(V1, tmp_path / "CampaignStats.avsc")
    return AvroSerde(Settings.from_env({}), schema_directory=tmp_path)


def _v2_record() -> dict[str, object]:
    counts = WindowCounts(lg_k=12)
    for offset, who in enumerate(["u:1", "u:2", "d:3", None, "u:1"]):
        counts.apply("raw/0", offset, "OPEN", "PUSH", who)
    counts.named((1, "Spring sale"))
    return stats_record("PINPOINT|app|c1", "1m", 60_000, 60, counts, 123_000)


def test_a_v1_reader_reads_v2_records_without_the_new_fields(tmp_path: Path) -> None:
    new = AvroSerde(Settings.from_env({}))
    data = new.encode("CampaignStats", _v2_record(), TOPIC)
    old = _v1_serde(tmp_path)
    old.add_writer_schema((default_schema_dir() / "CampaignStats.avsc").read_text())
    name, record = old.decode(data, TOPIC)
    assert name == "CampaignStats"
    assert record == {
        "vendor": "PINPOINT",
        "app_id": "app",
        "campaign_id": "c1",
        "window": "1m",
        "window_start": 60_000,
        "window_end": 120_000,
        "total": 5,
        "event_type_counts": {"OPEN": 5},
        "channel_counts": {"PUSH": 5},
        "updated_at": 123_000,
        "schema_version": 3,
    }


def test_a_v2_reader_reads_v1_records_with_the_defaults(tmp_path: Path) -> None:
    old_record = {k: v for k, v in _v2_record().items() if k in {f for f in _v1_fields()}} | {
        "schema_version": 1
    }
    data = _v1_serde(tmp_path).encode("CampaignStats", old_record, TOPIC)
    new = AvroSerde(Settings.from_env({}))
    new.add_writer_schema(V1.read_text())
    _, record = new.decode(data, TOPIC)
    assert record == old_record | {
        "campaign_name": None,
        "unique_recipients": None,
        "unique_event_type_counts": {},
        "unattributed": None,
        "hll_lg_k": None,
        "error_bound": None,
        "recipients_sketch": None,
        "event_type_sketches": {},
        "variants": [],
    }


def test_v2_records_carry_sketches_a_consumer_can_merge() -> None:
    new = AvroSerde(Settings.from_env({}))
    _, record = new.decode(new.encode("CampaignStats", _v2_record(), TOPIC), TOPIC)
    assert record["unique_recipients"] == 3 and record["unattributed"] == 1
    assert record["campaign_name"] == "Spring sale"
    sketch = record["recipients_sketch"]
    assert isinstance(sketch, bytes)
    assert round(ds.hll_sketch.deserialize(sketch).get_estimate()) == 3


def _v1_fields() -> set[str]:
    return {f["name"] for f in json.loads(V1.read_text())["fields"]}
