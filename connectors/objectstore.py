"""Object-store source: vendor event files in S3 (or a local folder) -> the vendor's raw topic.

One source serves every file feed; what differs per vendor is its
:class:`~connectors.feeds.FeedProfile`. The guarantees (issue 3):

* Nothing is lost. Every record of an object is published and acknowledged before the object's
  checkpoint (ETag, size, rows done) is written to ``connect-offsets``; a restarted connector
  resumes mid-file at the last checkpoint. Records between two checkpoints may be published
  twice, and the worker's event-id dedupe absorbs that.
* Late files are found. The first pass lists the whole prefix; later passes re-list the last
  ``late_days`` date partitions before the newest one seen (the Leanplum document says events
  near midnight can land in the neighbouring ``dt=`` folder) and everything after it. An object
  whose ETag changed is ingested again from its first row.
* A bad object never stops the feed or loops. Whatever was readable is published; the object is
  checkpointed as failed with the error (so it is retried only when its ETag changes), counted
  and logged by name. Missing buckets and denied access are configuration errors and are not
  retried; throttling and 5xx are retried with backoff by botocore.
* Parquet is streamed by row group through ranged reads: a 2-million-row Leanplum file is never
  held in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

import orjson

from connectors.base import CheckpointStore, KeyFunction, RawPublisher
from connectors.feeds import FeedProfile
from crmstream import metrics
from crmstream.errors import BrokerError, ConfigError, CrmStreamError
from crmstream.settings import Settings

if TYPE_CHECKING:
    import pyarrow

log = logging.getLogger(__name__)

RETRY_MODES = ("adaptive", "standard", "legacy")


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStoreSettings:
    """Options of one object-store connector (``crm-stream connect <feed> --help``).

    Validated on construction; a bad value raises :class:`ConfigError` naming the option.
    Credentials are never options: boto3's standard chain (environment, shared config, SSO,
    instance or task role) supplies them.
    """

    source: str  # s3://bucket/prefix or file:///path
    app_id: str | None = None  # TAXONOMY §1: app id for vendors whose payload has none
    endpoint_url: str | None = None  # S3-compatible store (MinIO, moto, Ceph); None = AWS
    region: str | None = None
    poll_interval_s: float = 60.0
    late_days: int = 3  # seed 000: near-midnight events can sit in the neighbouring dt= folder
    once: bool = False  # list until nothing new is left, then exit (demo, tests, batch jobs)
    checkpoint_every: int = 50_000  # rows between mid-file checkpoints
    retry_mode: str = "adaptive"
    max_attempts: int = 10
    project_id: str | None = None  # only this projectid= folder (FlareLane)

    def __post_init__(self) -> None:
        url = urlparse(self.source)
        if url.scheme == "s3":
            if not url.netloc:
                raise ConfigError("--source", f"{self.source!r} has no bucket (s3://bucket/prefix)")
        elif url.scheme == "file":
            if url.netloc not in {"", "localhost"}:
                raise ConfigError("--source", f"{self.source!r}: use file:///absolute/path")
        else:
            raise ConfigError(
                "--source", f"{self.source!r}: expected s3://bucket/prefix or file:///path"
            )
        if self.endpoint_url is not None and urlparse(self.endpoint_url).scheme not in {
            "http",
            "https",
        }:
            raise ConfigError("--endpoint-url", f"{self.endpoint_url!r} is not an http(s) URL")
        if self.poll_interval_s <= 0:
            raise ConfigError("--poll-interval", "must be greater than 0")
        if self.late_days < 0:
            raise ConfigError("--late-days", "must be 0 or more")
        if self.checkpoint_every <= 0:
            raise ConfigError("--checkpoint-every", "must be greater than 0")
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError("--retry-mode", f"must be one of {', '.join(RETRY_MODES)}")
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts", "must be 1 or more")
        if self.project_id is not None and not re.fullmatch(r"[^/]+", self.project_id):
            raise ConfigError("--project-id", "must be a folder name without '/'")


# --- errors ---------------------------------------------------------------------------------


class SourceError(CrmStreamError):
    """The source cannot be read at all (missing bucket, access denied, no credentials).

    Not retried: waiting does not fix a bucket policy, and a crash loop would hide the cause.
    """


class TransientSourceError(CrmStreamError):
    """The store did not answer after botocore's retries; the next pass tries again."""


