"""Pinpoint normalizer against TAXONOMY §6.2, with payloads shaped like seed 001 and [X1]/[X2].

The seed sample is not valid JSON as printed (``↳`` line-wrap markers inside the endpoint
string), so the payloads below are rebuilt from it rather than copied (TAXONOMY §4).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.normalize import pinpoint
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Outcome,
    Rejected,
    RejectReason,
)

CTX = NormalizeContext()
REPO = Path(__file__).resolve().parents[4]

ENDPOINT = {
    "ChannelType": "GCM",
    "EndpointStatus": "ACTIVE",
    "OptOut": "NONE",
    "RequestId": "ec229696-9d1e-11e9-8bf1-85d0aexample",
    "EffectiveDate": "2019-07-02T23:12:54.836Z",
    "User": {},
}

# Seed 001 "Sample event", valid JSON.
CAMPAIGN_SEND: dict[str, Any] = {
    "event_type": "_campaign.send",
    "event_timestamp": 1562109497426,
    "arrival_timestamp": 1562109497494,
    "event_version": "3.1",
    "application": {"app_id": "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", "sdk": {}},
    "client": {"client_id": "d8dcf7c5-e81a-48ae-8313-f540cexample"},
    "device": {"platform": {}},
    "session": {},
    "attributes": {
        "treatment_id": "0",
        "campaign_activity_id": "5473285727f04865bc673e527example",
        "delivery_type": "GCM",
        "campaign_id": "4f8d6097c2e8400fa3081d875example",
        "campaign_send_status": "SUCCESS",
    },
    "client_context": {"custom": {"endpoint": orjson.dumps(ENDPOINT).decode()}},
    "awsAccountId": "123456789012",
}

SES_MESSAGE_ID = "0200000073rnbmd1-mbvdg3uo-q8ia-m3ku-ibd3-ms77kexample-000000"

# [X1] email event shape: legacy_identifier instead of the endpoint, facets.email_channel.
EMAIL_EVENT: dict[str, Any] = {
    "event_type": "_email.delivered",
    "event_timestamp": 1564618621380,
    "arrival_timestamp": 1564618622025,
    "event_version": "3.1",
    "application": {"app_id": "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", "sdk": {}},
    "client": {"client_id": "e9a3000d-daa2-40dc-ac47-1cd34example"},
    "device": {"platform": {}},
    "session": {},
    "attributes": {
        "feedback": "received",
        "campaign_activity_id": "cbcfc3c5e3bd48a8ac2b9cb41example",
        "campaign_id": "52dc44b35c4742c98c5935269example",
        "treatment_id": "1",
    },
    "client_context": {"custom": {"legacy_identifier": "52dc44b35c4742c98c5935269example"}},
    "facets": {
        "email_channel": {
            "mail_event": {
                "mail": {
                    "message_id": SES_MESSAGE_ID,
                    "message_send_timestamp": 1564618621380,
                    "from_address": "sender@example.com",
                    "destination": ["recipient@example.com"],
                    "headers_truncated": False,
                    "common_headers": {
                        "from": "sender@example.com",
                        "to": ["recipient@example.com"],
                        "subject": "Amazon Pinpoint Test",
                    },
                },
                "delivery": {
                    "smtp_response": "250 ok:  Message 82080542 accepted",
                    "reporting_mta": "a8-53.smtp-out.amazonses.com",
                    "recipients": ["recipient@example.com"],
                    "processing_time_millis": 1310,
                },
            }
        }
    },
    "awsAccountId": "123456789012",
}

# [X2] SMS sample: client_id is the account id; arrival precedes event_timestamp.
SMS_EVENT: dict[str, Any] = {
    "event_type": "_SMS.SUCCESS",
    "event_timestamp": 1553104954322,
    "arrival_timestamp": 1553104954064,
    "event_version": "3.1",
    "application": {"app_id": "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", "sdk": {}},
    "client": {"client_id": "123456789012"},
    "device": {"platform": {}},
    "session": {},
    "attributes": {
        "sender_request_id": "565d4425-4b3a-11e9-b0a5-example",
        "campaign_activity_id": "cbcfc3c5e3bd48a8ac2b9cb41example",
        "origination_phone_number": "+12065550142",
        "destination_phone_number": "+14255550199",
        "record_status": "DELIVERED",
        "iso_country_code": "US",
        "treatment_id": "0",
        "number_of_message_parts": "1",
        "message_id": "1111-2222-3333",
        "message_type": "Transactional",
        "campaign_id": "52dc44b35c4742c98c5935269example",
    },
    "metrics": {"price_in_millicents_usd": 645.0},
    "awsAccountId": "123456789012",
}


def build(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``base``; ``attributes`` changes merge, ``None`` deletes a key."""
    record = copy.deepcopy(base)
    for key, value in changes.items():
        if key == "attributes":
            for name, attr in value.items():
                if attr is None:
                    record["attributes"].pop(name, None)
                else:
                    record["attributes"][name] = attr
        elif value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def run(record: dict[str, Any] | bytes, ctx: NormalizeContext = CTX) -> Outcome:
    raw = record if isinstance(record, bytes) else orjson.dumps(record)
    return pinpoint.normalize(raw, ctx)


