"""ZIP (the stdlib's ``zipfile``): Firehose's ``ZIP`` compression writes one archive per object.

The members are read in archive order and concatenated, so an archive of one JSON-lines file
(what Firehose writes) or of several reads as one stream of records.
"""

from __future__ import annotations

import io
import zipfile
import zlib

from connectors.objectstore.errors import ObjectReadError

NAME = "zip"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive


def is_zip(head: bytes) -> bool:
    return head.startswith(ZIP_MAGICS)


def unzip(data: bytes) -> bytes:
    """Every member's content, in archive order; a damaged archive is ``corrupt_zip``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return b"".join(archive.read(info) for info in archive.infolist() if not info.is_dir())
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise ObjectReadError("corrupt_zip", f"not a readable ZIP archive: {exc}") from exc