class ObjectReadError(Exception):
    """One object cannot be read to its end: ``kind`` is a bounded metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ObjectChangedError(Exception):
    """The object was replaced or deleted between listing and reading; the next pass sees it."""


# Codes that waiting will not fix: stop with a clear message instead of retrying forever.
_FATAL_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "InvalidToken",
    "ExpiredToken",
    "SignatureDoesNotMatch",
    "PermanentRedirect",
    "403",
}
_CHANGED_CODES = {"NoSuchKey", "PreconditionFailed", "412", "404"}


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _translate(exc: Exception, what: str) -> Exception:
    """A boto error as one of this module's typed errors."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SourceError(f"{what}: no AWS credentials found ({exc})")
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _FATAL_CODES:
            return SourceError(f"{what}: {code}: {message or exc}")
        if code in _CHANGED_CODES:
            return ObjectChangedError(f"{what}: {code}")
    return TransientSourceError(f"{what}: {exc}")


# --- stores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # the full key in the bucket (S3) or the path relative to the root (local)
    etag: str
    size: int
    last_modified: float  # epoch seconds


class ObjectStore(Protocol):
    """What the source needs from a bucket or a folder."""

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]: ...

    def list_dirs(self, prefix: str) -> list[str]: ...

    def open_stream(self, obj: ObjectInfo) -> IO[bytes]: ...

    def open_seekable(self, obj: ObjectInfo) -> IO[bytes]: ...

    def fetch(self, obj: ObjectInfo) -> bytes: ...

    def url(self, obj: ObjectInfo) -> str: ...


