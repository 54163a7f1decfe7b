"""A JSON array of records (one of Leanplum's possible JSON framings [A-6])."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from connectors.objectstore.errors import ObjectReadError
from connectors.objectstore.formats.base import Row

NAME = "json-array"


def read_json_array(data: bytes, skip: int = 0) -> Iterator[Row]:
    # Leanplum JSON files hold about 50 000 events (seed 000 "Frequency"): small enough to
    # parse whole. Elements are re-serialized; their content is unchanged.
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ObjectReadError("invalid_json", f"not a JSON array: {exc}") from exc
    if not isinstance(items, list):
        raise ObjectReadError("invalid_json", "top-level JSON value is not an array")
    for index, item in enumerate(items):
        if index >= skip:
            yield Row(index, orjson.dumps(item), item)