def event(record: dict[str, Any] | bytes, ctx: NormalizeContext = CTX) -> CanonicalEvent:
    outcome = run(record, ctx)
    assert isinstance(outcome, CanonicalEvent), outcome
    return outcome


def rejected(record: dict[str, Any] | bytes) -> Rejected:
    outcome = run(record)
    assert isinstance(outcome, Rejected), outcome
    return outcome


# --- the seed sample, every field -------------------------------------------------------------


def test_seed_sample_maps_every_field() -> None:
    ev = event(CAMPAIGN_SEND)
    key = (
        "_campaign.send|d8dcf7c5-e81a-48ae-8313-f540cexample|5473285727f04865bc673e527example"
        "|1562109497426|1562109497494"
    )
    assert ev.event_id == f"PINPOINT:{key}"
    assert ev.vendor_event_id == key
    assert ev.vendor_event_type == "_campaign.send"
    assert ev.event_type is EventType.SEND
    assert ev.channel is Channel.PUSH
    assert ev.occurred_at == 1562109497426
    assert ev.user_id is None  # "User": {}
    assert ev.device_id == "d8dcf7c5-e81a-48ae-8313-f540cexample"
    assert ev.campaign_id == "4f8d6097c2e8400fa3081d875example"
    assert ev.campaign_name is None
    assert ev.message_id is None
    assert ev.message_name is None
    assert ev.experiment_id is None
    assert ev.variant_id == "0"
    assert ev.link_url is None
    assert ev.error is None
    assert ev.app_id == "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"
    assert ev.attributes == {
        "campaign_activity_id": "5473285727f04865bc673e527example",
        "delivery_type": "GCM",
        "campaign_send_status": "SUCCESS",
        "arrival_timestamp": "1562109497494",
        "event_version": "3.1",
        "endpoint_channel_type": "GCM",
    }


def test_vendor_event_id_matches_the_normalized_key() -> None:
    assert pinpoint.vendor_event_id(CAMPAIGN_SEND) == event(CAMPAIGN_SEND).vendor_event_id
    assert pinpoint.vendor_event_id(build(CAMPAIGN_SEND, client={})) is None
    assert pinpoint.vendor_event_id({}) is None


def test_ctx_app_id_does_not_override_the_payload() -> None:
    ev = event(CAMPAIGN_SEND, NormalizeContext(app_id="from-config"))
    assert ev.app_id == "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"


# --- _campaign.send statuses [A-2] [A-13] -----------------------------------------------------