class S3Store:
    """A bucket through boto3: paginated listing, streaming and ranged reads.

    botocore's retry modes back off on throttling (SlowDown, 503) and 5xx; ``adaptive`` also
    rate-limits the client once throttled. ``endpoint_url`` points at any S3-compatible store,
    with path-style addressing since such stores rarely resolve bucket subdomains.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        retry_mode: str = "adaptive",
        max_attempts: int = 10,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": retry_mode, "max_attempts": max_attempts},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if endpoint_url else {},
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self.client = client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if exc.__class__.__module__.startswith(("botocore", "urllib3")):
                raise _translate(exc, what) from exc
            raise

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(**kwargs))
        while True:
            page = self._call(f"listing s3://{self.bucket}/{prefix}", next, pages, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    etag=str(item.get("ETag", "")).strip('"'),
                    size=int(item.get("Size", 0)),
                    last_modified=item["LastModified"].timestamp(),
                )

    def list_dirs(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"))
        out: list[str] = []
        while True:
            page = self._call(f"listing s3://{self.bucket}/{prefix}", next, pages, None)
            if page is None:
                return out
            out += [p["Prefix"] for p in page.get("CommonPrefixes", [])]

    def open_stream(self, obj: ObjectInfo) -> IO[bytes]:
        # IfMatch: read exactly the version that was listed; a replaced object is re-listed.
        response = self._call(
            f"reading {self.url(obj)}",
            self.client.get_object,
            Bucket=self.bucket,
            Key=obj.key,
            IfMatch=f'"{obj.etag}"',
        )
        return io.BufferedReader(_ChunkReader(response["Body"], self.url(obj)), 1 << 20)

    def open_seekable(self, obj: ObjectInfo) -> IO[bytes]:
        return io.BufferedReader(_RangeReader(self, obj), 4 << 20)

    def fetch(self, obj: ObjectInfo) -> bytes:
        """A small object whole (prefetching)."""
        with self.open_stream(obj) as stream:
            return stream.read()

    def url(self, obj: ObjectInfo) -> str:
        return f"s3://{self.bucket}/{obj.key}"


class _ChunkReader(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, with read errors typed as transient."""

    def __init__(self, body: Any, url: str) -> None:
        self._body = body
        self._url = url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except Exception as exc:
            raise TransientSourceError(f"reading {self._url}: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()


class _RangeReader(io.RawIOBase):
    """A seekable view of one S3 object made of ranged GETs, for Parquet's footer-first reads."""

    def __init__(self, store: S3Store, obj: ObjectInfo) -> None:
        self._store = store
        self._obj = obj
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._obj.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._obj.size or len(buffer) == 0:
            return 0
        end = min(self._obj.size, self._pos + len(buffer)) - 1
        response = self._store._call(
            f"reading {self._store.url(self._obj)}",
            self._store.client.get_object,
            Bucket=self._store.bucket,
            Key=self._obj.key,
            Range=f"bytes={self._pos}-{end}",
            IfMatch=f'"{self._obj.etag}"',
        )
        try:
            data = response["Body"].read()
        except Exception as exc:
            raise TransientSourceError(f"reading {self._store.url(self._obj)}: {exc}") from exc
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class LocalStore:
    """A local folder laid out like the bucket (demo, tests, a mounted volume).

    The ETag is mtime and size: a rewritten file is read again, as S3 would report a new ETag.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _info(self, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(
            key=path.relative_to(self.root).as_posix(),
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            size=st.st_size,
            last_modified=st.st_mtime,
        )

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        keys: list[tuple[str, Path]] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and key > start_after:
                    keys.append((key, path))
        for _key, path in sorted(keys):
            with contextlib.suppress(FileNotFoundError):
                yield self._info(path)

    def list_dirs(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(f"{prefix}{p.name}/" for p in base.iterdir() if p.is_dir())

    def _open(self, obj: ObjectInfo) -> IO[bytes]:
        path = self.root / obj.key
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise ObjectChangedError(f"{path} was deleted") from exc
        if self._info(path).etag != obj.etag:
            handle.close()
            raise ObjectChangedError(f"{path} changed since it was listed")
        return handle

    def open_stream(self, obj: ObjectInfo) -> IO[bytes]:
        return self._open(obj)

    def open_seekable(self, obj: ObjectInfo) -> IO[bytes]:
        return self._open(obj)

    def fetch(self, obj: ObjectInfo) -> bytes:
        with self._open(obj) as handle:
            return handle.read()

    def url(self, obj: ObjectInfo) -> str:
        # Not as_uri(): percent-encoding would turn dt= into dt%3D in every source header.
        return f"file://{(self.root / obj.key).resolve()}"


def open_store(config: ObjectStoreSettings) -> tuple[ObjectStore, str]:
    """The store and the key prefix that ``--source`` names."""
    url = urlparse(config.source)
    if url.scheme == "s3":
        prefix = url.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return (
            S3Store(
                url.netloc,
                endpoint_url=config.endpoint_url,
                region=config.region,
                retry_mode=config.retry_mode,
                max_attempts=config.max_attempts,
            ),
            prefix,
        )
    root = Path(unquote(url.path))
    if not root.is_dir():
        raise ConfigError("--source", f"folder {root} does not exist")
    return LocalStore(root), ""


# --- reading objects ------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".parq")  # named Parquet but without the magic: corrupt Parquet
BATCH_ROWS = 8192
DEFERRED_OBJECTS = 200  # finished objects whose checkpoints are written together
PREFETCH_THREADS = 4
PREFETCH_DEPTH = 8
PREFETCH_MAX_BYTES = 8 << 20  # so prefetched bodies hold at most 64 MiB


@dataclass
class Row:
    """One record of an object: its 0-based position, the bytes to publish, the parsed value."""

    index: int
    value: bytes
    doc: Any  # the parsed JSON / Parquet row, or None when the bytes are not JSON


class ObjectReader:
    """Iterates the records of one object, whatever its format, from row ``skip`` on.

    ``fmt`` is known once iteration has started (the format is sniffed from the first bytes,
    since Firehose objects have no extension and Leanplum's JSON framing is undocumented [A-6]).
    ``prefetched`` is the whole object, already fetched (small objects; see ``poll``).
    """

    def __init__(
        self,
        store: ObjectStore,
        obj: ObjectInfo,
        skip: int = 0,
        prefetched: Future[bytes] | None = None,
    ) -> None:
        self.store = store
        self.obj = obj
        self.skip = skip
        self.prefetched = prefetched
        self.fmt = "unknown"

    def _open(self, seekable: bool) -> IO[bytes]:
        if self.prefetched is not None:
            return io.BufferedReader(io.BytesIO(self.prefetched.result()))
        if seekable:
            return self.store.open_seekable(self.obj)
        return self.store.open_stream(self.obj)

    def __iter__(self) -> Iterator[Row]:
        if self.obj.size == 0:
            self.fmt = "empty"
            return
        stream = self._open(seekable=False)
        try:
            head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
            if head.startswith(PARQUET_MAGIC) or self.obj.key.endswith(PARQUET_SUFFIXES):
                stream.close()
                self.fmt = "parquet"
                yield from self._parquet(self._open(seekable=True))
                return
            compressed = head.startswith(GZIP_MAGIC)
            body: Any = stream
            if compressed:
                body = gzip.GzipFile(fileobj=stream)
                try:
                    inner = body.peek(4)[:4]
                except EOFError as exc:
                    raise ObjectReadError(
                        "truncated_gzip", f"gzip stream ends early: {exc}"
                    ) from exc
                except (gzip.BadGzipFile, zlib.error) as exc:
                    raise ObjectReadError("corrupt_gzip", f"not a gzip stream: {exc}") from exc
                if inner.startswith(PARQUET_MAGIC):
                    self.fmt = "parquet+gzip"
                    yield from self._parquet(_spool(body))
                    return
            yield from self._json(body, "+gzip" if compressed else "")
        finally:
            stream.close()

    def _json(self, body: Any, suffix: str) -> Iterator[Row]:
        """``body`` is a BufferedReader or a GzipFile: both can peek and iterate lines."""
        first = b""
        try:
            while not first:
                chunk = body.peek(64)
                if not chunk:
                    break
                stripped = chunk.lstrip()
                if stripped:
                    first = stripped[:1]
                else:
                    body.read(len(chunk))
            if first == b"[":
                self.fmt = "json-array" + suffix
                yield from self._json_array(body.read())
                return
            self.fmt = "json-lines" + suffix
            index = 0
            for line in body:
                text = line.strip()
                if not text:
                    continue
                if index >= self.skip:
                    try:
                        doc = orjson.loads(text)
                    except orjson.JSONDecodeError:
                        # A bad line in a good file is published raw: the worker dead-letters it
                        # as invalid_json with its source position (TAXONOMY §5).
                        doc = None
                    yield Row(index, text, doc)
                index += 1
        except EOFError as exc:
            raise ObjectReadError("truncated_gzip", f"gzip stream ends early: {exc}") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise ObjectReadError("corrupt_gzip", f"gzip stream is corrupt: {exc}") from exc

    def _json_array(self, data: bytes) -> Iterator[Row]:
        # Leanplum JSON files hold about 50 000 events (seed 000 "Frequency"): small enough to
        # parse whole. Elements are re-serialized; their content is unchanged.
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ObjectReadError("invalid_json", f"not a JSON array: {exc}") from exc
        if not isinstance(items, list):
            raise ObjectReadError("invalid_json", "top-level JSON value is not an array")
        for index, item in enumerate(items):
            if index >= self.skip:
                yield Row(index, orjson.dumps(item), item)

    def _parquet(self, handle: IO[bytes]) -> Iterator[Row]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            try:
                # buffer_size streams column chunks in pieces; pre_buffer would fetch whole
                # row groups, which for a 2M-row Leanplum file is what must not happen.
                parquet = pq.ParquetFile(handle, buffer_size=1 << 20, pre_buffer=False)
                meta = parquet.metadata
                groups: list[int] = []
                index = 0
                for g in range(meta.num_row_groups):
                    rows = meta.row_group(g).num_rows
                    if index + rows <= self.skip and not groups:
                        index += rows  # whole row group already done: not even read
                        continue
                    groups.append(g)
                convert = _row_converter(parquet.schema_arrow)
                batches = (
                    parquet.iter_batches(
                        batch_size=BATCH_ROWS, row_groups=groups, use_threads=False
                    )
                    if groups
                    else iter(())
                )
                for batch in batches:
                    for row in batch.to_pylist():
                        if index >= self.skip:
                            doc = convert(row)
                            yield Row(index, orjson.dumps(doc, default=_json_default), doc)
                        index += 1
            except (pa.ArrowException, OSError) as exc:
                raise ObjectReadError(
                    "corrupt_parquet", f"Parquet file is unreadable: {exc}"
                ) from exc
        finally:
            handle.close()


def _spool(stream: IO[bytes]) -> IO[bytes]:
    """A gzipped Parquet file, unpacked to a temporary file: Parquet needs to seek."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned open, closed by the reader
    try:
        shutil.copyfileobj(stream, spool, 1 << 20)
    except EOFError as exc:
        spool.close()
        raise ObjectReadError("truncated_gzip", f"gzip stream ends early: {exc}") from exc
    spool.seek(0)
    return spool


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)  # Decimal and any other scalar pyarrow hands back


def _row_converter(schema: pyarrow.Schema) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Turns ``to_pylist`` rows into JSON objects that keep every field.

    pyarrow gives maps as lists of ``(key, value)`` pairs (Leanplum ``user_attributes``); they
    become objects. Structs are already dicts; bytes and decimals are handled by orjson's default.
    """
    import pyarrow as pa

    def for_type(t: pa.DataType) -> Callable[[Any], Any] | None:
        if pa.types.is_map(t):
            value_conv = for_type(t.item_type)
            if value_conv is None:
                return lambda v: None if v is None else {str(k): x for k, x in v}
            return lambda v: None if v is None else {str(k): value_conv(x) for k, x in v}
        if pa.types.is_struct(t):
            subs: dict[str, Callable[[Any], Any]] = {}
            for i in range(t.num_fields):
                sub = for_type(t.field(i).type)
                if sub is not None:
                    subs[t.field(i).name] = sub
            if not subs:
                return None
            return lambda v: (
                None if v is None else {k: (subs[k](x) if k in subs else x) for k, x in v.items()}
            )
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            item_conv = for_type(t.value_type)
            if item_conv is None:
                return None
            return lambda v: None if v is None else [item_conv(x) for x in v]
        return None

    converters = {f.name: c for f in schema if (c := for_type(f.type)) is not None}
    if not converters:
        return lambda row: row

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        for name, conv in converters.items():
            row[name] = conv(row.get(name))
        return row

    return convert


# --- the source -----------------------------------------------------------------------------


@dataclass
class PassStats:
    """What one listing pass did; ``crm-stream connect --once`` prints the run's total."""

    listed: int = 0
    ingested: int = 0
    failed: int = 0
    records: int = 0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: PassStats) -> None:
        self.listed += other.listed
        self.ingested += other.ingested
        self.failed += other.failed
        self.records += other.records
        self.bytes += other.bytes
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


