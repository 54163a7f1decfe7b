"""One object's records, whatever its compression and format, from a given row on."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import IO, Any

from connectors.objectstore.compressions import gzip as gz
from connectors.objectstore.compressions import snappy, zip
from connectors.objectstore.errors import ObjectReadError
from connectors.objectstore.formats import parquet
from connectors.objectstore.formats.base import Row
from connectors.objectstore.formats.jsonarray import read_json_array
from connectors.objectstore.formats.jsonlines import read_json_lines
from connectors.objectstore.stores.base import ObjectInfo, ObjectStore

_JSON_WHITESPACE = frozenset(b"\t\n\r")


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
            head = stream.peek(16)[:16] if hasattr(stream, "peek") else b""
            if head.startswith(parquet.PARQUET_MAGIC) or self.obj.key.endswith(
                parquet.PARQUET_SUFFIXES
            ):
                stream.close()
                self.fmt = parquet.NAME
                yield from parquet.read_parquet(self._open(seekable=True), self.skip)
                return
            whole = self._whole_object_codec(head)
            if whole is not None:
                # ZIP and Snappy objects are unpacked in memory: Firehose buffers at most
                # 128 MiB per object before it compresses them.
                name, unpack = whole
                data = unpack(stream.read())
                if data.startswith(parquet.PARQUET_MAGIC):
                    self.fmt = f"{parquet.NAME}+{name}"
                    yield from parquet.read_parquet(io.BytesIO(data), self.skip)
                    return
                yield from self._json(io.BufferedReader(io.BytesIO(data)), f"+{name}")
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

    def _whole_object_codec(self, head: bytes) -> tuple[str, Callable[[bytes], bytes]] | None:
        """The codecs Firehose writes besides gzip, sniffed from the first bytes (Firehose
        objects have no extension): ZIP and framed Snappy by their magic, Hadoop-Snappy by a
        plausible block header (text never has one)."""
        if zip.is_zip(head):
            return zip.NAME, zip.unzip
        if snappy.is_framed(head):
            return snappy.NAME, snappy.unframe
        if snappy.looks_hadoop(head):
            return snappy.HADOOP_NAME, snappy.unhadoop
        return None

    def _json(self, body: Any, suffix: str) -> Iterator[Row]:
        """``body`` is a BufferedReader or a GzipFile: both can peek and iterate lines."""
        head = body.peek(64)[:64]
        if any(byte < 0x20 and byte not in _JSON_WHITESPACE for byte in head):
            # JSON text has no raw control bytes: this is a codec nobody here reads (bzip2,
            # zstd, ...) or a binary file, and publishing its "lines" would only feed garbage
            # to the worker. One dead letter for the object instead.
            raise ObjectReadError(
                "unknown_format", f"binary content{suffix or ''} that is neither JSON nor Parquet"
            )
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
