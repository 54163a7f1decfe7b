"""Every place that names vendors agrees with the registry (crmstream/vendors.py); adding a
vendor and missing a place fails here (ARCHITECTURE.md, "Adding a sixth vendor")."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from connectors.registry import CONNECTORS
from crmdemo.generators import GENERATORS
from crmstream.topics import VENDORS as TOPIC_VENDORS
from crmstream.topics import raw_topic
from crmstream.vendors import VENDOR_NAMES, VENDORS
from processors.normalize import EVENT_IDS, NORMALIZERS, VENDOR_OF
from processors.normalize.model import Vendor

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = [spec.symbol for spec in VENDORS.values()]


def test_names_and_symbols_are_consistent() -> None:
    assert all(spec.name == name for name, spec in VENDORS.items())
    assert all(spec.symbol == spec.name.upper() for spec in VENDORS.values())
    assert all(spec.raw_topic == raw_topic(spec.name) for spec in VENDORS.values())
    assert TOPIC_VENDORS == VENDOR_NAMES


def test_every_vendor_has_a_normalizer_an_event_id_and_sample_events() -> None:
    assert list(NORMALIZERS) == list(VENDOR_NAMES)
    assert list(EVENT_IDS) == list(VENDOR_NAMES)
    assert list(GENERATORS) == list(VENDOR_NAMES)
    assert {name: v.value for name, v in VENDOR_OF.items()} == {
        spec.name: spec.symbol for spec in VENDORS.values()
    }


def test_every_vendor_has_a_connector_and_every_connector_a_vendor() -> None:
    assert {entry.vendor for entry in CONNECTORS.values()} == set(VENDOR_NAMES)
    assert all(entry.name == name for name, entry in CONNECTORS.items())


def test_the_avro_and_python_enums_hold_every_vendor_and_only_them() -> None:
    # UNKNOWN last: the reader's default for a vendor added after its schema (never written).
    assert [v.value for v in Vendor] == SYMBOLS
    for schema in ("CanonicalEvent", "CampaignStats"):
        avsc = json.loads((REPO / "schemas" / "avro" / f"{schema}.avsc").read_text())
        (vendor,) = (f for f in avsc["fields"] if f["name"] == "vendor")
        assert vendor["type"]["symbols"] == [*SYMBOLS, "UNKNOWN"], schema
        assert vendor["type"]["default"] == "UNKNOWN", schema


def test_the_helm_chart_deploys_every_connector_and_no_other() -> None:
    values = yaml.safe_load((REPO / "deploy" / "helm" / "crm-stream" / "values.yaml").read_text())
    assert set(values["connectors"]) == set(CONNECTORS)
    schema = json.loads(
        (REPO / "deploy" / "helm" / "crm-stream" / "values.schema.json").read_text()
    )
    assert set(schema["properties"]["connectors"]["properties"]) == set(CONNECTORS)