class ObjectStoreSource:
    """Lists a feed's objects and publishes their records to the vendor's raw topic."""

    def __init__(
        self,
        profile: FeedProfile,
        config: ObjectStoreSettings,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        prefix: str | None = None,
        publisher: RawPublisher | None = None,
        checkpoints: CheckpointStore | None = None,
        key_of: KeyFunction,
    ) -> None:
        self.profile = profile
        self.config = config
        self.settings = settings
        if store is None:
            store, opened_prefix = open_store(config)
            prefix = opened_prefix if prefix is None else prefix
        self.store = store
        self.prefix = prefix or ""
        self.publisher = publisher or RawPublisher(settings, profile.vendor, app_id=config.app_id)
        self.checkpoints = checkpoints or CheckpointStore(settings, profile.connector)
        self.key_of = key_of
        self.positions: dict[str, dict[str, Any]] | None = None
        self.newest_days: dict[str, date] = {}  # per root: the late-file window's anchor
        self._deferred: dict[str, dict[str, Any]] = {}
        self._records_since_commit = 0
        self._dead_letters: tuple[Any, Any] | None = None
        self._connector = profile.connector

    # positions ------------------------------------------------------------------------------

    def position_key(self, obj: ObjectInfo) -> str:
        """``<bucket>/<key>`` (S3) or the absolute path: unique per object across sources."""
        if isinstance(self.store, S3Store):
            return f"{self.store.bucket}/{obj.key}"
        return self.store.url(obj).removeprefix("file://")

    def _is_pending(self, obj: ObjectInfo) -> bool:
        assert self.positions is not None
        done = self.positions.get(self.position_key(obj))
        if done is None or done.get("etag") != obj.etag:
            return True
        return not (done.get("done") or done.get("failed"))

    # listing --------------------------------------------------------------------------------

    def _roots(self) -> list[str]:
        if self.profile.root_dir is None:
            return [self.prefix]
        if self.config.project_id is not None:
            return [f"{self.prefix}{self.profile.root_dir}{self.config.project_id}/"]
        return [
            d
            for d in self.store.list_dirs(self.prefix)
            if d[len(self.prefix) :].startswith(self.profile.root_dir)
        ]

    def list_pending(self, stats: PassStats) -> list[ObjectInfo]:
        """One listing pass: the objects not yet (completely) ingested, oldest partition first.

        The first pass lists everything; later passes start ``late_days`` partitions before the
        newest partition seen, so late files in recent partitions are found without re-listing
        the whole history on every poll. The newest day is kept per root (FlareLane projects
        lag independently) and never runs ahead of tomorrow, so one object in a bogus future
        partition cannot hide the real ones.
        """
        if self.positions is None:
            self.positions = self.checkpoints.load()
        pending: list[tuple[date, str, ObjectInfo]] = []
        ceiling = datetime.now(UTC).date() + timedelta(days=1)
        for root in self._roots():
            newest = self.newest_days.get(root)
            start_after = ""
            if newest is not None:
                start_day = newest - timedelta(days=self.config.late_days)
                start_after = root + self.profile.day_dir(start_day).rstrip("/")
            for obj in self.store.list_objects(root, start_after):
                day = self.profile.day_of(obj.key[len(self.prefix) :])
                if day is None or obj.key.endswith("/"):
                    continue
                stats.listed += 1
                if day <= ceiling and (newest is None or day > newest):
                    newest = day
                if self._is_pending(obj):
                    pending.append((day, obj.key, obj))
            if newest is not None:
                self.newest_days[root] = newest
        metrics.OBJECTSTORE_OBJECTS_LISTED.labels(self._connector).inc(stats.listed)
        pending.sort(key=lambda item: (item[0], item[1]))
        return [obj for _day, _key, obj in pending]

    def _set_lag(self, remaining: list[ObjectInfo]) -> None:
        oldest = min((o.last_modified for o in remaining), default=None)
        lag = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        metrics.OBJECTSTORE_SOURCE_LAG.labels(self._connector).set(lag)

    # ingesting ------------------------------------------------------------------------------

    def _checkpoint(
        self, obj: ObjectInfo, rows_done: int, *, defer: bool = False, **state: Any
    ) -> None:
        """Flush first: a position is written only once every record it covers is acked.

        ``defer`` batches the checkpoints of finished objects: Firehose delivers many small
        objects, and one flush and one checkpoint round trip per object would bound the feed
        to a few dozen objects a second. Deferred positions are written by
        :meth:`_commit_deferred`, after the flush that covers them.
        """
        assert self.positions is not None
        value = {
            "etag": obj.etag,
            "size": obj.size,
            "rows_done": rows_done,
            "done": False,
            "failed": None,
            "updated_at": int(time.time() * 1000),
            **state,
        }
        self._deferred[self.position_key(obj)] = value
        if not defer or len(self._deferred) >= DEFERRED_OBJECTS:
            self._commit_deferred()

    def _commit_deferred(self) -> None:
        assert self.positions is not None
        if not self._deferred:
            return
        self.publisher.flush()
        self.checkpoints.commit_many(self._deferred)
        self.positions.update(self._deferred)
        self._deferred = {}
        self._records_since_commit = 0

    def _dead_letter(
        self, obj: ObjectInfo, position: str, fmt: str, exc: ObjectReadError, published: int
    ) -> None:
        """One ``DeadLetter`` for an object that cannot be read to its end.

        There is no raw record to point at, so ``raw`` is empty (the object can be far too big
        to copy), ``raw_key`` is the object URL, the source partition and offset are -1, and
        ``source_position`` is the row where reading stopped.
        """
        from confluent_kafka import Producer

        from crmstream.kafka import producer_config
        from crmstream.serde import AvroSerde

        if self._dead_letters is None:
            self._dead_letters = (
                AvroSerde(self.settings),
                Producer(producer_config(self.settings, **{"linger.ms": 0})),
            )
        serde, producer = self._dead_letters
        topic = self.settings.topic("dead-letter")
        record = {
            "raw": b"",
            "raw_key": self.store.url(obj).encode(),
            "vendor": self.profile.vendor,
            "reason": f"unreadable_object:{exc.kind}",
            "detail": f"{exc} ({published} records before it were published)",
            "source_topic": self.publisher.topic,
            "source_partition": -1,
            "source_offset": -1,
            "source_position": position,
            "headers": {
                "connector": self.profile.connector,
                "format": fmt,
                "etag": obj.etag,
                "size": str(obj.size),
            },
            "dead_lettered_at": int(time.time() * 1000),
        }
        failures: list[str] = []
        producer.produce(
            topic,
            key=self.store.url(obj).encode(),
            value=serde.encode("DeadLetter", record, topic),
            on_delivery=lambda err, _msg: failures.append(err.str()) if err else None,
        )
        if producer.flush(30) or failures:
            raise BrokerError(f"dead letter to {topic} not acknowledged: {failures[:1]}")

    def _error(self, stats: PassStats, kind: str) -> None:
        stats.errors[kind] = stats.errors.get(kind, 0) + 1
        metrics.CONNECTOR_ERRORS.labels(self._connector, kind).inc()

    def _key(self, doc: Any) -> str | None:
        if not isinstance(doc, dict):
            return None
        try:
            return self.key_of(doc)
        except Exception:
            # No usable id (the normalizer's RecordError, a wrong-typed field): the record is
            # published without a key and the worker rejects it as missing_event_id (§5).
            return None

    def ingest(
        self, obj: ObjectInfo, stats: PassStats, prefetched: Future[bytes] | None = None
    ) -> None:
        """Publish one object's records from its checkpointed row on, then mark it done."""
        assert self.positions is not None
        previous = self.positions.get(self.position_key(obj))
        skip = 0
        if previous is not None and previous.get("etag") == obj.etag:
            skip = int(previous.get("rows_done", 0))
        url = self.store.url(obj)
        reader = ObjectReader(self.store, obj, skip, prefetched)
        rows_done = skip
        records = metrics.CONNECTOR_RECORDS.labels(self._connector)
        try:
            for row in reader:
                self.publisher.publish(
                    self._key(row.doc), row.value, source=f"{url}#{row.index}", fmt=reader.fmt
                )
                records.inc()
                stats.records += 1
                rows_done = row.index + 1
                self._records_since_commit += 1
                if self._records_since_commit >= self.config.checkpoint_every:
                    self._checkpoint(obj, rows_done, format=reader.fmt)
        except ObjectReadError as exc:
            # Publish what was readable, dead-letter the object, then park it: it is retried
            # only if its ETag changes. Dead letter before checkpoint: at least once.
            self._commit_deferred()
            self._dead_letter(obj, f"{url}#{rows_done}", reader.fmt, exc, rows_done - skip)
            self._checkpoint(obj, rows_done, format=reader.fmt, failed=f"{exc.kind}: {exc}")
            self._error(stats, exc.kind)
            stats.failed += 1
            metrics.OBJECTSTORE_OBJECTS_INGESTED.labels(self._connector, "failed").inc()
            log.error(
                "object %s cannot be read past row %d (%s): %s; it is skipped until it changes",
                url,
                rows_done,
                exc.kind,
                exc,
                extra={"connector": self.profile.connector, "source": url, "reason": exc.kind},
            )
            return
        except ObjectChangedError as exc:
            self._commit_deferred()
            self._error(stats, "changed")
            log.warning("object %s changed while being read (%s); re-listing", url, exc)
            return
        except TransientSourceError:
            if rows_done > skip:  # keep the progress: the retry resumes here
                self._checkpoint(obj, rows_done, format=reader.fmt)
            raise
        self._checkpoint(obj, rows_done, format=reader.fmt, done=True, defer=True)
        stats.ingested += 1
        stats.bytes += obj.size
        metrics.OBJECTSTORE_OBJECTS_INGESTED.labels(self._connector, "done").inc()
        metrics.CONNECTOR_BYTES.labels(self._connector).inc(obj.size)
        log.info(
            "ingested %s: %d records from row %d (%s)",
            url,
            rows_done - skip,
            skip,
            reader.fmt,
            extra={"connector": self.profile.connector, "source": url},
        )

    def poll(self) -> PassStats:
        """One listing pass and the ingestion of everything it found pending."""
        stats = PassStats()
        pending = self.list_pending(stats)
        self._set_lag(pending)
        # Small objects are fetched a few ahead: one GET costs tens of milliseconds, and a backlog
        # of Firehose objects would otherwise be read at the speed of request latency.
        pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
        ahead: dict[int, Future[bytes]] = {}

        def prefetch(j: int) -> None:
            if j < len(pending) and 0 < pending[j].size <= PREFETCH_MAX_BYTES:
                ahead[j] = pool.submit(self.store.fetch, pending[j])

        try:
            for j in range(PREFETCH_DEPTH):
                prefetch(j)
            for i, obj in enumerate(pending):
                prefetch(i + PREFETCH_DEPTH)
                try:
                    self.ingest(obj, stats, ahead.pop(i, None))
                except TransientSourceError:
                    self._error(stats, "transient")
                    raise
                self._set_lag(pending[i + 1 :])
        except BaseException:
            for future in ahead.values():
                future.cancel()
            with contextlib.suppress(Exception):  # best effort: keep what finished before
                self._commit_deferred()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._commit_deferred()
        return stats

    def run(self, *, max_transient_failures: int = 5) -> PassStats:
        """Poll until stopped; with ``once``, until a pass finds nothing new.

        Transient store failures back off and retry; in ``once`` mode, after
        ``max_transient_failures`` in a row the run stops with the last error.
        """
        total = PassStats()
        failures = 0
        while True:
            try:
                stats = self.poll()
            except TransientSourceError as exc:
                failures += 1
                log.warning("pass failed (%d in a row): %s", failures, exc)
                if self.config.once and failures >= max_transient_failures:
                    raise
                time.sleep(min(60.0, 0.5 * 2**failures))
                continue
            failures = 0
            total.add(stats)
            nothing_new = stats.ingested + stats.failed == 0 and not stats.errors
            if self.config.once and nothing_new:
                return total
            if not self.config.once:
                time.sleep(self.config.poll_interval_s)


