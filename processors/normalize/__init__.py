"""Vendor normalizers: pure functions ``(raw bytes, NormalizeContext) -> Outcome``.

Found through :data:`NORMALIZERS`, an explicit registry (no import side effects), so grep and
the type checker can follow a vendor from the CLI to its module. Callers go through
:func:`normalize`, which turns a normalizer's bug into a dead letter instead of a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from processors.normalize import airship, flarelane, leanplum, pinpoint, segment
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Normalizer,
    Outcome,
    Rejected,
    RejectReason,
    Skipped,
    Vendor,
    vendor,
)

NORMALIZERS: dict[str, Normalizer] = {
    "leanplum": leanplum.normalize,
    "pinpoint": pinpoint.normalize,
    "segment": segment.normalize,
    "flarelane": flarelane.normalize,
    "airship": airship.normalize,
}

# Each vendor's event id of a parsed record: the raw-topic key connectors publish under, so all
# copies of an event share a partition and meet in the dedupe table. The CLI hands each connector
# its vendor's function (connectors do not import the normalizers).
EVENT_IDS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "leanplum": leanplum.vendor_event_id,
    "pinpoint": pinpoint.vendor_event_id,
    "segment": segment.vendor_event_id,
    "flarelane": flarelane.vendor_event_id,
    "airship": airship.vendor_event_id,
}

VENDOR_OF: dict[str, Vendor] = {name: vendor(name) for name in NORMALIZERS}

ERROR_DETAIL_CHARS = 500
"""How much of a normalizer's exception a ``normalizer_error`` detail keeps."""

log = logging.getLogger(__name__)


def normalize(vendor: str, raw: bytes, ctx: NormalizeContext) -> Outcome:
    """``NORMALIZERS[vendor](raw, ctx)``, and exactly one Outcome whatever ``raw`` holds.

    A normalizer returns a ``Rejected`` for every bad record it knows of; an exception out of
    it is a bug. The worker stopped on such a bug and met the same record again after every
    restart, so one record held its partition for good (issue 11). Here the record becomes a
    ``normalizer_error`` dead letter (the raw bytes are kept, so it can be replayed once the
    bug is fixed) and the traceback is logged at ERROR. ``MemoryError`` still propagates: it
    says more about the process than about the record. An unknown ``vendor`` is the caller's
    bug and raises ``KeyError``.
    """
    normalizer = NORMALIZERS[vendor]
    try:
        return normalizer(raw, ctx)
    except MemoryError:
        raise
    except Exception as exc:
        log.error(
            "%s normalizer raised; the record is dead-lettered as %s",
            vendor,
            RejectReason.NORMALIZER_ERROR.value,
            exc_info=True,
            extra={"vendor": vendor, "reason": RejectReason.NORMALIZER_ERROR.value},
        )
        return Rejected(RejectReason.NORMALIZER_ERROR, _error_detail(exc))


def _error_detail(exc: Exception) -> str:
    """``"<type>: <message>"``, cut to :data:`ERROR_DETAIL_CHARS`, always valid UTF-8 (the
    dead letter's ``detail`` is an Avro string)."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not escape from the last line of defence
        message = "<message unavailable>"
    detail = f"{type(exc).__name__}: {message}"
    if len(detail) > ERROR_DETAIL_CHARS:
        detail = detail[:ERROR_DETAIL_CHARS] + f"... ({len(detail)} characters)"
    return detail.encode("utf-8", "backslashreplace").decode("utf-8")


__all__ = [
    "EVENT_IDS",
    "NORMALIZERS",
    "VENDOR_OF",
    "CanonicalEvent",
    "Channel",
    "EventType",
    "NormalizeContext",
    "Normalizer",
    "Outcome",
    "RejectReason",
    "Rejected",
    "Skipped",
    "Vendor",
    "normalize",
]
