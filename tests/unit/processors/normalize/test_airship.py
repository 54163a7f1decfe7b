"""Airship normalizer against TAXONOMY §6.5, with payloads shaped like the seed 004 examples.

Several seed examples are not valid JSON (trailing commas, ``"body:" {`` in CONTROL, a duplicate
``"type"`` in UNINSTALL), so the payloads here are rebuilt from them (TAXONOMY §4).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.normalize import airship
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Outcome,
    Rejected,
    RejectReason,
    Skipped,
)

CTX = NormalizeContext(app_id="ISex_TTJRuarzs9-o_Gkhg")
REPO = Path(__file__).resolve().parents[4]

IOS = {
    "ios_channel": "1ef235f0-03d5-1384-893e-a19b5cd0d110",
    "channel": "1ef235f0-03d5-1384-893e-a19b5cd0d110",
    "device_type": "IOS",
    "named_user_id": "coolusername",
    "attributes": {"app_version": "542", "device_os": "12.1.4", "ua_sdk_version": "10.2.0"},
}
ANDROID = {
    "android_channel": "e664fb42-d1a7-4956-9907-88c49394ae70",
    "channel": "e664fb42-d1a7-4956-9907-88c49394ae70",
    "device_type": "ANDROID",
}
WEB = {
    "channel": "bd054c5b-d614-46a1-a843-6ca330c66489",
    "device_type": "WEB",
    "attributes": {
        "web_browser_name": "chrome",
        "web_user_agent_string": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_3) Chrome/73.0",
    },
}
EMAIL = {
    "channel": "b8519372-54ff-456d-9819-7faa92fe8b9d",
    "device_type": "EMAIL",
    "delivery_address": "new.subscriber@example.com",
    "named_user": "a_person",
}
SMS = {
    "channel": "db7576c7-6b3d-4f07-b13a-ea3824fea262",
    "delivery_address": "15558675309",
    "device_type": "SMS",
}
OPEN_CHANNEL = {
    "channel": "7a1b3c5d-0000-4000-8000-00000000abcd",
    "device_type": "OPEN",
    "open_platform_name": "email_tracker",
}
USER = {"contact_id": "6b5ca2a2-c1f1-4119-9617-2d5bff0db09d", "named_user_id": "mini_me"}

PUSH_ID = "0c173744-dd35-4b5e-9f7f-2b7e0ce0e36e"
GROUP_ID = "3795a26d-2d74-462b-b228-ca3ed31ef7b1"
TRIGGER = {
    "push_id": "bd5b54a8-84bd-40bc-aa84-8315f9300a99",
    "group_id": "8ea2abd6-dbc7-475a-9c57-fb31c7e2999b",
    "variant_id": 3,
    "campaigns": {"categories": ["new", "Baseball Fan"]},
}
OTHER_TRIGGER = {
    "push_id": "a183f051-7d69-11ed-86d9-0242dc3f670b",
    "group_id": "8e7cfac3-cfd3-4f4f-a9a1-d766de9b063a",
    "campaigns": {"categories": ["welcome_series"]},
}


def line(
    type_: str,
    body: dict[str, Any] | None = None,
    device: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """One RTDS event line (seed: id, type, offset, occurred, processed, device?, user?, body?)."""
    record: dict[str, Any] = {
        "id": "ca2948b0-56ea-11e9-88dc-a142740a77e1",
        "offset": "1000022469540",
        "occurred": "2019-04-04T15:03:22.545Z",
        "processed": "2019-04-04T15:12:54.657Z",
        "type": type_,
    }
    if device is not None:
        record["device"] = copy.deepcopy(device)
    if body is not None:
        record["body"] = copy.deepcopy(body)
    for key, value in top.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def run(record: dict[str, Any] | bytes, ctx: NormalizeContext = CTX) -> Outcome:
    raw = record if isinstance(record, bytes) else orjson.dumps(record)
    return airship.normalize(raw, ctx)


def event(record: dict[str, Any] | bytes, ctx: NormalizeContext = CTX) -> CanonicalEvent:
    outcome = run(record, ctx)
    assert isinstance(outcome, CanonicalEvent), outcome
    return outcome


def rejected(record: dict[str, Any] | bytes) -> Rejected:
    outcome = run(record)
    assert isinstance(outcome, Rejected), outcome
    return outcome


# --- the SEND example, every field ------------------------------------------------------------


def test_send_maps_every_field() -> None:
    body = {
        "variant_id": 1,
        "push_id": PUSH_ID,
        "group_id": GROUP_ID,
        "alerting": True,
        "campaigns": {"categories": ["hello", "numberwang", "first message"]},
        "experiments": {"experiment_id": "f1e2d3c4-aaaa-4bbb-8ccc-000000000001", "type": "GLOBAL"},
    }
    ev = event(line("SEND", body, IOS, user=USER))
    assert ev.event_id == "AIRSHIP:ca2948b0-56ea-11e9-88dc-a142740a77e1"
    assert ev.vendor_event_id == "ca2948b0-56ea-11e9-88dc-a142740a77e1"
    assert ev.vendor_event_type == "SEND"
    assert ev.event_type is EventType.SEND
    assert ev.channel is Channel.PUSH
    assert ev.occurred_at == 1554390202545
    assert ev.user_id == "mini_me"  # user.named_user_id wins over device.named_user_id
    assert ev.device_id == "1ef235f0-03d5-1384-893e-a19b5cd0d110"
    assert ev.campaign_id == GROUP_ID  # group_id, else push_id
    assert ev.campaign_name is None
    assert ev.message_id == PUSH_ID
    assert ev.message_name is None
    assert ev.experiment_id == "f1e2d3c4-aaaa-4bbb-8ccc-000000000001"
    assert ev.variant_id == "1"  # integer -> string
    assert ev.link_url is None
    assert ev.error is None
    assert ev.app_id == "ISex_TTJRuarzs9-o_Gkhg"  # from the connection, not the payload
    assert ev.attributes == {
        "offset": "1000022469540",
        "processed": "2019-04-04T15:12:54.657Z",
        "device_type": "IOS",
        "contact_id": "6b5ca2a2-c1f1-4119-9617-2d5bff0db09d",
        "campaign_categories": "hello,numberwang,first message",
        "group_id": GROUP_ID,
    }


def test_vendor_event_id() -> None:
    assert airship.vendor_event_id(line("SEND", {})) == "ca2948b0-56ea-11e9-88dc-a142740a77e1"
    assert airship.vendor_event_id(line("SEND", {}, id=None)) is None
    assert airship.vendor_event_id(line("SEND", {}, id="")) is None
    assert airship.vendor_event_id(line("OFFSET_UPDATE", id=None)) is None
    assert airship.vendor_event_id(line("OFFSET_UPDATE")) is None  # never an event


def test_campaign_falls_back_to_push_id() -> None:
    ev = event(line("SEND", {"push_id": PUSH_ID}, IOS))
    assert ev.campaign_id == PUSH_ID
    assert ev.message_id == PUSH_ID


def test_user_id_spellings() -> None:
    device_nu = dict(ANDROID, named_user_id="from_device")
    assert event(line("SEND", {"push_id": PUSH_ID}, device_nu)).user_id == "from_device"
    device_legacy = dict(EMAIL, named_user="legacy_spelling")
    assert event(line("SEND", {"push_id": PUSH_ID}, device_legacy)).user_id == "legacy_spelling"
    assert event(line("SEND", {"push_id": PUSH_ID}, ANDROID)).user_id is None
    empty = dict(ANDROID, named_user_id="")
    assert event(line("SEND", {"push_id": PUSH_ID}, empty, user={"contact_id": "c"})).user_id is (
        None
    )


# --- every row of the type table --------------------------------------------------------------

ATTRIBUTED_BODY = {"push_id": PUSH_ID, "group_id": GROUP_ID, "variant_id": 2}

# (type, body, device, event_type, channel)
SIMPLE_ROWS: list[tuple[str, dict[str, Any], dict[str, Any], EventType, Channel]] = [
    ("SEND", ATTRIBUTED_BODY, ANDROID, EventType.SEND, Channel.PUSH),
    ("SEND", ATTRIBUTED_BODY, WEB, EventType.SEND, Channel.PUSH),
    ("SEND", ATTRIBUTED_BODY, EMAIL, EventType.SEND, Channel.EMAIL),
    ("SEND", ATTRIBUTED_BODY, SMS, EventType.SEND, Channel.SMS),
    ("SEND", ATTRIBUTED_BODY, OPEN_CHANNEL, EventType.SEND, Channel.CUSTOM),
    (
        "SEND",
        ATTRIBUTED_BODY,
        {"channel": "x", "device_type": "AMAZON"},
        EventType.SEND,
        Channel.PUSH,
    ),
    (
        "SEND",
        ATTRIBUTED_BODY,
        {"channel": "x", "device_type": "TV"},
        EventType.SEND,
        Channel.UNKNOWN,
    ),
    ("SEND_ABORTED", ATTRIBUTED_BODY, ANDROID, EventType.SEND_ABORTED, Channel.PUSH),
    ("SEND_REJECTED", ATTRIBUTED_BODY, IOS, EventType.BOUNCE, Channel.PUSH),
    ("CONTROL", ATTRIBUTED_BODY, ANDROID, EventType.CONTROL, Channel.PUSH),
    ("CONTROL", ATTRIBUTED_BODY, EMAIL, EventType.CONTROL, Channel.EMAIL),
    ("RICH_CONTROL", ATTRIBUTED_BODY, IOS, EventType.CONTROL, Channel.INBOX),
    ("IN_APP_MESSAGE_CONTROL", ATTRIBUTED_BODY, IOS, EventType.CONTROL, Channel.IN_APP),
    ("IN_APP_MESSAGE_EXCLUSION", ATTRIBUTED_BODY, ANDROID, EventType.SEND_ABORTED, Channel.IN_APP),
    ("IN_APP_MESSAGE_DISPLAY", ATTRIBUTED_BODY, IOS, EventType.IMPRESSION, Channel.IN_APP),
    ("IN_APP_FORM_RESULT", ATTRIBUTED_BODY, IOS, EventType.FORM_SUBMIT, Channel.IN_APP),
    ("IN_APP_BUTTON_TAP", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_FORM_DISPLAY", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_EXPERIENCES", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_PAGE_VIEW", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_PAGE_SWIPE", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_PAGER_COMPLETED", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_PAGER_SUMMARY", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("IN_APP_MESSAGE_EXPIRATION", ATTRIBUTED_BODY, IOS, EventType.OTHER, Channel.IN_APP),
    ("RICH_DELIVERY", ATTRIBUTED_BODY, ANDROID, EventType.DELIVERY, Channel.INBOX),
    ("RICH_READ", ATTRIBUTED_BODY, IOS, EventType.OPEN, Channel.INBOX),
    ("RICH_DELETE", ATTRIBUTED_BODY, IOS, EventType.DISMISS, Channel.INBOX),
    ("WEB_CLICK", ATTRIBUTED_BODY, WEB, EventType.OPEN, Channel.PUSH),
    ("SHORT_LINK_CLICK", ATTRIBUTED_BODY, SMS, EventType.CLICK, Channel.SMS),
]


@pytest.mark.parametrize(
    ("type_", "body", "device", "expected", "channel"),
    SIMPLE_ROWS,
    ids=[f"{row[0]}-{row[2]['device_type']}" for row in SIMPLE_ROWS],
)
def test_attributed_types(
    type_: str, body: dict[str, Any], device: dict[str, Any], expected: EventType, channel: Channel
) -> None:
    ev = event(line(type_, body, device))
    assert ev.vendor_event_type == type_
    assert ev.event_type is expected
    assert ev.channel is channel
    assert ev.campaign_id == GROUP_ID  # P = body
    assert ev.message_id == PUSH_ID
    assert ev.variant_id == "2"


NOT_CAMPAIGN_TYPES = [
    "PUSH_BODY",
    "UNINSTALL",
    "FIRST_OPEN",
    "FIRST_OPT_IN",
    "CLOSE",
    "LOCATION",
    "REGION",
    "TAG_CHANGE",
    "ATTRIBUTE_OPERATION",
    "CONTACT_CHANGE",
    "SUBSCRIPTION_LIST",
    "SCREEN_VIEWED",
    "WEB_SESSION",
    "FEATURE_FLAG_INTERACTION",
    "LABEL_EVENT",
    "MOBILE_ORIGINATED",
]


@pytest.mark.parametrize("type_", NOT_CAMPAIGN_TYPES)
def test_known_non_campaign_types_are_other_none(type_: str) -> None:
    ev = event(line(type_, {"session_id": "ad4ad05a-17f4-4eab-9c6f-d3f7fbf3cc25"}, IOS))
    assert ev.event_type is EventType.OTHER
    assert ev.channel is Channel.NONE
    assert ev.vendor_event_type == type_


def test_push_body_keeps_its_push_as_enrichment() -> None:
    body = {
        "push_id": "233f8109-bf56-4d95-a8bf-6f28e9d270a4",
        "campaigns": {"categories": ["hello", "numberwang"]},
        "resource": "PUSH",
        "trimmed": False,
        "payload": "eyJkZXZpY2VfdHlwZXMiOiBbImFuZHJvaWQiXX0=",
    }
    ev = event(line("PUSH_BODY", body))  # no device on PUSH_BODY
    assert ev.event_type is EventType.OTHER
    assert ev.message_id == "233f8109-bf56-4d95-a8bf-6f28e9d270a4"
    assert ev.attributes["campaign_categories"] == "hello,numberwang"
    assert ev.device_id is None


def test_web_session_never_uses_last_delivered() -> None:
    body = {"session_id": "e8350094", "last_delivered": {"push_id": PUSH_ID}}
    ev = event(line("WEB_SESSION", body, WEB))
    assert ev.campaign_id is None
    assert ev.message_id is None


@pytest.mark.parametrize("type_", ["SOME_FUTURE_EVENT", "send", "IN_APP_SOMETHING_NEW"])
def test_unknown_types_are_other_unknown_without_attribution(type_: str) -> None:
    ev = event(line(type_, ATTRIBUTED_BODY, IOS))
    assert ev.event_type is EventType.OTHER
    assert ev.channel is Channel.UNKNOWN
    assert ev.vendor_event_type == type_
    assert ev.campaign_id is None
    assert ev.message_id is None
    assert ev.variant_id is None


# --- OPEN: direct open vs app open ------------------------------------------------------------


def test_direct_open_is_a_push_open_attributed_to_the_triggering_push() -> None:
    body = {
        "last_delivered": {"push_id": "6e3339ce-529c-42e4-a2f6-7546f81c9828"},
        "triggering_push": {
            "push_id": "c2f6c5c5-f353-49c0-b5f7-6e87cf9b1a06",
            "group_id": "8ea2abd6-dbc7-475a-9c57-fb31c7e2999b",
            "variant_id": 1,
        },
        "session_id": "ad4ad05a-17f4-4eab-9c6f-d3f7fbf3cc25",
    }
    ev = event(line("OPEN", body, ANDROID, user={"contact_id": "982B35f2"}))
    assert ev.event_type is EventType.OPEN
    assert ev.channel is Channel.PUSH
    assert ev.campaign_id == "8ea2abd6-dbc7-475a-9c57-fb31c7e2999b"
    assert ev.message_id == "c2f6c5c5-f353-49c0-b5f7-6e87cf9b1a06"
    assert ev.variant_id == "1"


def test_app_open_is_other_none_without_attribution() -> None:
    body = {"last_delivered": {"push_id": PUSH_ID}, "session_id": "s"}
    ev = event(line("OPEN", body, ANDROID))
    assert ev.event_type is EventType.OTHER
    assert ev.channel is Channel.NONE
    assert ev.campaign_id is None
    assert ev.message_id is None


# --- in-app ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "expected"),
    [
        ("BUTTON_CLICK", EventType.CLICK),
        ("MESSAGE_CLICK", EventType.CLICK),
        ("USER_DISMISSED", EventType.DISMISS),
        ("TIMED_OUT", EventType.DISMISS),
        ("SOMETHING_ELSE", EventType.OTHER),
    ],
)
def test_in_app_resolution(resolution: str, expected: EventType) -> None:
    body = {
        "push_id": "86ee0a6e-a46a-4bbe-a3d1-804891baaee4",
        "group_id": "68991b8d-0d6b-4e05-bc62-2cdec2085c18",
        "triggering_push": OTHER_TRIGGER,
        "time_sent": "2019-03-03T19:10:26.301Z",
        "type": resolution,
        "button_id": "yes",
        "duration": 10000,
    }
    ev = event(line("IN_APP_MESSAGE_RESOLUTION", body, ANDROID))
    assert ev.event_type is expected
    assert ev.channel is Channel.IN_APP
    assert ev.attributes["resolution_type"] == resolution


def test_in_app_never_attributes_to_its_triggering_push() -> None:
    body = {
        "push_id": "68be9eba-3f3e-4763-bbd1-c921a164af1b",
        "group_id": "49e59f68-d58c-4a2f-86ab-112f52e3c5d2",
        "variant_id": 5,
        "triggering_push": OTHER_TRIGGER,
    }
    ev = event(line("IN_APP_MESSAGE_DISPLAY", body, IOS))
    assert ev.campaign_id == "49e59f68-d58c-4a2f-86ab-112f52e3c5d2"
    assert ev.message_id == "68be9eba-3f3e-4763-bbd1-c921a164af1b"
    assert ev.variant_id == "5"
    assert ev.attributes["triggering_push_id"] == OTHER_TRIGGER["push_id"]
    assert "welcome_series" not in ev.attributes.get("campaign_categories", "")


def test_in_app_without_push_attributes_nothing_even_with_a_triggering_push() -> None:
    body = {"session_id": "s", "triggering_push": OTHER_TRIGGER}
    ev = event(line("IN_APP_MESSAGE_DISPLAY", body, IOS))
    assert ev.campaign_id is None
    assert ev.message_id is None


def test_app_defined_in_app_message_id() -> None:
    ev = event(line("IN_APP_MESSAGE_DISPLAY", {"app_defined_id": "onboarding-tip-3"}, IOS))
    assert ev.message_id == "onboarding-tip-3"
    assert ev.campaign_id is None


def test_in_app_exclusion_reason() -> None:
    body = {"push_id": PUSH_ID, "group_id": GROUP_ID, "type": "AUDIENCE_CHECK_EXCLUDED"}
    ev = event(line("IN_APP_MESSAGE_EXCLUSION", body, ANDROID))
    assert ev.event_type is EventType.SEND_ABORTED
    assert ev.error == "AUDIENCE_CHECK_EXCLUDED"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "FEED_BANNED_RESPONSE",
        "FEED_REQUEST_REJECTED",
        "FEED_RESOLVE_FAILURE",
        "FREQUENCY_LIMIT_FAILURE",
        "FREQUENCY_LIMIT_REACHED",
        "UNKNOWN",
    ],
)
def test_send_aborted_reason_is_the_error(reason: str) -> None:
    ev = event(
        line("SEND_ABORTED", {"push_id": PUSH_ID, "group_id": GROUP_ID, "reason": reason}, ANDROID)
    )
    assert ev.event_type is EventType.SEND_ABORTED
    assert ev.error == reason


@pytest.mark.parametrize(
    "status", ["BadDeviceToken", "Unregistered", "Uninstalled", "MessageTooBig"]
)
def test_send_rejected_status_is_the_error(status: str) -> None:
    body = {"variant_id": 1, "push_id": PUSH_ID, "status": status}
    ev = event(line("SEND_REJECTED", body, IOS))
    assert ev.event_type is EventType.BOUNCE
    assert ev.error == status


# --- CUSTOM email events ----------------------------------------------------------------------


def email_custom(name: str, **properties: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "triggering_push": TRIGGER,
        "session_id": "19e09be8-a586-4ff8-940f-1a4084d928e9",
        "source": "API",
        "properties": {
            "sender": "baseball@example.com",
            "subject": "Baseball Season is Almost Here!",
            "email": "new.subscriber@example.com",
            **properties,
        },
    }
    return line("CUSTOM", body, EMAIL, id="2cf89e3a-2458-4c2d-8fcf-11f593b1b85e")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("delivery", EventType.DELIVERY),
        ("open", EventType.OPEN),
        ("initial_open", EventType.OPEN),
        ("click", EventType.CLICK),
        ("bounce", EventType.BOUNCE),
        ("delay", EventType.DEFERRAL),
        ("unsubscribe", EventType.UNSUBSCRIBE),
        ("injection", EventType.OTHER),
    ],
)
def test_custom_email_events(name: str, expected: EventType) -> None:
    ev = event(email_custom(name))
    assert ev.vendor_event_type == f"CUSTOM:{name}"
    assert ev.event_type is expected
    assert ev.channel is Channel.EMAIL
    # P = triggering_push
    assert ev.campaign_id == TRIGGER["group_id"]
    assert ev.message_id == TRIGGER["push_id"]
    assert ev.variant_id == "3"
    assert ev.attributes["campaign_categories"] == "new,Baseball Fan"
    assert ev.user_id == "a_person"  # device.named_user spelling
    assert ev.device_id == "b8519372-54ff-456d-9819-7faa92fe8b9d"


def test_custom_email_click_link_url() -> None:
    ev = event(email_custom("click", link_name="Homepage", link_url="https://www.example.com"))
    assert ev.link_url == "https://www.example.com"
    assert event(email_custom("open")).link_url is None


def test_custom_email_bounce_class_is_the_error() -> None:
    ev = event(email_custom("bounce", bounce_event_type="bounce", bounce_class="10"))
    assert ev.error == "10"
    assert ev.attributes["bounce_class"] == "10"


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", "true"), (True, "true"), ("false", "false"), (False, "false")]
)
def test_is_prefetched_accepts_string_booleans(raw: Any, expected: str) -> None:
    ev = event(email_custom("initial_open", is_prefetched=raw, is_mobile="true"))
    assert ev.attributes["is_prefetched"] == expected


def test_custom_email_name_on_a_non_email_device_is_user_defined() -> None:
    body = {"name": "open", "triggering_push": TRIGGER}
    ev = event(line("CUSTOM", body, ANDROID))
    assert ev.event_type is EventType.OTHER
    assert ev.channel is Channel.NONE


# --- CUSTOM SMS delivery reports [A-25] -------------------------------------------------------


def sms_report(name: str, **properties: Any) -> dict[str, Any]:
    body = {
        "interaction_type": "delivery_report",
        "name": name,
        "properties": {
            "sender": 15551234567,
            "vendor": "CLX",
            "vendorDeliveryId": "FENhObMKbCjMOwtw",
            **properties,
        },
        "source": "API",
        "triggering_push": {
            "campaigns": {"categories": ["New Users"]},
            "push_id": "9323b708-7741-4a85-8b1b-e55ad8ce64fc",
        },
    }
    return line(
        "CUSTOM",
        body,
        SMS,
        id="48af12e8-6920-4e4e-bef8-b5a6918eec35",
        occurred="2019-01-31T17:45:38.700Z",
        offset="1000002098217",
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("delivered", EventType.DELIVERY),
        ("read", EventType.OPEN),
        ("aborted", EventType.SEND_FAILED),
        ("rejected", EventType.SEND_FAILED),
        ("expired", EventType.SEND_FAILED),
        ("failed", EventType.DELIVERY_FAILURE),
        ("undeliverable", EventType.DELIVERY_FAILURE),
        ("deleted", EventType.DELIVERY_FAILURE),
        ("dispatched", EventType.OTHER),
        ("unknown", EventType.OTHER),
        ("brand_new_status", EventType.OTHER),
    ],
)
def test_sms_delivery_reports(name: str, expected: EventType) -> None:
    ev = event(sms_report(name))
    assert ev.vendor_event_type == f"CUSTOM:{name}"
    assert ev.event_type is expected
    assert ev.channel is Channel.SMS
    assert ev.campaign_id == "9323b708-7741-4a85-8b1b-e55ad8ce64fc"  # no group_id: push_id
    assert ev.message_id == "9323b708-7741-4a85-8b1b-e55ad8ce64fc"
    assert ev.attributes["vendor_delivery_id"] == "FENhObMKbCjMOwtw"
    assert ev.attributes["interaction_type"] == "delivery_report"
    assert ev.occurred_at == 1548956738700


def test_sms_error_code_is_the_error() -> None:
    assert event(sms_report("failed", error_code="E101")).error == "E101"
    assert event(sms_report("delivered")).error is None


def test_user_defined_custom_event_is_other_none() -> None:
    body = {
        "name": "purchased",
        "value": 239.85,
        "interaction_type": "url",
        "triggering_push": {"push_id": PUSH_ID},
        "last_delivered": {"push_id": "6e3339ce-529c-42e4-a2f6-7546f81c9828"},
        "properties": {"brand": "Victory Sneakers", "colors": ["red", "blue"]},
    }
    ev = event(line("CUSTOM", body, ANDROID))
    assert ev.vendor_event_type == "CUSTOM:purchased"
    assert ev.event_type is EventType.OTHER
    assert ev.channel is Channel.NONE
    assert ev.campaign_id is None  # P = body, which has no push


def test_custom_without_a_name() -> None:
    ev = event(line("CUSTOM", {"value": 1}, ANDROID))
    assert ev.vendor_event_type == "CUSTOM"
    assert ev.event_type is EventType.OTHER


# --- SUBSCRIPTION and COMPLIANCE [A-26] -------------------------------------------------------


@pytest.mark.parametrize(
    ("subtype", "expected"),
    [
        ("spam_complaint", EventType.COMPLAINT),
        ("list_unsubscribe", EventType.UNSUBSCRIBE),
        ("out_of_band", EventType.BOUNCE),
        ("registration", EventType.OTHER),
        ("create_and_send", EventType.OTHER),
        ("bounce", EventType.OTHER),
        ("link_unsubscribe", EventType.OTHER),
    ],
)
def test_subscription(subtype: str, expected: EventType) -> None:
    body = {
        "event_type": subtype,
        "identifiers": {"address": "new.subscription@example.com"},
        "properties": {"commercial_opted_out": "2019-01-04T20:56:00.000Z"},
        "push_id": PUSH_ID,  # even if present: no campaign attribution
    }
    ev = event(line("SUBSCRIPTION", body, EMAIL))
    assert ev.vendor_event_type == f"SUBSCRIPTION:{subtype}"
    assert ev.event_type is expected
    assert ev.channel is Channel.EMAIL  # by device
    assert ev.campaign_id is None
    assert ev.message_id is None


def test_subscription_channel_follows_the_device() -> None:
    ev = event(line("SUBSCRIPTION", {"event_type": "list_unsubscribe"}, SMS))
    assert ev.channel is Channel.SMS
    assert event(line("SUBSCRIPTION", {"event_type": "list_unsubscribe"})).channel is (
        Channel.UNKNOWN
    )


COMPLIANCE_OTHER = [
    ("bounce", EMAIL),
    ("registration", EMAIL),
    ("create_and_send", EMAIL),
    ("api_initiate_opt_in", SMS),
    ("carrier_deactivation", SMS),
    ("create_and_send", SMS),
    ("custom_keyword_response", SMS),
    ("mobile_create_channel", SMS),
    ("mobile_keyword_matched", SMS),
    ("mobile_keyword_unmatched", SMS),
    ("mobile_opt_in", SMS),
    ("mobile_terminated_message", SMS),
    ("opted_out", SMS),
    ("uninstall", SMS),
    ("registration", SMS),
]


@pytest.mark.parametrize(("subtype", "device"), COMPLIANCE_OTHER)
def test_compliance_subtypes_are_other_by_device(subtype: str, device: dict[str, Any]) -> None:
    body = {
        "event_type": subtype,
        "identifiers": {"sender": "15558675309", "msisdn": "15558968663"},
    }
    ev = event(line("COMPLIANCE", body, device))
    assert ev.vendor_event_type == f"COMPLIANCE:{subtype}"
    assert ev.event_type is EventType.OTHER
    assert ev.channel is (Channel.EMAIL if device is EMAIL else Channel.SMS)


def test_compliance_unsubscribe_registration_is_other() -> None:
    body = {
        "event_type": "registration",
        "properties": {"message_type": "commercial", "registration_type": "unsubscribe"},
    }
    ev = event(line("COMPLIANCE", body, EMAIL))
    assert ev.event_type is EventType.OTHER


def test_compliance_mobile_opt_out_is_an_sms_unsubscribe() -> None:
    body = {
        "event_type": "mobile_opt_out",
        "identifiers": {"sender": "15558675309", "msisdn": "15558968663"},
        "properties": {"inbound_message": "STOP", "keyword": "STOP"},
    }
    ev = event(line("COMPLIANCE", body, dict(SMS, delivery_address="15558968663")))
    assert ev.vendor_event_type == "COMPLIANCE:mobile_opt_out"
    assert ev.event_type is EventType.UNSUBSCRIBE
    assert ev.channel is Channel.SMS
    dumped = orjson.dumps(ev.to_record()).decode()
    assert "15558968663" not in dumped
    assert "STOP" not in dumped  # message body is PII


# --- link URL, experiments --------------------------------------------------------------------


def test_short_link_click_original_url() -> None:
    body = {
        "push_id": "f4b4201a-70e2-4a8d-bc8f-f35ddfa7d0e7",
        "group_id": "47f01bbf-2efa-4743-acd8-fd1023a36744",
        "properties": {"original_url": "https://example.com/offer?c=1"},
    }
    ev = event(line("SHORT_LINK_CLICK", body, SMS))
    assert ev.link_url == "https://example.com/offer?c=1"
    assert ev.campaign_id == "47f01bbf-2efa-4743-acd8-fd1023a36744"


def test_experiment_and_variant_sources() -> None:
    body = {
        "push_id": PUSH_ID,
        "experiments": {"experiment_id": "exp-1", "type": "GLOBAL", "variant_id": "variant-b"},
    }
    ev = event(line("SEND", body, IOS))
    assert ev.experiment_id == "exp-1"
    assert ev.variant_id == "variant-b"  # no P.variant_id: experiments.variant_id
    body_level = event(line("CONTROL", {"push_id": PUSH_ID, "experiment_id": "exp-2"}, ANDROID))
    assert body_level.experiment_id == "exp-2"
    top_level = event(line("CONTROL", {"push_id": PUSH_ID}, ANDROID, experiment_id="exp-3"))
    assert top_level.experiment_id == "exp-3"
    both = event(line("SEND", dict(body, variant_id=4), IOS))
    assert both.variant_id == "4"


# --- control lines (§5 item 4) ----------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\n", b"   ", b"\r\n"])
def test_blank_line_is_a_keepalive(raw: bytes) -> None:
    assert run(raw) == Skipped("keepalive")


def test_offset_update_is_skipped_whatever_else_it_lacks() -> None:
    record = {
        "type": "OFFSET_UPDATE",
        "offset": "1000001215643",
        "occurred": "2021-02-26T20:50:21.12Z",
        "processed": "2021-02-26T20:50:21.12Z",
    }
    assert run(record) == Skipped("OFFSET_UPDATE")
    assert run(dict(record, id="x", occurred="not a time")) == Skipped("OFFSET_UPDATE")


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("occurred", "expected"),
    [
        ("2021-02-26T20:50:21.12Z", 1614372621120),  # 2 digits, seed SEND_ABORTED
        ("2021-02-26T20:50:21.1Z", 1614372621100),
        ("2021-02-26T20:50:21.123Z", 1614372621123),
        ("2021-02-26T20:50:21Z", 1614372621000),
        ("2021-02-26T20:50:21.123999Z", 1614372621123),  # sub-ms truncated, not rounded
        ("2021-02-26T20:50:21.9999Z", 1614372621999),
        ("2021-02-26T21:50:21.120+01:00", 1614372621120),
        ("2021-02-26T15:50:21.120-05:00", 1614372621120),
        ("2021-02-26T20:50:21.120+0000", 1614372621120),
        ("2021-02-26T20:50:21.120z", 1614372621120),
    ],
)
def test_occurred_at(occurred: str, expected: int) -> None:
    assert event(line("SEND", {"push_id": PUSH_ID}, IOS, occurred=occurred)).occurred_at == expected


@pytest.mark.parametrize(
    "occurred",
    [
        None,
        "",
        "2021-02-26T20:50:21.120",  # no zone designator
        "2021-02-30T20:50:21.120Z",  # no such day
        "yesterday",
        1614372621120,  # epoch is not the documented format
        {"time": "2021-02-26T20:50:21Z"},
    ],
)
def test_invalid_occurred(occurred: Any) -> None:
    record = line("SEND", {"push_id": PUSH_ID}, IOS, occurred=occurred)
    if occurred is None:
        record.pop("occurred", None)
    assert rejected(record).reason is RejectReason.INVALID_TIMESTAMP


def test_processed_is_kept_as_an_attribute_not_used_as_time() -> None:
    ev = event(line("CLOSE", {}, IOS, processed="2019-04-08T15:10:23.828Z"))
    assert ev.occurred_at == 1554390202545
    assert ev.attributes["processed"] == "2019-04-08T15:10:23.828Z"


# --- rejects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"id": "x", "type": "SEND",}',  # the seed's trailing commas
        b'{"id": "x", "type": "CONTROL", "body:" {"push_id": "p"}}',  # the seed's CONTROL typo
        b"[]",
        b"null",
        b"42",
    ],
)
def test_invalid_json(raw: bytes) -> None:
    assert rejected(raw).reason is RejectReason.INVALID_JSON


@pytest.mark.parametrize("event_id", [None, "", "   ", {"a": 1}, [1]])
def test_missing_event_id(event_id: Any) -> None:
    record = line("SEND", {"push_id": PUSH_ID}, IOS)
    record["id"] = event_id
    assert rejected(record).reason is RejectReason.MISSING_EVENT_ID


@pytest.mark.parametrize("type_", [None, "", 12, ["SEND"]])
def test_missing_event_type(type_: Any) -> None:
    record = line("SEND", {"push_id": PUSH_ID}, IOS)
    record["type"] = type_
    assert rejected(record).reason is RejectReason.MISSING_EVENT_TYPE


def test_reject_order() -> None:
    nothing = {"occurred": "bad"}
    assert rejected(nothing).reason is RejectReason.MISSING_EVENT_ID
    no_type = {"id": "abc", "occurred": "bad"}
    assert rejected(no_type).reason is RejectReason.MISSING_EVENT_TYPE


def test_numeric_event_id_keeps_exact_integer_formatting() -> None:
    raw = b'{"id": 9007199254740993, "type": "SEND", "occurred": "2021-02-26T20:50:21Z"}'
    assert event(raw).event_id == "AIRSHIP:9007199254740993"


def test_offsets_are_opaque_strings() -> None:
    for offset in ("1000001778910", "MTIzNQ", "-1099401623"):
        assert event(line("RICH_CONTROL", {}, IOS, offset=offset)).attributes["offset"] == offset


def test_body_of_the_wrong_type_is_ignored_not_a_crash() -> None:
    record = line("SEND", None, IOS)
    record["body"] = "oops"
    ev = event(record)
    assert ev.event_type is EventType.SEND
    assert ev.campaign_id is None


# --- PII --------------------------------------------------------------------------------------


def test_pii_is_not_copied_by_default() -> None:
    outcomes = [
        event(email_custom("click", link_url="https://www.example.com", os_family="Android")),
        event(sms_report("delivered")),
        event(line("WEB_CLICK", {"push_id": PUSH_ID}, WEB)),
    ]
    for ev in outcomes:
        dumped = orjson.dumps(ev.to_record()).decode()
        for value in (
            "new.subscriber@example.com",
            "15558675309",
            "Mozilla",
            "baseball@example.com",
            "Baseball Season",
        ):
            assert value not in dumped


def test_pii_is_copied_when_enabled() -> None:
    ctx = NormalizeContext(app_id="k", include_pii=True)
    assert event(email_custom("open"), ctx).attributes["delivery_address"] == (
        "new.subscriber@example.com"
    )
    assert event(sms_report("delivered"), ctx).attributes["delivery_address"] == "15558675309"
    web = event(line("WEB_CLICK", {"push_id": PUSH_ID}, WEB), ctx)
    assert web.attributes["user_agent"].startswith("Mozilla/5.0")


def test_app_id_is_null_without_connector_config() -> None:
    assert event(line("SEND", {"push_id": PUSH_ID}, IOS), NormalizeContext()).app_id is None


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_writes_one_line_per_input_line_in_order(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(line("SEND", {"push_id": PUSH_ID}, IOS)),
        b"",
        orjson.dumps({"type": "OFFSET_UPDATE", "offset": "1", "occurred": "2021-02-26T20:50:21Z"}),
        b'{"id": "x", "type": "SEND",}',
        orjson.dumps(email_custom("click", link_url="https://www.example.com")),
        orjson.dumps(line("SEND", {}, IOS, occurred="2021-02-26T20:50:21")),
    ]
    path = tmp_path / "airship.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crmcli",
            "normalize",
            "airship",
            str(path),
            "--app-id",
            "KEY",
        ],
        capture_output=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    out = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["event_type"] == "SEND"
    assert out[0]["app_id"] == "KEY"
    assert out[1] == {"skip": "keepalive"}
    assert out[2] == {"skip": "OFFSET_UPDATE"}
    assert out[3]["reject"] == "invalid_json"
    assert out[4]["event_type"] == "CLICK"
    assert out[4]["link_url"] == "https://www.example.com"
    assert out[5]["reject"] == "invalid_timestamp"
