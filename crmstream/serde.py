"""Avro encoding of crm-stream's output records, with or without a Schema Registry.

Two wire formats, chosen by ``CRM_SCHEMA_REGISTRY_URL``:

* **Confluent wire format** when a registry is configured: byte ``0x00``, the 4-byte big-endian
  schema id, the Avro binary body. Subjects follow the TopicNameStrategy (``<topic>-value``), so
  Kafka Connect sinks, ksqlDB and every Confluent deserializer read the topics unchanged.
* **Avro single-object encoding** otherwise (Avro specification, "Single-object encoding"):
  ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical
  Form, the Avro binary body. The bytes still name their schema, so a registry can be added later
  without guessing what old records hold.

:meth:`AvroSerde.decode` tells the two apart by their first byte. Record keys are plain UTF-8
strings, never Avro: compaction and partitioning must not depend on a schema id.

Timestamps are epoch-millisecond integers on both sides: the ``timestamp-millis`` logical type
stays in the schemas (and the registry) for other readers, but is removed from the schemas
fastavro uses here, so encode rejects a ``datetime`` and decode returns the integer. Parsing
Canonical Form ignores logical types, so fingerprints are unaffected.

fastavro does not range-check Avro ``int`` on write: a value beyond 32 bits would be written
(and read back by fastavro) but rejected by Java readers. The only ``int`` fields are partitions
and ``schema_version``, which always fit.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from crmstream.errors import ConfigError, SerdeError
from crmstream.resources import SCHEMAS, shipped_path
from crmstream.settings import Settings

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SINGLE_OBJECT_HEADER_LEN = 10  # marker + 8-byte fingerprint
_CONFLUENT_HEADER_LEN = 5  # magic + 4-byte schema id
_REGISTRY_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

# What fastavro raises for a record that does not fit its schema, or bytes that are not a body.
_ENCODE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError)
_DECODE_ERRORS = (
    EOFError,
    StopIteration,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    SchemaResolutionError,
)


def default_schema_dir() -> Path:
    """``schemas/avro``: the copy inside an installed wheel, else the repository's."""
    return shipped_path(SCHEMAS)


def schema_dir() -> Path:
    """``$CRM_SCHEMA_DIR`` if set (the Docker image keeps the schemas in /opt), else
    :func:`default_schema_dir`."""
    return Path(os.environ.get("CRM_SCHEMA_DIR") or default_schema_dir())


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(v) for v in schema]
    return schema


@dataclass(frozen=True)
class SchemaInfo:
    """One schema, prepared once: what encoding needs on the hot path and decoding needs to
    recognise its bytes."""

    name: str  # short name, e.g. "CanonicalEvent"
    fullname: str  # e.g. "io.crmstream.CanonicalEvent"
    text: str  # the schema as JSON text: what the registry stores
    canonical: str  # Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of ``canonical``, 8 bytes little-endian
    parsed: dict[str, Any]  # fastavro-parsed, logical types removed (see module docstring)

    @property
    def single_object_header(self) -> bytes:
        return SINGLE_OBJECT_MARKER + self.fingerprint

    @classmethod
    def from_json(cls, schema: Mapping[str, Any] | str) -> SchemaInfo:
        try:
            loaded: Any = json.loads(schema) if isinstance(schema, str) else dict(schema)
            if not isinstance(loaded, dict) or loaded.get("type") != "record":
                raise ValueError("expected an Avro record schema")
            full: Any = parse_schema(loaded, _write_hint=False)
            canonical = to_parsing_canonical_form(full)
            parsed: Any = parse_schema(_without_logical_types(loaded))
        except (ValueError, TypeError, KeyError) as exc:
            raise SerdeError(f"not a usable Avro record schema: {exc}") from exc
        fullname = str(full["name"])
        return cls(
            name=fullname.rsplit(".", 1)[-1],
            fullname=fullname,
            text=json.dumps(loaded, separators=(",", ":")),
            canonical=canonical,
            fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
            parsed=parsed,
        )


@functools.cache
def load_schemas(directory: Path) -> dict[str, SchemaInfo]:
    """Every ``*.avsc`` of ``directory`` by short name, parsed once per process."""
    if not directory.is_dir():
        raise ConfigError("CRM_SCHEMA_DIR", f"not a directory: {directory}")
    schemas: dict[str, SchemaInfo] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            info = SchemaInfo.from_json(path.read_text(encoding="utf-8"))
        except (OSError, SerdeError) as exc:
            raise ConfigError("CRM_SCHEMA_DIR", f"{path}: {exc}") from exc
        if info.name != path.stem:
            raise ConfigError("CRM_SCHEMA_DIR", f"{path} defines {info.name}, not {path.stem}")
        schemas[info.name] = info
    if not schemas:
        raise ConfigError("CRM_SCHEMA_DIR", f"no .avsc files in {directory}")
    return schemas