SEND_STATUSES = [
    ("FAILURE", EventType.SEND_FAILED),
    ("FAILURE_PERMANENT", EventType.SEND_FAILED),
    ("TRANSIENT_FAILURE", EventType.SEND_FAILED),
    ("THROTTLED", EventType.SEND_FAILED),
    ("UNKNOWN", EventType.SEND_FAILED),
    ("HOOK_FAILURE", EventType.SEND_FAILED),
    ("CUSTOM_DELIVERY_FAILURE", EventType.SEND_FAILED),
    ("RECOMMENDATION_FAILURE", EventType.SEND_FAILED),
    ("UNSUPPORTED_CHANNEL", EventType.SEND_FAILED),
    ("DAILY_CAP", EventType.SEND_ABORTED),
    ("CAMPAIGN_CAP", EventType.SEND_ABORTED),
    ("QUIET_TIME", EventType.SEND_ABORTED),
    ("EXPIRED", EventType.SEND_ABORTED),
    ("DUPLICATE_ADDRESS", EventType.SEND_ABORTED),
    ("HOLDOUT", EventType.CONTROL),
    ("SOMETHING_NEW", EventType.OTHER),
]


@pytest.mark.parametrize(("status", "expected"), SEND_STATUSES)
@pytest.mark.parametrize("delivery_type", ["GCM", "EMAIL", "SMS"])
def test_campaign_send_status(status: str, expected: EventType, delivery_type: str) -> None:
    ev = event(
        build(
            CAMPAIGN_SEND,
            attributes={"campaign_send_status": status, "delivery_type": delivery_type},
        )
    )
    assert ev.event_type is expected
    assert ev.error == status  # the raw status whenever it is not SUCCESS
    assert ev.attributes["campaign_send_status"] == status


@pytest.mark.parametrize(
    ("delivery_type", "expected"),
    [
        ("EMAIL", EventType.SEND_REQUESTED),  # _email.send follows
        ("SMS", EventType.SEND_REQUESTED),  # _SMS.BUFFERED follows
        ("GCM", EventType.SEND),
        ("APNS", EventType.SEND),
        ("ADM", EventType.SEND),
        ("BAIDU", EventType.SEND),
        ("VOICE", EventType.SEND),
        ("CUSTOM", EventType.SEND),
    ],
)
def test_campaign_send_success_depends_on_delivery_type(
    delivery_type: str, expected: EventType
) -> None:
    ev = event(build(CAMPAIGN_SEND, attributes={"delivery_type": delivery_type}))
    assert ev.event_type is expected
    assert ev.error is None


def test_campaign_send_without_status_is_other() -> None:
    ev = event(build(CAMPAIGN_SEND, attributes={"campaign_send_status": None}))
    assert ev.event_type is EventType.OTHER
    assert ev.error is None


# --- channel ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delivery_type", "channel"),
    [
        ("EMAIL", Channel.EMAIL),
        ("SMS", Channel.SMS),
        ("VOICE", Channel.VOICE),
        ("CUSTOM", Channel.CUSTOM),
        ("ADM", Channel.PUSH),
        ("APNS", Channel.PUSH),
        ("APNS_SANDBOX", Channel.PUSH),
        ("APNS_VOIP", Channel.PUSH),
        ("APNS_VOIP_SANDBOX", Channel.PUSH),
        ("GCM", Channel.PUSH),
        ("BAIDU", Channel.PUSH),
        ("PUSH", Channel.PUSH),
        ("IN_APP", Channel.UNKNOWN),
    ],
)
def test_channel_from_delivery_type(delivery_type: str, channel: Channel) -> None:
    assert event(build(CAMPAIGN_SEND, attributes={"delivery_type": delivery_type})).channel is (
        channel
    )


def test_custom_channel_keeps_the_endpoint_channel_type() -> None:
    endpoint = dict(ENDPOINT, ChannelType="EMAIL")
    record = build(
        CAMPAIGN_SEND,
        attributes={"delivery_type": "CUSTOM"},
        client_context={"custom": {"endpoint": orjson.dumps(endpoint).decode()}},
    )
    ev = event(record)
    assert ev.channel is Channel.CUSTOM
    assert ev.attributes["endpoint_channel_type"] == "EMAIL"


