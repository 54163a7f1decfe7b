"""Leanplum S3 Data Feed normalizer (TAXONOMY §6.1) against payloads shaped like seed 000."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.normalize import leanplum
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Rejected,
    RejectReason,
)

CTX = NormalizeContext(app_id="lp-app-1")
BIG_ID = 5629499534213120123  # > 2**53: a float round-trip would change it


def message(channel: str, event_type: str, name: str | None = None, **props: Any) -> dict:
    """A message event as the JSON feed writes it (seed 000, e.g. "Email Sent")."""
    properties: dict[str, Any] = {
        "user_id": "user-42",
        "device_id": "3F2A9C1E-DEVICE",
        "message_occurrence_id": "occ-7781",
        "time": "2024-05-01 10:00:00.123",
        "name": "Spring sale",
        "message_id": 6011498012344320,
        "event_type": event_type,
        "channel": channel,
        "campaign_id": 5066549580791808,
        "campaign_name": "Spring campaign",
    }
    properties.update(props)
    return {
        "event_id": "evt-0001",
        "name": name or f"(Leanplum) {channel} {event_type}",
        "properties": properties,
    }


def campaign(event_type: str, **props: Any) -> dict:
    properties: dict[str, Any] = {
        "user_id": "user-42",
        "device_id": "dev-1",
        "time": "2024-05-01 10:00:00.123",
        "name": "Onboarding",
        "campaign_id": 5066549580791808,
        "event_type": event_type,
    }
    properties.update(props)
    return {
        "event_id": "evt-c1",
        "name": f"(Leanplum) Campaign {event_type}",
        "properties": properties,
    }


def ab_test(**props: Any) -> dict:
    properties: dict[str, Any] = {
        "user_id": "user-42",
        "device_id": "dev-1",
        "time": "2024-05-01 10:00:00.123",
        "name": "Button colour",
        "ab_test_id": 4785074604081152,
        "variant_id": 5348024557502464,
    }
    properties.update(props)
    return {
        "event_id": "evt-ab1",
        "name": "(Leanplum) A/B Test Impression",
        "properties": properties,
    }


def run(record: Any, ctx: NormalizeContext = CTX) -> CanonicalEvent:
    outcome = leanplum.normalize(orjson.dumps(record), ctx)
    assert isinstance(outcome, CanonicalEvent), outcome
    return outcome


def rejected(raw: bytes) -> Rejected:
    outcome = leanplum.normalize(raw, CTX)
    assert isinstance(outcome, Rejected), outcome
    return outcome


# Every row of the §6.1 message table, with the name and event_type the seed's sections imply
# plus at least one synonym per row (A-9: classify on channel + event_type, not on name).
MESSAGE_ROWS = [
    ("Email", "Send", EventType.SEND, Channel.EMAIL),
    ("Email", "Sent", EventType.SEND, Channel.EMAIL),
    ("Email", "Delivered", EventType.DELIVERY, Channel.EMAIL),
    ("Email", "Deferred", EventType.DEFERRAL, Channel.EMAIL),
    ("Email", "defer", EventType.DEFERRAL, Channel.EMAIL),
    ("Email", "Bounce", EventType.BOUNCE, Channel.EMAIL),
    ("Email", "Bounced", EventType.BOUNCE, Channel.EMAIL),
    ("Email", "Open", EventType.OPEN, Channel.EMAIL),
    ("Email", "Opened", EventType.OPEN, Channel.EMAIL),
    ("Email", "Click", EventType.CLICK, Channel.EMAIL),
    ("Email", "Clicked", EventType.CLICK, Channel.EMAIL),
    ("Email", "Marked as spam", EventType.COMPLAINT, Channel.EMAIL),
    ("Email", "MARKED AS SPAM", EventType.COMPLAINT, Channel.EMAIL),
    ("Email", "Unsubscribed", EventType.UNSUBSCRIBE, Channel.EMAIL),
    ("Email", "Unsubscribe", EventType.UNSUBSCRIBE, Channel.EMAIL),
    ("Email", "Dropped", EventType.DROP, Channel.EMAIL),
    ("Email", "Drop", EventType.DROP, Channel.EMAIL),
    ("App Inbox", "Send", EventType.SEND, Channel.INBOX),
    ("App Inbox", "Sent", EventType.SEND, Channel.INBOX),
    ("App Inbox", "Open", EventType.OPEN, Channel.INBOX),
    ("App Inbox", "Opened", EventType.OPEN, Channel.INBOX),
    ("In App Message", "View", EventType.IMPRESSION, Channel.IN_APP),
    ("In-App Message", "Viewed", EventType.IMPRESSION, Channel.IN_APP),
    ("In App Message", "Accept", EventType.CLICK, Channel.IN_APP),
    ("In App Message", "Accepted", EventType.CLICK, Channel.IN_APP),
    ("In App Message", "Submit", EventType.FORM_SUBMIT, Channel.IN_APP),
    ("In-App Message", "Submitted", EventType.FORM_SUBMIT, Channel.IN_APP),
    ("In App Message", "Select", EventType.CLICK, Channel.IN_APP),
    ("In App Message", "Selected", EventType.CLICK, Channel.IN_APP),
    ("Push Notification", "Send", EventType.SEND, Channel.PUSH),
    ("Push Notification", "Sent", EventType.SEND, Channel.PUSH),
    ("Push Notification", "Open", EventType.OPEN, Channel.PUSH),
    ("Push Notification", "Opened", EventType.OPEN, Channel.PUSH),
    ("Push Notification", "Bounce", EventType.BOUNCE, Channel.PUSH),
    ("Push Notification", "Bounced", EventType.BOUNCE, Channel.PUSH),
    ("Webhook", "Send", EventType.SEND, Channel.WEBHOOK),
    ("Webhook", "Sent", EventType.SEND, Channel.WEBHOOK),
    # "anything else": known channel -> that channel, else UNKNOWN; OTHER.
    ("Email", "Forwarded", EventType.OTHER, Channel.EMAIL),
    ("Push Notification", "Delivered", EventType.OTHER, Channel.PUSH),
    ("Webhook", "Open", EventType.OTHER, Channel.WEBHOOK),
    ("SMS", "Send", EventType.OTHER, Channel.UNKNOWN),
    ("", "Send", EventType.OTHER, Channel.UNKNOWN),
]


@pytest.mark.parametrize(
    ("channel", "event_type", "expected_type", "expected_channel"), MESSAGE_ROWS
)
def test_message_rows(
    channel: str, event_type: str, expected_type: EventType, expected_channel: Channel
) -> None:
    event = run(message(channel, event_type))
    assert (event.event_type, event.channel) == (expected_type, expected_channel)
    assert event.vendor_event_type == f"(Leanplum) {channel} {event_type}"
    assert event.attributes["vendor_event_type_raw"] == event_type
    if channel:
        assert event.attributes["vendor_channel"] == channel


def test_classification_ignores_name() -> None:
    """[A-9]: the seed's "(Leanplum) Message " default name still classifies by properties."""
    event = run(message("Email", "Open", name="(Leanplum) Message "))
    assert (event.event_type, event.channel) == (EventType.OPEN, Channel.EMAIL)
    event = run(message("Email", "Open", name="(Leanplum) Push Notification Send"))
    assert (event.event_type, event.channel) == (EventType.OPEN, Channel.EMAIL)
    assert event.vendor_event_type == "(Leanplum) Push Notification Send"


