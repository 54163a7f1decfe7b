"""AvroSerde: both wire formats, fingerprints checked against an independent implementation of the
Avro specification, schema evolution, and clear errors for bytes that are not ours.

The Schema Registry here is :class:`RegistryDouble`, a TEST DOUBLE of the Confluent Schema
Registry REST API (two endpoints, in memory, on 127.0.0.1). It stands in for the registry, not for
Kafka: no test here talks to a broker.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro
import pytest

from crmstream.errors import ConfigError, SerdeError
from crmstream.serde import AvroSerde, SchemaInfo, default_schema_dir, load_schemas, schema_dir
from crmstream.settings import Settings
from processors.normalize.model import Channel, EventType, Vendor

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas" / "avro"
TOPIC = "crm.events"

# --- an independent implementation of the Avro specification's fingerprinting ----------------
# "Schema Fingerprints" (CRC-64-AVRO) and "Parsing Canonical Form for Schemas", written from the
# specification text, so that the serde (which uses fastavro's) is checked against something
# it does not share code with.

_EMPTY64 = 0xC15D213AA4D7A795
_FP_TABLE: list[int] = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY64 & -(_fp & 1))
    _FP_TABLE.append(_fp)

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def crc64_avro(data: bytes) -> int:
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def canonical_form(schema: Any, seen: set[str] | None = None, namespace: str | None = None) -> str:
    """[PRIMITIVES] [FULLNAMES] [STRIP] [ORDER] [STRINGS] [WHITESPACE] of the specification."""
    seen = set() if seen is None else seen

    def fullname(name: str, space: str | None) -> str:
        return name if "." in name or not space else f"{space}.{name}"

    if isinstance(schema, str):
        return json.dumps(schema if schema in _PRIMITIVES else fullname(schema, namespace))
    if isinstance(schema, list):
        return "[" + ",".join(canonical_form(s, seen, namespace) for s in schema) + "]"
    kind = schema["type"]
    if kind in _PRIMITIVES:
        return json.dumps(kind)
    if kind == "array":
        return '{"type":"array","items":' + canonical_form(schema["items"], seen, namespace) + "}"
    if kind == "map":
        return '{"type":"map","values":' + canonical_form(schema["values"], seen, namespace) + "}"
    full = fullname(schema["name"], schema.get("namespace", namespace))
    if full in seen:
        return json.dumps(full)
    seen.add(full)
    inner = full.rsplit(".", 1)[0] if "." in full else None
    parts = [f'"name":{json.dumps(full)}', f'"type":"{kind}"']
    if kind == "record":
        fields = [
            '{"name":' + json.dumps(f["name"]) + ',"type":' + canonical_form(f["type"], seen, inner)
            for f in schema["fields"]
        ]
        parts.append('"fields":[' + "},".join(fields) + ("}" if fields else "") + "]")
    elif kind == "enum":
        parts.append('"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")))
    elif kind == "fixed":
        parts.append(f'"size":{int(schema["size"])}')
    return "{" + ",".join(parts) + "}"


def signed(value: int) -> int:
    return struct.unpack("<q", value.to_bytes(8, "little"))[0]


# Published test vectors: Apache Avro share/test/data/schema-tests.txt (signed 64-bit values).
AVRO_SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    (
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
]


def test_independent_crc64_matches_the_avro_spec_vectors() -> None:
    for text, expected in AVRO_SPEC_VECTORS:
        assert signed(crc64_avro(text.encode())) == expected, text


def test_schema_info_fingerprint_of_a_spec_vector_record() -> None:
    info = SchemaInfo.from_json({"type": "record", "name": "foo", "fields": [
        {"name": "f1", "type": "boolean", "doc": "docs are not part of the canonical form"},
    ]})  # fmt: skip
    assert (
        info.canonical == '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}'
    )
    assert info.fingerprint == struct.pack("<q", 7843277075252814651)


# --- sample records -----------------------------------------------------------------------------


def canonical_event(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "AIRSHIP:ff76bb0b-0b3d-4f3b-a1b1-1234567890ab",
        "vendor": "AIRSHIP",
        "vendor_event_id": "ff76bb0b-0b3d-4f3b-a1b1-1234567890ab",
        "vendor_event_type": "IN_APP_MESSAGE_RESOLUTION",
        "event_type": "DISMISS",
        "channel": "IN_APP",
        "occurred_at": 1_732_550_400_123,
        "user_id": "user-ü-42",
        "device_id": "c8d7b6a5-0000-4000-8000-000000000001",
        "campaign_id": "9007199254740993",  # > 2**53: must survive as an exact string
        "campaign_name": "Black Friday 🎉",
        "message_id": "push-1",
        "message_name": None,
        "experiment_id": None,
        "variant_id": None,
        "link_url": None,
        "error": None,
        "app_id": "app-1",
        "attributes": {"resolution_type": "TIMED_OUT", "message_instance_id": "i-1"},
        "ingested_at": 1_732_550_401_000,
        "processed_at": 1_732_550_401_050,
        "source_position": "-1099401623",
        "raw_topic": "crm.raw.airship",
        "raw_partition": 3,
        "raw_offset": 2**40 + 7,
        "schema_version": 1,
    }
    record.update(overrides)
    return record


def campaign_stats() -> dict[str, Any]:
    return {
        "vendor": "PINPOINT",
        "app_id": None,
        "campaign_id": "c-17",
        "window": "1m",
        "window_start": 1_732_550_400_000,
        "window_end": 1_732_550_460_000,
        "total": 12,
        "event_type_counts": {"SEND": 10, "OPEN": 2},
        "channel_counts": {"EMAIL": 12},
        "updated_at": 1_732_550_461_000,
        "campaign_name": "Black Friday",
        "unique_recipients": 9,
        "unique_event_type_counts": {"SEND": 9, "OPEN": 2},
        "unattributed": 1,
        "hll_lg_k": 12,
        "error_bound": 0.0162,
        "recipients_sketch": b"\x02\x01\x07\x0c",
        "event_type_sketches": {"SEND": b"\x02\x01\x07\x0c", "OPEN": b"\x02"},
        "variants": [
            {
                "variant_id": "0",
                "kind": "value",
                "total": 10,
                "event_type_counts": {"SEND": 8, "OPEN": 2},
                "recipients_sketch": b"\x02\x01",
                "event_type_sketches": {"SEND": b"\x02"},
            },
            {
                "variant_id": None,
                "kind": "control",
                "total": 2,
                "event_type_counts": {"CONTROL": 2},
                "recipients_sketch": None,
                "event_type_sketches": {},
            },
        ],
        "schema_version": 3,
    }


def dead_letter() -> dict[str, Any]:
    return {
        "raw": b'{"id": "x", "occurred": "2024-13-45"}\xff\x00 not utf-8',
        "raw_size": None,
        "raw_key": None,
        "vendor": "airship",
        "reason": "invalid_timestamp",
        "detail": "occurred: month must be in 1..12",
        "source_topic": "crm.raw.airship",
        "source_partition": 0,
        "source_offset": 99,
        "source_position": "1000001778910",
        "headers": {"vendor": "airship", "format": "ndjson"},
        "dead_lettered_at": 1_732_550_402_000,
        "schema_version": 1,
    }


SAMPLES = {
    "CanonicalEvent": canonical_event(),
    "CampaignStats": campaign_stats(),
    "DeadLetter": dead_letter(),
}


# --- the Schema Registry test double -------------------------------------------------------------


class RegistryDouble:
    """TEST DOUBLE of the Confluent Schema Registry: ``POST /subjects/{s}/versions`` and
    ``GET /schemas/ids/{id}``, in memory, on 127.0.0.1. Identical schema text gets the same id,
    as the real registry does. With ``auth`` set, other credentials get 401."""

    def __init__(self, auth: str = "") -> None:
        self.auth = auth
        self.schemas: list[str] = []  # id - 1 -> schema text
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if not double.auth:
                    return True
                expected = "Basic " + base64.b64encode(double.auth.encode()).decode()
                if self.headers.get("Authorization") == expected:
                    return True
                self._reply(401, {"error_code": 401, "message": "Unauthorized"})
                return False

            def do_POST(self) -> None:
                double.requests.append(("POST", self.path))
                if not self._authorized():
                    return
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    self._reply(404, {"error_code": 404, "message": "Not found"})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["schema"]
                if text not in double.schemas:
                    double.schemas.append(text)
                schema_id = double.schemas.index(text) + 1
                versions = double.subjects.setdefault(parts[1], [])
                if schema_id not in versions:
                    versions.append(schema_id)
                self._reply(200, {"id": schema_id})

            def do_GET(self) -> None:
                double.requests.append(("GET", self.path))
                if not self._authorized():
                    return
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                    index = int(parts[2]) - 1
                    if 0 <= index < len(double.schemas):
                        self._reply(200, {"schema": double.schemas[index]})
                        return
                    self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                    return
                self._reply(404, {"error_code": 404, "message": "Not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def add(self, subject: str, schema: dict[str, Any] | str) -> int:
        """Register a schema directly, as another (e.g. newer) producer would."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        self.schemas.append(text)
        self.subjects.setdefault(subject, []).append(len(self.schemas))
        return len(self.schemas)

    def __enter__(self) -> RegistryDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry() -> Iterator[RegistryDouble]:
    with RegistryDouble(auth="svc-crm:s3cr3t:with-colon") as double:
        yield double