@pytest.mark.parametrize(
    ("event_type", "channel"),
    [
        ("_email.open", Channel.EMAIL),
        ("_SMS.BUFFERED", Channel.SMS),
        ("_campaign.received_foreground", Channel.PUSH),
        ("_campaign.received_background", Channel.PUSH),
        ("_campaign.opened_notification", Channel.PUSH),
        ("_campaign.send", Channel.UNKNOWN),
        ("_session.start", Channel.UNKNOWN),
    ],
)
def test_channel_without_delivery_type(event_type: str, channel: Channel) -> None:
    record = build(CAMPAIGN_SEND, event_type=event_type, attributes={"delivery_type": None})
    assert event(record).channel is channel


# --- every other row of the type table --------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("_campaign.received_foreground", EventType.DELIVERY),
        ("_campaign.received_background", EventType.DELIVERY),
        ("_campaign.opened_notification", EventType.OPEN),  # push tap
        ("_session.start", EventType.OTHER),
        ("_custom.something", EventType.OTHER),
    ],
)
def test_push_and_unknown_types(event_type: str, expected: EventType) -> None:
    ev = event(build(CAMPAIGN_SEND, event_type=event_type, attributes={"delivery_type": None}))
    assert ev.event_type is expected
    assert ev.vendor_event_type == event_type
    assert ev.error is None


@pytest.mark.parametrize(
    ("suffix", "state"), [("foreground", "foreground"), ("background", "background")]
)
def test_received_state_goes_to_attributes(suffix: str, state: str) -> None:
    ev = event(build(CAMPAIGN_SEND, event_type=f"_campaign.received_{suffix}"))
    assert ev.attributes["notification_state"] == state


EMAIL_TYPES = [
    ("_email.send", EventType.SEND),
    ("_email.delivered", EventType.DELIVERY),
    ("_email.open", EventType.OPEN),
    ("_email.click", EventType.CLICK),
    ("_email.hardbounce", EventType.BOUNCE),
    ("_email.softbounce", EventType.BOUNCE),
    ("_email.complaint", EventType.COMPLAINT),
    ("_email.unsubscribe", EventType.UNSUBSCRIBE),
    ("_email.rejected", EventType.DROP),
    ("_email.reject", EventType.DROP),
    ("_email.rendering_failure", EventType.SEND_FAILED),
    ("_email.amp_open", EventType.OTHER),
]


@pytest.mark.parametrize(("event_type", "expected"), EMAIL_TYPES)
def test_email_types(event_type: str, expected: EventType) -> None:
    ev = event(build(EMAIL_EVENT, event_type=event_type))
    assert ev.event_type is expected
    assert ev.channel is Channel.EMAIL
    assert ev.message_id is None
    assert ev.attributes["message_instance_id"] == SES_MESSAGE_ID
    assert ev.vendor_event_id == (
        f"{event_type}|e9a3000d-daa2-40dc-ac47-1cd34example|{SES_MESSAGE_ID}"
        "|1564618621380|1564618622025"
    )
    # event_timestamp is the send time of the message; engagement uses arrival.
    expected_time = 1564618621380 if event_type == "_email.send" else 1564618622025
    assert ev.occurred_at == expected_time
    assert ev.user_id is None  # email records carry no endpoint
    assert ev.campaign_id == "52dc44b35c4742c98c5935269example"
    assert ev.variant_id == "1"
    assert ev.link_url is None or event_type == "_email.click"


@pytest.mark.parametrize(
    ("event_type", "bounce_type"), [("_email.hardbounce", "hard"), ("_email.softbounce", "soft")]
)
def test_bounce_type_attribute(event_type: str, bounce_type: str) -> None:
    assert event(build(EMAIL_EVENT, event_type=event_type)).attributes["bounce_type"] == (
        bounce_type
    )


