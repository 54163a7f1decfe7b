"""Lay the bundled sample records out in a local folder the way each vendor lays out its bucket.

The demo (and the connector tests) then run the object-store connectors on ``file://`` folders,
so sample data takes the same path as production data: listing, format sniffing, gzip, Parquet,
checkpoints. Every record of the :class:`~crmdemo.samples.SampleSet` lands in exactly one file,
malformed ones included (they stay lines of a JSON-lines file, never a Parquet row), so the
set's expected counts still hold after the connector has read the folder.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from crmdemo.samples import SampleSet
from processors.normalize.leanplum import MESSAGE_ROW_FIELDS

Record = tuple[bytes | None, bytes]


def write_sample_feed(
    vendor: str, sample_set: SampleSet, root: Path, rng: random.Random
) -> list[Path]:
    """Write ``sample_set`` under ``root`` in ``vendor``'s bucket layout; return the files.

    ``vendor`` is a feed connector name or vendor: ``leanplum`` (``dt=YYYY-MM-DD/``: JSON lines,
    a JSON array, gzip and Parquet), ``flarelane`` (``projectid=<id>/date=YYYY-MM-DD/``: JSON
    lines, gzip and Parquet) or ``pinpoint`` / ``pinpoint-firehose`` (``YYYY/MM/DD/HH/``: JSON
    lines and gzip, named like Firehose objects). ``rng`` only decides which file a record goes
    to, so one seed always gives the same folder.
    """
    writer = _WRITERS.get(vendor)
    if writer is None:
        raise ValueError(f"no sample feed layout for {vendor!r}; known: {', '.join(_WRITERS)}")
    root.mkdir(parents=True, exist_ok=True)
    return writer(sample_set.records, root, rng)


# --- partitions -----------------------------------------------------------------------------


def _doc(value: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


def _group(
    records: list[Record],
    partition_of: Callable[[dict[str, Any] | None], str | None],
    default: str,
) -> dict[str, list[bytes]]:
    """Records by partition folder; records without a usable date join the first partition
    (or ``default`` when none has one), so no record is left outside the layout."""
    groups: dict[str, list[bytes]] = {}
    homeless: list[bytes] = []
    for _key, value in records:
        partition = partition_of(_doc(value))
        if partition is None:
            homeless.append(value)
        else:
            groups.setdefault(partition, []).append(value)
    if homeless:
        groups.setdefault(min(groups) if groups else default, []).extend(homeless)
    return groups


def _write_lines(path: Path, values: list[bytes], *, compress: bool = False) -> Path:
    data = b"".join(v.rstrip(b"\r\n") + b"\n" for v in values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def _split(values: list[bytes], parts: int, rng: random.Random) -> list[list[bytes]]:
    """Deal records into ``parts`` files at random, keeping their order within each file."""
    out: list[list[bytes]] = [[] for _ in range(parts)]
    for value in values:
        out[rng.randrange(parts)].append(value)
    return out


# --- Leanplum: dt=YYYY-MM-DD/ ----------------------------------------------------------------

LEANPLUM_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")
CAMPAIGN_PROPS = {"user_id", "device_id", "time", "name", "campaign_id", "event_type"}
AB_TEST_PROPS = {"user_id", "device_id", "time", "name", "ab_test_id", "variant_id"}
MESSAGE_PROPS = {
    "user_id",
    "device_id",
    "message_occurrence_id",
    "time",
    "name",
    "message_id",
    "event_type",
    "channel",
    "campaign_id",
    "campaign_name",
    "email_id",
    "link_url",
    "link_id",
}
MESSAGE_FIELDS = MESSAGE_ROW_FIELDS  # the Message record fields the normalizer reads back


def _leanplum_day(doc: dict[str, Any] | None) -> str | None:
    doc = doc or {}
    props = doc.get("properties")
    when = props.get("time") if isinstance(props, dict) else None
    millis = doc.get("time")
    if when is None and isinstance(millis, int) and not isinstance(millis, bool) and millis > 0:
        when = datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d")  # a Parquet row
    match = _DAY.match(when) if isinstance(when, str) else None
    return f"dt={match.group(1)}-{match.group(2)}-{match.group(3)}/" if match else None


def _is_str(value: Any, *, nullable: bool = True) -> bool:
    return isinstance(value, str) or (nullable and value is None)


def _is_long(value: Any, *, nullable: bool = True) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (nullable and value is None)


def leanplum_parquet_row(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON-feed record as the row of the Parquet feed's Avro ``Event`` record (seed 000,
    "Parquet format"), or ``None`` when the record cannot be one without losing a field or
    changing its meaning (malformed, sentinel time, unknown properties)."""
    if doc is not None and _is_parquet_shaped(doc):
        return doc
    if doc is None or set(doc) != {"event_id", "name", "properties"}:
        return None
    event_id, name, props = doc["event_id"], doc["name"], doc["properties"]
    if not (isinstance(event_id, str) and event_id and isinstance(name, str)):
        return None
    if not isinstance(props, dict) or not LEANPLUM_TIME.match(str(props.get("time", ""))):
        return None
    moment = datetime.strptime(props["time"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    millis = int(moment.timestamp() * 1000)
    if millis <= 0 or not _is_str(props.get("user_id")) or not _is_str(props.get("device_id")):
        return None
    row: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "event_id": event_id,
        "user_id": props.get("user_id"),
        "device_id": props.get("device_id"),
        "time": millis,  # epoch ms
        "user_attributes": None,
        "user_attributes_numeric": None,
        "AbTest": None,
        "Campaign": None,
        "Message": None,
    }
    if name.startswith("(Leanplum) Campaign "):
        if not set(props) <= CAMPAIGN_PROPS or not _is_long(
            props.get("campaign_id"), nullable=False
        ):
            return None
        if not _is_str(props.get("event_type"), nullable=False) or not _is_str(props.get("name")):
            return None
        row["Campaign"] = {
            "name": props.get("name"),
            "id": props["campaign_id"],
            "event_type": props["event_type"],
        }
    elif name.strip() == "(Leanplum) A/B Test Impression" or "ab_test_id" in props:
        if not set(props) <= AB_TEST_PROPS or not _is_long(props.get("ab_test_id"), nullable=False):
            return None
        if not _is_long(props.get("variant_id")) or not _is_str(props.get("name")):
            return None
        row["AbTest"] = {
            "name": props.get("name"),
            "id": props["ab_test_id"],
            "variant_id": props.get("variant_id"),
        }
    else:
        if not set(props) <= MESSAGE_PROPS or not _is_long(props.get("message_id"), nullable=False):
            return None
        if not _is_str(props.get("event_type"), nullable=False) or not _is_long(
            props.get("campaign_id")
        ):
            return None
        if not all(_is_str(props.get(k)) for k in MESSAGE_FIELDS if k != "campaign_id"):
            return None
        message = {k: props.get(k) for k in MESSAGE_FIELDS}
        row["Message"] = {"name": props.get("name"), "id": props["message_id"], **message}
    return row


def _is_parquet_shaped(doc: dict[str, Any]) -> bool:
    """A sample record that already is a Parquet row (the generators emit some): it fits
    the Avro ``Event`` record exactly, or it is not one."""
    import pyarrow as pa

    if "properties" in doc or "schema_version" not in doc:
        return False
    schema = leanplum_parquet_schema()
    if not set(doc) <= set(schema.names):
        return False
    try:
        pa.Table.from_pylist([doc], schema=schema)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


def leanplum_parquet_schema() -> Any:
    """Seed 000's Avro ``Event`` record as an Arrow schema (what a Leanplum Parquet file holds)."""
    import pyarrow as pa

    s, i64 = pa.string(), pa.int64()
    return pa.schema(
        [
            pa.field("schema_version", pa.int32(), nullable=False),
            pa.field("name", s, nullable=False),
            pa.field("event_id", s, nullable=False),
            pa.field("user_id", s),
            pa.field("device_id", s),
            pa.field("time", i64, nullable=False),
            pa.field("user_attributes", pa.map_(s, s)),
            pa.field("user_attributes_numeric", pa.map_(s, i64)),
            pa.field(
                "AbTest",
                pa.struct(
                    [
                        pa.field("name", s),
                        pa.field("id", i64, nullable=False),
                        pa.field("variant_id", i64),
                    ]
                ),
            ),
            pa.field(
                "Campaign",
                pa.struct(
                    [
                        pa.field("name", s),
                        pa.field("id", i64, nullable=False),
                        pa.field("event_type", s, nullable=False),
                    ]
                ),
            ),
            pa.field(
                "Message",
                pa.struct(
                    [
                        pa.field("name", s),
                        pa.field("id", i64, nullable=False),
                        pa.field("campaign_name", s),
                        pa.field("campaign_id", i64),
                        pa.field("channel", s),
                        pa.field("message_occurrence_id", s),
                        pa.field("email_id", s),
                        pa.field("link_url", s),
                        pa.field("link_id", s),
                        pa.field("event_type", s, nullable=False),
                    ]
                ),
            ),
        ]
    )


def write_parquet(
    path: Path, rows: list[dict[str, Any]], schema: Any, row_group_size: int = 1000
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _write_leanplum(records: list[Record], root: Path, rng: random.Random) -> list[Path]:
    files: list[Path] = []
    for n, (partition, values) in enumerate(
        sorted(_group(records, _leanplum_day, "dt=2024-01-01/").items())
    ):
        # Rows the generator already made in the Parquet shape are only ever Parquet rows.
        row_shaped = [_is_parquet_shaped(_doc(v) or {}) for v in values]
        json_shaped = [v for v, is_row in zip(values, row_shaped, strict=True) if not is_row]
        lines, array, gz, pq_part = _split(json_shaped, 4, rng)
        pq_part += [v for v, is_row in zip(values, row_shaped, strict=True) if is_row]
        rows: list[dict[str, Any]] = []
        for value in pq_part:
            row = leanplum_parquet_row(_doc(value))
            if row is None:
                lines.append(value)  # not representable as a Parquet row: keep it a line
            else:
                rows.append(row)
        folder = root / partition
        stem = f"leanplum-{n:04d}"
        if lines:
            files.append(_write_lines(folder / f"{stem}-0.json", lines))
        array_docs = [d for d in (_doc(v) for v in array) if d is not None]
        if len(array_docs) != len(array):
            # A malformed record cannot be an element of a JSON array: it goes in the lines file.
            bad = [v for v in array if _doc(v) is None]
            files.append(_write_lines(folder / f"{stem}-4.json", bad))
        if array_docs:
            path = folder / f"{stem}-1.json"
            path.write_bytes(orjson.dumps(array_docs))
            files.append(path)
        if gz:
            files.append(_write_lines(folder / f"{stem}-2.json.gz", gz, compress=True))
        if rows:
            files.append(
                write_parquet(folder / f"{stem}-3.parquet", rows, leanplum_parquet_schema())
            )
    return files


# --- FlareLane: projectid=<id>/date=YYYY-MM-DD/ -----------------------------------------------

# Seed 003 "CRM event schema": every column is a string except these two.
FLARELANE_BOOL = {"is_advertisement"}
FLARELANE_INT = {"iam_dont_show_minutes"}
FLARELANE_COLUMNS = [
    "id",
    "type",
    "channel",
    "time",
    "deviceid",
    "userid",
    "campaign_id",
    "campaign_name",
    "trigger_type",
    "journey_id",
    "journey_name",
    "journey_step_id",
    "journey_enrollment_id",
    "recurring_message_id",
    "sender",
    "recipient",
    "subject",
    "body",
    "template_id",
    "template_name",
    "provider",
    "provider_message_id",
    "provider_error",
    "error",
    "platform",
    "message_type",
    "is_advertisement",
    "kakaoalimtalk_template_code",
    "kakao_sender_key",
    "iam_group",
    "iam_clickable_id",
    "iam_dont_show_minutes",
    "projectid",
    "date",
]


def _flarelane_partition(doc: dict[str, Any] | None) -> str | None:
    when = (doc or {}).get("time")
    project = (doc or {}).get("projectid")
    match = _DAY.match(when) if isinstance(when, str) else None
    if match is None or not isinstance(project, str) or not re.fullmatch(r"[\w.-]+", project):
        return None
    return f"projectid={project}/date={match.group(1)}-{match.group(2)}-{match.group(3)}/"


def _flarelane_row(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None or not set(doc) <= set(FLARELANE_COLUMNS):
        return None
    if not isinstance(doc.get("id"), str) or not doc["id"]:
        return None
    for key, value in doc.items():
        if value is None:
            continue
        if key in FLARELANE_BOOL:
            ok = isinstance(value, bool)
        elif key in FLARELANE_INT:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            return None
    return {column: doc.get(column) for column in FLARELANE_COLUMNS if column in doc}


def _flarelane_schema() -> Any:
    import pyarrow as pa

    def arrow_type(column: str) -> Any:
        if column in FLARELANE_BOOL:
            return pa.bool_()
        if column in FLARELANE_INT:
            return pa.int32()
        return pa.string()

    return pa.schema([(c, arrow_type(c)) for c in FLARELANE_COLUMNS])


def _write_flarelane(records: list[Record], root: Path, rng: random.Random) -> list[Path]:
    files: list[Path] = []
    for n, (partition, values) in enumerate(
        sorted(_group(records, _flarelane_partition, "projectid=unknown/date=2024-01-01/").items())
    ):
        lines, gz, pq_part = _split(values, 3, rng)
        rows: list[dict[str, Any]] = []
        for value in pq_part:
            row = _flarelane_row(_doc(value))
            if row is None:
                lines.append(value)
            else:
                rows.append(row)
        folder = root / partition
        stem = f"crm_events-{n:04d}"
        if lines:
            files.append(_write_lines(folder / f"{stem}-0.json", lines))
        if gz:
            files.append(_write_lines(folder / f"{stem}-1.json.gz", gz, compress=True))
        if rows:
            # Every column of seed 003's schema, as the export writes it: a column a record
            # did not have is null, which the normalizer reads the same as absent.
            files.append(write_parquet(folder / f"{stem}-2.parquet", rows, _flarelane_schema()))
    return files


# --- Pinpoint through Firehose: YYYY/MM/DD/HH/ -----------------------------------------------


def _firehose_hour(doc: dict[str, Any] | None) -> str | None:
    # Firehose partitions by its own arrival time; the event's arrival_timestamp is the closest.
    millis = (doc or {}).get("arrival_timestamp")
    if not isinstance(millis, int) or isinstance(millis, bool) or millis <= 0:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y/%m/%d/%H/")


def _write_firehose(records: list[Record], root: Path, rng: random.Random) -> list[Path]:
    files: list[Path] = []
    for n, (partition, values) in enumerate(
        sorted(_group(records, _firehose_hour, "2024/01/01/00/").items())
    ):
        stamp = partition.rstrip("/").replace("/", "-")
        plain, gz = _split(values, 2, rng)
        # Firehose names objects <stream>-<version>-<YYYY-MM-DD-HH-MM-SS>-<uuid>, no extension.
        name = f"crm-pinpoint-events-1-{stamp}-00-00-{n:08x}-0000-4000-8000-000000000000"
        if plain:
            files.append(_write_lines(root / partition / name, plain))
        if gz:
            files.append(_write_lines(root / partition / f"{name}-z.gz", gz, compress=True))
    return files


_WRITERS: dict[str, Callable[[list[Record], Path, random.Random], list[Path]]] = {
    "leanplum": _write_leanplum,
    "flarelane": _write_flarelane,
    "pinpoint": _write_firehose,
    "pinpoint-firehose": _write_firehose,
}