def registry_settings(double: RegistryDouble) -> Settings:
    return Settings.from_env(
        {"CRM_SCHEMA_REGISTRY_URL": double.url, "CRM_SCHEMA_REGISTRY_AUTH": double.auth}
    )


@pytest.fixture
def serde() -> AvroSerde:
    return AvroSerde(Settings.from_env({}))


def avsc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return loaded


def body_of(name: str, record: dict[str, Any]) -> bytes:
    """The Avro binary body, written by fastavro straight from the .avsc (no serde code)."""
    out = BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(avsc(name)), record)
    return out.getvalue()


# --- the schemas themselves ---------------------------------------------------------------------


def test_schema_dir_is_the_repository_one_unless_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CRM_SCHEMA_DIR", raising=False)
    assert schema_dir() == default_schema_dir() == SCHEMA_DIR
    monkeypatch.setenv("CRM_SCHEMA_DIR", str(tmp_path))
    assert schema_dir() == tmp_path


def test_crm_schema_dir_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "DeadLetter.avsc", tmp_path / "DeadLetter.avsc")
    monkeypatch.setenv("CRM_SCHEMA_DIR", str(tmp_path))
    only_dead_letters = AvroSerde(Settings.from_env({}))
    assert set(only_dead_letters.schemas) == {"DeadLetter"}
    with pytest.raises(SerdeError, match="unknown schema 'CanonicalEvent'"):
        only_dead_letters.encode("CanonicalEvent", canonical_event(), TOPIC)