def test_email_click_link_from_facets_then_feedback() -> None:
    record = build(EMAIL_EVENT, event_type="_email.click")
    mail_event = record["facets"]["email_channel"]["mail_event"]
    mail_event["click"] = {
        "ip_address": "192.0.2.1",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_5)",
        "link": "https://aws.amazon.com/pinpoint/",
    }
    record["attributes"]["feedback"] = "https://example.com/from-feedback"
    assert event(record).link_url == "https://aws.amazon.com/pinpoint/"
    del mail_event["click"]
    assert event(record).link_url == "https://example.com/from-feedback"


def test_link_url_only_for_clicks() -> None:
    record = build(EMAIL_EVENT, event_type="_email.open", attributes={"feedback": "opened"})
    assert event(record).link_url is None


def test_journey_email_uses_journey_id_as_campaign() -> None:
    record = build(
        EMAIL_EVENT,
        event_type="_email.send",
        attributes={
            "campaign_id": None,
            "campaign_activity_id": None,
            "journey_id": "a2b1c3d4journey",
            "journey_activity_id": "jact-1",
            "journey_run_id": "jrun-9",
        },
    )
    ev = event(record)
    assert ev.campaign_id == "a2b1c3d4journey"
    assert ev.attributes["journey_activity_id"] == "jact-1"
    assert ev.attributes["journey_run_id"] == "jrun-9"


def test_transactional_email_has_no_campaign() -> None:
    record = build(
        EMAIL_EVENT,
        attributes={"campaign_id": None, "campaign_activity_id": None, "treatment_id": None},
    )
    ev = event(record)
    assert ev.campaign_id is None
    assert ev.variant_id is None


SMS_TYPES = [
    ("_SMS.BUFFERED", EventType.SEND, None),
    ("_SMS.SEND", EventType.SEND, None),
    ("_SMS.SUCCESS", EventType.DELIVERY, None),
    ("_SMS.FAILURE", EventType.DELIVERY_FAILURE, "UNREACHABLE"),
    ("_SMS.OPTOUT", EventType.UNSUBSCRIBE, None),
    ("_SMS.RECEIVED", EventType.OTHER, None),
]


@pytest.mark.parametrize(("event_type", "expected", "error"), SMS_TYPES)
def test_sms_types(event_type: str, expected: EventType, error: str | None) -> None:
    status = error or "SUCCESSFUL"
    ev = event(build(SMS_EVENT, event_type=event_type, attributes={"record_status": status}))
    assert ev.event_type is expected
    assert ev.channel is Channel.SMS
    assert ev.error == error
    assert ev.occurred_at == 1553104954322  # event_timestamp, even though arrival is earlier
    assert ev.device_id is None  # client_id == awsAccountId in the [X2] sample
    assert ev.attributes["message_instance_id"] == "1111-2222-3333"
    assert ev.attributes["record_status"] == status
    assert ev.vendor_event_id == (
        f"{event_type}|123456789012|1111-2222-3333|1553104954322|1553104954064"
    )


def test_sms_device_id_kept_when_not_the_account_id() -> None:
    ev = event(build(SMS_EVENT, client={"client_id": "endpoint-42"}))
    assert ev.device_id == "endpoint-42"


# --- user id from the endpoint JSON string [A-12] ---------------------------------------------


def with_endpoint(endpoint: Any) -> dict[str, Any]:
    return build(CAMPAIGN_SEND, client_context={"custom": {"endpoint": endpoint}})


def test_user_id_from_endpoint_json_string() -> None:
    endpoint = dict(ENDPOINT, User={"UserId": "user-123", "UserAttributes": {}})
    assert event(with_endpoint(orjson.dumps(endpoint).decode())).user_id == "user-123"


def test_user_id_accepts_an_already_decoded_endpoint() -> None:
    assert event(with_endpoint({"User": {"UserId": "u-1"}})).user_id == "u-1"


