"""LEANPLUM normalizer: the AWS S3 Data Feed [S0], TAXONOMY.md §6.1.

Two record shapes arrive, and both map the same way:

* the JSON feed: ``{"event_id", "name", "properties": {...}}`` with ``properties.time`` as
  ``yyyy-MM-dd HH:mm:ss.SSS`` without a zone;
* a Parquet row, as the S3 connector turns it into one JSON object: the flat Avro record
  ``schema_version, name, event_id, user_id, device_id, time (long), user_attributes...`` with
  nested ``Campaign``, ``Message`` and ``AbTest`` records. The Avro JSON encoding of the same row
  (unions wrapped as ``{"string": ...}``, ``{"long": ...}``, ``{"<ns>.Campaign": {...}}``) is
  accepted too.

The Parquet row is first rewritten into the JSON feed's ``properties`` so that one table drives
both shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import Any

from processors.normalize.common import (
    RecordError,
    attributes,
    epoch_ms,
    iso_to_ms,
    obj,
    parse_object,
    reject,
    required_id,
    required_type,
    shown,
    text,
)
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Outcome,
    RejectReason,
    make,
    vendor,
)

# What a Leanplum record is [S0].
VENDOR = vendor("leanplum")
ID_FIELD = "event_id"  # "Unique event id. Can be used for deduplication."
TYPE_FIELD = "name"  # kept verbatim as vendor_event_type; classification ignores it
TIME_FIELD = "time"  # properties.time (JSON) or the flat row field (Parquet)
TIME_FORMAT = "yyyy-MM-dd HH:mm:ss.SSS"  # no zone designator: read as UTC
TIME_SENTINEL = "1970-01-01 00:00:00.000"  # the schema default, i.e. "unset" (§6.1)
ROW_TIME_UNIT = "epoch ms"  # Parquet `time` is a long of undocumented unit

CAMPAIGN_NAME_PREFIX = "(Leanplum) Campaign "  # the campaign events' name default [S0]
AB_TEST_NAME = "(Leanplum) A/B Test Impression"  # the A/B event's fixed name [S0]

# Record names of the Parquet/Avro schema (namespace com.leanplum.partners.feed.models.avro).
AVRO_NAMESPACE = "com.leanplum.partners.feed.models.avro"
AVRO_UNION_BRANCHES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string", "map", "array"}
    | {
        name
        for rec in ("AbTest", "Campaign", "Message")
        for name in (rec, f"{AVRO_NAMESPACE}.{rec}")
    }
)


class Family(Enum):
    """§6.1 [A-9]: ``name`` only picks the family, never the event type."""

    CAMPAIGN = "campaign"
    EXPERIMENT = "experiment"
    MESSAGE = "message"


def norm(value: Any) -> str:
    """[A-9] lowercase and drop non-alphanumerics, so "In-App Message" == "In App Message"."""
    return re.sub(r"[^0-9a-z]", "", value.lower()) if isinstance(value, str) else ""


# §6.1 channel normalization; any other value is UNKNOWN.
CHANNELS: dict[str, Channel] = {
    "email": Channel.EMAIL,
    "pushnotification": Channel.PUSH,
    "inappmessage": Channel.IN_APP,
    "appinbox": Channel.INBOX,
    "webhook": Channel.WEBHOOK,
}

# §6.1 campaign events: norm(properties.event_type) with the accepted synonyms; channel NONE.
CAMPAIGN_EVENTS: dict[str, EventType] = {
    "triggered": EventType.CAMPAIGN_TRIGGER,
    "trigger": EventType.CAMPAIGN_TRIGGER,
    "enter": EventType.CAMPAIGN_ENTER,
    "entered": EventType.CAMPAIGN_ENTER,
    "convert": EventType.CONVERSION,
    "converted": EventType.CONVERSION,
    # Fires on the conversion goal of a single-conversion campaign; still CAMPAIGN_EXIT.
    "exit": EventType.CAMPAIGN_EXIT,
    "exited": EventType.CAMPAIGN_EXIT,
    "forcedexit": EventType.CAMPAIGN_FORCED_EXIT,
}

# §6.1 message events: (norm(properties.channel), norm(properties.event_type)) -> event type.
# The channel of a known pair is always CHANNELS[channel].
_SEND = ("send", "sent")
_OPEN = ("open", "opened")
_BOUNCE = ("bounce", "bounced")
MESSAGE_EVENTS: dict[tuple[str, str], EventType] = {
    **{("email", s): EventType.SEND for s in _SEND},
    ("email", "delivered"): EventType.DELIVERY,
    ("email", "deferred"): EventType.DEFERRAL,
    ("email", "defer"): EventType.DEFERRAL,
    **{("email", s): EventType.BOUNCE for s in _BOUNCE},
    **{("email", s): EventType.OPEN for s in _OPEN},
    ("email", "click"): EventType.CLICK,
    ("email", "clicked"): EventType.CLICK,
    ("email", "markedasspam"): EventType.COMPLAINT,  # "Marked as spam (any case)"
    ("email", "unsubscribed"): EventType.UNSUBSCRIBE,
    ("email", "unsubscribe"): EventType.UNSUBSCRIBE,
    ("email", "dropped"): EventType.DROP,
    ("email", "drop"): EventType.DROP,
    **{("appinbox", s): EventType.SEND for s in _SEND},
    **{("appinbox", s): EventType.OPEN for s in _OPEN},
    ("inappmessage", "view"): EventType.IMPRESSION,
    ("inappmessage", "viewed"): EventType.IMPRESSION,
    ("inappmessage", "accept"): EventType.CLICK,
    ("inappmessage", "accepted"): EventType.CLICK,
    ("inappmessage", "submit"): EventType.FORM_SUBMIT,
    ("inappmessage", "submitted"): EventType.FORM_SUBMIT,
    ("inappmessage", "select"): EventType.CLICK,
    ("inappmessage", "selected"): EventType.CLICK,
    **{("pushnotification", s): EventType.SEND for s in _SEND},
    # A push tap is OPEN, whatever the vendor calls it.
    **{("pushnotification", s): EventType.OPEN for s in _OPEN},
    **{("pushnotification", s): EventType.BOUNCE for s in _BOUNCE},
    **{("webhook", s): EventType.SEND for s in _SEND},
}


def _unwrap(value: Any) -> Any:
    """The value of an Avro JSON-encoded union branch (``{"long": 5}`` -> ``5``), else ``value``."""
    if isinstance(value, Mapping) and len(value) == 1:
        (branch,) = value
        if branch in AVRO_UNION_BRANCHES:
            return value[branch]
    return value


def _record(value: Any) -> dict[str, Any]:
    """A nested Avro record (``Campaign``/``Message``/``AbTest``) with its fields unwrapped."""
    return {key: _unwrap(field) for key, field in obj(_unwrap(value)).items()}


def _family(name: str, has_ab_test: bool) -> Family:
    if name.startswith(CAMPAIGN_NAME_PREFIX):
        return Family.CAMPAIGN
    if name.strip() == AB_TEST_NAME or has_ab_test:
        return Family.EXPERIMENT
    return Family.MESSAGE


def _is_row(record: Mapping[str, Any]) -> bool:
    """A Parquet row has no ``properties`` object; the JSON feed always has one."""
    return not isinstance(record.get("properties"), Mapping)


# Message record fields that keep their name in the JSON feed's properties [S0].
MESSAGE_ROW_FIELDS = (
    "campaign_name",
    "campaign_id",
    "channel",
    "message_occurrence_id",
    "email_id",
    "link_url",
    "link_id",
    "event_type",
)


def _row_properties(row: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """Rewrite a Parquet row into the JSON feed's ``properties`` (same field names) [S0]."""
    props: dict[str, Any] = {
        "user_id": _unwrap(row.get("user_id")),
        "device_id": _unwrap(row.get("device_id")),
    }
    campaign = _record(row.get("Campaign"))
    if family is Family.CAMPAIGN:
        props.update(
            name=campaign.get("name"),
            campaign_id=campaign.get("id"),
            event_type=campaign.get("event_type"),
        )
    elif family is Family.EXPERIMENT:
        ab_test = _record(row.get("AbTest"))
        props.update(
            name=ab_test.get("name"),
            ab_test_id=ab_test.get("id"),
            variant_id=ab_test.get("variant_id"),
        )
    else:
        message = _record(row.get("Message"))
        props.update({key: message.get(key) for key in MESSAGE_ROW_FIELDS})
        props.update(name=message.get("name"), message_id=message.get("id"))
        # A message row may carry its campaign only in the Campaign record.
        if props["campaign_id"] is None:
            props["campaign_id"] = campaign.get("id")
        if props["campaign_name"] is None:
            props["campaign_name"] = campaign.get("name")
    return props


