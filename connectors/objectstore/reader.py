"""One object's records, whatever its compression and format, from a given row on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import Future
from typing import IO, Any

from connectors.objectstore.compressions import gzip as gz
from connectors.objectstore.formats import parquet
from connectors.objectstore.formats.base import Row
from connectors.objectstore.formats.jsonarray import read_json_array
from connectors.objectstore.formats.jsonlines import read_json_lines
from connectors.objectstore.stores.base import ObjectInfo, ObjectStore


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
            if head.startswith(parquet.PARQUET_MAGIC) or self.obj.key.endswith(
                parquet.PARQUET_SUFFIXES
            ):
                stream.close()
                self.fmt = parquet.NAME
                yield from parquet.read_parquet(self._open(seekable=True), self.skip)
                return
            compressed = head.startswith(gz.GZIP_MAGIC)
            body: Any = stream
            if compressed:
                body = gz.open_gzip(stream)
                if gz.peek(body, 4).startswith(parquet.PARQUET_MAGIC):
                    self.fmt = f"{parquet.NAME}+{gz.NAME}"
                    yield from parquet.read_parquet(gz.spool(body), self.skip)
                    return
            with gz.gzip_errors():
                yield from self._json(body, f"+{gz.NAME}" if compressed else "")
        finally:
            stream.close()

    def _json(self, body: Any, suffix: str) -> Iterator[Row]:
        """``body`` is a BufferedReader or a GzipFile: both can peek and iterate lines."""
        first = b""
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
            yield from read_json_array(body.read(), self.skip)
            return
        self.fmt = "json-lines" + suffix
        yield from read_json_lines(body, self.skip)