def test_bad_schema_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CRM_SCHEMA_DIR"):
        load_schemas(tmp_path / "missing")
    (tmp_path / "Wrong.avsc").write_text(json.dumps(avsc("DeadLetter")))
    with pytest.raises(ConfigError, match="defines DeadLetter, not Wrong"):
        load_schemas(tmp_path)


def test_canonical_event_fields_follow_taxonomy_and_model() -> None:
    from processors.normalize.model import make

    names = [f["name"] for f in avsc("CanonicalEvent")["fields"]]
    model_fields = list(
        make(Vendor.SEGMENT, "m-1", vendor_event_type="Email Opened", event_type=EventType.OPEN,
             channel=Channel.EMAIL, occurred_at=0).to_record()
    )  # fmt: skip
    pipeline = ["ingested_at", "processed_at", "source_position", "raw_topic", "raw_partition",
                "raw_offset", "schema_version"]  # fmt: skip
    assert names == model_fields + pipeline
    assert all(f.get("doc") for f in avsc("CanonicalEvent")["fields"])


def test_enums_are_the_python_enums_with_forward_compatible_defaults() -> None:
    types = {f["name"]: f["type"] for f in avsc("CanonicalEvent")["fields"]}
    assert types["event_type"]["symbols"] == [e.value for e in EventType]
    assert types["event_type"]["default"] == "OTHER"
    assert types["channel"]["symbols"] == [c.value for c in Channel]
    assert types["channel"]["default"] == "UNKNOWN"
    # UNKNOWN is never written; as the default it keeps a newer vendor readable without
    # crediting it to one of the five real ones.
    assert types["vendor"]["symbols"] == [*(v.value for v in Vendor), "UNKNOWN"]
    assert types["vendor"]["default"] == "UNKNOWN"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_field_is_documented_and_namespaced(name: str) -> None:
    schema = avsc(name)
    assert schema["namespace"] == "io.crmstream"
    assert all(f.get("doc") for f in schema["fields"])
    assert schema["fields"][-1] == {
        "name": "schema_version",
        "type": "int",
        "default": 1,
        "doc": schema["fields"][-1]["doc"],
    }


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_fingerprints_match_the_independent_implementation(serde: AvroSerde, name: str) -> None:
    info = serde.schema(name)
    assert info.canonical == canonical_form(avsc(name))
    expected = crc64_avro(canonical_form(avsc(name)).encode()).to_bytes(8, "little")
    assert info.fingerprint == expected
    assert info.single_object_header == b"\xc3\x01" + expected


