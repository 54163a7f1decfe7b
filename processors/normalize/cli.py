"""``crm-stream normalize VENDOR [FILE]``: one JSON line out for every line in, in order.

Any bytes work: a line that is not UTF-8 or not JSON is a reject line like any other bad
record, and a last line without its newline is still a line. The command exits 0 whatever
the records hold.
"""

from __future__ import annotations

import sys
from typing import IO

import orjson

from processors.normalize import normalize
from processors.normalize.model import CanonicalEvent, NormalizeContext, Rejected, Skipped


def outcome_json(outcome: CanonicalEvent | Rejected | Skipped) -> bytes:
    if isinstance(outcome, CanonicalEvent):
        return orjson.dumps(outcome.to_record())
    if isinstance(outcome, Rejected):
        return orjson.dumps({"reject": outcome.reason.value, "detail": outcome.detail})
    return orjson.dumps({"skip": outcome.reason})


def normalize_lines(vendor: str, lines: IO[bytes], out: IO[bytes], ctx: NormalizeContext) -> int:
    """Every line of ``lines`` through the safe entry point, one output line each; returns
    the count. A line ends at ``\\n`` (a ``\\r`` before it is dropped too), nowhere else."""
    count = 0
    for line in lines:
        out.write(outcome_json(normalize(vendor, line.rstrip(b"\r\n"), ctx)) + b"\n")
        count += 1
    out.flush()
    return count


def run(vendor: str, path: str, *, app_id: str | None, include_pii: bool) -> int:
    ctx = NormalizeContext(app_id=app_id, include_pii=include_pii)
    if path == "-":
        normalize_lines(vendor, sys.stdin.buffer, sys.stdout.buffer, ctx)
    else:
        with open(path, "rb") as lines:
            normalize_lines(vendor, lines, sys.stdout.buffer, ctx)
    return 0