@pytest.mark.parametrize("user", [{}, {"UserId": ""}, {"UserId": None}])
def test_empty_user_id_is_null(user: dict[str, Any]) -> None:
    endpoint = dict(ENDPOINT, User=user)
    assert event(with_endpoint(orjson.dumps(endpoint).decode())).user_id is None


@pytest.mark.parametrize("endpoint", ['{"ChannelType":"GCM", ↳"User":{}}', "[1,2]", 42])
def test_broken_endpoint_keeps_the_event_and_says_why(endpoint: Any) -> None:
    ev = event(with_endpoint(endpoint))
    assert ev.user_id is None
    assert ev.event_type is EventType.SEND
    assert "endpoint_problem" in ev.attributes


def test_user_id_is_never_the_endpoint_id() -> None:
    record = build(CAMPAIGN_SEND, client_context={})
    ev = event(record)
    assert ev.user_id is None
    assert ev.device_id == "d8dcf7c5-e81a-48ae-8313-f540cexample"


# --- synthetic id and id stringification -----------------------------------------------


def test_synthetic_key_uses_campaign_activity_id_for_campaign_events() -> None:
    a = event(CAMPAIGN_SEND)
    b = event(build(CAMPAIGN_SEND, client={"client_id": "another-endpoint"}))
    assert a.vendor_event_id != b.vendor_event_id  # same run, two endpoints: two events


def test_synthetic_key_missing_parts_become_empty() -> None:
    record = build(CAMPAIGN_SEND, attributes={"campaign_activity_id": None})
    assert event(record).vendor_event_id == (
        "_campaign.send|d8dcf7c5-e81a-48ae-8313-f540cexample||1562109497426|1562109497494"
    )
    sms = build(SMS_EVENT, attributes={"message_id": None}, arrival_timestamp=None)
    assert event(sms).vendor_event_id == "_SMS.SUCCESS|123456789012||1553104954322|"


def test_ids_keep_exact_integer_formatting() -> None:
    big = 9007199254740993  # 2**53 + 1: a double would print ...992
    record = build(
        CAMPAIGN_SEND,
        client={"client_id": big},
        attributes={"campaign_id": big, "treatment_id": 2, "campaign_activity_id": big},
    )
    ev = event(record)
    assert ev.device_id == "9007199254740993"
    assert ev.campaign_id == "9007199254740993"
    assert ev.variant_id == "2"
    assert ev.vendor_event_id == (
        "_campaign.send|9007199254740993|9007199254740993|1562109497426|1562109497494"
    )


def test_integral_float_timestamps_are_accepted_exactly() -> None:
    raw = orjson.dumps(CAMPAIGN_SEND).replace(b"1562109497426", b"1562109497426.0")
    ev = event(raw)
    assert ev.occurred_at == 1562109497426
    assert ev.vendor_event_id.endswith("|1562109497426|1562109497494")


# --- rejects, in §5 order ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"event_type": "_campaign.send",',
        b"[1, 2, 3]",
        b'"_campaign.send"',
        # the seed sample as printed, with its line-wrap markers outside a string
        b'{ "event_type": "_campaign.send", \xe2\x86\xb3 "event_timestamp": 1 }',
    ],
)
def test_invalid_json(raw: bytes) -> None:
    assert rejected(raw).reason is RejectReason.INVALID_JSON


@pytest.mark.parametrize(
    "client",
    [
        None,
        {},
        {"client_id": None},
        {"client_id": ""},
        {"client_id": "  "},
        "abc",
        {"client_id": {"id": 1}},
    ],
)
def test_missing_client_id(client: Any) -> None:
    record = build(CAMPAIGN_SEND)
    record["client"] = client
    assert rejected(record).reason is RejectReason.MISSING_EVENT_ID