def _campaign_id(value: Any) -> str | None:
    """Leanplum's ``campaign_id`` defaults to ``0`` (an integer) meaning "none" [A-27]."""
    result = text(value)
    return None if result is None or result == "0" else result


def _occurred_at(record: Mapping[str, Any], props: Mapping[str, Any], row: bool) -> int:
    """``time`` in epoch ms; the schema default (epoch 0, ``TIME_SENTINEL``) means unset (§5)."""
    value = _unwrap(record.get(TIME_FIELD)) if row else props.get(TIME_FIELD)
    what = TIME_FIELD if row else f"properties.{TIME_FIELD}"
    if row and not isinstance(value, str):
        millis = epoch_ms(value, what)  # the Avro `long`, assumed epoch ms
    else:
        # JSON feed; also a Parquet timestamp column, which reaches us as a string.
        millis = iso_to_ms(value, what, assume_utc=True)  # no zone: UTC
    if millis == 0:
        raise RecordError(
            RejectReason.INVALID_TIMESTAMP,
            f"{what} {shown(value)} is the unset default {TIME_SENTINEL}",
        )
    return millis


def vendor_event_id(record: Mapping[str, Any]) -> str | None:
    """``event_id`` of either shape; ``None`` when absent, null or empty."""
    try:
        return required_id(_unwrap(record.get(ID_FIELD)), ID_FIELD)
    except RecordError:
        return None


