"""Contract test: every normalizer over every record of its vendor's sample feed, and every output
checked against the Avro schema the worker writes it with (STYLE.md "Tests mirror the code").

The output records are built by the worker's own builders (``processors.records``), so this
checks what actually goes to the ``events`` and ``dead-letter`` topics, not a copy of it. Each
record is validated by fastavro against the ``.avsc`` (logical types included, strict: no field
the schema lacks) and sent through :class:`AvroSerde` both ways.

A vendor without a sample generator FAILS here rather than being skipped: an untested vendor
must not look like a passing one.
"""

from __future__ import annotations

import importlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import ValidationError, validate

from crmdemo.samples import Generator, SampleSet, campaigns
from crmstream.errors import SerdeError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import H_FORMAT, H_INGESTED_AT, H_SOURCE, H_VENDOR
from processors.normalize import NORMALIZERS, VENDOR_OF
from processors.normalize.model import (
    CanonicalEvent,
    NormalizeContext,
    Rejected,
    RejectReason,
    Skipped,
)
from processors.records import RawPosition, canonical_record, dead_letter_record

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas" / "avro"
SAMPLE_SIZE = 400
INGESTED_AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PROCESSED_AT = INGESTED_AT + 250
MAX_REPORTED = 5  # problems listed per vendor when the contract is broken


def sample_set(vendor: str) -> SampleSet:
    module_name = f"crmdemo.samples.{vendor}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        pytest.fail(f"{vendor} has a normalizer but no sample generator {module_name}")
    generate: Generator = module.generate
    return generate(random.Random(1), SAMPLE_SIZE, campaigns(random.Random(1)))


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(Settings.from_env({}))


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    """The ``.avsc`` files as written (logical types and all), parsed by fastavro."""
    return {
        name: fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))
        for name in ("CanonicalEvent", "DeadLetter")
    }


def position(vendor: str, offset: int) -> RawPosition:
    """What the worker knows of a raw record besides its bytes: as a connector publishes it."""
    return RawPosition(
        topic=f"crm.raw.{vendor}",
        partition=offset % 3,
        offset=offset,
        timestamp_ms=INGESTED_AT,
        headers={
            H_VENDOR: vendor.encode(),
            H_SOURCE: f"sample://{vendor}#{offset}".encode(),
            H_FORMAT: b"json",
            H_INGESTED_AT: str(INGESTED_AT).encode(),
        },
    )


def check(
    name: str, record: dict[str, Any], schema: Any, serde: AvroSerde, topic: str
) -> str | None:
    """None if ``record`` fits ``name``'s schema and survives the serde; else the problem."""
    try:
        validate(record, schema, raise_errors=True, strict=True)
    except ValidationError as exc:
        return f"not valid {name}: {exc}"
    try:
        decoded = serde.decode(serde.encode(name, record, topic), topic)
    except SerdeError as exc:
        return f"serde: {exc}"
    if decoded != (name, record):
        return f"round trip changed the record: {decoded} != {record}"
    return None


@pytest.mark.parametrize("vendor", sorted(NORMALIZERS))
def test_every_sample_output_fits_the_avro_schemas(
    vendor: str, serde: AvroSerde, schemas: dict[str, Any]
) -> None:
    sample = sample_set(vendor)
    assert sample.vendor == vendor
    normalize = NORMALIZERS[vendor]
    ctx = NormalizeContext(app_id=f"app-{vendor}")
    outcomes: Counter[str] = Counter()
    problems: list[str] = []

    for offset, (key, value) in enumerate(sample.records):
        outcome = normalize(value, ctx)
        pos = position(vendor, offset)
        if isinstance(outcome, CanonicalEvent):
            outcomes["event"] += 1
            if outcome.vendor is not VENDOR_OF[vendor]:
                problems.append(f"record {offset}: vendor {outcome.vendor} from {vendor}")
            record = canonical_record(outcome, pos, PROCESSED_AT)
            problem = check("CanonicalEvent", record, schemas["CanonicalEvent"], serde, "events")
        elif isinstance(outcome, Rejected):
            outcomes["reject"] += 1
            if not isinstance(outcome.reason, RejectReason):
                problems.append(f"record {offset}: reject reason {outcome.reason!r} is not §5")
            record = dead_letter_record(
                raw=value,
                raw_key=key,
                vendor=vendor,
                reason=outcome.reason.value,
                detail=outcome.detail,
                pos=pos,
                now_ms=PROCESSED_AT,
            )
            problem = check("DeadLetter", record, schemas["DeadLetter"], serde, "dead-letter")
        else:
            assert isinstance(outcome, Skipped), f"record {offset}: {outcome!r} is no Outcome"
            outcomes["skip"] += 1
            problem = None
        if problem:
            problems.append(f"record {offset}: {problem}")

    assert not problems, f"{len(problems)} of {len(sample.records)} {vendor} records:\n" + (
        "\n".join(problems[:MAX_REPORTED])
    )
    assert outcomes["event"] > 0, f"no {vendor} sample record became a canonical event"
    assert sum(outcomes.values()) == len(sample.records) >= SAMPLE_SIZE // 2


@pytest.mark.parametrize("vendor", sorted(NORMALIZERS))
def test_normalizer_outcomes_match_what_the_sample_expects(vendor: str) -> None:
    """The generator tallies its expectations while building; the normalizer must agree."""
    sample = sample_set(vendor)
    normalize = NORMALIZERS[vendor]
    ctx = NormalizeContext(app_id=f"app-{vendor}")
    event_ids: list[str] = []
    rejects: Counter[str] = Counter()
    skips = 0
    for _, value in sample.records:
        outcome = normalize(value, ctx)
        if isinstance(outcome, CanonicalEvent):
            event_ids.append(outcome.event_id)
        elif isinstance(outcome, Rejected):
            rejects[outcome.reason.value] += 1
        else:
            skips += 1
    assert len(set(event_ids)) == sample.expected_events
    assert len(event_ids) - len(set(event_ids)) == sample.expected_duplicates
    assert dict(rejects) == {k: v for k, v in sample.expected_rejects.items() if v}
    assert skips == sample.expected_skips