@pytest.mark.parametrize("event_type", [None, "", "   ", 7, ["_campaign.send"]])
def test_missing_event_type(event_type: Any) -> None:
    record = build(CAMPAIGN_SEND)
    record["event_type"] = event_type
    assert rejected(record).reason is RejectReason.MISSING_EVENT_TYPE


@pytest.mark.parametrize(
    "timestamp", [None, "1562109497426", "2019-07-02T23:18:17.426Z", 1562109497426.5, True, {}]
)
def test_invalid_event_timestamp(timestamp: Any) -> None:
    record = build(CAMPAIGN_SEND)
    record["event_timestamp"] = timestamp
    assert rejected(record).reason is RejectReason.INVALID_TIMESTAMP


def test_email_engagement_needs_arrival_timestamp() -> None:
    record = build(EMAIL_EVENT, event_type="_email.open", arrival_timestamp=None)
    assert rejected(record).reason is RejectReason.INVALID_TIMESTAMP
    # _email.send uses event_timestamp, so it does not need arrival_timestamp
    assert event(
        build(EMAIL_EVENT, event_type="_email.send", arrival_timestamp=None)
    ).occurred_at == (1564618621380)


def test_reject_order() -> None:
    no_id_no_type = build(CAMPAIGN_SEND, client=None, event_type=None)
    assert rejected(no_id_no_type).reason is RejectReason.MISSING_EVENT_ID
    no_type_bad_time = build(CAMPAIGN_SEND, event_type=None, event_timestamp="soon")
    assert rejected(no_type_bad_time).reason is RejectReason.MISSING_EVENT_TYPE
    detail = rejected(build(CAMPAIGN_SEND, event_timestamp=None)).detail
    assert "event_timestamp" in detail


# --- PII --------------------------------------------------------------------------------------

PII_VALUES = (
    "+14255550199",
    "+12065550142",
    "recipient@example.com",
    "sender@example.com",
    "192.0.2.1",
)


def all_values(ev: CanonicalEvent) -> str:
    return orjson.dumps(ev.to_record()).decode()


def test_pii_is_not_copied_by_default() -> None:
    sms = event(SMS_EVENT)
    record = build(EMAIL_EVENT, event_type="_email.click")
    record["facets"]["email_channel"]["mail_event"]["click"] = {
        "ip_address": "192.0.2.1",
        "user_agent": "Mozilla/5.0",
        "link": "https://aws.amazon.com/pinpoint/",
    }
    email = event(record)
    for ev in (sms, email):
        dumped = all_values(ev)
        for value in PII_VALUES:
            assert value not in dumped
        assert "Mozilla" not in dumped


def test_pii_is_copied_when_enabled() -> None:
    ctx = NormalizeContext(include_pii=True)
    sms = event(SMS_EVENT, ctx)
    assert sms.attributes["destination_phone_number"] == "+14255550199"
    email = event(EMAIL_EVENT, ctx)
    assert email.attributes["destination"] == "recipient@example.com"
    endpoint = dict(ENDPOINT, Address="device-token-abc")
    push = event(with_endpoint(orjson.dumps(endpoint).decode()), ctx)
    assert push.attributes["endpoint_address"] == "device-token-abc"


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_writes_one_line_per_input_line_in_order(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(CAMPAIGN_SEND),
        b"{broken",
        orjson.dumps(build(EMAIL_EVENT, event_type="_email.open")),
        b"",
        orjson.dumps(build(CAMPAIGN_SEND, client=None)),
        orjson.dumps(SMS_EVENT),
    ]
    path = tmp_path / "pinpoint.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "crmcli", "normalize", "pinpoint", str(path)],
        capture_output=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["event_type"] == "SEND"
    assert out[1]["reject"] == "invalid_json"
    assert out[2]["event_type"] == "OPEN"
    assert out[2]["vendor_event_type"] == "_email.open"
    assert out[3]["reject"] == "invalid_json"
    assert out[4]["reject"] == "missing_event_id"
    assert out[5]["event_type"] == "DELIVERY"
