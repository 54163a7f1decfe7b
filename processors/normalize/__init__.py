"""Vendor normalizers: pure functions ``(raw bytes, NormalizeContext) -> Outcome``.

Found through :data:`NORMALIZERS`, an explicit registry (no import side effects), so grep and
the type checker can follow a vendor from the CLI to its module.
"""

from __future__ import annotations

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
)

NORMALIZERS: dict[str, Normalizer] = {
    "leanplum": leanplum.normalize,
    "pinpoint": pinpoint.normalize,
    "segment": segment.normalize,
    "flarelane": flarelane.normalize,
    "airship": airship.normalize,
}

VENDOR_OF: dict[str, Vendor] = {name: Vendor(name.upper()) for name in NORMALIZERS}

__all__ = [
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
]
