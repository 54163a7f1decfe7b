"""A local folder laid out like the bucket (demo, tests, a mounted volume)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from connectors.objectstore.errors import ObjectChangedError
from connectors.objectstore.stores.base import ObjectInfo


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
