"""PINPOINT normalizer: Amazon Pinpoint event stream (Kinesis/Firehose), TAXONOMY.md §6.2.

Pinpoint records carry no event id, so the vendor event id is synthesized from the fields that
identify one occurrence [A-10]. Email records report the *send* time in ``event_timestamp`` for
every event of a message, so engagement events take ``arrival_timestamp`` instead [A-11]. The
user id only exists inside the endpoint record, which Pinpoint ships as a JSON *string* [A-12].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.normalize.common import (
    RecordError,
    attributes,
    epoch_ms,
    obj,
    parse_json,
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
    make,
    vendor,
)

# What a Pinpoint record *is* (seed 001, "Campaign event attributes").
VENDOR = vendor("pinpoint")
TYPE_FIELD = "event_type"
TIME_FIELD = "event_timestamp"  # Unix epoch milliseconds, integer
ARRIVAL_FIELD = "arrival_timestamp"  # Unix epoch milliseconds, integer
DEVICE_ID_PATH = ("client", "client_id")  # the endpoint id; also part of the synthetic key
APP_ID_PATH = ("application", "app_id")
KEY_SEPARATOR = "|"

EMAIL_PREFIX = "_email."
SMS_PREFIX = "_SMS."
CAMPAIGN_SEND = "_campaign.send"
EMAIL_SEND = "_email.send"

# TAXONOMY §6.2 "Channel" from attributes.delivery_type (seed 001 lists the possible values).
DELIVERY_TYPE_CHANNEL: dict[str, Channel] = {
    "EMAIL": Channel.EMAIL,
    "SMS": Channel.SMS,
    "VOICE": Channel.VOICE,
    "CUSTOM": Channel.CUSTOM,
    "ADM": Channel.PUSH,
    "APNS": Channel.PUSH,
    "APNS_SANDBOX": Channel.PUSH,
    "APNS_VOIP": Channel.PUSH,
    "APNS_VOIP_SANDBOX": Channel.PUSH,
    "GCM": Channel.PUSH,
    "BAIDU": Channel.PUSH,
    "PUSH": Channel.PUSH,
}

# Without delivery_type: the seed says these three are push-only (Amplify-reported).
PUSH_ONLY_TYPES = frozenset(
    {
        "_campaign.received_foreground",
        "_campaign.received_background",
        "_campaign.opened_notification",
    }
)

# `_campaign.send` by attributes.campaign_send_status. SUCCESS depends on delivery_type
# and is decided in _campaign_send_type; missing/unrecognized statuses are OTHER.
SEND_STATUS_TYPE: dict[str, EventType] = {
    "FAILURE": EventType.SEND_FAILED,
    "FAILURE_PERMANENT": EventType.SEND_FAILED,
    "TRANSIENT_FAILURE": EventType.SEND_FAILED,
    "THROTTLED": EventType.SEND_FAILED,  # provider side
    "UNKNOWN": EventType.SEND_FAILED,
    "HOOK_FAILURE": EventType.SEND_FAILED,
    "CUSTOM_DELIVERY_FAILURE": EventType.SEND_FAILED,
    "RECOMMENDATION_FAILURE": EventType.SEND_FAILED,
    "UNSUPPORTED_CHANNEL": EventType.SEND_FAILED,
    "DAILY_CAP": EventType.SEND_ABORTED,
    "CAMPAIGN_CAP": EventType.SEND_ABORTED,
    "QUIET_TIME": EventType.SEND_ABORTED,
    "EXPIRED": EventType.SEND_ABORTED,  # policy, not provider
    "DUPLICATE_ADDRESS": EventType.SEND_ABORTED,
    "HOLDOUT": EventType.CONTROL,
}
SEND_SUCCESS = "SUCCESS"
# `_campaign.send` SUCCESS for these is only the request; `_email.send`/`_SMS.BUFFERED` follow
# as the provider-level send.
REQUEST_ONLY_DELIVERY_TYPES = frozenset({"EMAIL", "SMS"})

# Every other wire type (TAXONOMY §6.2 table; sources S1, X1, X2, X3). Anything else is OTHER.
EVENT_TYPES: dict[str, EventType] = {
    "_campaign.received_foreground": EventType.DELIVERY,
    "_campaign.received_background": EventType.DELIVERY,
    "_campaign.opened_notification": EventType.OPEN,  # push tap
    "_email.send": EventType.SEND,
    "_email.delivered": EventType.DELIVERY,
    "_email.open": EventType.OPEN,
    "_email.click": EventType.CLICK,
    "_email.hardbounce": EventType.BOUNCE,
    "_email.softbounce": EventType.BOUNCE,  # SES reports soft bounces after retries
    "_email.complaint": EventType.COMPLAINT,
    "_email.unsubscribe": EventType.UNSUBSCRIBE,
    "_email.rejected": EventType.DROP,
    "_email.reject": EventType.DROP,  # spelling seen in older material (X3)
    "_email.rendering_failure": EventType.SEND_FAILED,
    "_SMS.BUFFERED": EventType.SEND,
    "_SMS.SEND": EventType.SEND,  # older docs (X2)
    "_SMS.SUCCESS": EventType.DELIVERY,
    "_SMS.FAILURE": EventType.DELIVERY_FAILURE,
    "_SMS.OPTOUT": EventType.UNSUBSCRIBE,
}

BOUNCE_TYPE: dict[str, str] = {"_email.hardbounce": "hard", "_email.softbounce": "soft"}
RECEIVED_STATE: dict[str, str] = {
    "_campaign.received_foreground": "foreground",
    "_campaign.received_background": "background",
}

# Copied into attributes as-is (TAXONOMY §6.2 "attributes", plus harmless extras).
PASSTHROUGH_ATTRIBUTES = (
    "campaign_activity_id",
    "delivery_type",
    "campaign_send_status",
    "journey_id",
    "journey_activity_id",
    "journey_run_id",
    "record_status",
    "message_type",
    "iso_country_code",
)
# PII (§1, §8): phone numbers in SMS attributes; copied only with include_pii.
PII_ATTRIBUTES = ("destination_phone_number", "origination_phone_number")


def _path(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        value = obj(value).get(key)
    return value


def _mail(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """``facets.email_channel.mail_event`` of an email record [X1]."""
    return obj(_path(record, ("facets", "email_channel", "mail_event")))


def _key_part(value: Any) -> str:
    """A synthetic-key component: exact integer formatting via ``text``; missing -> ``""``."""
    return text(value) or ""


def _synthetic_key(record: Mapping[str, Any]) -> str:
    """[A-10] ``event_type|client_id|K|event_timestamp|arrival_timestamp``.

    ``campaign_activity_id`` identifies a campaign *run*, not an occurrence (the seed mislabels
    it), so K is the per-message id where one exists: SES ``mail.message_id`` for email, the
    SMS ``attributes.message_id`` for SMS. Raises ``missing_event_id`` without ``client_id``.
    """
    client_id = required_id(_path(record, DEVICE_ID_PATH), "client.client_id")
    event_type = record.get(TYPE_FIELD)
    event_type = event_type if isinstance(event_type, str) else ""
    attrs = obj(record.get("attributes"))
    if event_type.startswith(EMAIL_PREFIX):
        k = obj(_mail(record).get("mail")).get("message_id")
    elif event_type.startswith(SMS_PREFIX):
        k = attrs.get("message_id")
    else:
        k = attrs.get("campaign_activity_id")
    return KEY_SEPARATOR.join(
        (
            event_type,
            client_id,
            _key_part(k),
            _key_part(record.get(TIME_FIELD)),
            _key_part(record.get(ARRIVAL_FIELD)),
        )
    )


def vendor_event_id(record: Mapping[str, Any]) -> str | None:
    """The synthetic key [A-10] connectors use as the raw-topic key; None without client_id."""
    try:
        return _synthetic_key(record)
    except RecordError:
        return None


def _endpoint(record: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """The endpoint record from ``client_context.custom.endpoint``, a JSON string [A-12].

    Returns the parsed object and, when the string is present but not a JSON object, a short
    problem text (kept in attributes: the event is still valid, only its user id is unknown).
    """
    raw = _path(record, ("client_context", "custom", "endpoint"))
    if raw is None or raw == "":
        return {}, None
    if isinstance(raw, Mapping):  # tolerate producers that already decoded it
        return raw, None
    if not isinstance(raw, str):
        return {}, f"endpoint is {type(raw).__name__}, expected a JSON string"
    try:
        # The record's own limits apply to this document too (depth, exact integers).
        value = parse_json(raw, "endpoint")
    except RecordError as exc:
        return {}, exc.detail
    if not isinstance(value, dict):
        return {}, "endpoint JSON is not an object"
    return value, None


def _channel(event_type: str, delivery_type: str | None) -> Channel:
    if delivery_type is not None:
        return DELIVERY_TYPE_CHANNEL.get(delivery_type.strip().upper(), Channel.UNKNOWN)
    if event_type.startswith(EMAIL_PREFIX):
        return Channel.EMAIL
    if event_type.startswith(SMS_PREFIX):
        return Channel.SMS
    if event_type in PUSH_ONLY_TYPES:
        return Channel.PUSH
    return Channel.UNKNOWN


def _campaign_send_type(status: str | None, delivery_type: str | None) -> EventType:
    if status is None:
        return EventType.OTHER
    status = status.strip().upper()
    if status == SEND_SUCCESS:
        if delivery_type is not None and delivery_type.strip().upper() in (
            REQUEST_ONLY_DELIVERY_TYPES
        ):
            return EventType.SEND_REQUESTED
        return EventType.SEND
    return SEND_STATUS_TYPE.get(status, EventType.OTHER)


def _occurred_at(record: Mapping[str, Any], event_type: str) -> int:
    # [X1] says event_timestamp is the send time for every email event of a message.
    if event_type.startswith(EMAIL_PREFIX) and event_type != EMAIL_SEND:
        return epoch_ms(record.get(ARRIVAL_FIELD), ARRIVAL_FIELD)
    return epoch_ms(record.get(TIME_FIELD), TIME_FIELD)


def normalize(raw: bytes, ctx: NormalizeContext) -> Outcome:
    """One Pinpoint record -> canonical event, or ``Rejected`` in TAXONOMY §5 order."""
    try:
        record = parse_object(raw)
        key = _synthetic_key(record)
        event_type = required_type(record.get(TYPE_FIELD), TYPE_FIELD)
        occurred_at = _occurred_at(record, event_type)
    except RecordError as exc:
        return reject(exc)

    attrs_in = obj(record.get("attributes"))
    mail_event = _mail(record)
    mail = obj(mail_event.get("mail"))
    endpoint, endpoint_problem = _endpoint(record)
    delivery_type = text(attrs_in.get("delivery_type"))
    status = text(attrs_in.get("campaign_send_status"))

    if event_type == CAMPAIGN_SEND:
        canonical_type = _campaign_send_type(status, delivery_type)
    else:
        canonical_type = EVENT_TYPES.get(event_type, EventType.OTHER)

    error: str | None = None
    if (
        event_type == CAMPAIGN_SEND
        and status is not None
        and status.strip().upper() != SEND_SUCCESS
    ):
        error = status
    elif event_type == "_SMS.FAILURE":
        error = text(attrs_in.get("record_status"))

    link_url: str | None = None
    if event_type == "_email.click":
        link_url = text(obj(mail_event.get("click")).get("link")) or text(attrs_in.get("feedback"))

    client_id = text(_path(record, DEVICE_ID_PATH))
    # The SMS sample [X2] has client_id == awsAccountId: that is not a device.
    device_id = None if client_id == text(record.get("awsAccountId")) else client_id

    # SES / SMS message ids are per recipient, so they are instance ids, not message_id.
    if event_type.startswith(EMAIL_PREFIX):
        instance_id = text(mail.get("message_id"))
    elif event_type.startswith(SMS_PREFIX):
        instance_id = text(attrs_in.get("message_id"))
    else:
        instance_id = None

    extras: dict[str, Any] = {name: attrs_in.get(name) for name in PASSTHROUGH_ATTRIBUTES}
    extras.update(
        arrival_timestamp=record.get(ARRIVAL_FIELD),
        event_version=record.get("event_version"),  # seed: check it to detect schema changes
        endpoint_channel_type=endpoint.get("ChannelType"),  # the real type for CUSTOM
        message_instance_id=instance_id,
        bounce_type=BOUNCE_TYPE.get(event_type),
        notification_state=RECEIVED_STATE.get(event_type),
        endpoint_problem=endpoint_problem,
    )
    if ctx.include_pii:
        extras.update({name: attrs_in.get(name) for name in PII_ATTRIBUTES})
        extras.update(
            endpoint_address=endpoint.get("Address"),
            destination=mail.get("destination"),
            from_address=mail.get("from_address"),
        )

    return make(
        VENDOR,
        key,
        vendor_event_type=event_type,
        event_type=canonical_type,
        channel=_channel(event_type, delivery_type),
        occurred_at=occurred_at,
        user_id=text(obj(endpoint.get("User")).get("UserId")),
        device_id=device_id,
        campaign_id=text(attrs_in.get("campaign_id")) or text(attrs_in.get("journey_id")),
        campaign_name=None,  # not in the stream
        message_id=None,  # no definition-level id
        message_name=None,
        experiment_id=None,
        variant_id=text(attrs_in.get("treatment_id")),  # "0" for standard campaigns (seed)
        link_url=link_url,
        error=error,
        app_id=text(_path(record, APP_ID_PATH)),
        attributes=attributes(extras),
    )
