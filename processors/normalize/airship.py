"""AIRSHIP normalizer: Real-Time Data Streaming ``/api/events`` NDJSON lines, TAXONOMY.md §6.5.

The stream mixes events with stream-control lines (``OFFSET_UPDATE``, blank keep-alives), which
are skipped, never stored (§5 item 4, §7). Campaign attribution comes from one "attribution
push" P per event: ``body.triggering_push`` for CUSTOM email/SMS events and direct opens, ``body``
itself for the other attributed types, and never the ``triggering_push`` of an in-app event (the
seed: it "does not describe the campaign for this message") nor ``last_delivered``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from processors.normalize.common import (
    RecordError,
    as_bool,
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
    Channel,
    EventType,
    NormalizeContext,
    Outcome,
    Skipped,
    make,
    vendor,
)

# What an Airship record *is* (seed 004, "Events"; every event has id, type, offset, occurred,
# processed). Timestamps are ISO-8601 with a zone and 1-3 fractional digits ("...21.12Z").
VENDOR = vendor("airship")
ID_FIELD = "id"
TYPE_FIELD = "type"
TIME_FIELD = "occurred"
PROCESSED_FIELD = "processed"
OFFSET_FIELD = "offset"

OFFSET_UPDATE = "OFFSET_UPDATE"  # stream position only: "You should not store these events"
KEEPALIVE = "keepalive"  # a blank line written when the stream is idle


class Attribution(Enum):
    """Where the attribution push P comes from (TAXONOMY §6.5 "P")."""

    BODY = "body"
    TRIGGERING_PUSH = "triggering_push"
    NONE = "none"


BY_DEVICE = None  # channel from device.device_type
ChannelRule = Channel | None


@dataclass(frozen=True, slots=True)
class Rule:
    event_type: EventType
    channel: ChannelRule
    attribution: Attribution = Attribution.BODY


# Device-type channel ("by device"): IOS/ANDROID/AMAZON/WEB -> PUSH, EMAIL, SMS, OPEN -> CUSTOM.
DEVICE_CHANNEL: dict[str, Channel] = {
    "IOS": Channel.PUSH,
    "ANDROID": Channel.PUSH,
    "AMAZON": Channel.PUSH,
    "WEB": Channel.PUSH,
    "EMAIL": Channel.EMAIL,
    "SMS": Channel.SMS,
    "OPEN": Channel.CUSTOM,
}

# Types whose mapping does not depend on the body (TAXONOMY §6.5 type table).
TYPE_RULES: dict[str, Rule] = {
    "SEND": Rule(EventType.SEND, BY_DEVICE),
    "SEND_ABORTED": Rule(EventType.SEND_ABORTED, BY_DEVICE),
    # APNs/FCM refused the token: Leanplum's "push bounce".
    "SEND_REJECTED": Rule(EventType.BOUNCE, Channel.PUSH),
    "CONTROL": Rule(EventType.CONTROL, BY_DEVICE),
    "RICH_CONTROL": Rule(EventType.CONTROL, Channel.INBOX),
    "IN_APP_MESSAGE_CONTROL": Rule(EventType.CONTROL, Channel.IN_APP),
    "IN_APP_MESSAGE_EXCLUSION": Rule(EventType.SEND_ABORTED, Channel.IN_APP),
    "IN_APP_MESSAGE_DISPLAY": Rule(EventType.IMPRESSION, Channel.IN_APP),
    "IN_APP_FORM_RESULT": Rule(EventType.FORM_SUBMIT, Channel.IN_APP),
    # Scene sub-events would double-count DISPLAY/RESOLUTION.
    "IN_APP_BUTTON_TAP": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_FORM_DISPLAY": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_EXPERIENCES": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_PAGE_VIEW": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_PAGE_SWIPE": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_PAGER_COMPLETED": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_PAGER_SUMMARY": Rule(EventType.OTHER, Channel.IN_APP),
    "IN_APP_MESSAGE_EXPIRATION": Rule(EventType.OTHER, Channel.IN_APP),
    "RICH_DELIVERY": Rule(EventType.DELIVERY, Channel.INBOX),
    "RICH_READ": Rule(EventType.OPEN, Channel.INBOX),
    "RICH_DELETE": Rule(EventType.DISMISS, Channel.INBOX),
    # "The body of a Web Click Event is an associated push object"; a push tap is OPEN.
    "WEB_CLICK": Rule(EventType.OPEN, Channel.PUSH),
    "SHORT_LINK_CLICK": Rule(EventType.CLICK, Channel.SMS),
    # Not per-message campaign events.
    "PUSH_BODY": Rule(EventType.OTHER, Channel.NONE),
    "UNINSTALL": Rule(EventType.OTHER, Channel.NONE),
    "FIRST_OPEN": Rule(EventType.OTHER, Channel.NONE),
    "FIRST_OPT_IN": Rule(EventType.OTHER, Channel.NONE),
    "CLOSE": Rule(EventType.OTHER, Channel.NONE),
    "LOCATION": Rule(EventType.OTHER, Channel.NONE),
    "REGION": Rule(EventType.OTHER, Channel.NONE),
    "TAG_CHANGE": Rule(EventType.OTHER, Channel.NONE),
    "ATTRIBUTE_OPERATION": Rule(EventType.OTHER, Channel.NONE),
    "CONTACT_CHANGE": Rule(EventType.OTHER, Channel.NONE),
    "SUBSCRIPTION_LIST": Rule(EventType.OTHER, Channel.NONE),
    "SCREEN_VIEWED": Rule(EventType.OTHER, Channel.NONE),
    "WEB_SESSION": Rule(EventType.OTHER, Channel.NONE),
    "FEATURE_FLAG_INTERACTION": Rule(EventType.OTHER, Channel.NONE),
    "LABEL_EVENT": Rule(EventType.OTHER, Channel.NONE),
    "MOBILE_ORIGINATED": Rule(EventType.OTHER, Channel.NONE),
}
UNKNOWN_TYPE = Rule(EventType.OTHER, Channel.UNKNOWN, Attribution.NONE)

# OPEN: a direct open (with triggering_push) is a push tap; a plain app open is not attributed.
DIRECT_OPEN = Rule(EventType.OPEN, Channel.PUSH, Attribution.TRIGGERING_PUSH)
APP_OPEN = Rule(EventType.OTHER, Channel.NONE, Attribution.NONE)

# IN_APP_MESSAGE_RESOLUTION by body.type; TIMED_OUT is a dismissal.
RESOLUTION_TYPES: dict[str, EventType] = {
    "BUTTON_CLICK": EventType.CLICK,
    "MESSAGE_CLICK": EventType.CLICK,
    "USER_DISMISSED": EventType.DISMISS,
    "TIMED_OUT": EventType.DISMISS,
}

# CUSTOM on an EMAIL device, by body.name (seed "Custom email events", provider = SparkPost).
EMAIL_CUSTOM_TYPES: dict[str, EventType] = {
    "delivery": EventType.DELIVERY,
    "open": EventType.OPEN,
    "initial_open": EventType.OPEN,  # top pixel; Apple MPP prefetch kept as is_prefetched
    "click": EventType.CLICK,
    "bounce": EventType.BOUNCE,
    "delay": EventType.DEFERRAL,
    "unsubscribe": EventType.UNSUBSCRIBE,
    "injection": EventType.OTHER,  # provider received a message, typically a reply
}

# CUSTOM interaction_type=delivery_report on an SMS device, by body.name.
SMS_DELIVERY_REPORT = "delivery_report"
SMS_REPORT_TYPES: dict[str, EventType] = {
    "delivered": EventType.DELIVERY,
    "read": EventType.OPEN,  # RCS read report
    "aborted": EventType.SEND_FAILED,
    "rejected": EventType.SEND_FAILED,
    "expired": EventType.SEND_FAILED,
    "failed": EventType.DELIVERY_FAILURE,
    "undeliverable": EventType.DELIVERY_FAILURE,
    "deleted": EventType.DELIVERY_FAILURE,
    "dispatched": EventType.OTHER,  # duplicates SEND
    "unknown": EventType.OTHER,
}

# SUBSCRIPTION by body.event_type: only states without a CUSTOM twin are mapped.
SUBSCRIPTION_TYPES: dict[str, EventType] = {
    "spam_complaint": EventType.COMPLAINT,
    "list_unsubscribe": EventType.UNSUBSCRIBE,
    "out_of_band": EventType.BOUNCE,
}
# COMPLIANCE by body.event_type: only the SMS STOP reply has no other twin.
COMPLIANCE_RULES: dict[str, Rule] = {
    "mobile_opt_out": Rule(EventType.UNSUBSCRIBE, Channel.SMS, Attribution.NONE),
}

# Composite vendor_event_type "<type>:<subtype>" and where the subtype lives in the body.
SUBTYPE_FIELD: dict[str, str] = {
    "CUSTOM": "name",
    "COMPLIANCE": "event_type",
    "SUBSCRIPTION": "event_type",
}


def vendor_event_id(record: Mapping[str, Any]) -> str | None:
    """``id`` ("You should use the id to deduplicate"); None when absent or a control line."""
    if record.get(TYPE_FIELD) == OFFSET_UPDATE:
        return None
    try:
        return required_id(record.get(ID_FIELD), ID_FIELD)
    except RecordError:
        return None


def _lower(value: Any) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def _rule(event_type: str, body: Mapping[str, Any], device_type: str) -> Rule:
    """The TAXONOMY §6.5 row for one event."""
    if event_type == "OPEN":
        return DIRECT_OPEN if obj(body.get("triggering_push")) else APP_OPEN
    if event_type == "IN_APP_MESSAGE_RESOLUTION":
        resolved = RESOLUTION_TYPES.get(text(body.get("type")) or "", EventType.OTHER)
        return Rule(resolved, Channel.IN_APP)
    if event_type == "CUSTOM":
        name = _lower(body.get("name"))
        if device_type == "EMAIL" and name in EMAIL_CUSTOM_TYPES:
            return Rule(EMAIL_CUSTOM_TYPES[name], Channel.EMAIL, Attribution.TRIGGERING_PUSH)
        if device_type == "SMS" and _lower(body.get("interaction_type")) == SMS_DELIVERY_REPORT:
            sms_type = SMS_REPORT_TYPES.get(name, EventType.OTHER)
            return Rule(sms_type, Channel.SMS, Attribution.TRIGGERING_PUSH)
        return Rule(EventType.OTHER, Channel.NONE)  # user-defined, e.g. "purchased"
    if event_type == "SUBSCRIPTION":
        subscription = SUBSCRIPTION_TYPES.get(_lower(body.get("event_type")), EventType.OTHER)
        return Rule(subscription, BY_DEVICE, Attribution.NONE)  # no campaign attribution
    if event_type == "COMPLIANCE":
        default = Rule(EventType.OTHER, BY_DEVICE, Attribution.NONE)
        return COMPLIANCE_RULES.get(_lower(body.get("event_type")), default)
    return TYPE_RULES.get(event_type, UNKNOWN_TYPE)


def _vendor_event_type(event_type: str, body: Mapping[str, Any]) -> str:
    field = SUBTYPE_FIELD.get(event_type)
    subtype = text(body.get(field)) if field else None
    return f"{event_type}:{subtype}" if subtype else event_type


def _error(event_type: str, body: Mapping[str, Any], rule: Rule) -> str | None:
    properties = obj(body.get("properties"))
    if event_type == "SEND_ABORTED":
        return text(body.get("reason"))
    if event_type == "IN_APP_MESSAGE_EXCLUSION":
        return text(body.get("type"))  # AUDIENCE_CHECK_EXCLUDED: the abort reason
    if event_type == "SEND_REJECTED":
        return text(body.get("status"))
    if event_type == "CUSTOM" and rule.event_type is EventType.BOUNCE:
        return text(properties.get("bounce_class"))
    if event_type == "CUSTOM" and rule.channel is Channel.SMS:  # a delivery report
        return text(properties.get("error_code"))
    return None


def _link_url(event_type: str, body: Mapping[str, Any], canonical: EventType) -> str | None:
    properties = obj(body.get("properties"))
    if event_type == "CUSTOM" and canonical is EventType.CLICK:
        return text(properties.get("link_url"))
    if event_type == "SHORT_LINK_CLICK":
        return text(properties.get("original_url"))
    return None


def _bool_text(value: Any) -> str | None:
    parsed = as_bool(value)  # booleans may arrive as strings (§4)
    return None if parsed is None else ("true" if parsed else "false")


def normalize(raw: bytes, ctx: NormalizeContext) -> Outcome:
    """One RTDS line -> canonical event, ``Skipped`` for control lines, or ``Rejected`` (§5)."""
    if not raw.strip():
        return Skipped(KEEPALIVE)
    try:
        record = parse_object(raw)
        if record.get(TYPE_FIELD) == OFFSET_UPDATE:  # "always check the type field" first
            return Skipped(OFFSET_UPDATE)
        event_id = required_id(record.get(ID_FIELD), ID_FIELD)
        event_type = required_type(record.get(TYPE_FIELD), TYPE_FIELD)
        occurred_at = iso_to_ms(record.get(TIME_FIELD), TIME_FIELD)
    except RecordError as exc:
        return reject(exc)

    body = obj(record.get("body"))
    device = obj(record.get("device"))
    user = obj(record.get("user"))
    properties = obj(body.get("properties"))
    device_type = (text(device.get("device_type")) or "").strip().upper()

    rule = _rule(event_type, body, device_type)
    channel = (
        DEVICE_CHANNEL.get(device_type, Channel.UNKNOWN) if rule.channel is None else rule.channel
    )
    if rule.attribution is Attribution.BODY:
        push: Mapping[str, Any] = body
    elif rule.attribution is Attribution.TRIGGERING_PUSH:
        push = obj(body.get("triggering_push"))
    else:
        push = {}
    attributed = rule.attribution is not Attribution.NONE
    experiments = obj(body.get("experiments")) if attributed else {}

    extras: dict[str, Any] = {
        "offset": record.get(OFFSET_FIELD),  # an opaque string, maybe negative or base64 (§4)
        "processed": record.get(PROCESSED_FIELD),  # can lag occurred by days (CLOSE)
        "device_type": device.get("device_type"),
        "contact_id": user.get("contact_id"),
        "campaign_categories": obj(push.get("campaigns")).get("categories"),
        "group_id": push.get("group_id"),
        "interaction_type": body.get("interaction_type"),
        "is_prefetched": _bool_text(properties.get("is_prefetched")),
        "bounce_class": properties.get("bounce_class"),
        "vendor_delivery_id": properties.get("vendorDeliveryId"),
    }
    if event_type == "IN_APP_MESSAGE_RESOLUTION":
        extras["resolution_type"] = body.get("type")
    if event_type.startswith("IN_APP_"):
        # Kept for reference only: it "does not describe the campaign for this message".
        extras["triggering_push_id"] = obj(body.get("triggering_push")).get("push_id")
    if ctx.include_pii:
        extras["delivery_address"] = device.get("delivery_address")  # email address / MSISDN
        extras["user_agent"] = obj(device.get("attributes")).get("web_user_agent_string")

    # named user is the user id; the seed spells it named_user_id and named_user.
    user_id = (
        text(user.get("named_user_id"))
        or text(device.get("named_user_id"))
        or text(device.get("named_user"))
    )
    experiment_id = (
        text(experiments.get("experiment_id"))
        or (text(body.get("experiment_id")) if attributed else None)
        or (text(record.get("experiment_id")) if attributed else None)
    )

    return make(
        VENDOR,
        event_id,
        vendor_event_type=_vendor_event_type(event_type, body),
        event_type=rule.event_type,
        channel=channel,
        occurred_at=occurred_at,
        user_id=user_id,
        device_id=text(device.get("channel")),
        campaign_id=text(push.get("group_id")) or text(push.get("push_id")),
        campaign_name=None,
        message_id=text(push.get("push_id"))
        or (text(body.get("app_defined_id")) if attributed else None),
        message_name=None,
        experiment_id=experiment_id,
        variant_id=text(push.get("variant_id")) or text(experiments.get("variant_id")),
        link_url=_link_url(event_type, body, rule.event_type),
        error=_error(event_type, body, rule),
        app_id=ctx.app_id,  # the X-UA-Appkey of the connection
        attributes=attributes(extras),
    )
