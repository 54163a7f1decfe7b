"""SEGMENT normalizer: Leanplum as a Segment source [S2] in the Segment envelope [X4],
TAXONOMY.md §6.3.

One record is one Segment message. A batched webhook body (a JSON array [X6]) is split into
messages by the connector, so a bare array here is ``invalid_json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.normalize.common import (
    RecordError,
    attributes,
    iso_to_ms,
    obj,
    parse_object,
    reject,
    required_id,
    required_type,
    text,
)
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Outcome,
    make,
    vendor,
)

# What a Segment record is [X4].
VENDOR = vendor("segment")
ID_FIELD = "messageId"  # Segment dedupes on it upstream too [X5]
TYPE_FIELD = "event"  # the track event name, e.g. "Email Opened"
MESSAGE_TYPE_FIELD = "type"  # the Segment call: track / identify / page ...
TIME_FIELD = "timestamp"  # ISO-8601 with zone, skew-corrected by Segment [X4]
TIME_FORMAT = "ISO-8601 with zone designator"
TRACK = "track"

# §6.3: `event`, matched case-insensitively and exactly -> (event_type, channel).
EVENTS: dict[str, tuple[EventType, Channel]] = {
    "email bounced": (EventType.BOUNCE, Channel.EMAIL),
    "email delivered": (EventType.DELIVERY, Channel.EMAIL),
    "email link clicked": (EventType.CLICK, Channel.EMAIL),
    "email marked as spam": (EventType.COMPLAINT, Channel.EMAIL),
    "email opened": (EventType.OPEN, Channel.EMAIL),
    "unsubscribed": (EventType.UNSUBSCRIBE, Channel.EMAIL),
    # In [S2]'s table, missing from Segment's own Leanplum Source page [X7]: still mapped.
    "push notification received": (EventType.DELIVERY, Channel.PUSH),
    "push notification tapped": (EventType.OPEN, Channel.PUSH),  # push tap is OPEN
    "push notification bounced": (EventType.BOUNCE, Channel.PUSH),
    "experiment viewed": (EventType.EXPERIMENT_IMPRESSION, Channel.NONE),
}
UNMAPPED = (EventType.OTHER, Channel.UNKNOWN)  # other names and non-track calls

# PII that only `include_pii` lets through (§1): Segment's `context` may carry the device's
# IP and user agent [X4]; the Leanplum source does not document its context, so this is all.
PII_CONTEXT_FIELDS: dict[str, str] = {"ip": "ip", "user_agent": "userAgent"}


def vendor_event_id(record: Mapping[str, Any]) -> str | None:
    """``messageId``; ``None`` when absent, null or empty."""
    try:
        return required_id(record.get(ID_FIELD), ID_FIELD)
    except RecordError:
        return None


def normalize(raw: bytes, ctx: NormalizeContext) -> Outcome:
    try:
        return _normalize(parse_object(raw), ctx)
    except RecordError as exc:
        return reject(exc)


def _event_name(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The vendor event type and whether the message is a ``track`` call.

    A non-track call (``identify``, ``page`` ...) has no ``event``; its call type stands in as
    the vendor event type so it is kept as OTHER instead of being rejected (§2 "never rejected").
    """
    call = record.get(MESSAGE_TYPE_FIELD)
    is_track = call is None or (isinstance(call, str) and call.strip().lower() == TRACK)
    if not is_track and not (isinstance(record.get(TYPE_FIELD), str) and record[TYPE_FIELD]):
        return required_type(call, MESSAGE_TYPE_FIELD), False
    return required_type(record.get(TYPE_FIELD), TYPE_FIELD), is_track


def _first(*values: Any) -> str | None:
    for value in values:
        result = text(value)
        if result is not None:
            return result
    return None


def _normalize(record: dict[str, Any], ctx: NormalizeContext) -> CanonicalEvent:
    message_id = required_id(record.get(ID_FIELD), ID_FIELD)
    name, is_track = _event_name(record)
    occurred_at = iso_to_ms(record.get(TIME_FIELD), TIME_FIELD)
    event_type, channel = EVENTS.get(name.casefold(), UNMAPPED) if is_track else UNMAPPED

    props = obj(record.get("properties"))
    # Push events nest campaign data as `campaign.*`; accept the flat dotted keys too.
    nested = obj(props.get("campaign"))

    def campaign(key: str) -> Any:
        value = nested.get(key)
        return value if value is not None else props.get(f"campaign.{key}")

    # §6.3: email events carry flat properties, push events `campaign.*`. Read the channel's own
    # source first and fall back to the other, so an unknown event still gets its ids.
    email = {
        "campaign_id": props.get("campaign_id"),
        "campaign_name": props.get("campaign_name"),
        "message_id": props.get("message_id"),
        "message_name": props.get("email_subject"),  # "the message name in Leanplum" [S2]
    }
    push = {
        "campaign_id": campaign("id"),
        "campaign_name": campaign("name"),
        "message_id": campaign("message_id"),
        "message_name": campaign("message_name"),
    }
    first, second = (push, email) if channel is Channel.PUSH else (email, push)
    # The envelope `messageId` is Segment's, never the Leanplum message id (§6.3).
    ids = {key: _first(first[key], second[key]) for key in first}

    context = obj(record.get("context"))
    pii = (
        {attr: context.get(field) for attr, field in PII_CONTEXT_FIELDS.items()}
        if ctx.include_pii
        else {}
    )
    attrs = attributes(
        {
            "anonymous_id": record.get("anonymousId"),  # never user_id (§1)
            "email_id": props.get("email_id"),
            "message_instance_id": props.get("email_id"),  # per-recipient id
            "link_id": props.get("link_id"),
            "received_at": record.get("receivedAt"),
            "sent_at": record.get("sentAt"),
            "campaign_medium": campaign("medium"),
            "experiment_name": props.get("experiment_name"),
            "variant_name": props.get("variant_name"),
            **pii,
        }
    )
    return make(
        VENDOR,
        message_id,
        vendor_event_type=name,
        event_type=event_type,
        channel=channel,
        occurred_at=occurred_at,
        user_id=text(record.get("userId")),
        device_id=text(obj(context.get("device")).get("id")),
        **ids,
        experiment_id=text(props.get("experiment_id")),
        variant_id=text(props.get("variant_id")),
        link_url=text(props.get("link_url")) if event_type is EventType.CLICK else None,
        app_id=ctx.app_id,  # Segment source from connector config (§1)
        attributes=attrs,
    )
