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
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, cast
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


# --- the encoders: one Python function per schema, generated once -------------------------------
#
# fastavro's ``schemaless_writer`` interprets the schema for every record (about 12 us for a
# canonical event, the worker's largest single cost). The record schemas here use a handful of
# types, so each gets a function written for it once, with the fields in order, the enums as
# lookup tables and the null unions as one test; it writes the same bytes as fastavro (tested
# against it), in about half the time. Counts, lengths and small values are one look-up
# (``_SMALL_LONGS``), and map keys (event types, channels) are encoded once (``_key_bytes``):
# a ``CampaignStats`` upsert, mostly maps, takes a fifth less than with a call for each. A
# schema with a type not handled here is written by fastavro, as before, and so is a record the
# generated function refuses: fastavro's error names the field.

_ZIGZAG_CACHED = 1 << 13


def _varint(z: int) -> bytes:
    """A base-128 varint of ``z`` >= 0: 7 bits a byte, low first, the high bit set on all but
    the last."""
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_VARINTS = tuple(_varint(z) for z in range(1 << 14))  # varints below 2**14
# 14 bits as the two leading bytes of a longer varint (both with the high bit set).
_VARINT_PAIRS = tuple(bytes(((z & 0x7F) | 0x80, (z >> 7) | 0x80)) for z in range(1 << 14))


def _zigzag_varint(n: int) -> bytes:
    """An Avro ``long``/``int``: zig-zag, then a base-128 varint (14 bits a table lookup)."""
    z = (n << 1) ^ (n >> 63)
    if z < 1 << 14:
        return _VARINTS[z]
    # Up to 42 bits (an epoch-ms timestamp until 2039) without the loop.
    if z < 1 << 28:
        return _VARINT_PAIRS[z & 0x3FFF] + _VARINTS[z >> 14]
    if z < 1 << 42:
        return _VARINT_PAIRS[z & 0x3FFF] + _VARINT_PAIRS[(z >> 14) & 0x3FFF] + _VARINTS[z >> 28]
    parts = []
    while z >= 1 << 14:
        parts.append(_VARINT_PAIRS[z & 0x3FFF])
        z >>= 14
    parts.append(_VARINTS[z])
    return b"".join(parts)


_MAX_KEPT_LONGS = 1024
_KEPT_LONGS: dict[int, bytes] = {}
"""The Avro ``long`` of the larger values written last (emptied when full): timestamps repeat
from record to record (a batch's ``updated_at`` and ``processed_at``, its windows' starts and
ends)."""


def _long(n: int) -> bytes:
    if 0 <= n < _ZIGZAG_CACHED:
        return _VARINTS[n << 1]  # zig-zag of n >= 0 is 2n
    found = _KEPT_LONGS.get(n)
    if found is not None:
        return found
    if not -(1 << 63) <= n < 1 << 63:
        raise OverflowError(f"{n} does not fit an Avro long")
    out = _zigzag_varint(n)
    if len(_KEPT_LONGS) >= _MAX_KEPT_LONGS:
        _KEPT_LONGS.clear()
    _KEPT_LONGS[n] = out
    return out


_SMALL_LONGS: dict[int, bytes] = {n: _VARINTS[n << 1] for n in range(_ZIGZAG_CACHED)}
"""The Avro ``long`` of every n in ``[0, 2**13)``, by n: a generated encoder writes a count, a
length or a small value with one look-up instead of a call (a bool or a float that equals one of
them finds it too, which is what fastavro writes for them outside a union)."""

_MAX_CACHED_KEYS = 4096
"""Bound of the map keys whose encoded form the generated encoders keep (event types, channels:
a handful; a canonical event's attribute names: whatever the vendors send, hence the bound)."""


AVRO_SMALL_LONGS = _SMALL_LONGS
"""The Avro ``long`` of every n in ``[0, 2**13)``, by n (read-only)."""


def avro_long(n: int) -> bytes:
    """An Avro ``long`` (or ``int``) as the generated encoders write it: for a writer of one
    record type by hand (:class:`processors.records.StatsUpserts`)."""
    return _long(n)


def avro_string(value: str) -> bytes:
    """An Avro ``string``: its length, then its UTF-8 bytes."""
    b = value.encode()
    return (_SMALL_LONGS.get(len(b)) or _long(len(b))) + b