def test_message_fields() -> None:
    record = message(
        "Email",
        "Click",
        email_id="em-55",
        link_url="https://shop.example.com/sale",
        link_id="3",
    )
    event = run(record)
    assert event.event_id == "LEANPLUM:evt-0001"
    assert event.vendor_event_id == "evt-0001"
    assert event.occurred_at == 1714557600123
    assert event.user_id == "user-42"
    assert event.device_id == "3F2A9C1E-DEVICE"
    assert event.campaign_id == "5066549580791808"
    assert event.campaign_name == "Spring campaign"
    assert event.message_id == "6011498012344320"
    assert event.message_name == "Spring sale"
    assert event.link_url == "https://shop.example.com/sale"
    assert event.experiment_id is None and event.variant_id is None
    assert event.error is None
    assert event.app_id == "lp-app-1"
    assert event.attributes == {
        "message_instance_id": "occ-7781",
        "email_id": "em-55",
        "link_id": "3",
        "vendor_channel": "Email",
        "vendor_event_type_raw": "Click",
    }


def test_link_url_only_for_clicks() -> None:
    event = run(message("Email", "Open", link_url="https://x.example/", link_id="1"))
    assert event.link_url is None
    assert event.attributes["link_id"] == "1"


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("Triggered", EventType.CAMPAIGN_TRIGGER),
        ("trigger", EventType.CAMPAIGN_TRIGGER),
        ("Enter", EventType.CAMPAIGN_ENTER),
        ("entered", EventType.CAMPAIGN_ENTER),
        ("Convert", EventType.CONVERSION),
        ("Converted", EventType.CONVERSION),
        ("Exit", EventType.CAMPAIGN_EXIT),
        ("Exited", EventType.CAMPAIGN_EXIT),
        ("Forced Exit", EventType.CAMPAIGN_FORCED_EXIT),
        ("forced-exit", EventType.CAMPAIGN_FORCED_EXIT),
    ],
)
def test_campaign_rows(event_type: str, expected: EventType) -> None:
    event = run(campaign(event_type))
    assert (event.event_type, event.channel) == (expected, Channel.NONE)
    assert event.campaign_id == "5066549580791808"
    assert event.campaign_name == "Onboarding"  # properties.name is the campaign name
    assert event.message_id is None and event.message_name is None


