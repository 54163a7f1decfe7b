"""JSON lines: one JSON value per line (Firehose, FlareLane, Leanplum's line framing [A-6])."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson

from connectors.objectstore.formats.base import Row

NAME = "json-lines"


def read_json_lines(lines: Iterable[bytes], skip: int = 0) -> Iterator[Row]:
    """Every non-blank line from row ``skip`` on. A line that is not JSON is still a row (its
    ``doc`` is None): a bad line in a good file is published raw, and the worker dead-letters it
    as invalid_json with its source position (TAXONOMY §5)."""
    index = 0
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if index >= skip:
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError:
                doc = None
            yield Row(index, text, doc)
        index += 1
