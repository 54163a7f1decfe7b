"""What every format yields: one :class:`Row` per record of an object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    """One record of an object: its 0-based position, the bytes to publish, the parsed value."""

    index: int
    value: bytes
    doc: Any  # the parsed JSON / Parquet row, or None when the bytes are not JSON
