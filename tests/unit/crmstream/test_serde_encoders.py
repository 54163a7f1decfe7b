"""The generated Avro encoders (:func:`crmstream.serde.compiled_encoder`) write exactly the bytes
fastavro writes, and refuse what fastavro refuses."""

from __future__ import annotations

import random
from io import BytesIO
from typing import Any

import fastavro
import pytest

from crmstream.errors import SerdeError
from crmstream.serde import (
    _MAX_CACHED_KEYS,
    _MAX_KEPT_LONGS,
    AvroSerde,
    SchemaInfo,
    compiled_encoder,
    default_schema_dir,
    load_schemas,
)
from crmstream.settings import Settings
from tests.unit.crmstream.test_serde import campaign_stats, canonical_event, dead_letter

SCHEMAS = load_schemas(default_schema_dir())


def fastavro_bytes(name: str, record: dict[str, Any]) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, SCHEMAS[name].parsed, record)
    return out.getvalue()


def generated_bytes(name: str, record: dict[str, Any]) -> bytes:
    encode = compiled_encoder(SCHEMAS[name].parsed)
    assert encode is not None, name
    return encode(record, b"")


LONGS = [
    0,
    1,
    -1,
    63,
    64,
    -64,
    -65,
    16383,
    16384,
    -16384,
    2**27 - 1,
    2**27,
    -(2**27) - 1,
    2**31,
    -(2**31),
    1_780_000_000_000,
    2**41 - 1,
    2**41,
    -(2**41) - 1,
    2**62,
    2**63 - 1,
    -(2**63),
]
TEXTS = ["", "a", "ü", "🎉 x", "\x00", "x" * 300]


def variants() -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(7)
    out: list[tuple[str, dict[str, Any]]] = []
    for n in LONGS:
        out.append(("CanonicalEvent", canonical_event(raw_offset=n, occurred_at=n)))
        out.append(("CampaignStats", {**campaign_stats(), "total": n, "unique_recipients": n}))
        out.append(("DeadLetter", {**dead_letter(), "source_offset": n, "raw_size": n}))
    # fastavro truncates a float for a long field and takes a bool as 0 or 1 (not in a union).
    out.append(("CanonicalEvent", canonical_event(occurred_at=1.5, raw_offset=-2.5)))
    out.append(("CanonicalEvent", canonical_event(raw_partition=True, schema_version=False)))
    out.append(("CampaignStats", {**campaign_stats(), "error_bound": 2, "total": 3.9}))
    for text in TEXTS:
        out.append(("CanonicalEvent", canonical_event(user_id=text, attributes={text: text})))
        out.append(("DeadLetter", {**dead_letter(), "detail": text, "headers": {}}))
    nullable = ["user_id", "device_id", "campaign_id", "message_id", "app_id", "error"]
    for _ in range(50):
        event = canonical_event(
            **{field: None for field in rng.sample(nullable, rng.randrange(len(nullable)))},
            attributes={f"k{i}": str(rng.random()) for i in range(rng.randrange(4))},
        )
        out.append(("CanonicalEvent", event))
    stats = campaign_stats()
    for field in (
        "unique_recipients",
        "unattributed",
        "hll_lg_k",
        "error_bound",
        "recipients_sketch",
    ):
        stats[field] = None
    out.append(("CampaignStats", stats))
    out.append(("CampaignStats", {**campaign_stats(), "event_type_counts": {}, "error_bound": 1}))
    # Fields with a schema default left out.
    short = {k: v for k, v in campaign_stats().items() if not k.startswith(("unique", "hll"))}
    out.append(("CampaignStats", short))
    out.append(("DeadLetter", {k: v for k, v in dead_letter().items() if k != "headers"}))
    # The variants: an array of records, full, with defaults left out, and empty.
    variant = {
        "variant_id": "B",
        "kind": "value",
        "total": 7,
        "event_type_counts": {"SEND": 4, "OPEN": 3},
        "recipients_sketch": b"\x01\x02",
        "event_type_sketches": {"SEND": b"\x03"},
    }
    control = {"variant_id": None, "kind": "control", "total": 2}
    out.append(("CampaignStats", {**campaign_stats(), "variants": [variant, control, {}]}))
    out.append(("CampaignStats", {**campaign_stats(), "variants": []}))
    return out


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_schema_of_the_project_gets_an_encoder(name: str) -> None:
    assert compiled_encoder(SCHEMAS[name].parsed) is not None


@pytest.mark.parametrize(("name", "record"), variants())
def test_the_generated_encoder_writes_fastavros_bytes(name: str, record: dict[str, Any]) -> None:
    assert generated_bytes(name, record) == fastavro_bytes(name, record)


