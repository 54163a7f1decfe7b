"""Parsing helpers every vendor normalizer shares (TAXONOMY §1 field rules, §4 parsing rules).

Every helper here returns a value or raises :class:`RecordError` for any JSON input, whatever
its types, size or depth: a record must never stop the worker (issue 11). Two limits make that
possible and are part of the contract (README "Dead-letter reasons"):

* :data:`MAX_DEPTH` levels of nested arrays/objects. Deeper records are ``invalid_json``; below
  the limit nothing here can reach Python's recursion limit or orjson's serializer limit.
* :data:`MAX_INT_DIGITS` digits per integer literal. Longer ones are ``invalid_json``; every
  shorter integer is read exactly, whatever its size (§1: numeric ids are never read through a
  double).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from processors.normalize.model import Rejected, RejectReason

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a record may have; the record itself is level 1.

Vendor payloads nest about six levels deep. Deeper input is rejected before any field is read,
because rendering it as text recurses (Python's recursion limit) and orjson serializes at most
254 levels."""

MAX_INT_DIGITS = 640
"""Longest integer literal read, in digits. Python converts longer integers to and from text
only below ``sys.get_int_max_str_digits()`` (``PYTHONINTMAXSTRDIGITS``), and 640 is the lowest
that limit can be set to, so a record's outcome never depends on the interpreter's setting."""

MIN_EPOCH_MS = 0
"""1970-01-01T00:00:00.000Z: an earlier ``occurred_at`` is ``invalid_timestamp``."""

MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: a later ``occurred_at`` is ``invalid_timestamp``. It keeps every
time the worker derives from an event (a window end is ``occurred_at`` plus at most an hour)
far inside an Avro ``long``, and below 2**53, where a double still holds every integer."""

DETAIL_VALUE_CHARS = 80
"""How much of a bad value a reject detail quotes: a detail names the problem and must stay
small even when the value is 400,000 characters long (the dead letter already keeps the raw
record)."""

# An integer literal orjson may read as a double: it reads every integer of 64 bits exactly,
# signed or not, so only 20 or more digits in a row (above 2**64 - 1 from 20 digits on) or a
# minus and 19 digits (below -2**63 from 19 digits on) can be one. Only records with such a run
# take the slower exact parser; ids of 19 digits (Leanplum's) do not. Found by mapping every
# digit to "0", the minus to "-" and anything else to "." and looking for the two runs: a
# tenth of a regex's time.
_DIGITS_AS_ZERO = bytes(
    0x30 if 0x30 <= byte <= 0x39 else 0x2D if byte == 0x2D else 0x2E for byte in range(256)
)
_LONG_DIGIT_RUN = b"0" * 20
_LONG_NEGATIVE_RUN = b"-" + b"0" * 19


class RecordError(Exception):
    """Raised inside a normalizer for a record that must be rejected; see :func:`reject`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_object(raw: bytes | str, what: str = "record") -> dict[str, Any]:
    """The record as a JSON object, or ``RecordError(invalid_json)`` (see :func:`parse_json`)."""
    value = parse_json(raw, what)
    if not isinstance(value, dict):
        raise RecordError(
            RejectReason.INVALID_JSON,
            f"{what}: expected a JSON object, got {type(value).__name__}",
        )
    return value


def parse_json(raw: bytes | str, what: str = "record") -> Any:
    """A JSON document within :data:`MAX_DEPTH` and :data:`MAX_INT_DIGITS`, integers exact.

    orjson reads nearly every record. It reads an integer beyond 64 bits as a double, so a
    record with a run of 20+ digits, or a minus and 19, is read by :func:`_parse_exact`
    instead; both accept the same documents and give the same values (a property test holds
    them to it). Anything else is ``RecordError(invalid_json)``: not UTF-8, not JSON,
    NaN/Infinity, a lone surrogate, a number beyond a double's range, or either limit exceeded.
    """
    scanned = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    shape = scanned.translate(_DIGITS_AS_ZERO)
    if _LONG_DIGIT_RUN in shape or _LONG_NEGATIVE_RUN in shape:
        value = _parse_exact(raw, what)
        _check_tree(value, what, check_strings=True)
        return value
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # orjson's own limit (1024 levels)
            raise RecordError(RejectReason.INVALID_JSON, _too_deep(what)) from None
        raise RecordError(RejectReason.INVALID_JSON, f"{what} is not JSON: {exc}") from None
    # A record cannot nest deeper than it has brackets, and nearly none has MAX_DEPTH of them:
    # two C-speed counts spare the walk.
    if scanned.count(b"[") + scanned.count(b"{") > MAX_DEPTH:
        _check_tree(value, what, check_strings=False)
    return value


