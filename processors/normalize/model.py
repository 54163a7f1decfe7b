"""The canonical event and the outcomes of normalizing one raw record (TAXONOMY.md §1, §2, §3, §5).

A normalizer is a pure function ``(raw bytes, NormalizeContext) -> Outcome``: no I/O, no Faust,
no clock. The worker adds ``ingested_at``, ``processed_at`` and the source position when it
encodes the event; those are facts of the pipeline, not of the vendor record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from crmstream.vendors import VENDORS

# mypy cannot see members made from the registry; the code names them through vendor().
Vendor = StrEnum("Vendor", [(spec.symbol, spec.symbol) for spec in VENDORS.values()])  # type: ignore[misc]
"""The vendor of a canonical event: one member per registered vendor (:mod:`crmstream.vendors`),
named and valued by its Avro symbol; :func:`vendor` finds it by the vendor's name."""


def vendor(name: str) -> Vendor:
    """The member of the registered vendor ``name`` (``vendor("segment")``: ``SEGMENT``)."""
    return Vendor(VENDORS[name].symbol)


class EventType(StrEnum):
    """TAXONOMY §2. ``OTHER`` is the Avro enum default, so new symbols stay readable."""

    SEND_REQUESTED = "SEND_REQUESTED"
    SEND = "SEND"
    SEND_ABORTED = "SEND_ABORTED"
    SEND_FAILED = "SEND_FAILED"
    CONTROL = "CONTROL"
    DELIVERY = "DELIVERY"
    DELIVERY_FAILURE = "DELIVERY_FAILURE"
    BOUNCE = "BOUNCE"
    DEFERRAL = "DEFERRAL"
    DROP = "DROP"
    IMPRESSION = "IMPRESSION"
    OPEN = "OPEN"
    CLICK = "CLICK"
    FORM_SUBMIT = "FORM_SUBMIT"
    DISMISS = "DISMISS"
    COMPLAINT = "COMPLAINT"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    CAMPAIGN_TRIGGER = "CAMPAIGN_TRIGGER"
    CAMPAIGN_ENTER = "CAMPAIGN_ENTER"
    CAMPAIGN_EXIT = "CAMPAIGN_EXIT"
    CAMPAIGN_FORCED_EXIT = "CAMPAIGN_FORCED_EXIT"
    CONVERSION = "CONVERSION"
    EXPERIMENT_IMPRESSION = "EXPERIMENT_IMPRESSION"
    OTHER = "OTHER"


class Channel(StrEnum):
    """TAXONOMY §3. ``UNKNOWN`` is the Avro enum default."""

    EMAIL = "EMAIL"
    PUSH = "PUSH"
    SMS = "SMS"
    KAKAO = "KAKAO"
    IN_APP = "IN_APP"
    INBOX = "INBOX"
    WEBHOOK = "WEBHOOK"
    VOICE = "VOICE"
    CUSTOM = "CUSTOM"
    NONE = "NONE"
    UNKNOWN = "UNKNOWN"


class RejectReason(StrEnum):
    """Why a raw record went to the dead-letter topic (README "Dead-letter reasons").

    The first four are TAXONOMY §5's, checked in this order; only they describe the vendor
    record. The others are the pipeline's: the record may be fine and the fault ours or a
    limit's, so a replay after a fix can turn them into events.
    """

    INVALID_JSON = "invalid_json"
    MISSING_EVENT_ID = "missing_event_id"
    MISSING_EVENT_TYPE = "missing_event_type"
    INVALID_TIMESTAMP = "invalid_timestamp"
    # The normalizer raised (a bug): processors.normalize.normalize() dead-letters the record
    # instead of stopping the worker on it, again after every restart (issue 11).
    NORMALIZER_ERROR = "normalizer_error"
    # An output encoded larger than the producer accepts; emitted by the worker, never by a
    # normalizer.
    TOO_LARGE = "too_large"
    # Not a vendor record at all: a stats-updates record the stats agent could not read
    # (written by something other than a crm-stream worker, or corrupted).
    INVALID_STATS_UPDATE = "invalid_stats_update"
    # A ``conversions`` record (the customer's own topic, processors/attribution.py): no user,
    # or fields of the wrong kind. Its other faults reuse the reasons above (invalid_json,
    # missing_event_type for a missing name, invalid_timestamp).
    MISSING_USER_ID = "missing_user_id"
    INVALID_CONVERSION = "invalid_conversion"
    # A record of ``events`` or ``attribution-inputs`` the attribution agents could not read
    # (written by something other than a crm-stream worker, or corrupted).
    INVALID_ATTRIBUTION_INPUT = "invalid_attribution_input"


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    """TAXONOMY §1. ``event_id`` is ``"<VENDOR>:<vendor_event_id>"`` (see :func:`make`)."""

    event_id: str
    vendor: Vendor
    vendor_event_id: str
    vendor_event_type: str
    event_type: EventType
    channel: Channel
    occurred_at: int
    user_id: str | None = None
    device_id: str | None = None
    campaign_id: str | None = None
    campaign_name: str | None = None
    message_id: str | None = None
    message_name: str | None = None
    experiment_id: str | None = None
    variant_id: str | None = None
    link_url: str | None = None
    error: str | None = None
    app_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The Avro record (field names of ``CanonicalEvent.avsc``; enums by symbol name)."""
        return {
            "event_id": self.event_id,
            "vendor": self.vendor.value,
            "vendor_event_id": self.vendor_event_id,
            "vendor_event_type": self.vendor_event_type,
            "event_type": self.event_type.value,
            "channel": self.channel.value,
            "occurred_at": self.occurred_at,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "campaign_id": self.campaign_id,
            "campaign_name": self.campaign_name,
            "message_id": self.message_id,
            "message_name": self.message_name,
            "experiment_id": self.experiment_id,
            "variant_id": self.variant_id,
            "link_url": self.link_url,
            "error": self.error,
            "app_id": self.app_id,
            "attributes": dict(self.attributes),
        }


def make(vendor: Vendor, vendor_event_id: str, **fields: Any) -> CanonicalEvent:
    """Build a canonical event with ``event_id`` derived from vendor and vendor id (§1)."""
    return CanonicalEvent(
        event_id=f"{vendor.value}:{vendor_event_id}",
        vendor=vendor,
        vendor_event_id=vendor_event_id,
        **fields,
    )


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot become a canonical event; it goes to the dead-letter topic."""

    reason: RejectReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not an event at all (Airship ``OFFSET_UPDATE``, a blank keep-alive line)."""

    reason: str


Outcome = CanonicalEvent | Rejected | Skipped


@dataclass(frozen=True, slots=True)
class NormalizeContext:
    """What a normalizer may know besides the record: the connector's configuration.

    ``app_id`` fills ``CanonicalEvent.app_id`` for vendors whose payload has none (Leanplum,
    Segment, Airship: TAXONOMY §1). ``include_pii`` allows copying PII into attributes (§1, §8).
    """

    app_id: str | None = None
    include_pii: bool = False


Normalizer = Callable[[bytes, NormalizeContext], Outcome]