# --- single-object encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_single_object_round_trip(serde: AvroSerde, name: str) -> None:
    record = SAMPLES[name]
    data = serde.encode(name, record, TOPIC)
    fp = crc64_avro(canonical_form(avsc(name)).encode()).to_bytes(8, "little")
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fp
    assert data[10:] == body_of(name, record)
    assert serde.decode(data) == (name, record)
    # Another process (another serde instance) reads it too: nothing lives only in memory.
    assert AvroSerde(Settings.from_env({})).decode(data, TOPIC) == (name, record)


def test_defaults_fill_left_out_fields(serde: AvroSerde) -> None:
    record = canonical_event()
    for optional in ("schema_version", "attributes", "user_id", "error"):
        del record[optional]
    _, decoded = serde.decode(serde.encode("CanonicalEvent", record, TOPIC))
    assert decoded["schema_version"] == 1
    assert decoded["attributes"] == {}
    assert decoded["user_id"] is None and decoded["error"] is None


def test_timestamps_stay_epoch_millis(serde: AvroSerde) -> None:
    _, decoded = serde.decode(serde.encode("CanonicalEvent", canonical_event(), TOPIC))
    assert decoded["occurred_at"] == 1_732_550_400_123
    assert isinstance(decoded["processed_at"], int)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_type": "REPLY"}, "REPLY"),
        ({"occurred_at": "2024-11-25T00:00:00Z"}, "occurred_at"),
        ({"event_id": None}, "CanonicalEvent"),
        ({"raw_partition": "3"}, "CanonicalEvent"),
        ({"attributes": {"retries": 3}}, "CanonicalEvent"),
    ],
)
def test_record_that_does_not_fit_is_a_serde_error(
    serde: AvroSerde, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(SerdeError, match=message):
        serde.encode("CanonicalEvent", canonical_event(**change), TOPIC)


def test_missing_required_field_is_a_serde_error(serde: AvroSerde) -> None:
    record = canonical_event()
    del record["raw_topic"]
    with pytest.raises(SerdeError, match="raw_topic"):
        serde.encode("CanonicalEvent", record, TOPIC)


def test_unknown_schema_name(serde: AvroSerde) -> None:
    with pytest.raises(SerdeError, match="unknown schema 'Nope'"):
        serde.encode("Nope", {}, TOPIC)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'{"id": "json, not avro"}',
        b"\xc3",
        b"\xc3\x01\x00\x01",  # truncated fingerprint
        b"\xc3\x01" + b"\x00" * 8 + b"\x02",  # unknown fingerprint
        b"\x00\x00\x00",  # too short for a Confluent header
        b"\xff" * 32,
    ],
)
def test_garbage_is_a_serde_error(serde: AvroSerde, data: bytes) -> None:
    with pytest.raises(SerdeError):
        serde.decode(data)


