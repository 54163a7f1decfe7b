"""Parsing helpers every vendor normalizer shares (TAXONOMY §1 field rules, §4 parsing rules)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from processors.normalize.model import Rejected, RejectReason


class RecordError(Exception):
    """Raised inside a normalizer for a record that must be rejected; see :func:`reject`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_object(raw: bytes | str) -> dict[str, Any]:
    """The record as a JSON object, or ``RecordError(invalid_json)``."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(RejectReason.INVALID_JSON, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RecordError(
            RejectReason.INVALID_JSON, f"expected a JSON object, got {type(value).__name__}"
        )
    return value


def reject(exc: RecordError) -> Rejected:
    return Rejected(exc.reason, exc.detail)


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty mapping (missing or wrong-typed parents)."""
    # type() first: nearly every value is a plain dict, and an ABC isinstance check is slow.
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def text(value: Any) -> str | None:
    """A vendor value as an opaque string; ``None`` and ``""`` become ``None`` (§1).

    Integers are formatted exactly (never via float, §1 ``campaign_id``); integral floats lose
    their ``.0`` so that ``123.0`` and ``123`` give the same id; booleans become true/false.
    """
    # Exact type checks first, most common first: this runs ~20 times per record.
    kind = type(value)
    if kind is str:
        return value or None
    if value is None:
        return None
    if kind is int:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        return ",".join(t for t in (text(v) for v in value) if t is not None) or None
    return orjson.dumps(value).decode()


def required_id(value: Any, what: str) -> str:
    """A required vendor id: absent, null or empty -> ``missing_event_id`` (§5)."""
    result = text(value) if not isinstance(value, (dict, list)) else None
    if result is None or not result.strip():
        raise RecordError(RejectReason.MISSING_EVENT_ID, f"{what} is missing or empty")
    return result


def required_type(value: Any, what: str) -> str:
    """A required vendor event type; absent, null, empty or non-string -> ``missing_event_type``."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError(RejectReason.MISSING_EVENT_TYPE, f"{what} is missing or empty")
    return value


def attributes(pairs: Mapping[str, Any]) -> dict[str, str]:
    """Stringify attribute values (§1: booleans as true/false, arrays comma-joined); drop nulls."""
    out: dict[str, str] = {}
    for key, value in pairs.items():
        rendered = text(value)
        if rendered is not None:
            out[key] = rendered
    return out


def as_bool(value: Any) -> bool | None:
    """Booleans may arrive as strings (§4)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    return None


_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def iso_to_ms(value: Any, what: str, *, assume_utc: bool = False) -> int:
    """ISO-8601 / RFC 3339 string -> epoch ms UTC, sub-ms digits truncated (§1).

    Any number of fractional digits is accepted (Airship sends 1-3, ``...21.12Z``). A string
    without a zone designator is rejected unless ``assume_utc`` (Leanplum only, [A-8]).
    """
    if not isinstance(value, str):
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP,
            f"{what} is {'missing' if value is None else type(value).__name__}, expected a string",
        )
    match = _ISO.match(value.strip())
    if not match:
        raise RecordError(RejectReason.INVALID_TIMESTAMP, f"{what} {value!r} is not ISO-8601")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    if zone is None and not assume_utc:
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP, f"{what} {value!r} has no zone designator"
        )
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=UTC
        )
    except ValueError as exc:
        raise RecordError(RejectReason.INVALID_TIMESTAMP, f"{what} {value!r}: {exc}") from None
    millis = int((frac or "0")[:3].ljust(3, "0"))
    offset_minutes = 0
    if zone and zone not in {"Z", "z"}:
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset_minutes = sign * (int(digits[:2]) * 60 + int(digits[2:4] or 0))
    seconds = int(moment.timestamp()) - offset_minutes * 60
    return seconds * 1000 + millis


def epoch_ms(value: Any, what: str) -> int:
    """An integer epoch-ms value (Pinpoint). Booleans, floats with fractions and strings are
    rejected as ``invalid_timestamp``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP,
            f"{what} is {'missing' if value is None else type(value).__name__}, expected epoch ms",
        )
    if isinstance(value, float) and not value.is_integer():
        raise RecordError(RejectReason.INVALID_TIMESTAMP, f"{what} {value!r} is not an integer")
    return int(value)
