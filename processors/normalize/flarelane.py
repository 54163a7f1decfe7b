"""FLARELANE normalizer: CRM events exported to S3 [S3], TAXONOMY.md §6.4.

One record is one exported row as a JSON object. Columns a channel does not use are null or
absent; both read the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from processors.normalize.common import (
    MAX_INT_DIGITS,
    RecordError,
    as_bool,
    attributes,
    iso_to_ms,
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

# What a FlareLane record is [S3].
VENDOR = vendor("flarelane")
ID_FIELD = "id"  # ULID, time-sortable
TYPE_FIELD = "type"  # "<channel>.<suffix>", e.g. push.sent
TIME_FIELD = "time"  # RFC 3339, UTC; a zone designator is required (§1)
TIME_FORMAT = "RFC 3339"
APP_ID_FIELD = "projectid"  # partition column; FlareLane's payload has its own app id

# §6.4 channel, from the `channel` column, else from the `type` prefix; other -> UNKNOWN.
CHANNELS: dict[str, Channel] = {
    "push": Channel.PUSH,
    "sms": Channel.SMS,
    "kakaoalimtalk": Channel.KAKAO,  # one KAKAO channel, raw value in vendor_channel
    "kakaobrandmessage": Channel.KAKAO,
    "email": Channel.EMAIL,
    "iam": Channel.IN_APP,
}

# §6.4 engagement types, by exact name.
EVENTS: dict[str, EventType] = {
    "push.clicked": EventType.OPEN,  # a push tap is OPEN although FlareLane says clicked
    "email.opened": EventType.OPEN,
    "email.clicked": EventType.CLICK,  # no URL column exists: link_url stays null
    "email.complaint": EventType.COMPLAINT,
    "iam.displayed": EventType.IMPRESSION,
    "iam.clicked": EventType.CLICK,
    "iam.closed": EventType.DISMISS,
}

# §6.4 lifecycle suffixes, defined generically by the seed, so mapped for any channel.
LIFECYCLE: dict[str, EventType] = {
    "created": EventType.SEND_REQUESTED,
    "sent": EventType.SEND,
    "aborted": EventType.SEND_ABORTED,
    "failed": EventType.SEND_FAILED,
    "delivered": EventType.DELIVERY,
    "undelivered": EventType.DELIVERY_FAILURE,
}

# §6.4 attributes, copied under their column names.
ATTRIBUTE_COLUMNS = (
    "trigger_type",
    "journey_id",
    "journey_name",
    "journey_step_id",
    "journey_enrollment_id",
    "recurring_message_id",
    "provider",
    "provider_message_id",
    "provider_error",
    "platform",
    "message_type",
    "kakaoalimtalk_template_code",
    "iam_group",
    "iam_clickable_id",
)

# Delivery addresses and message content (§1, §8): copied only with `include_pii`.
PII_COLUMNS = ("sender", "recipient", "subject", "body")


def vendor_event_id(record: Mapping[str, Any]) -> str | None:
    """``id``; ``None`` when absent, null or empty."""
    try:
        return required_id(record.get(ID_FIELD), ID_FIELD)
    except RecordError:
        return None


def normalize(raw: bytes, ctx: NormalizeContext) -> Outcome:
    try:
        return _normalize(parse_object(raw), ctx)
    except RecordError as exc:
        return reject(exc)


def classify(vendor_type: str) -> EventType:
    """Exact engagement names first, then the generic lifecycle suffix; else OTHER."""
    if vendor_type in EVENTS:
        return EVENTS[vendor_type]
    _, dot, suffix = vendor_type.rpartition(".")
    return LIFECYCLE.get(suffix, EventType.OTHER) if dot else EventType.OTHER


def channel_of(record: Mapping[str, Any], vendor_type: str) -> Channel:
    column = text(record.get("channel"))
    source = column if column is not None else vendor_type.partition(".")[0]
    return CHANNELS.get(source.strip().lower(), Channel.UNKNOWN)


# An int column written as a string: ASCII digits only (str.isdigit() also accepts "²", which
# int() refuses) and no more of them than the parser reads in an integer literal.
_INT_TEXT = re.compile(rf"-?[0-9]{{1,{MAX_INT_DIGITS}}}")


def _minutes(value: Any) -> int | None:
    """``iam_dont_show_minutes`` (an int column; tolerate ``"60"`` and ``60.0``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value)
    return None


def _normalize(record: dict[str, Any], ctx: NormalizeContext) -> CanonicalEvent:
    event_id = required_id(record.get(ID_FIELD), ID_FIELD)
    vendor_type = required_type(record.get(TYPE_FIELD), TYPE_FIELD)
    occurred_at = iso_to_ms(record.get(TIME_FIELD), TIME_FIELD)
    event_type = classify(vendor_type)

    extra: dict[str, Any] = {column: record.get(column) for column in ATTRIBUTE_COLUMNS}
    advertisement = as_bool(record.get("is_advertisement"))  # may arrive as a string (§4)
    extra["is_advertisement"] = (
        advertisement if advertisement is not None else record.get("is_advertisement")
    )
    extra["vendor_channel"] = record.get("channel")
    extra["message_instance_id"] = record.get("provider_message_id")
    minutes = _minutes(record.get("iam_dont_show_minutes"))
    extra["iam_dont_show_minutes"] = (
        minutes if minutes is not None else record.get("iam_dont_show_minutes")
    )
    if vendor_type == "iam.closed":
        # "0/null means a simple close, a positive value means hidden for N minutes" [S3]
        extra["iam_close"] = f"hidden {minutes} min" if minutes and minutes > 0 else "close"
    if ctx.include_pii:
        extra.update({column: record.get(column) for column in PII_COLUMNS})

    return make(
        VENDOR,
        event_id,
        vendor_event_type=vendor_type,
        event_type=event_type,
        channel=channel_of(record, vendor_type),
        occurred_at=occurred_at,
        user_id=text(record.get("userid")),  # null = unidentified user
        device_id=text(record.get("deviceid")),
        # Documented as required, but a missing one is tolerated as null.
        campaign_id=text(record.get("campaign_id")),
        campaign_name=text(record.get("campaign_name")),
        message_id=text(record.get("template_id")),  # no message id exists
        message_name=text(record.get("template_name")),
        error=text(record.get("error")) or text(record.get("provider_error")),
        app_id=text(record.get(APP_ID_FIELD)),
        attributes=attributes(extra),
    )