def test_truncated_and_padded_bodies_are_serde_errors(serde: AvroSerde) -> None:
    data = serde.encode("CanonicalEvent", canonical_event(), TOPIC)
    with pytest.raises(SerdeError, match="cannot decode CanonicalEvent"):
        serde.decode(data[:-30])
    with pytest.raises(SerdeError, match="1 bytes left"):
        serde.decode(data + b"\x00")


def test_confluent_bytes_without_registry_name_the_setting(serde: AvroSerde) -> None:
    with pytest.raises(SerdeError, match="CRM_SCHEMA_REGISTRY_URL"):
        serde.decode(b"\x00\x00\x00\x00\x07" + body_of("DeadLetter", dead_letter()), "crm.dlq")


# --- schema evolution ---------------------------------------------------------------------------


def evolved_canonical_event() -> dict[str, Any]:
    """A newer CanonicalEvent: one more EventType, one more Channel, one more field."""
    schema = copy.deepcopy(avsc("CanonicalEvent"))
    types = {f["name"]: f["type"] for f in schema["fields"]}
    types["event_type"]["symbols"].append("REPLY")
    types["channel"]["symbols"].append("CARRIER_PIGEON")
    schema["fields"].append(
        {"name": "locale", "type": ["null", "string"], "default": None, "doc": "new in v2"}
    )
    return schema


def test_single_object_from_a_newer_writer_resolves_to_the_enum_defaults(
    serde: AvroSerde,
) -> None:
    newer = evolved_canonical_event()
    record = canonical_event(event_type="REPLY", channel="CARRIER_PIGEON", locale="ko-KR")
    fp = crc64_avro(canonical_form(newer).encode()).to_bytes(8, "little")
    data = b"\xc3\x01" + fp + body_of_schema(newer, record)

    with pytest.raises(SerdeError, match="unknown schema fingerprint"):
        serde.decode(data)  # a fingerprint is not a schema: it must be made known first
    assert serde.add_writer_schema(json.dumps(newer)) == fp
    name, decoded = serde.decode(data)
    assert name == "CanonicalEvent"
    assert decoded["event_type"] == "OTHER"
    assert decoded["channel"] == "UNKNOWN"
    assert "locale" not in decoded
    assert decoded["campaign_id"] == "9007199254740993"


def test_a_new_vendor_reads_as_unknown_not_as_a_real_vendor(serde: AvroSerde) -> None:
    newer = copy.deepcopy(avsc("CanonicalEvent"))
    newer["fields"][1]["type"]["symbols"].append("BRAZE")
    serde.add_writer_schema(newer)
    fp = crc64_avro(canonical_form(newer).encode()).to_bytes(8, "little")
    data = b"\xc3\x01" + fp + body_of_schema(newer, canonical_event(vendor="BRAZE"))
    _, decoded = serde.decode(data)
    assert decoded["vendor"] == "UNKNOWN"