def test_unknown_campaign_event_type_is_other() -> None:
    event = run(campaign("Paused"))
    assert (event.event_type, event.channel) == (EventType.OTHER, Channel.UNKNOWN)


def test_campaign_family_from_default_name() -> None:
    record = campaign("Enter")
    record["name"] = "(Leanplum) Campaign "  # the seed's default
    assert run(record).event_type is EventType.CAMPAIGN_ENTER


def test_ab_test_impression() -> None:
    event = run(ab_test())
    assert (event.event_type, event.channel) == (EventType.EXPERIMENT_IMPRESSION, Channel.NONE)
    assert event.experiment_id == "4785074604081152"
    assert event.variant_id == "5348024557502464"
    assert event.attributes == {"experiment_name": "Button colour"}
    assert event.campaign_name is None and event.message_name is None


def test_ab_test_recognized_by_ab_test_id() -> None:
    """Mixpanel's feed spells it "(Leanplum) A/B test" [X9]: ab_test_id decides."""
    record = ab_test()
    record["name"] = "(Leanplum) A/B test"
    assert run(record).event_type is EventType.EXPERIMENT_IMPRESSION


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, None), ("", None), ("0", None), (None, None), (7, "7"), (BIG_ID, str(BIG_ID))],
)
def test_campaign_id_default_zero_is_null(value: Any, expected: str | None) -> None:
    """[A-27]: the schema default 0 and "" mean "not part of a campaign"."""
    assert run(message("Email", "Send", campaign_id=value)).campaign_id == expected
    assert run(campaign("Enter", campaign_id=value)).campaign_id == expected


def test_campaign_id_absent_is_null() -> None:
    record = message("Email", "Send")
    del record["properties"]["campaign_id"]
    del record["properties"]["campaign_name"]
    event = run(record)
    assert event.campaign_id is None and event.campaign_name is None


def test_ids_exact_integer_formatting() -> None:
    event = run(message("Email", "Send", message_id=BIG_ID, campaign_id=BIG_ID))
    assert event.message_id == "5629499534213120123"
    assert event.campaign_id == "5629499534213120123"
    assert run(message("Email", "Send", message_id=12.0)).message_id == "12"


def test_anonymous_user_and_empty_device_are_null() -> None:
    event = run(message("Email", "Send", user_id="", device_id=""))
    assert event.user_id is None and event.device_id is None


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2024-05-01 10:00:00.123", 1714557600123),  # the documented format, UTC
        ("2024-05-01 10:00:00.1", 1714557600100),
        ("2024-05-01 10:00:00.12", 1714557600120),
        ("2024-05-01 10:00:00.123999", 1714557600123),  # sub-ms truncated, never rounded
        ("2024-05-01 10:00:00", 1714557600000),
        ("2024-05-01T10:00:00.123Z", 1714557600123),
        ("2024-05-01 12:00:00.123+02:00", 1714557600123),  # a zone, if ever present, is used
        ("1970-01-01 00:00:00.001", 1),
    ],
)
def test_time(time: str, expected: int) -> None:
    assert run(message("Email", "Send", time=time)).occurred_at == expected


@pytest.mark.parametrize(
    "time",
    [
        "1970-01-01 00:00:00.000",  # the schema default = unset
        "1970-01-01 00:00:00",
        "2024-13-01 10:00:00.000",
        "01/05/2024 10:00",
        "",
        1714557600123,  # the JSON feed's time is a string
        None,
    ],
)
def test_invalid_time(time: Any) -> None:
    outcome = rejected(orjson.dumps(message("Email", "Send", time=time)))
    assert outcome.reason is RejectReason.INVALID_TIMESTAMP