def _key_bytes(key: str, cache: dict[str, bytes]) -> bytes:
    """A map key as Avro writes it (length, UTF-8), kept in ``cache`` while it has room."""
    b = key.encode()
    out = _long(len(b)) + b
    if len(cache) < _MAX_CACHED_KEYS and type(key) is str:
        cache[key] = out
    return out


def _as_long(value: Any) -> int:
    """A ``long`` field's value as fastavro takes it: a float is truncated, a bool is 0 or 1."""
    if isinstance(value, int | float):
        return int(value)
    raise TypeError(f"an integer is required, not {type(value).__name__}")


def _union_long(value: Any) -> int:
    """A union's ``long`` branch takes an int only (fastavro: not a bool, not a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{value!r} is not a long")


def _union_number(value: Any) -> float:
    """A union's ``double``/``float`` branch takes an int or a float (not a bool)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{value!r} is not a number")


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class _Unsupported(Exception):
    """A schema type the generated encoders do not write (fastavro does)."""


def _compile_encoder(schema: Mapping[str, Any]) -> Callable[[Mapping[str, Any], bytes], bytes]:
    """A function ``(record, header) -> header + Avro body`` for the parsed record ``schema``.
    Raises :class:`_Unsupported` for a type it does not write."""
    named: Mapping[str, Any] = schema.get("__named_schemas") or {}
    env: dict[str, Any] = {
        "_long": _long,
        "_double": struct.Struct("<d").pack,
        "_float": struct.Struct("<f").pack,
        "_bytes_types": (bytes, bytearray),
        "_as_long": _as_long,
        "_small": _SMALL_LONGS,
        "_key_bytes": _key_bytes,
        "_keys": {},
        "_union_long": _union_long,
        "_union_number": _union_number,
    }
    lines: list[str] = []
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def resolve(t: Any) -> Any:
        if isinstance(t, str) and t in named:
            t = named[t]
        if isinstance(t, dict) and t.get("type") in _PRIMITIVES:
            if any(k != "type" and not k.startswith("__") and k != "doc" for k in t):
                raise _Unsupported(t)
            t = t["type"]
        return t

    def emit(t: Any, expr: str, depth: int, union: bool = False) -> None:
        """Write ``expr`` of type ``t``; ``union``: a branch of a union, where fastavro takes
        only a value of the branch's own type (no bool for a number, no float for a long)."""
        pad = "    " * depth
        t = resolve(t)
        if t == "string":
            b = fresh("b")
            lines.append(f"{pad}{b} = {expr}.encode()")
            lines.append(f"{pad}w(_small.get(len({b})) or _long(len({b})))")
            lines.append(f"{pad}w({b})")
        elif t == "bytes":
            b = fresh("b")
            lines.append(f"{pad}{b} = {expr}")
            lines.append(f"{pad}if not isinstance({b}, _bytes_types):")
            lines.append(f"{pad}    raise TypeError(f'not bytes: {{type({b}).__name__}}')")
            lines.append(f"{pad}w(_small.get(len({b})) or _long(len({b})))")
            lines.append(f"{pad}w({b})")
        elif t in ("long", "int"):
            v = fresh("v")
            lines.append(f"{pad}{v} = {expr}")
            if union:  # an int only: not a bool, not a float that equals one (_union_long)
                lines.append(
                    f"{pad}w((type({v}) is int and _small.get({v})) "
                    f"or _long({v} if type({v}) is int else _union_long({v})))"
                )
            else:
                lines.append(
                    f"{pad}w(_small.get({v}) or _long({v} if type({v}) is int else _as_long({v})))"
                )
        elif t in ("double", "float"):
            pack = "_double" if t == "double" else "_float"
            if union:
                lines.append(f"{pad}w({pack}(_union_number({expr})))")
            else:
                lines.append(f"{pad}w({pack}(float({expr})))")
        elif t == "boolean":
            lines.append(f"{pad}w(b'\\x01' if {expr} else b'\\x00')")
        elif (
            isinstance(t, list)
            and len(t) == 2
            and "null" in t
            and resolve(t[1 - t.index("null")]) != "null"
        ):
            null = t.index("null")
            v = fresh("v")
            lines.append(f"{pad}{v} = {expr}")
            lines.append(f"{pad}if {v} is None:")
            lines.append(f"{pad}    w({_long(null)!r})")
            lines.append(f"{pad}else:")
            lines.append(f"{pad}    w({_long(1 - null)!r})")
            emit(t[1 - null], v, depth + 1, union=True)
        elif isinstance(t, dict) and t.get("type") == "enum":
            table = fresh("_enum")
            env[table] = {symbol: _long(i) for i, symbol in enumerate(t["symbols"])}
            lines.append(f"{pad}w({table}[{expr}])")
        elif isinstance(t, dict) and t.get("type") == "map":
            m, k, v = fresh("m"), fresh("k"), fresh("v")
            lines.append(f"{pad}{m} = {expr}")
            lines.append(f"{pad}if {m}:")
            lines.append(f"{pad}    w(_small.get(len({m})) or _long(len({m})))")
            lines.append(f"{pad}    for {k}, {v} in {m}.items():")
            # A key's encoded form, kept: map keys repeat (event types, channels).
            lines.append(f"{pad}        w(_keys.get({k}) or _key_bytes({k}, _keys))")
            emit(t["values"], v, depth + 2)
            lines.append(f"{pad}w(b'\\x00')")
        elif isinstance(t, dict) and t.get("type") == "array":
            a, v = fresh("a"), fresh("v")
            lines.append(f"{pad}{a} = {expr}")
            lines.append(f"{pad}if {a}:")
            lines.append(f"{pad}    w(_small.get(len({a})) or _long(len({a})))")
            lines.append(f"{pad}    for {v} in {a}:")
            emit(t["items"], v, depth + 2)
            lines.append(f"{pad}w(b'\\x00')")
        elif isinstance(t, dict) and t.get("type") == "record":
            r = fresh("r")
            lines.append(f"{pad}{r} = {expr}")
            emit_fields(t, r, depth)
        else:
            raise _Unsupported(t)

    def emit_fields(record: Mapping[str, Any], var: str, depth: int) -> None:
        """Write the fields of ``var``, a mapping of the record schema ``record``."""
        get = "get" if var == "record" else f"{var}.get"  # the top level's is bound once
        for field in record["fields"]:
            name, t = field["name"], field["type"]
            if not name.isidentifier():
                raise _Unsupported(name)
            if "default" in field:
                default = fresh("_default")
                env[default] = field["default"]
                expr = f"{get}({name!r}, {default})"
            elif isinstance(t, list) and "null" in t:
                expr = f"{get}({name!r})"  # fastavro writes a missing nullable field as null
            else:
                expr = f"{var}[{name!r}]"
            emit(t, expr, depth)

    lines.append("def encode(record, header):")
    lines.append("    out = bytearray(header)")
    lines.append("    w = out.extend")
    lines.append("    get = record.get")
    emit_fields(schema, "record", 1)
    lines.append("    return bytes(out)")
    exec(compile("\n".join(lines), f"<avro encoder {schema.get('name')}>", "exec"), env)
    return cast(Callable[[Mapping[str, Any], bytes], bytes], env["encode"])


