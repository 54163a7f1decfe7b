"""FlareLane CRM event export normalizer (TAXONOMY §6.4), rows shaped like seed 003."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.normalize import flarelane
from processors.normalize.model import (
    CanonicalEvent,
    Channel,
    EventType,
    NormalizeContext,
    Rejected,
    RejectReason,
)

CTX = NormalizeContext(app_id="ignored-config-app")


def row(type_: str, channel: str | None = None, **columns: Any) -> dict:
    """One exported row: common + shared columns; unused columns null (seed 003)."""
    record: dict[str, Any] = {
        "id": "01HX3Z8Q4Y7K2M9N5P6R8S0T1V",
        "type": type_,
        "channel": channel if channel is not None else type_.split(".")[0],
        "time": "2024-05-01T10:00:00.123Z",
        "deviceid": "6f1c2a7e-device",
        "userid": "user-42",
        "campaign_id": "0b6f0c1e-8d2a-4c55-9e77-2f3a4b5c6d7e",
        "campaign_name": "Spring sale",
        "trigger_type": "journey",
        "journey_id": "jrn-1",
        "journey_name": "Welcome flow",
        "journey_step_id": "step-3",
        "journey_enrollment_id": "enr-77",
        "recurring_message_id": None,
        "sender": None,
        "recipient": None,
        "subject": "Hello {{name}}",
        "body": "Your coupon is inside",
        "template_id": "tpl-100",
        "template_name": "Coupon push",
        "provider": "fcm",
        "provider_message_id": "projects/x/messages/0:1714557600123",
        "provider_error": None,
        "error": None,
        "platform": "android",
        "message_type": None,
        "is_advertisement": None,
        "kakaoalimtalk_template_code": None,
        "kakao_sender_key": None,
        "iam_group": None,
        "iam_clickable_id": None,
        "iam_dont_show_minutes": None,
        "projectid": "prj-7",
        "date": "2024-05-01",
    }
    record.update(columns)
    return record


def run(record: Any, ctx: NormalizeContext = CTX) -> CanonicalEvent:
    outcome = flarelane.normalize(orjson.dumps(record), ctx)
    assert isinstance(outcome, CanonicalEvent), outcome
    return outcome


def rejected(raw: bytes) -> Rejected:
    outcome = flarelane.normalize(raw, CTX)
    assert isinstance(outcome, Rejected), outcome
    return outcome


LIFECYCLE = [
    ("created", EventType.SEND_REQUESTED),
    ("sent", EventType.SEND),
    ("aborted", EventType.SEND_ABORTED),
    ("failed", EventType.SEND_FAILED),
    ("delivered", EventType.DELIVERY),
    ("undelivered", EventType.DELIVERY_FAILURE),
]
CHANNELS = [
    ("push", Channel.PUSH),
    ("sms", Channel.SMS),
    ("kakaoalimtalk", Channel.KAKAO),
    ("kakaobrandmessage", Channel.KAKAO),
    ("email", Channel.EMAIL),
    ("iam", Channel.IN_APP),
]


@pytest.mark.parametrize(("suffix", "expected_type"), LIFECYCLE)
@pytest.mark.parametrize(("channel", "expected_channel"), CHANNELS)
def test_lifecycle_suffix_for_every_channel(
    suffix: str, expected_type: EventType, channel: str, expected_channel: Channel
) -> None:
    """The seed defines *.created/sent/aborted/failed/delivered/undelivered generically."""
    event = run(row(f"{channel}.{suffix}"))
    assert (event.event_type, event.channel) == (expected_type, expected_channel)
    assert event.vendor_event_type == f"{channel}.{suffix}"
    assert event.attributes["vendor_channel"] == channel


ENGAGEMENT = [
    ("push.clicked", EventType.OPEN, Channel.PUSH),  # push tap
    ("email.opened", EventType.OPEN, Channel.EMAIL),
    ("email.clicked", EventType.CLICK, Channel.EMAIL),
    ("email.complaint", EventType.COMPLAINT, Channel.EMAIL),
    ("iam.displayed", EventType.IMPRESSION, Channel.IN_APP),
    ("iam.clicked", EventType.CLICK, Channel.IN_APP),
    ("iam.closed", EventType.DISMISS, Channel.IN_APP),
    # any other -> OTHER (FlareLane has no email bounce/unsubscribe type)
    ("email.bounced", EventType.OTHER, Channel.EMAIL),
    ("email.unsubscribed", EventType.OTHER, Channel.EMAIL),
    ("sms.clicked", EventType.OTHER, Channel.SMS),
    ("push.dismissed", EventType.OTHER, Channel.PUSH),
    ("webpush.sent", EventType.SEND, Channel.UNKNOWN),  # lifecycle suffix, unknown channel
    ("rcs.read", EventType.OTHER, Channel.UNKNOWN),
    ("purchase", EventType.OTHER, Channel.UNKNOWN),
    ("PUSH.SENT", EventType.OTHER, Channel.PUSH),  # names are exact
]


@pytest.mark.parametrize(("type_", "expected_type", "expected_channel"), ENGAGEMENT)
def test_engagement_and_unknown_types(
    type_: str, expected_type: EventType, expected_channel: Channel
) -> None:
    event = run(row(type_))
    assert (event.event_type, event.channel) == (expected_type, expected_channel)


def test_email_clicked_has_no_link_url() -> None:
    assert run(row("email.clicked")).link_url is None


@pytest.mark.parametrize(
    ("type_", "channel_column", "expected"),
    [
        ("push.sent", None, Channel.PUSH),  # column null: from the type prefix
        ("sms.sent", "kakaoalimtalk", Channel.KAKAO),  # the column wins
        ("push.sent", "carrier-pigeon", Channel.UNKNOWN),
        ("push.sent", "PUSH", Channel.PUSH),
    ],
)
def test_channel_source(type_: str, channel_column: str | None, expected: Channel) -> None:
    record = row(type_)
    record["channel"] = channel_column
    assert run(record).channel is expected


def test_channel_column_absent_uses_type_prefix() -> None:
    record = row("kakaobrandmessage.delivered")
    del record["channel"]
    event = run(record)
    assert event.channel is Channel.KAKAO
    assert "vendor_channel" not in event.attributes


def test_push_fields() -> None:
    event = run(row("push.sent"))
    assert event.event_id == "FLARELANE:01HX3Z8Q4Y7K2M9N5P6R8S0T1V"
    assert event.vendor_event_id == "01HX3Z8Q4Y7K2M9N5P6R8S0T1V"
    assert event.occurred_at == 1714557600123
    assert event.user_id == "user-42"
    assert event.device_id == "6f1c2a7e-device"
    assert event.campaign_id == "0b6f0c1e-8d2a-4c55-9e77-2f3a4b5c6d7e"
    assert event.campaign_name == "Spring sale"
    assert event.message_id == "tpl-100"  # template_id
    assert event.message_name == "Coupon push"
    assert event.experiment_id is None and event.variant_id is None
    assert event.link_url is None
    assert event.error is None
    assert event.app_id == "prj-7"  # from the payload, not the connector config
    assert event.attributes == {
        "trigger_type": "journey",
        "journey_id": "jrn-1",
        "journey_name": "Welcome flow",
        "journey_step_id": "step-3",
        "journey_enrollment_id": "enr-77",
        "provider": "fcm",
        "provider_message_id": "projects/x/messages/0:1714557600123",
        "message_instance_id": "projects/x/messages/0:1714557600123",
        "platform": "android",
        "vendor_channel": "push",
    }


def test_sms_and_kakao_fields() -> None:
    sms = run(
        row(
            "sms.undelivered",
            template_id=None,
            template_name=None,
            provider=None,
            provider_message_id=None,
            message_type="LMS",
            is_advertisement="true",
            sender="+821012345678",
            recipient="+821087654321",
            error="SPAM_BLOCKED",
        )
    )
    assert (sms.event_type, sms.channel) == (EventType.DELIVERY_FAILURE, Channel.SMS)
    assert sms.message_id is None and sms.message_name is None
    assert sms.error == "SPAM_BLOCKED"
    assert sms.attributes["message_type"] == "LMS"
    assert sms.attributes["is_advertisement"] == "true"
    kakao = run(
        row(
            "kakaoalimtalk.sent",
            kakaoalimtalk_template_code="TPL_ORDER_01",
            message_type="AT",
            is_advertisement=False,
        )
    )
    assert kakao.channel is Channel.KAKAO
    assert kakao.attributes["vendor_channel"] == "kakaoalimtalk"
    assert kakao.attributes["kakaoalimtalk_template_code"] == "TPL_ORDER_01"
    assert kakao.attributes["is_advertisement"] == "false"


@pytest.mark.parametrize(
    ("error", "provider_error", "expected"),
    [
        ("FREQUENCY_CAP", None, "FREQUENCY_CAP"),
        (None, "UNREGISTERED", "UNREGISTERED"),
        ("OPT_OUT", "UNREGISTERED", "OPT_OUT"),
        ("", "UNREGISTERED", "UNREGISTERED"),
        (None, None, None),
    ],
)
def test_error_then_provider_error(
    error: str | None, provider_error: str | None, expected: str | None
) -> None:
    event = run(row("push.failed", error=error, provider_error=provider_error))
    assert event.error == expected
    if provider_error:
        assert event.attributes["provider_error"] == provider_error


def test_aborted_reason_is_error() -> None:
    event = run(row("push.aborted", error="frequency capping"))
    assert (event.event_type, event.error) == (EventType.SEND_ABORTED, "frequency capping")


def test_iam_fields() -> None:
    common = {"template_id": None, "template_name": None, "iam_group": "promo"}
    clicked = run(row("iam.clicked", iam_clickable_id="cta-buy", **common))
    assert clicked.attributes["iam_clickable_id"] == "cta-buy"
    assert clicked.attributes["iam_group"] == "promo"
    hidden = run(row("iam.closed", iam_dont_show_minutes=1440, **common))
    assert hidden.event_type is EventType.DISMISS
    assert hidden.attributes["iam_close"] == "hidden 1440 min"
    assert hidden.attributes["iam_dont_show_minutes"] == "1440"
    for simple in (0, None, "0"):
        closed = run(row("iam.closed", iam_dont_show_minutes=simple, **common))
        assert closed.attributes["iam_close"] == "close"
    assert (
        run(row("iam.closed", iam_dont_show_minutes="60", **common)).attributes["iam_close"]
        == "hidden 60 min"
    )


@pytest.mark.parametrize("minutes", ["\u00b2", "1\u00b2", "--5", "-", "9" * 5000, "\u0662"])
def test_iam_dont_show_minutes_that_is_no_integer_is_kept_as_text(minutes: str) -> None:
    """str.isdigit() accepted these and int() then raised (issue 11): a plain close now."""
    closed = run(row("iam.closed", iam_dont_show_minutes=minutes))
    assert closed.attributes["iam_close"] == "close"
    assert closed.attributes["iam_dont_show_minutes"] == minutes


def test_iam_dont_show_minutes_accepts_negative_and_padded_integers() -> None:
    assert run(row("iam.closed", iam_dont_show_minutes=" 30 ")).attributes["iam_close"] == (
        "hidden 30 min"
    )
    assert run(row("iam.closed", iam_dont_show_minutes="-5")).attributes["iam_close"] == "close"


def test_campaign_id_missing_is_tolerated() -> None:
    """[A-28]: documented as required, but a null is kept as null, not rejected."""
    event = run(row("push.sent", campaign_id=None, campaign_name=None))
    assert event.campaign_id is None and event.campaign_name is None
    record = row("push.sent")
    del record["campaign_id"]
    assert run(record).campaign_id is None


def test_unidentified_user_and_numeric_ids() -> None:
    event = run(row("push.sent", userid=None, campaign_id=9007199254740993, template_id=12.0))
    assert event.user_id is None
    assert event.campaign_id == "9007199254740993"  # 2**53 + 1: exact
    assert event.message_id == "12"
    assert run(row("push.sent", userid="")).user_id is None


def test_pii_not_copied_unless_enabled() -> None:
    record = row(
        "email.sent",
        sender="news@shop.example.com",
        recipient="jane@example.com",
        subject="Jane, your coupon",
        body="Dear Jane",
    )
    plain = run(record)
    dumped = orjson.dumps(plain.to_record()).decode()
    for secret in ("news@shop.example.com", "jane@example.com", "Jane, your coupon", "Dear Jane"):
        assert secret not in dumped
    with_pii = run(record, NormalizeContext(include_pii=True))
    assert with_pii.attributes["recipient"] == "jane@example.com"
    assert with_pii.attributes["sender"] == "news@shop.example.com"
    assert with_pii.attributes["body"] == "Dear Jane"


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2024-05-01T10:00:00.123Z", 1714557600123),
        ("2024-05-01T10:00:00.1Z", 1714557600100),
        ("2024-05-01T10:00:00.12Z", 1714557600120),
        ("2024-05-01T10:00:00.123456789Z", 1714557600123),  # truncated
        ("2024-05-01T10:00:00Z", 1714557600000),
        ("2024-05-01T10:00:00.123+00:00", 1714557600123),
        ("2024-05-01T19:00:00.123+09:00", 1714557600123),  # KST, still the same instant
        ("2024-05-01t10:00:00.123z", 1714557600123),
    ],
)
def test_time(time: str, expected: int) -> None:
    assert run(row("push.sent", time=time)).occurred_at == expected


@pytest.mark.parametrize(
    "time",
    ["2024-05-01T10:00:00.123", "2024-05-01", "2024-05-01T25:00:00Z", "", 1714557600, None],
)
def test_invalid_time(time: Any) -> None:
    raw = orjson.dumps(row("push.sent", time=time))
    assert rejected(raw).reason is RejectReason.INVALID_TIMESTAMP


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "01HX", "type": "push.sent",', RejectReason.INVALID_JSON),
        (b"42", RejectReason.INVALID_JSON),
        (b'{"type": "push.sent", "time": "2024-05-01T10:00:00Z"}', RejectReason.MISSING_EVENT_ID),
        (b'{"id": "", "type": "push.sent"}', RejectReason.MISSING_EVENT_ID),
        (b'{"id": "01HX", "time": "2024-05-01T10:00:00Z"}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"id": "01HX", "type": null}', RejectReason.MISSING_EVENT_TYPE),
        (b'{"id": "01HX", "type": "push.sent"}', RejectReason.INVALID_TIMESTAMP),
        (b'{"time": "bad"}', RejectReason.MISSING_EVENT_ID),
        (b'{"id": "01HX", "time": "bad"}', RejectReason.MISSING_EVENT_TYPE),
    ],
)
def test_rejects(raw: bytes, reason: RejectReason) -> None:
    outcome = rejected(raw)
    assert outcome.reason is reason
    assert outcome.detail


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"id": "01HX3Z8Q4Y7K2M9N5P6R8S0T1V"}, "01HX3Z8Q4Y7K2M9N5P6R8S0T1V"),
        ({"id": ""}, None),
        ({"id": None}, None),
        ({}, None),
    ],
)
def test_vendor_event_id(record: dict, expected: str | None) -> None:
    assert flarelane.vendor_event_id(record) == expected


def test_cli_one_line_per_input_line(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(row("push.clicked", id="A1")),
        orjson.dumps(row("sms.sent", id="A2", time="2024-05-01T10:00:00")),
        orjson.dumps(row("push.sent", id=None)),
        orjson.dumps(row("iam.displayed", id="A4")),
        b"not json at all",
    ]
    path = tmp_path / "flarelane.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "crmcli", "normalize", "flarelane", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["event_id"] == "FLARELANE:A1" and out[0]["event_type"] == "OPEN"
    assert out[1]["reject"] == "invalid_timestamp"
    assert out[2]["reject"] == "missing_event_id"
    assert out[3]["event_type"] == "IMPRESSION" and out[3]["app_id"] == "prj-7"
    assert out[4]["reject"] == "invalid_json"