BAD = [
    ("CanonicalEvent", canonical_event(vendor="NOT_A_VENDOR")),
    ("CanonicalEvent", canonical_event(occurred_at="yesterday")),
    ("CampaignStats", {**campaign_stats(), "unique_recipients": 1.5}),
    ("CampaignStats", {**campaign_stats(), "unique_recipients": True}),
    ("CampaignStats", {**campaign_stats(), "error_bound": True}),
    ("CampaignStats", {**campaign_stats(), "error_bound": "0.5"}),
    ("CanonicalEvent", canonical_event(user_id=42)),
    ("CanonicalEvent", canonical_event(attributes={"k": 1})),
    ("CanonicalEvent", canonical_event(raw_offset=2**63)),
    ("CanonicalEvent", {k: v for k, v in canonical_event().items() if k != "event_id"}),
    ("CampaignStats", {**campaign_stats(), "recipients_sketch": "not bytes"}),
    ("DeadLetter", {**dead_letter(), "raw": None}),
]


@pytest.mark.parametrize(("name", "record"), BAD)
def test_a_record_that_does_not_fit_is_refused_as_by_fastavro(
    name: str, record: dict[str, Any]
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - fastavro's own error types vary
        fastavro_bytes(name, record)
    with pytest.raises(SerdeError, match=f"does not fit schema {name}"):
        AvroSerde(Settings.from_env({})).encode(name, record, "t")


def test_a_schema_with_other_types_is_written_by_fastavro() -> None:
    info = SchemaInfo.from_json(
        {
            "type": "record",
            "name": "io.example.Nested",
            "fields": [
                {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
                {"name": "either", "type": ["null", "long", "string"]},
            ],
        }
    )
    assert compiled_encoder(info.parsed) is None


def test_encode_uses_the_generated_encoder_with_the_header() -> None:
    serde = AvroSerde(Settings.from_env({}))
    record = canonical_event()
    value = serde.encode("CanonicalEvent", record, "events")
    assert value == SCHEMAS["CanonicalEvent"].single_object_header + fastavro_bytes(
        "CanonicalEvent", record
    )
    assert serde.decode(value)[1] == record


def test_map_keys_past_the_cached_ones_and_repeated_ones_are_written_as_fastavro_does() -> None:
    """The generated encoders keep the encoded form of a bounded number of map keys: keys past
    the bound, and the kept ones again, are written the same."""
    encode = compiled_encoder(SCHEMAS["CanonicalEvent"].parsed)
    assert encode is not None
    many = canonical_event(attributes={f"key-{i}": str(i) for i in range(_MAX_CACHED_KEYS + 50)})
    for record in (many, many, canonical_event(attributes={"key-1": "x", "ü-new": "y"})):
        assert encode(record, b"") == fastavro_bytes("CanonicalEvent", record)
    stats = campaign_stats()
    for counts in ({"OPEN": 2**40, "SEND": 0}, {"OPEN": -1}, {"OPEN": 8191, "CLICK": 8192}):
        record = {**stats, "event_type_counts": counts, "unique_event_type_counts": counts}
        assert generated_bytes("CampaignStats", record) == fastavro_bytes("CampaignStats", record)


def test_a_map_key_that_is_not_a_string_is_refused() -> None:
    record = {**campaign_stats(), "event_type_counts": {1: 2}}
    with pytest.raises(SerdeError, match="does not fit schema CampaignStats"):
        AvroSerde(Settings.from_env({})).encode("CampaignStats", record, "t")


def test_larger_longs_written_again_and_past_the_kept_ones_are_written_as_fastavro_does() -> None:
    """The encoding of the larger longs written last is kept (timestamps repeat): the same value
    again, values past the bound (the kept ones are then dropped), negative ones and the
    limits of a long are written the same."""
    stats = campaign_stats()
    values = [1_764_000_000_000, -(2**63), 2**63 - 1, -8193, 8192, 2**42, 2**42 - 1]
    values += [1_764_000_000_000 + i * 60_000 for i in range(_MAX_KEPT_LONGS + 10)]
    for value in [*values, *values[:20]]:
        record = {**stats, "window_start": value, "updated_at": value, "total": value}
        assert generated_bytes("CampaignStats", record) == fastavro_bytes("CampaignStats", record)
    with pytest.raises(SerdeError):
        AvroSerde(Settings.from_env({})).encode(
            "CampaignStats", {**stats, "window_start": 2**63}, "t"
        )
