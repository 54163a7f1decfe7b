"""gzip (the stdlib's), streamed: the JSON inside is read line by line as it is inflated."""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from connectors.objectstore.errors import ObjectReadError

NAME = "gzip"
GZIP_MAGIC = b"\x1f\x8b"


def open_gzip(stream: IO[bytes]) -> gzip.GzipFile:
    return gzip.GzipFile(fileobj=stream)


def peek(body: gzip.GzipFile, size: int) -> bytes:
    """The first inflated bytes, to sniff the format inside."""
    try:
        return body.peek(size)[:size]
    except EOFError as exc:
        raise ObjectReadError("truncated_gzip", f"gzip stream ends early: {exc}") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ObjectReadError("corrupt_gzip", f"not a gzip stream: {exc}") from exc


@contextmanager
def gzip_errors() -> Iterator[None]:
    """Inflate errors met while reading, as the object's read error."""
    try:
        yield
    except EOFError as exc:
        raise ObjectReadError("truncated_gzip", f"gzip stream ends early: {exc}") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ObjectReadError("corrupt_gzip", f"gzip stream is corrupt: {exc}") from exc


def spool(stream: IO[bytes]) -> IO[bytes]:
    """A gzipped Parquet file, unpacked to a temporary file: Parquet needs to seek."""
    spooled = tempfile.TemporaryFile()  # noqa: SIM115 - returned open, closed by the reader
    try:
        shutil.copyfileobj(stream, spooled, 1 << 20)
    except EOFError as exc:
        spooled.close()
        raise ObjectReadError("truncated_gzip", f"gzip stream ends early: {exc}") from exc
    spooled.seek(0)
    return spooled