def body_of_schema(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return out.getvalue()


# --- Confluent wire format through the registry double ------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_confluent_round_trip_and_wire_bytes(registry: RegistryDouble, name: str) -> None:
    serde = AvroSerde(registry_settings(registry))
    topic = f"crm.{name.lower()}"
    record = SAMPLES[name]
    first = serde.encode(name, record, topic)
    second = serde.encode(name, record, topic)

    assert registry.subjects == {f"{topic}-value": [1]}
    assert [r for r in registry.requests if r[0] == "POST"] == [
        ("POST", f"/subjects/{topic}-value/versions")
    ]  # registered once, then cached
    assert first == second
    assert first[0] == 0
    assert struct.unpack(">I", first[1:5])[0] == 1
    assert first[5:] == body_of(name, record)
    # What the registry holds is the schema itself (docs, logical types and all).
    assert json.loads(registry.schemas[0]) == avsc(name)

    reader = AvroSerde(registry_settings(registry))
    assert reader.decode(first, topic) == (name, record)
    assert reader.decode(second, topic) == (name, record)
    assert [r for r in registry.requests if r[0] == "GET"] == [("GET", "/schemas/ids/1")]


def test_same_schema_on_two_topics_gets_two_subjects(registry: RegistryDouble) -> None:
    serde = AvroSerde(registry_settings(registry))
    a = serde.encode("CampaignStats", campaign_stats(), "crm.campaign-stats")
    b = serde.encode("CampaignStats", campaign_stats(), "other.campaign-stats")
    assert set(registry.subjects) == {"crm.campaign-stats-value", "other.campaign-stats-value"}
    assert a == b  # the registry gives identical schema text the same id


def test_confluent_record_from_a_newer_writer_resolves_to_defaults(
    registry: RegistryDouble,
) -> None:
    newer = evolved_canonical_event()
    schema_id = registry.add(f"{TOPIC}-value", newer)
    record = canonical_event(event_type="REPLY", channel="CARRIER_PIGEON", locale=None)
    data = b"\x00" + struct.pack(">I", schema_id) + body_of_schema(newer, record)
    name, decoded = AvroSerde(registry_settings(registry)).decode(data, TOPIC)
    assert name == "CanonicalEvent"
    assert (decoded["event_type"], decoded["channel"]) == ("OTHER", "UNKNOWN")


def test_registry_refusals_are_serde_errors(registry: RegistryDouble) -> None:
    wrong = Settings.from_env(
        {"CRM_SCHEMA_REGISTRY_URL": registry.url, "CRM_SCHEMA_REGISTRY_AUTH": "svc-crm:wrong"}
    )
    with pytest.raises(SerdeError, match="HTTP 401 Unauthorized"):
        AvroSerde(wrong).encode("DeadLetter", dead_letter(), TOPIC)
    with pytest.raises(SerdeError, match=r"schema id 42.*HTTP 404"):
        AvroSerde(registry_settings(registry)).decode(b"\x00\x00\x00\x00\x2a\x00", TOPIC)


def test_unreachable_registry_is_a_serde_error() -> None:
    with RegistryDouble() as gone:
        url = gone.url
    serde = AvroSerde(Settings.from_env({"CRM_SCHEMA_REGISTRY_URL": url}))
    with pytest.raises(SerdeError, match="cannot register"):
        serde.prepare("CanonicalEvent", TOPIC)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CRM_SCHEMA_REGISTRY_URL": "registry:8081"}, "CRM_SCHEMA_REGISTRY_URL"),
        (
            {
                "CRM_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1",
                "CRM_SCHEMA_REGISTRY_AUTH": "nocolon",
            },
            "CRM_SCHEMA_REGISTRY_AUTH",
        ),
    ],
)
def test_bad_registry_settings_are_config_errors(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        AvroSerde(Settings.from_env(env))
    assert info.value.setting == setting
    assert "nocolon" not in str(info.value)  # the secret is not echoed


def test_single_object_reader_still_reads_after_a_registry_is_added(
    registry: RegistryDouble, serde: AvroSerde
) -> None:
    old = serde.encode("CanonicalEvent", canonical_event(), TOPIC)
    with_registry = AvroSerde(registry_settings(registry))
    assert with_registry.decode(old) == ("CanonicalEvent", canonical_event())