def normalize(raw: bytes, ctx: NormalizeContext) -> Outcome:
    try:
        return _normalize(parse_object(raw), ctx)
    except RecordError as exc:
        return reject(exc)


def _normalize(record: dict[str, Any], ctx: NormalizeContext) -> CanonicalEvent:
    event_id = required_id(_unwrap(record.get(ID_FIELD)), ID_FIELD)
    name = required_type(_unwrap(record.get(TYPE_FIELD)), TYPE_FIELD)
    row = _is_row(record)
    if row:
        family = _family(name, _unwrap(record.get("AbTest")) is not None)
        props = _row_properties(record, family)
    else:
        props = dict(obj(record.get("properties")))
        family = _family(name, props.get("ab_test_id") is not None)
    occurred_at = _occurred_at(record, props, row)

    vendor_channel = props.get("channel")
    channel = CHANNELS.get(norm(vendor_channel), Channel.UNKNOWN)
    fields: dict[str, Any] = {}
    if family is Family.CAMPAIGN:
        event_type = CAMPAIGN_EVENTS.get(norm(props.get("event_type")), EventType.OTHER)
        if event_type is not EventType.OTHER:
            channel = Channel.NONE
        fields.update(
            campaign_id=_campaign_id(props.get("campaign_id")),
            campaign_name=text(props.get("name")),
        )
    elif family is Family.EXPERIMENT:
        event_type, channel = EventType.EXPERIMENT_IMPRESSION, Channel.NONE
        fields.update(
            experiment_id=text(props.get("ab_test_id")),
            variant_id=text(props.get("variant_id")),
        )
    else:
        key = (norm(vendor_channel), norm(props.get("event_type")))
        event_type = MESSAGE_EVENTS.get(key, EventType.OTHER)
        fields.update(
            campaign_id=_campaign_id(props.get("campaign_id")),
            campaign_name=text(props.get("campaign_name")),
            message_id=text(props.get("message_id")),
            message_name=text(props.get("name")),
        )
        if event_type is EventType.CLICK:
            # "The url of the clicked email link. Only for email click events." [S0]
            fields["link_url"] = text(props.get("link_url"))

    # user_attributes / user_attributes_numeric of the Parquet row are profile data (often PII)
    # and not in §6.1's attribute list: never copied.
    attrs = attributes(
        {
            "message_instance_id": props.get("message_occurrence_id"),
            "email_id": props.get("email_id"),
            "link_id": props.get("link_id"),
            "vendor_channel": vendor_channel,
            "vendor_event_type_raw": props.get("event_type"),
            "experiment_name": props.get("name") if family is Family.EXPERIMENT else None,
        }
    )
    return make(
        VENDOR,
        event_id,
        vendor_event_type=name,
        event_type=event_type,
        channel=channel,
        occurred_at=occurred_at,
        user_id=text(props.get("user_id")),  # "" = anonymous -> null
        device_id=text(props.get("device_id")),
        app_id=ctx.app_id,  # not in the payload: connector config (§1)
        attributes=attrs,
        **fields,
    )