def test_missing_time() -> None:
    record = message("Email", "Send")
    del record["properties"]["time"]
    assert rejected(orjson.dumps(record)).reason is RejectReason.INVALID_TIMESTAMP


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event_id": "e1", "name": "(Leanplum) Email Send", ', RejectReason.INVALID_JSON),
        (b"", RejectReason.INVALID_JSON),
        (b"[]", RejectReason.INVALID_JSON),
        (b'"text"', RejectReason.INVALID_JSON),
        (b'{"name": "(Leanplum) Email Send", "properties": {}}', RejectReason.MISSING_EVENT_ID),
        (b'{"event_id": "", "name": "x"}', RejectReason.MISSING_EVENT_ID),
        (b'{"event_id": null, "name": "x"}', RejectReason.MISSING_EVENT_ID),
        (b'{"event_id": "e1", "properties": {}}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"event_id": "e1", "name": "", "properties": {}}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"event_id": "e1", "name": 5, "properties": {}}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"event_id": "e1", "name": "x", "properties": {}}', RejectReason.INVALID_TIMESTAMP),
        # Order (§5): id before type before time.
        (b'{"properties": {"time": "bad"}}', RejectReason.MISSING_EVENT_ID),
        (b'{"event_id": "e1", "properties": {"time": "bad"}}', RejectReason.MISSING_EVENT_TYPE),
    ],
)
def test_rejects(raw: bytes, reason: RejectReason) -> None:
    outcome = rejected(raw)
    assert outcome.reason is reason
    assert outcome.detail


def test_unknown_fields_ignored_and_app_id_from_context() -> None:
    record = message("Email", "Send", brand_new_field={"x": 1})
    record["extra"] = [1, 2]
    assert run(record, NormalizeContext()).app_id is None
    assert run(record).app_id == "lp-app-1"


# --- the Parquet/Avro row shape (seed 000 "Parquet format", [A-7]) ------------------------


def row(**overrides: Any) -> dict:
    """One Parquet row as the S3 connector writes it: every Avro field kept, maps as objects."""
    record: dict[str, Any] = {
        "schema_version": 1,
        "name": "(Leanplum) Email Click",
        "event_id": "evt-p1",
        "user_id": "user-42",
        "device_id": "dev-1",
        "time": 1714557600123,
        "user_attributes": {"email": "jane@example.com", "city": "Berlin"},
        "user_attributes_numeric": {"age": 41},
        "AbTest": None,
        "Campaign": None,
        "Message": {
            "name": "Spring sale",
            "id": 6011498012344320,
            "campaign_name": "Spring campaign",
            "campaign_id": 5066549580791808,
            "channel": "Email",
            "message_occurrence_id": "occ-7781",
            "email_id": "em-55",
            "link_url": "https://shop.example.com/sale",
            "link_id": "3",
            "event_type": "Click",
        },
    }
    record.update(overrides)
    return record


def test_row_message_maps_like_json() -> None:
    from_row = run(row())
    from_json = run(
        message(
            "Email",
            "Click",
            email_id="em-55",
            link_url="https://shop.example.com/sale",
            link_id="3",
            device_id="dev-1",
        )
        | {"event_id": "evt-p1"}
    )
    assert from_row.to_record() == from_json.to_record()


def test_row_does_not_copy_user_attributes() -> None:
    """user_attributes are profile data (often PII, e.g. email): never copied (§1)."""
    for ctx in (CTX, NormalizeContext(include_pii=True)):
        event = run(row(), ctx)
        assert "jane@example.com" not in orjson.dumps(event.to_record()).decode()
        assert "Berlin" not in orjson.dumps(event.to_record()).decode()


@pytest.mark.parametrize(
    ("channel", "event_type", "expected_type", "expected_channel"), MESSAGE_ROWS[::3]
)
def test_row_message_rows(
    channel: str, event_type: str, expected_type: EventType, expected_channel: Channel
) -> None:
    record = row()
    record["Message"] = record["Message"] | {"channel": channel, "event_type": event_type}
    event = run(record)
    assert (event.event_type, event.channel) == (expected_type, expected_channel)


def test_row_campaign_event() -> None:
    record = row(
        name="(Leanplum) Campaign Forced Exit",
        Message=None,
        Campaign={"name": "Onboarding", "id": BIG_ID, "event_type": "Forced Exit"},
    )
    event = run(record)
    assert (event.event_type, event.channel) == (EventType.CAMPAIGN_FORCED_EXIT, Channel.NONE)
    assert event.campaign_id == str(BIG_ID)
    assert event.campaign_name == "Onboarding"
    assert event.message_id is None


def test_row_ab_test() -> None:
    record = row(
        name="(Leanplum) A/B Test Impression",
        Message=None,
        AbTest={"name": "Button colour", "id": 4785074604081152, "variant_id": 12},
    )
    event = run(record)
    assert (event.event_type, event.channel) == (EventType.EXPERIMENT_IMPRESSION, Channel.NONE)
    assert (event.experiment_id, event.variant_id) == ("4785074604081152", "12")
    assert event.attributes["experiment_name"] == "Button colour"