def _too_deep(what: str) -> str:
    return f"{what} nests arrays/objects deeper than {MAX_DEPTH} levels (the limit)"


def _parse_exact(raw: bytes | str, what: str) -> Any:
    """The standard library's parser, made as strict as orjson, with exact integers."""

    def exact_int(literal: str) -> int:
        digits = len(literal) - literal.startswith("-")
        if digits > MAX_INT_DIGITS:
            raise RecordError(
                RejectReason.INVALID_JSON,
                f"{what} has an integer of {digits} digits; at most {MAX_INT_DIGITS} are read",
            )
        return int(literal)

    def finite_float(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")):  # orjson refuses these too
            raise RecordError(
                RejectReason.INVALID_JSON, f"{what}: number {shown(literal)} is beyond a double"
            )
        return value

    def no_constant(literal: str) -> Any:  # NaN, Infinity, -Infinity are not JSON
        raise RecordError(RejectReason.INVALID_JSON, f"{what} is not JSON: {literal} is no number")

    try:
        document = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(
            document, parse_int=exact_int, parse_float=finite_float, parse_constant=no_constant
        )
    except UnicodeDecodeError as exc:
        raise RecordError(RejectReason.INVALID_JSON, f"{what} is not UTF-8: {exc}") from None
    except RecursionError:
        raise RecordError(RejectReason.INVALID_JSON, _too_deep(what)) from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise RecordError(RejectReason.INVALID_JSON, f"{what} is not JSON: {exc}") from None


def _check_tree(value: Any, what: str, *, check_strings: bool) -> None:
    """``RecordError(invalid_json)`` if ``value`` nests deeper than :data:`MAX_DEPTH`, or, with
    ``check_strings``, holds a string with a lone surrogate (which orjson refuses to read and
    the Avro encoder to write; the standard library's parser lets ``"\\ud800"`` through).
    Iterative, so that it cannot hit the recursion limit it guards against."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            children: Any = node.values()
            if check_strings:
                for key in node:
                    _check_string(key, what)
        elif type(node) is list:
            children = node
        else:
            if check_strings and type(node) is str:
                _check_string(node, what)
            continue
        if depth > MAX_DEPTH:
            raise RecordError(RejectReason.INVALID_JSON, _too_deep(what))
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
            elif check_strings and type(child) is str:
                _check_string(child, what)


def _check_string(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(
            RejectReason.INVALID_JSON, f"{what} has a string with a lone surrogate"
        ) from None


def reject(exc: RecordError) -> Rejected:
    return Rejected(exc.reason, exc.detail)


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty mapping (missing or wrong-typed parents)."""
    # type() first: nearly every value is a plain dict, and an ABC isinstance check is slow.
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def text(value: Any) -> str | None:
    """A vendor value as an opaque string; ``None`` and ``""`` become ``None`` (§1).

    Integers are formatted exactly (never via float, §1 ``campaign_id``); integral floats lose
    their ``.0`` so that ``123.0`` and ``123`` give the same id; booleans become true/false;
    arrays are comma-joined (§1 ``attributes``) and objects written as JSON.

    Any JSON value works, also outside a normalizer (connectors call ``vendor_event_id`` on
    what orjson read, up to 1024 levels deep): an array or object nested deeper than
    :data:`MAX_DEPTH` raises ``RecordError(invalid_json)``, as the whole record would.
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
        # inf/nan cannot come out of parse_json; a caller's value still gets a text.
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value or None
    if isinstance(value, (list, dict)):
        _check_tree(value, "value", check_strings=False)
        return _container_text(value)
    return orjson.dumps(value, default=repr).decode()


def _container_text(value: list[Any] | dict[str, Any]) -> str | None:
    """:func:`text` of an array or object already known to be within :data:`MAX_DEPTH`."""
    if isinstance(value, list):
        parts = (_container_text(v) if isinstance(v, (list, dict)) else text(v) for v in value)
        return ",".join(t for t in parts if t is not None) or None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # An integer beyond 64 bits (read exactly by parse_json): the standard library writes
        # it exactly; orjson refuses it.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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


# ASCII digits only: ``\d`` would also match other scripts' digits (fullwidth, Arabic-Indic ...),
# which int() reads.
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$",
    re.ASCII,
)


def iso_to_ms(value: Any, what: str, *, assume_utc: bool = False) -> int:
    """ISO-8601 / RFC 3339 string -> epoch ms UTC, sub-ms digits truncated (§1).

    Any number of fractional digits is accepted (Airship sends 1-3, ``...21.12Z``). A string
    without a zone designator is rejected unless ``assume_utc`` (Leanplum only, [A-8]). The
    moment must lie within :data:`MIN_EPOCH_MS` .. :data:`MAX_EPOCH_MS`.
    """
    if not isinstance(value, str):
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP,
            f"{what} is {'missing' if value is None else type(value).__name__}, expected a string",
        )
    match = _ISO.match(value.strip())
    if not match:
        raise RecordError(RejectReason.INVALID_TIMESTAMP, f"{what} {shown(value)} is not ISO-8601")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    if zone is None and not assume_utc:
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP, f"{what} {shown(value)} has no zone designator"
        )
    h, m, s = int(hour), int(minute), int(second or 0)
    try:
        if h < 24 and m < 60 and s < 60:
            # The day's start from a cache (events of a batch share a few days); the date is
            # checked by datetime, once per day.
            seconds = _day_start_s(int(year), int(month), int(day)) + h * 3600 + m * 60 + s
        else:  # datetime says what is wrong, as for any other invalid moment
            seconds = int(
                datetime(int(year), int(month), int(day), h, m, s, tzinfo=UTC).timestamp()
            )
    except ValueError as exc:
        raise RecordError(RejectReason.INVALID_TIMESTAMP, f"{what} {shown(value)}: {exc}") from None
    millis = int((frac or "0")[:3].ljust(3, "0"))
    offset_minutes = 0
    if zone and zone not in {"Z", "z"}:
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:  # RFC 3339 time-numoffset: 00-23 ":" 00-59
            raise RecordError(
                RejectReason.INVALID_TIMESTAMP, f"{what} {shown(value)} has no valid zone offset"
            )
        offset_minutes = (-1 if zone[0] == "-" else 1) * (hours * 60 + minutes)
    seconds -= offset_minutes * 60
    return _in_range(seconds * 1000 + millis, what, value)


@functools.lru_cache(maxsize=4096)
def _day_start_s(year: int, month: int, day: int) -> int:
    """Epoch seconds of a UTC day's start; ``ValueError`` (not cached) for a date that does
    not exist."""
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def epoch_ms(value: Any, what: str) -> int:
    """An integer epoch-ms value (Pinpoint) within :data:`MIN_EPOCH_MS` .. :data:`MAX_EPOCH_MS`.

    Booleans, strings and floats with a fraction are ``invalid_timestamp``. An integral float
    (``1562109497426.0``) is accepted: within the range a double holds every integer exactly.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP,
            f"{what} is {'missing' if value is None else type(value).__name__}, expected epoch ms",
        )
    if isinstance(value, float) and not value.is_integer():  # also inf and nan
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP, f"{what} {shown(value)} is not an integer"
        )
    if not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:  # compared before int(): no float overflow
        raise _out_of_range(what, value)
    return int(value)


def _in_range(millis: int, what: str, value: Any) -> int:
    if not MIN_EPOCH_MS <= millis <= MAX_EPOCH_MS:
        raise _out_of_range(what, value)
    return millis


def _out_of_range(what: str, value: Any) -> RecordError:
    return RecordError(
        RejectReason.INVALID_TIMESTAMP,
        f"{what} {shown(value)} is outside 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z",
    )


def shown(value: Any) -> str:
    """``repr(value)`` for a reject detail, cut to :data:`DETAIL_VALUE_CHARS` characters."""
    if isinstance(value, (list, dict)):  # never repr'd whole: it may be huge or deep
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, str) and len(value) > DETAIL_VALUE_CHARS:
        return f"{value[:DETAIL_VALUE_CHARS]!r}... ({len(value)} characters)"
    written = repr(value)
    if len(written) > DETAIL_VALUE_CHARS:
        return f"{written[:DETAIL_VALUE_CHARS]}... ({len(written)} characters)"
    return written
