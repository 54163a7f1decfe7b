"""A bucket through boto3: paginated listing, streaming and ranged reads."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import IO, Any

from connectors.objectstore.errors import TransientSourceError, translate
from connectors.objectstore.stores.base import ObjectInfo


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
                raise translate(exc, what) from exc
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