def test_row_message_campaign_falls_back_to_campaign_record() -> None:
    record = row()
    record["Message"] = record["Message"] | {"campaign_id": None, "campaign_name": None}
    record["Campaign"] = {"name": "From record", "id": 99, "event_type": "Enter"}
    event = run(record)
    assert (event.campaign_id, event.campaign_name) == ("99", "From record")
    assert event.event_type is EventType.CLICK


def test_row_nulls_and_zero_campaign() -> None:
    record = row(user_id=None, device_id=None, user_attributes=None, user_attributes_numeric=None)
    record["Message"] = record["Message"] | {"campaign_id": 0, "email_id": None, "link_id": None}
    event = run(record)
    assert event.user_id is None and event.device_id is None
    assert event.campaign_id is None
    assert "email_id" not in event.attributes and "link_id" not in event.attributes


def test_row_avro_json_encoding() -> None:
    """The Avro JSON form of the same row: unions wrapped in their branch name, nulls bare."""
    ns = "com.leanplum.partners.feed.models.avro"
    message_record = {
        "name": {"string": "Spring sale"},
        "id": 6011498012344320,
        "campaign_name": {"string": "Spring campaign"},
        "campaign_id": {"long": 5066549580791808},
        "channel": {"string": "Email"},
        "message_occurrence_id": {"string": "occ-7781"},
        "email_id": {"string": "em-55"},
        "link_url": {"string": "https://shop.example.com/sale"},
        "link_id": {"bytes": "3"},
        "event_type": "Click",
    }
    record = row(
        user_id={"string": "user-42"},
        device_id={"string": "dev-1"},
        time={"long": 1714557600123},
        user_attributes={"map": {"email": "jane@example.com"}},
        user_attributes_numeric=None,
        Message={f"{ns}.Message": message_record},
    )
    assert run(record).to_record() == run(row()).to_record()
    campaign_row = row(
        name="(Leanplum) Campaign Enter",
        Message=None,
        Campaign={"Campaign": {"name": None, "id": 5, "event_type": "Enter"}},
    )
    event = run(campaign_row)
    assert (event.event_type, event.campaign_id, event.campaign_name) == (
        EventType.CAMPAIGN_ENTER,
        "5",
        None,
    )


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        (1714557600123, 1714557600123),
        ({"long": 1714557600123}, 1714557600123),
        (1714557600123.0, 1714557600123),
        ("2024-05-01 10:00:00.123", 1714557600123),  # a timestamp column, stringified
    ],
)
def test_row_time(time: Any, expected: int) -> None:
    assert run(row(time=time)).occurred_at == expected


@pytest.mark.parametrize("time", [0, None, "soon", True, 1714557600123.5, {"long": 0}])
def test_row_invalid_time(time: Any) -> None:
    assert rejected(orjson.dumps(row(time=time))).reason is RejectReason.INVALID_TIMESTAMP


def test_row_missing_time_and_ids() -> None:
    record = row()
    del record["time"]
    assert rejected(orjson.dumps(record)).reason is RejectReason.INVALID_TIMESTAMP
    assert rejected(orjson.dumps(row(event_id=None))).reason is RejectReason.MISSING_EVENT_ID
    assert rejected(orjson.dumps(row(name=None))).reason is RejectReason.MISSING_EVENT_TYPE


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"event_id": "abc"}, "abc"),
        ({"event_id": {"string": "abc"}}, "abc"),
        ({"event_id": 12345678901234567890}, "12345678901234567890"),
        ({"event_id": ""}, None),
        ({"event_id": "  "}, None),
        ({"event_id": None}, None),
        ({}, None),
    ],
)
def test_vendor_event_id(record: dict, expected: str | None) -> None:
    assert leanplum.vendor_event_id(record) == expected


def test_cli_one_line_per_input_line(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(message("Email", "Open")),
        b"{not json",
        orjson.dumps(row()),
        orjson.dumps(campaign("Enter") | {"event_id": ""}),
        orjson.dumps(ab_test()),
    ]
    path = tmp_path / "leanplum.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crmcli",
            "normalize",
            "leanplum",
            str(path),
            "--app-id",
            "a1",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["event_type"] == "OPEN" and out[0]["app_id"] == "a1"
    assert out[1]["reject"] == "invalid_json"
    assert out[2]["event_id"] == "LEANPLUM:evt-p1" and out[2]["event_type"] == "CLICK"
    assert out[3]["reject"] == "missing_event_id"
    assert out[4]["event_type"] == "EXPERIMENT_IMPRESSION"