# --- CLI ------------------------------------------------------------------------------------


def add_arguments(profile: FeedProfile, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help=f"s3://bucket/prefix or file:///path laid out as the {profile.vendor} feed",
    )
    parser.add_argument(
        "--app-id", default=None, help="app id for events whose payload has none (TAXONOMY §1)"
    )
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (default: AWS, or $AWS_ENDPOINT_URL_S3)",
    )
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS chain's)")
    parser.add_argument(
        "--poll-interval", type=float, default=60.0, help="seconds between listing passes"
    )
    parser.add_argument(
        "--late-days",
        type=int,
        default=3,
        help="date partitions before the newest one that are re-listed for late files",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=50_000, help="rows between mid-file checkpoints"
    )
    parser.add_argument("--retry-mode", default="adaptive", choices=RETRY_MODES)
    parser.add_argument("--max-attempts", type=int, default=10, help="S3 request attempts")
    parser.add_argument(
        "--once", action="store_true", help="list until nothing new is left, then exit"
    )
    if profile.root_dir is not None:
        parser.add_argument(
            "--project-id",
            default=None,
            help=f"read only this {profile.root_dir} folder (default: every one)",
        )


def settings_from_args(args: argparse.Namespace) -> ObjectStoreSettings:
    return ObjectStoreSettings(
        source=args.source,
        app_id=args.app_id,
        endpoint_url=args.endpoint_url or None,
        region=args.region,
        poll_interval_s=args.poll_interval,
        late_days=args.late_days,
        once=args.once,
        checkpoint_every=args.checkpoint_every,
        retry_mode=args.retry_mode,
        max_attempts=args.max_attempts,
        project_id=getattr(args, "project_id", None),
    )


def run(
    profile: FeedProfile, args: argparse.Namespace, settings: Settings, key_of: KeyFunction
) -> int:
    config = settings_from_args(args)
    metrics.serve(settings.metrics_port)
    total = ObjectStoreSource(profile, config, settings, key_of=key_of).run()
    print(
        orjson.dumps(
            {
                "connector": profile.connector,
                "objects_listed": total.listed,
                "objects_ingested": total.ingested,
                "objects_failed": total.failed,
                "records": total.records,
                "bytes": total.bytes,
                "errors": total.errors,
            }
        ).decode()
    )
    return 0


def run_feed(
    connector: str,
    settings: Settings,
    source: str,
    *,
    key_of: KeyFunction,
    app_id: str | None = None,
    **options: Any,
) -> PassStats:
    """Run one feed connector in-process to completion (``--once``); what the demo calls."""
    from connectors.feeds import FEEDS

    config = ObjectStoreSettings(source=source, app_id=app_id, once=True, **options)
    return ObjectStoreSource(FEEDS[connector], config, settings, key_of=key_of).run()
