"""Every format and compression of a feed object, read through ObjectReader."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.objectstore.errors import (
    ObjectReadError,
)
from connectors.objectstore.reader import ObjectReader
from connectors.objectstore.stores import LocalStore


def _read(root: Path, key: str, skip: int = 0) -> tuple[str, list[Any]]:
    store = LocalStore(root)
    (obj,) = [o for o in store.list_objects("") if o.key == key]
    reader = ObjectReader(store, obj, skip)
    rows = [(r.index, r.value, r.doc) for r in reader]
    return reader.fmt, rows


# --- formats --------------------------------------------------------------------------------


def test_json_lines_keep_bad_lines_and_skip_blank_ones(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_bytes(b'{"id": 1}\n\n  \nnot json\r\n{"id": 2}')
    fmt, rows = _read(tmp_path, "f.json")
    assert fmt == "json-lines"
    assert rows == [
        (0, b'{"id": 1}', {"id": 1}),
        (1, b"not json", None),
        (2, b'{"id": 2}', {"id": 2}),
    ]
    assert _read(tmp_path, "f.json", skip=2)[1] == [(2, b'{"id": 2}', {"id": 2})]


def test_json_array_and_gzip_are_sniffed(tmp_path: Path) -> None:
    docs = [{"event_id": "a"}, {"event_id": "b", "n": [1, 2]}]
    (tmp_path / "a.json").write_bytes(b"\n  " + orjson.dumps(docs))
    (tmp_path / "a.gz").write_bytes(gzip.compress(orjson.dumps(docs)))
    (tmp_path / "l").write_bytes(gzip.compress(b'{"event_id": "a"}\n{"event_id": "b"}\n'))
    fmt, rows = _read(tmp_path, "a.json")
    assert fmt == "json-array" and [orjson.loads(v) for _, v, _ in rows] == docs
    fmt, rows = _read(tmp_path, "a.gz", skip=1)
    assert fmt == "json-array+gzip" and [(i, d) for i, _, d in rows] == [(1, docs[1])]
    fmt, rows = _read(tmp_path, "l")
    assert fmt == "json-lines+gzip" and [d["event_id"] for _, _, d in rows] == ["a", "b"]


def test_empty_files_have_no_records(tmp_path: Path) -> None:
    (tmp_path / "empty.json.gz").write_bytes(b"")
    (tmp_path / "empty-content.gz").write_bytes(gzip.compress(b""))
    assert _read(tmp_path, "empty.json.gz")[1] == []
    assert _read(tmp_path, "empty-content.gz")[1] == []


def test_truncated_gzip_yields_complete_lines_then_a_typed_error(tmp_path: Path) -> None:
    lines = b"".join(
        orjson.dumps({"event_id": f"e{i}", "pad": "x" * 50}) + b"\n" for i in range(2000)
    )
    packed = gzip.compress(lines)
    (tmp_path / "t.gz").write_bytes(packed[: len(packed) // 2])
    store = LocalStore(tmp_path)
    (obj,) = store.list_objects("")
    got: list[Any] = []
    with pytest.raises(ObjectReadError) as err:
        for row in ObjectReader(store, obj):
            got.append(row.doc)
    assert err.value.kind == "truncated_gzip"
    assert 0 < len(got) < 2000
    assert got == [{"event_id": f"e{i}", "pad": "x" * 50} for i in range(len(got))]


def test_invalid_json_array_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b'[{"a": 1}, {"a": ')
    with pytest.raises(ObjectReadError) as err:
        _read(tmp_path, "a.json")
    assert err.value.kind == "invalid_json"


@pytest.mark.parametrize("content", [b"garbage", b"PAR1 not really parquet PAR1"])
def test_corrupt_parquet_is_a_typed_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.parquet").write_bytes(content)
    with pytest.raises(ObjectReadError) as err:
        _read(tmp_path, "x.parquet")
    assert err.value.kind == "corrupt_parquet"


def _parquet(path: Path, n: int, row_group_size: int) -> list[dict[str, Any]]:
    rows = [
        {
            "event_id": f"e{i}",
            "time": 1_700_000_000_000 + i,
            "user_attributes": [("plan", "gold")] if i % 2 else None,
            "Campaign": {"name": "c", "id": i, "event_type": "Enter"} if i % 3 else None,
            "blob": b"\x00ok",
        }
        for i in range(n)
    ]
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("time", pa.int64()),
            ("user_attributes", pa.map_(pa.string(), pa.string())),
            (
                "Campaign",
                pa.struct([("name", pa.string()), ("id", pa.int64()), ("event_type", pa.string())]),
            ),
            ("blob", pa.binary()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return rows


def test_parquet_rows_become_json_objects_with_every_field(tmp_path: Path) -> None:
    _parquet(tmp_path / "p.parquet", 25, row_group_size=10)
    fmt, rows = _read(tmp_path, "p.parquet")
    assert fmt == "parquet"
    assert [i for i, _, _ in rows] == list(range(25))
    first, second = orjson.loads(rows[0][1]), orjson.loads(rows[1][1])
    assert first == {
        "event_id": "e0",
        "time": 1_700_000_000_000,
        "user_attributes": None,
        "Campaign": None,
        "blob": "\x00ok",
    }
    assert second["user_attributes"] == {"plan": "gold"}
    assert second["Campaign"] == {"name": "c", "id": 1, "event_type": "Enter"}


@pytest.mark.parametrize("skip", [0, 9, 10, 11, 24, 25])
def test_parquet_resume_skips_done_rows_across_row_groups(tmp_path: Path, skip: int) -> None:
    _parquet(tmp_path / "p.parquet", 25, row_group_size=10)
    _, rows = _read(tmp_path, "p.parquet", skip=skip)
    assert [d["event_id"] for _, _, d in rows] == [f"e{i}" for i in range(skip, 25)]
    assert [i for i, _, _ in rows] == list(range(skip, 25))


def test_gzipped_parquet_is_unpacked(tmp_path: Path) -> None:
    _parquet(tmp_path / "p.parquet", 5, row_group_size=2)
    (tmp_path / "p.parquet.gz").write_bytes(gzip.compress((tmp_path / "p.parquet").read_bytes()))
    (tmp_path / "p.parquet").unlink()
    fmt, rows = _read(tmp_path, "p.parquet.gz")
    assert fmt == "parquet+gzip" and len(rows) == 5


# --- Firehose's other compressions (issue 14) -----------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _hadoop_snappy(data: bytes) -> bytes:
    import snappy  # python-snappy: an implementation independent of the reader's

    return bytes(snappy.HadoopStreamCompressor().add_chunk(data))


def _framed_snappy(data: bytes) -> bytes:
    import snappy

    return bytes(snappy.StreamCompressor().add_chunk(data))


PINPOINT = [{"event_type": "_campaign.send", "n": i, "pad": "x" * (i % 50)} for i in range(3000)]
PINPOINT_LINES = b"".join(orjson.dumps(d) + b"\n" for d in PINPOINT)


@pytest.mark.parametrize(
    ("pack", "fmt"),
    [
        (lambda d: _zip({"firehose-1": d}), "json-lines+zip"),
        (_framed_snappy, "json-lines+snappy"),
        (_hadoop_snappy, "json-lines+hadoop-snappy"),
    ],
)
def test_zip_snappy_and_hadoop_snappy_objects_are_read(tmp_path: Path, pack: Any, fmt: str) -> None:
    """Firehose objects have no extension: the codec is sniffed from the content."""
    (tmp_path / "obj").write_bytes(pack(PINPOINT_LINES))
    got_fmt, rows = _read(tmp_path, "obj")
    assert got_fmt == fmt
    assert [d for _, _, d in rows] == PINPOINT
    assert [i for i, _, _ in _read(tmp_path, "obj", skip=2990)[1]] == list(range(2990, 3000))


def test_zip_members_are_read_in_archive_order(tmp_path: Path) -> None:
    (tmp_path / "two.zip").write_bytes(_zip({"b": b'{"n": 1}\n', "a": b'{"n": 2}\n'}))
    assert [d for _, _, d in _read(tmp_path, "two.zip")[1]] == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (_zip({"f": PINPOINT_LINES})[:-40], "corrupt_zip"),
        (b"PK\x03\x04" + b"\x00" * 60, "corrupt_zip"),
        (_framed_snappy(PINPOINT_LINES)[:-7], "corrupt_snappy"),
        (_framed_snappy(PINPOINT_LINES)[:40] + b"\x00" * 40, "corrupt_snappy"),
        (_hadoop_snappy(PINPOINT_LINES)[:-7], "corrupt_hadoop_snappy"),
        (b"BZh91AY&SY" + bytes(range(64)), "unknown_format"),  # bzip2: not a Firehose codec
        (gzip.compress(b"\x00\x01\x02binary inside gzip", mtime=0), "unknown_format"),
    ],
    # Named ids: the contents' bytes as ids would differ between pytest-xdist workers.
    ids=[
        "cut-zip",
        "empty-zip",
        "cut-snappy",
        "zeroed-snappy",
        "cut-hadoop-snappy",
        "bzip2",
        "binary-gzip",
    ],
)
def test_unreadable_compressed_objects_are_typed_errors(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(ObjectReadError) as err:
        _read(tmp_path, "bad")
    assert err.value.kind == kind