class SchemaRegistry:
    """The two Schema Registry calls crm-stream needs, over httpx.

    confluent-kafka's ``SchemaRegistryClient`` would pull in authlib, cachetools and attrs for two
    requests; here they are plain REST calls (Confluent Schema Registry API reference:
    ``POST /subjects/{subject}/versions``, ``GET /schemas/ids/{id}``), cached by the caller.
    Registering an already registered schema is idempotent and returns its existing id.
    """

    def __init__(self, url: str, auth: str = "", timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("CRM_SCHEMA_REGISTRY_URL", f"expected an http(s) URL, got {url!r}")
        basic: tuple[str, str] | None = None
        if auth:
            user, sep, password = auth.partition(":")
            if not sep or not user:
                raise ConfigError("CRM_SCHEMA_REGISTRY_AUTH", "expected user:password")
            basic = (user, password)
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            auth=basic,
            timeout=timeout,
            headers={"Accept": _REGISTRY_CONTENT_TYPE},
        )

    def _call(self, method: str, path: str, what: str, body: Any = None) -> dict[str, Any]:
        try:
            response = self._client.request(
                method,
                path,
                json=body,
                headers={"Content-Type": _REGISTRY_CONTENT_TYPE} if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise SerdeError(f"schema registry {self.url}: cannot {what}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise SerdeError(
                f"schema registry {self.url}: cannot {what}: HTTP {response.status_code} {message}"
            )
        try:
            result = response.json()
        except ValueError as exc:
            raise SerdeError(f"schema registry {self.url}: {what}: not JSON") from exc
        if not isinstance(result, dict):
            raise SerdeError(f"schema registry {self.url}: {what}: unexpected answer {result!r}")
        return result

    def register(self, subject: str, schema_text: str) -> int:
        result = self._call(
            "POST",
            f"/subjects/{quote(subject, safe='')}/versions",
            f"register the schema of subject {subject}",
            {"schema": schema_text},
        )
        schema_id = result.get("id")
        if not isinstance(schema_id, int):
            raise SerdeError(f"schema registry {self.url}: no schema id for subject {subject}")
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        result = self._call("GET", f"/schemas/ids/{schema_id}", f"fetch schema id {schema_id}")
        if result.get("schemaType", "AVRO") != "AVRO":
            raise SerdeError(f"schema id {schema_id} is a {result['schemaType']} schema, not Avro")
        text = result.get("schema")
        if not isinstance(text, str):
            raise SerdeError(f"schema registry {self.url}: schema id {schema_id} has no schema")
        return text

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class _Writer:
    """How one record body was written and how this process reads it."""

    name: str
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None: the writer schema is ours, no resolution needed


class AvroSerde:
    """Encodes and decodes crm-stream's Avro records (``CanonicalEvent``, ``CampaignStats``,
    ``DeadLetter``; one ``.avsc`` each in :func:`schema_dir`).

    ``encode`` is the worker's hot path: the header and the parsed schema of each
    (schema, topic) pair are looked up in one dict, the registry is called once per subject.
    """

    def __init__(self, settings: Settings, *, schema_directory: Path | None = None) -> None:
        self.schemas = load_schemas(schema_directory or schema_dir())
        self._by_fullname = {info.fullname: info for info in self.schemas.values()}
        self._by_fingerprint: dict[bytes, _Writer] = {
            info.fingerprint: _Writer(info.name, info.parsed, None)
            for info in self.schemas.values()
        }
        self._by_schema_id: dict[int, _Writer] = {}
        self._encoders: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = {}
        self.registry: SchemaRegistry | None = None
        if settings.schema_registry_url:
            self.registry = SchemaRegistry(
                settings.schema_registry_url, settings.schema_registry_auth.get()
            )

    def schema(self, name: str) -> SchemaInfo:
        try:
            return self.schemas[name]
        except KeyError:
            raise SerdeError(
                f"unknown schema {name!r}; known: {', '.join(sorted(self.schemas))}"
            ) from None

    def prepare(self, schema_name: str, topic: str) -> bytes:
        """The header every record of ``schema_name`` on ``topic`` starts with.

        With a registry this registers the schema under ``<topic>-value``; call it at startup
        to fail fast on a registry that refuses the schema (e.g. incompatible evolution).
        """
        info = self.schema(schema_name)
        if self.registry is None:
            header = info.single_object_header
        else:
            schema_id = self.registry.register(f"{topic}-value", info.text)
            header = bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
            self._by_schema_id[schema_id] = _Writer(info.name, info.parsed, None)
        self._encoders[schema_name, topic] = (header, info.parsed)
        return header

    def encode(self, schema_name: str, record: Mapping[str, Any], topic: str) -> bytes:
        """``record`` (enums by symbol name, timestamps as epoch-ms ints) as the value of a
        record on ``topic``. A field with a schema default may be left out."""
        try:
            header, parsed = self._encoders[schema_name, topic]
        except KeyError:
            self.prepare(schema_name, topic)
            header, parsed = self._encoders[schema_name, topic]
        out = BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, parsed, record)
        except _ENCODE_ERRORS as exc:
            raise SerdeError(f"record does not fit schema {schema_name}: {exc}") from exc
        return out.getvalue()

    def add_writer_schema(self, schema: Mapping[str, Any] | str) -> bytes:
        """Let single-object records written with another version of a schema be decoded.

        Single-object bytes carry only a fingerprint, so the writer schema must be known (the
        Avro Java ``SchemaStore`` idea). The record is resolved to this process's schema of the
        same name, so e.g. an ``EventType`` symbol it does not know becomes ``OTHER``. Returns
        the fingerprint.
        """
        info = SchemaInfo.from_json(schema)
        self._by_fingerprint.setdefault(info.fingerprint, self._reading(info))
        return info.fingerprint

    def _reading(self, writer: SchemaInfo) -> _Writer:
        local = self._by_fullname.get(writer.fullname)
        if local is not None and local.fingerprint == writer.fingerprint:
            return _Writer(local.name, local.parsed, None)
        return _Writer(writer.name, writer.parsed, local.parsed if local else None)

    def _writer_for(self, data: bytes, topic: str | None) -> tuple[_Writer, int]:
        where = f" (topic {topic})" if topic else ""
        if data[:2] == SINGLE_OBJECT_MARKER:
            if len(data) < _SINGLE_OBJECT_HEADER_LEN:
                raise SerdeError(f"truncated single-object header{where}")
            fp = data[2:_SINGLE_OBJECT_HEADER_LEN]
            found = self._by_fingerprint.get(fp)
            if found is None:
                raise SerdeError(
                    f"single-object record with unknown schema fingerprint {fp.hex()}{where}; "
                    f"known: {', '.join(sorted(self.schemas))}"
                )
            return found, _SINGLE_OBJECT_HEADER_LEN
        if data[:1] == bytes([CONFLUENT_MAGIC]) and len(data) >= _CONFLUENT_HEADER_LEN:
            schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
            found = self._by_schema_id.get(schema_id)
            if found is None:
                if self.registry is None:
                    raise SerdeError(
                        f"record in Confluent wire format (schema id {schema_id}){where} but "
                        "CRM_SCHEMA_REGISTRY_URL is not set"
                    )
                info = SchemaInfo.from_json(self.registry.schema_by_id(schema_id))
                found = self._by_schema_id.setdefault(schema_id, self._reading(info))
            return found, _CONFLUENT_HEADER_LEN
        raise SerdeError(
            f"not an Avro record{where}: starts with {data[:4].hex() or 'nothing'}, "
            "expected c301 (single-object) or 00 (Confluent wire format)"
        )

    def decode(self, data: bytes, topic: str | None = None) -> tuple[str, dict[str, Any]]:
        """``(schema name, record)`` of bytes in either wire format; ``topic`` only makes
        error messages more useful. Raises :class:`SerdeError` for anything else."""
        found, start = self._writer_for(data, topic)
        body = BytesIO(data)
        body.seek(start)
        try:
            record = schemaless_reader(body, found.writer, found.reader)
        except _DECODE_ERRORS as exc:
            raise SerdeError(f"cannot decode {found.name} body: {exc!r}") from exc
        if body.tell() != len(data):
            raise SerdeError(
                f"{len(data) - body.tell()} bytes left after the {found.name} body: not one record"
            )
        if not isinstance(record, dict):
            raise SerdeError(f"{found.name} body is not a record")
        return found.name, record

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
