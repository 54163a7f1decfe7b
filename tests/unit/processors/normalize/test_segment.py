"""Segment (Leanplum as a Segment source) normalizer (TAXONOMY §6.3), seed 002 + envelope [X4]."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.normalize import segment
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Rejected,
    RejectReason,
)

CTX = NormalizeContext(app_id="segment-src-1")

EMAIL_PROPS = {
    "email_id": "em-9f1c",
    "email_subject": "Spring sale",
    "message_id": "6011498012344320",
    "campaign_id": "5066549580791808",
    "campaign_name": "Spring campaign",
}
PUSH_PROPS = {
    "campaign": {
        "message_id": "6011498012344321",
        "message_name": "Come back",
        "medium": "Push",
        "id": "5066549580791809",
        "name": "Win-back",
    }
}
EXPERIMENT_PROPS = {
    "experiment_id": "4785074604081152",
    "experiment_name": "Button colour",
    "variant_id": "5348024557502464",
    "variant_name": "Green",
}


def track(event: str, properties: dict[str, Any] | None = None, **envelope: Any) -> dict:
    """A track call as a Segment webhook/stream destination delivers it [X4]."""
    record: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": "api-2Nf8sN1Vx0ypYb3Ge9kP4qLh",
        "timestamp": "2024-05-01T10:00:00.123Z",
        "originalTimestamp": "2024-05-01T10:00:00.100Z",
        "sentAt": "2024-05-01T10:00:00.200Z",
        "receivedAt": "2024-05-01T10:00:00.500Z",
        "userId": "user-42",
        "anonymousId": "anon-7",
        "properties": properties if properties is not None else {},
        "context": {
            "library": {"name": "leanplum", "version": "1"},
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0",
            "device": {"id": "dev-1"},
        },
        "integrations": {},
        "channel": "server",
        "version": 2,
    }
    record.update(envelope)
    return record


def run(record: Any, ctx: NormalizeContext = CTX) -> CanonicalEvent:
    outcome = segment.normalize(orjson.dumps(record), ctx)
    assert isinstance(outcome, CanonicalEvent), outcome
    return outcome


def rejected(raw: bytes) -> Rejected:
    outcome = segment.normalize(raw, CTX)
    assert isinstance(outcome, Rejected), outcome
    return outcome


# Every row of the §6.3 table.
ROWS = [
    ("Email Bounced", EMAIL_PROPS, EventType.BOUNCE, Channel.EMAIL),
    ("Email Delivered", EMAIL_PROPS, EventType.DELIVERY, Channel.EMAIL),
    ("Email Link Clicked", EMAIL_PROPS, EventType.CLICK, Channel.EMAIL),
    ("Email Marked as Spam", EMAIL_PROPS, EventType.COMPLAINT, Channel.EMAIL),
    ("Email Opened", EMAIL_PROPS, EventType.OPEN, Channel.EMAIL),
    ("Unsubscribed", EMAIL_PROPS, EventType.UNSUBSCRIBE, Channel.EMAIL),
    ("Push Notification Received", PUSH_PROPS, EventType.DELIVERY, Channel.PUSH),
    ("Push Notification Tapped", PUSH_PROPS, EventType.OPEN, Channel.PUSH),
    ("Push Notification Bounced", PUSH_PROPS, EventType.BOUNCE, Channel.PUSH),
    ("Experiment Viewed", EXPERIMENT_PROPS, EventType.EXPERIMENT_IMPRESSION, Channel.NONE),
    # case-insensitive exact match
    ("email opened", EMAIL_PROPS, EventType.OPEN, Channel.EMAIL),
    ("PUSH NOTIFICATION TAPPED", PUSH_PROPS, EventType.OPEN, Channel.PUSH),
    # other names -> OTHER / UNKNOWN
    ("Email Opened Twice", EMAIL_PROPS, EventType.OTHER, Channel.UNKNOWN),
    ("Email Sent", EMAIL_PROPS, EventType.OTHER, Channel.UNKNOWN),
    ("Order Completed", {}, EventType.OTHER, Channel.UNKNOWN),
]


@pytest.mark.parametrize(("event", "props", "expected_type", "expected_channel"), ROWS)
def test_rows(event: str, props: dict, expected_type: EventType, expected_channel: Channel) -> None:
    result = run(track(event, props))
    assert (result.event_type, result.channel) == (expected_type, expected_channel)
    assert result.vendor_event_type == event


def test_email_fields() -> None:
    props = EMAIL_PROPS | {"link_url": "https://shop.example.com/sale", "link_id": "2"}
    event = run(track("Email Link Clicked", props))
    assert event.event_id == "SEGMENT:api-2Nf8sN1Vx0ypYb3Ge9kP4qLh"
    assert event.vendor_event_id == "api-2Nf8sN1Vx0ypYb3Ge9kP4qLh"
    assert event.occurred_at == 1714557600123
    assert event.user_id == "user-42"
    assert event.device_id == "dev-1"
    assert event.campaign_id == "5066549580791808"
    assert event.campaign_name == "Spring campaign"
    assert event.message_id == "6011498012344320"  # never the envelope messageId
    assert event.message_name == "Spring sale"  # email_subject is the message name [S2]
    assert event.link_url == "https://shop.example.com/sale"
    assert event.experiment_id is None and event.variant_id is None
    assert event.error is None
    assert event.app_id == "segment-src-1"
    assert event.attributes == {
        "anonymous_id": "anon-7",
        "email_id": "em-9f1c",
        "message_instance_id": "em-9f1c",
        "link_id": "2",
        "received_at": "2024-05-01T10:00:00.500Z",
        "sent_at": "2024-05-01T10:00:00.200Z",
    }


def test_link_url_only_for_clicks() -> None:
    event = run(track("Email Opened", EMAIL_PROPS | {"link_url": "https://x.example/"}))
    assert event.link_url is None


def test_push_fields_nested() -> None:
    event = run(track("Push Notification Tapped", PUSH_PROPS))
    assert event.campaign_id == "5066549580791809"
    assert event.campaign_name == "Win-back"
    assert event.message_id == "6011498012344321"
    assert event.message_name == "Come back"
    assert event.attributes["campaign_medium"] == "Push"


def test_push_fields_flat_dotted_keys() -> None:
    """[A-15]: `campaign.*` may arrive as flat dotted keys."""
    flat = {f"campaign.{k}": v for k, v in PUSH_PROPS["campaign"].items()}
    assert (
        run(track("Push Notification Bounced", flat)).to_record()
        == run(track("Push Notification Bounced", PUSH_PROPS)).to_record()
    )


def test_push_prefers_nested_campaign_over_flat_email_keys() -> None:
    props = PUSH_PROPS | {"campaign_id": "flat-1", "message_id": "flat-m"}
    event = run(track("Push Notification Received", props))
    assert (event.campaign_id, event.message_id) == ("5066549580791809", "6011498012344321")
    event = run(track("Email Opened", props))
    assert (event.campaign_id, event.message_id) == ("flat-1", "flat-m")


def test_email_without_campaign() -> None:
    """campaign_id/name are "sent only if the email is part of a Leanplum campaign" [S2]."""
    props = {k: v for k, v in EMAIL_PROPS.items() if not k.startswith("campaign")}
    event = run(track("Email Delivered", props))
    assert event.campaign_id is None and event.campaign_name is None
    assert event.message_id == "6011498012344320"


def test_experiment_fields() -> None:
    event = run(track("Experiment Viewed", EXPERIMENT_PROPS))
    assert (event.experiment_id, event.variant_id) == ("4785074604081152", "5348024557502464")
    assert event.attributes["experiment_name"] == "Button colour"
    assert event.attributes["variant_name"] == "Green"


def test_numeric_ids_exact() -> None:
    props = EMAIL_PROPS | {"campaign_id": 5629499534213120123, "message_id": 5066549580791808}
    event = run(track("Email Opened", props))
    assert event.campaign_id == "5629499534213120123"
    assert event.message_id == "5066549580791808"
    assert run(track("Experiment Viewed", {"variant_id": 3.0})).variant_id == "3"


def test_anonymous_user_never_user_id() -> None:
    record = track("Email Opened", EMAIL_PROPS)
    del record["userId"]
    event = run(record)
    assert event.user_id is None
    assert event.attributes["anonymous_id"] == "anon-7"
    assert run(track("Email Opened", EMAIL_PROPS, userId="")).user_id is None
    assert run(track("Email Opened", EMAIL_PROPS, userId=None)).user_id is None


def test_no_device_without_context() -> None:
    record = track("Email Opened", EMAIL_PROPS)
    del record["context"]
    assert run(record).device_id is None


def test_pii_not_copied_unless_enabled() -> None:
    record = track("Email Opened", EMAIL_PROPS)
    plain = orjson.dumps(run(record).to_record()).decode()
    assert "203.0.113.9" not in plain and "Mozilla" not in plain
    with_pii = run(record, NormalizeContext(include_pii=True))
    assert with_pii.attributes["ip"] == "203.0.113.9"
    assert with_pii.attributes["user_agent"] == "Mozilla/5.0"


def test_non_track_calls_are_other() -> None:
    event = run({"type": "identify", "messageId": "m-1", "timestamp": "2024-05-01T10:00:00Z"})
    assert (event.event_type, event.channel) == (EventType.OTHER, Channel.UNKNOWN)
    assert event.vendor_event_type == "identify"
    # A known event name in a non-track call is still not a track event.
    event = run(track("Email Opened", EMAIL_PROPS, type="page"))
    assert (event.event_type, event.channel) == (EventType.OTHER, Channel.UNKNOWN)
    assert event.vendor_event_type == "Email Opened"
    # Segment's own `channel: "server"` has nothing to do with the canonical channel.
    assert run(track("Email Opened", EMAIL_PROPS, channel="mobile")).channel is Channel.EMAIL


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-05-01T10:00:00.123Z", 1714557600123),
        ("2024-05-01T10:00:00.1Z", 1714557600100),
        ("2024-05-01T10:00:00.12Z", 1714557600120),
        ("2024-05-01T10:00:00.123987Z", 1714557600123),  # truncated, not rounded
        ("2024-05-01T10:00:00Z", 1714557600000),
        ("2024-05-01T12:00:00.123+02:00", 1714557600123),
        ("2024-05-01T05:30:00.123-04:30", 1714557600123),
        ("2024-05-01T10:00:00.123+0000", 1714557600123),
    ],
)
def test_timestamp(timestamp: str, expected: int) -> None:
    assert run(track("Email Opened", EMAIL_PROPS, timestamp=timestamp)).occurred_at == expected


def test_occurred_at_is_timestamp_not_received_or_sent() -> None:
    event = run(
        track(
            "Email Opened",
            EMAIL_PROPS,
            timestamp="2024-05-01T10:00:00.000Z",
            sentAt="2024-05-02T10:00:00.000Z",
            receivedAt="2024-05-03T10:00:00.000Z",
        )
    )
    assert event.occurred_at == 1714557600000


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-05-01T10:00:00.123",  # no zone designator
        "2024-05-01 10:00:00",
        "2024-02-30T10:00:00Z",
        "yesterday",
        1714557600123,
        None,
    ],
)
def test_invalid_timestamp(timestamp: Any) -> None:
    raw = orjson.dumps(track("Email Opened", EMAIL_PROPS, timestamp=timestamp))
    assert rejected(raw).reason is RejectReason.INVALID_TIMESTAMP


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"type": "track", "event": "Email Opened"', RejectReason.INVALID_JSON),
        (b'[{"type": "track"}]', RejectReason.INVALID_JSON),
        (b"null", RejectReason.INVALID_JSON),
        (b'{"type": "track", "event": "Email Opened"}', RejectReason.MISSING_EVENT_ID),
        (b'{"messageId": "", "event": "Email Opened"}', RejectReason.MISSING_EVENT_ID),
        (b'{"messageId": {"a": 1}, "event": "Email Opened"}', RejectReason.MISSING_EVENT_ID),
        (b'{"messageId": "m1", "type": "track"}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"messageId": "m1", "type": "track", "event": ""}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"messageId": "m1", "type": 7}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"messageId": "m1", "event": "Email Opened"}', RejectReason.INVALID_TIMESTAMP),
        (b'{"event": "x", "timestamp": "bad"}', RejectReason.MISSING_EVENT_ID),
        (b'{"messageId": "m1", "timestamp": "bad"}', RejectReason.MISSING_EVENT_TYPE),
    ],
)
def test_rejects(raw: bytes, reason: RejectReason) -> None:
    outcome = rejected(raw)
    assert outcome.reason is reason
    assert outcome.detail


def test_duplicates_share_event_id() -> None:
    """Retries differ in sentAt/receivedAt; the event id is what dedupes [X5]."""
    first = run(track("Email Opened", EMAIL_PROPS))
    retry = run(track("Email Opened", EMAIL_PROPS, sentAt="2024-05-01T11:00:00.000Z"))
    assert first.event_id == retry.event_id


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"messageId": "abc"}, "abc"),
        ({"messageId": 42}, "42"),
        ({"messageId": ""}, None),
        ({"messageId": None}, None),
        ({"event": "Email Opened"}, None),
    ],
)
def test_vendor_event_id(record: dict, expected: str | None) -> None:
    assert segment.vendor_event_id(record) == expected


def test_cli_one_line_per_input_line(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(track("Push Notification Tapped", PUSH_PROPS, messageId="m-1")),
        b"",
        orjson.dumps(track("Email Opened", EMAIL_PROPS, messageId="m-2", timestamp="x")),
        orjson.dumps(track("Experiment Viewed", EXPERIMENT_PROPS, messageId="m-3")),
    ]
    path = tmp_path / "segment.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "crmcli", "normalize", "segment", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["event_id"] == "SEGMENT:m-1" and out[0]["event_type"] == "OPEN"
    assert out[1]["reject"] == "invalid_json"
    assert out[2]["reject"] == "invalid_timestamp"
    assert out[3]["event_type"] == "EXPERIMENT_IMPRESSION" and out[3]["app_id"] is None
