"""Object-store source without Kafka: settings, feed layouts, every file format, error typing."""

from __future__ import annotations

import gzip
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from connectors.feeds import FEEDS, FLARELANE, LEANPLUM, PINPOINT_FIREHOSE
from connectors.objectstore import (
    LocalStore,
    ObjectChangedError,
    ObjectInfo,
    ObjectReader,
    ObjectReadError,
    ObjectStoreSettings,
    SourceError,
    TransientSourceError,
    _translate,
)
from crmstream.errors import ConfigError


def _read(root: Path, key: str, skip: int = 0) -> tuple[str, list[Any]]:
    store = LocalStore(root)
    (obj,) = [o for o in store.list_objects("") if o.key == key]
    reader = ObjectReader(store, obj, skip)
    rows = [(r.index, r.value, r.doc) for r in reader]
    return reader.fmt, rows


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"source": "http://bucket/x"}, "--source"),
        ({"source": "s3:///prefix"}, "--source"),
        ({"source": "file://host/path"}, "--source"),
        ({"source": "s3://b", "endpoint_url": "localhost:9000"}, "--endpoint-url"),
        ({"source": "s3://b", "poll_interval_s": 0}, "--poll-interval"),
        ({"source": "s3://b", "late_days": -1}, "--late-days"),
        ({"source": "s3://b", "checkpoint_every": 0}, "--checkpoint-every"),
        ({"source": "s3://b", "retry_mode": "eager"}, "--retry-mode"),
        ({"source": "s3://b", "max_attempts": 0}, "--max-attempts"),
        ({"source": "s3://b", "project_id": "a/b"}, "--project-id"),
    ],
)
def test_settings_name_the_bad_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as err:
        ObjectStoreSettings(**kwargs)
    assert err.value.setting == option


def test_settings_accept_s3_and_file_sources() -> None:
    assert (
        ObjectStoreSettings(source="s3://bucket/feed/", endpoint_url="http://127.0.0.1:1").once
        is False
    )
    assert ObjectStoreSettings(source="file:///tmp").late_days == 3


# --- layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "key", "day"),
    [
        (LEANPLUM, "dt=2024-03-05/part-0.json", date(2024, 3, 5)),
        (LEANPLUM, "dt=2024-03-05/sub/part-0.parquet", date(2024, 3, 5)),
        (LEANPLUM, "dt=2024-13-05/part-0.json", None),
        (LEANPLUM, "other/part-0.json", None),
        (LEANPLUM, "dt=2024-03-05/", None),
        (FLARELANE, "projectid=p1/date=2024-03-05/x.parquet", date(2024, 3, 5)),
        (FLARELANE, "date=2024-03-05/x.parquet", None),
        (PINPOINT_FIREHOSE, "2024/03/05/23/stream-1-2024-03-05-23-59-59-uuid", date(2024, 3, 5)),
        (PINPOINT_FIREHOSE, "processing-failed/2024/03/05/23/x", None),
        (PINPOINT_FIREHOSE, "2024/03/05/x", None),
    ],
)
def test_layouts_find_the_partition_day(profile: Any, key: str, day: date | None) -> None:
    assert profile.day_of(key) == day


@pytest.mark.parametrize("profile", list(FEEDS.values()))
def test_start_after_partition_sorts_between_days(profile: Any) -> None:
    """The late-file listing starts after ``day_dir(cutoff)`` minus its slash: earlier days must
    sort before it and every key of the cutoff day after it."""
    start_after = profile.day_dir(date(2024, 3, 3)).rstrip("/")
    earlier = profile.day_dir(date(2024, 3, 2)) + "zzz"
    same = profile.day_dir(date(2024, 3, 3)) + "00/a"
    later = profile.day_dir(date(2024, 12, 1)) + "a"
    assert earlier < start_after < same < later


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


def test_local_store_reports_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_bytes(b'{"a": 1}\n')
    store = LocalStore(tmp_path)
    (obj,) = store.list_objects("")
    (tmp_path / "f.json").write_bytes(b'{"a": 1}\n{"a": 2}\n')
    with pytest.raises(ObjectChangedError):
        list(ObjectReader(store, obj))
    stale = ObjectInfo(key="gone.json", etag="x", size=3, last_modified=0.0)
    with pytest.raises(ObjectChangedError):
        list(ObjectReader(store, stale))


def test_local_store_lists_after_start_key(tmp_path: Path) -> None:
    for name in ("dt=2024-03-01/a", "dt=2024-03-03/b", "dt=2024-03-04/c", "x/d"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"{}")
    store = LocalStore(tmp_path)
    assert [o.key for o in store.list_objects("dt=", "dt=2024-03-03")] == [
        "dt=2024-03-03/b",
        "dt=2024-03-04/c",
    ]
    assert store.list_dirs("") == ["dt=2024-03-01/", "dt=2024-03-03/", "dt=2024-03-04/", "x/"]


