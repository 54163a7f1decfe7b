"""What the source needs from a bucket or a folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol


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