def compiled_encoder(
    schema: Mapping[str, Any],
) -> Callable[[Mapping[str, Any], bytes], bytes] | None:
    """The generated encoder of a parsed record schema, or None when fastavro must write it."""
    try:
        return _compile_encoder(schema)
    except _Unsupported:
        return None


@dataclass(frozen=True)
class _Writer:
    """How one record body was written and how this process reads it."""

    name: str
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None: the writer schema is ours, no resolution needed


_Encoder = Callable[[Mapping[str, Any], bytes], bytes]


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
        self._encoders: dict[tuple[str, str], tuple[bytes, dict[str, Any], _Encoder | None]] = {}
        self._compiled: dict[str, _Encoder | None] = {
            name: compiled_encoder(info.parsed) for name, info in self.schemas.items()
        }
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
        self._encoders[schema_name, topic] = (header, info.parsed, self._compiled.get(schema_name))
        return header

    def header(self, schema_name: str, topic: str) -> bytes:
        """The header of ``schema_name`` on ``topic`` (:meth:`prepare`, once)."""
        found = self._encoders.get((schema_name, topic))
        return found[0] if found is not None else self.prepare(schema_name, topic)

    def encode(self, schema_name: str, record: Mapping[str, Any], topic: str) -> bytes:
        """``record`` (enums by symbol name, timestamps as epoch-ms ints) as the value of a
        record on ``topic``. A field with a schema default may be left out."""
        try:
            header, parsed, compiled = self._encoders[schema_name, topic]
        except KeyError:
            self.prepare(schema_name, topic)
            header, parsed, compiled = self._encoders[schema_name, topic]
        if compiled is not None:
            try:
                return compiled(record, header)
            except _ENCODE_ERRORS:
                pass  # fastavro below says what does not fit, naming the field
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