# --- S3 errors ------------------------------------------------------------------------------


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"}}, "ListObjectsV2")


@pytest.mark.parametrize("code", ["NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "403"])
def test_missing_bucket_and_denied_access_are_not_retried(code: str) -> None:
    err = _translate(_client_error(code), "listing s3://b/")
    assert isinstance(err, SourceError)
    assert code in str(err) and "s3://b/" in str(err)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("NoSuchKey", ObjectChangedError),
        ("PreconditionFailed", ObjectChangedError),
        ("SlowDown", TransientSourceError),
        ("InternalError", TransientSourceError),
    ],
)
def test_other_s3_errors_are_typed(code: str, kind: type) -> None:
    assert isinstance(_translate(_client_error(code), "reading s3://b/k"), kind)


# --- listing passes (no Kafka: a recording publisher and in-memory checkpoints) --------------


class _Publisher:
    topic = "raw.test"

    def __init__(self) -> None:
        self.records: list[tuple[Any, bytes, str]] = []

    def publish(self, key: Any, value: bytes, *, source: str, fmt: str, **_: Any) -> None:
        self.records.append((key, value, source))

    def flush(self, timeout: float = 60.0) -> None:
        pass


class _Checkpoints:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        return dict(self.values)

    def commit_many(self, values: dict[str, dict[str, Any]], timeout: float = 30.0) -> None:
        self.values.update(values)


def _put(root: Path, key: str, *ids: str) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in ids))


def _source(root: Path, profile: Any = LEANPLUM, **options: Any) -> tuple[Any, _Publisher]:
    from connectors.objectstore import ObjectStoreSource
    from crmstream.settings import Settings

    publisher = _Publisher()
    config = ObjectStoreSettings(source=f"file://{root}", once=True, **options)
    src = ObjectStoreSource(
        profile,
        config,
        Settings(),
        store=LocalStore(root),
        publisher=publisher,  # type: ignore[arg-type]
        checkpoints=_Checkpoints(),  # type: ignore[arg-type]
        key_of=lambda doc: doc.get("id"),
    )
    return src, publisher


def test_a_bogus_future_partition_does_not_hide_late_files(tmp_path: Path) -> None:
    _put(tmp_path, "dt=2024-03-01/a.json", "a")
    _put(tmp_path, "dt=2024-03-10/b.json", "b")
    _put(tmp_path, "dt=2999-01-01/x.json", "x")
    src, publisher = _source(tmp_path, late_days=2)
    assert src.poll().records == 3
    _put(tmp_path, "dt=2024-03-09/late.json", "late")  # within 2 days of 03-10
    _put(tmp_path, "dt=2024-03-02/old.json", "old")  # outside the window: not re-listed
    second = src.poll()
    assert second.records == 1 and second.listed == 3  # late.json, b.json and x.json
    assert [k for k, _, _ in publisher.records] == ["a", "b", "x", "late"]


def test_flarelane_projects_keep_their_own_late_window(tmp_path: Path) -> None:
    _put(tmp_path, "projectid=p1/date=2024-03-20/a.json", "a")
    _put(tmp_path, "projectid=p2/date=2024-03-01/b.json", "b")
    src, publisher = _source(tmp_path, FLARELANE, late_days=1)
    assert src.poll().records == 2
    _put(tmp_path, "projectid=p2/date=2024-03-01/c.json", "c")  # p2's newest day, not p1's
    assert src.poll().records == 1
    assert src.poll().records == 0
    assert sorted(k for k, _, _ in publisher.records) == ["a", "b", "c"]


def test_resume_mid_file_from_checkpoint(tmp_path: Path) -> None:
    _put(tmp_path, "dt=2024-03-01/a.json", *[f"r{i}" for i in range(10)])
    src, publisher = _source(tmp_path, checkpoint_every=4)
    store = src.checkpoints
    (obj,) = src.store.list_objects("")
    # What a crashed run left: rows 0-5 published, a checkpoint at row 4.
    store.values[src.position_key(obj)] = {"etag": obj.etag, "rows_done": 4, "done": False}
    fresh, publisher = _source(tmp_path)
    fresh.checkpoints = store
    stats = fresh.run()
    assert [k for k, _, _ in publisher.records] == [f"r{i}" for i in range(4, 10)]
    assert publisher.records[0][2].endswith("/dt=2024-03-01/a.json#4")
    assert stats.ingested == 1 and store.values[fresh.position_key(obj)]["done"] is True
