"""Sample Amazon Pinpoint event-stream records (seed 001, [X1] email, [X2] SMS shapes).

Each recipient of a campaign gets a small, plausible story: ``_campaign.send`` with a send status,
then the provider records for email/SMS or the Amplify-reported push records. About 5 % of the
records are byte-identical repeats (Kinesis/Firehose is at-least-once; the synthetic key [A-10]
catches exactly those), about 1 % are malformed, and a few carry types the mapping does not know.
The expected outcome counts are tallied while building, never by running the normalizer.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from crmdemo.samples import Campaign, SampleSet
from processors.normalize.pinpoint import vendor_event_id

VENDOR = "pinpoint"
AWS_ACCOUNT_ID = "123456789012"
CAMPAIGN_NAMESPACE = uuid.UUID("6f1c2a9e-5d0b-4c57-9a77-3f1e0c2b8d41")
WINDOW_MS = 2 * 3600 * 1000  # occurred times spread over the two hours before the base time
BASE_FROM = datetime(2026, 1, 5, tzinfo=UTC)
BASE_SPAN_S = 180 * 86400

DUPLICATE_SHARE = 0.05
MALFORMED_SHARE = 0.01
UNKNOWN_TYPES = ("_session.start", "_session.stop", "_custom.page_view", "_email.amp_open")

PUSH_TYPES = ("GCM", "APNS", "APNS_SANDBOX", "ADM", "BAIDU")
# _campaign.send statuses other than SUCCESS, weighted roughly as a real fleet sees them.
NOT_SENT = (
    ("FAILURE_PERMANENT", 4),
    ("TRANSIENT_FAILURE", 2),
    ("THROTTLED", 1),
    ("DAILY_CAP", 2),
    ("QUIET_TIME", 2),
    ("EXPIRED", 1),
    ("DUPLICATE_ADDRESS", 1),
    ("HOLDOUT", 3),
    ("UNKNOWN", 1),
)


def campaign_id(campaign: Campaign) -> str:
    """Pinpoint campaign ids are 32 hex digits; derived from the shared campaign index."""
    return uuid.uuid5(CAMPAIGN_NAMESPACE, f"campaign-{campaign.index}").hex


def campaign_delivery_type(campaign: Campaign) -> str:
    """Each campaign sends on one channel, fixed by its index so every run agrees."""
    kind = campaign.index % 3
    if kind == 0:
        return PUSH_TYPES[campaign.index % len(PUSH_TYPES)]
    return "EMAIL" if kind == 1 else "SMS"


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Builder:
    """Accumulates the records of one sample set and their expected outcomes."""

    def __init__(self, rng: random.Random, campaigns: list[Campaign]) -> None:
        self.rng = rng
        self.campaigns = campaigns
        base = BASE_FROM.timestamp() + rng.randrange(BASE_SPAN_S)
        self.base_ms = int(base) * 1000
        self.events: list[dict[str, Any]] = []
        self.keys: set[str] = set()
        # One activity (run) per campaign, as Pinpoint runs a campaign once per schedule.
        self.activity = {c.index: _hex(rng) for c in campaigns}

    # --- record shapes -----------------------------------------------------------------------

    def envelope(
        self, campaign: Campaign, event_type: str, client_id: str, at_ms: int, lag_ms: int
    ) -> dict[str, Any]:
        return {
            "event_type": event_type,
            "event_timestamp": at_ms,
            "arrival_timestamp": at_ms + lag_ms,
            "event_version": "3.1",
            "application": {"app_id": campaign.app_id, "sdk": {}},
            "client": {"client_id": client_id},
            "device": {"platform": {}},
            "session": {},
            "attributes": {},
            "awsAccountId": AWS_ACCOUNT_ID,
        }

    def campaign_attributes(self, campaign: Campaign, delivery_type: str) -> dict[str, str]:
        ab_test = campaign.index % 4 == 0
        return {
            "treatment_id": str(self.rng.randrange(2)) if ab_test else "0",
            "campaign_activity_id": self.activity[campaign.index],
            "delivery_type": delivery_type,
            "campaign_id": campaign_id(campaign),
        }

    def endpoint(self, channel_type: str, user_id: str | None) -> str:
        endpoint = {
            "ChannelType": channel_type,
            "EndpointStatus": "ACTIVE",
            "OptOut": "NONE",
            "RequestId": _uuid(self.rng),
            "EffectiveDate": "2025-11-02T23:12:54.836Z",
            "User": {"UserId": user_id} if user_id else {},
        }
        return orjson.dumps(endpoint).decode()

    def add(self, record: dict[str, Any]) -> None:
        """Keep a valid record; a synthetic-key clash (same endpoint, type, ms) shifts arrival."""
        key = vendor_event_id(record)
        while key is None or key in self.keys:
            record["arrival_timestamp"] += 1
            key = vendor_event_id(record)
        self.keys.add(key)
        self.events.append(record)

    # --- stories -----------------------------------------------------------------------------

    def story(self) -> None:
        rng = self.rng
        campaign = rng.choice(self.campaigns)
        delivery_type = campaign_delivery_type(campaign)
        endpoint_id = _uuid(rng)
        user_id = f"user-{rng.randrange(100000):05d}" if rng.random() < 0.7 else None
        sent_at = self.base_ms - WINDOW_MS + rng.randrange(WINDOW_MS - 15 * 60 * 1000)
        send = self.envelope(campaign, "_campaign.send", endpoint_id, sent_at, rng.randint(20, 900))
        attrs = self.campaign_attributes(campaign, delivery_type)
        statuses, weights = zip(*NOT_SENT, strict=True)
        status = "SUCCESS" if rng.random() < 0.85 else rng.choices(statuses, weights)[0]
        attrs["campaign_send_status"] = status
        send["attributes"] = attrs
        send["client_context"] = {"custom": {"endpoint": self.endpoint(delivery_type, user_id)}}
        self.add(send)
        if status != "SUCCESS":
            return
        if delivery_type == "EMAIL":
            self.email_story(campaign, attrs, endpoint_id, sent_at)
        elif delivery_type == "SMS":
            self.sms_story(campaign, attrs, sent_at)
        else:
            self.push_story(campaign, attrs, endpoint_id, user_id, sent_at)

    def push_story(
        self,
        campaign: Campaign,
        attrs: dict[str, str],
        endpoint_id: str,
        user_id: str | None,
        sent_at: int,
    ) -> None:
        """Amplify-reported receipts and taps (seed: only with AWS Amplify)."""
        rng = self.rng
        if rng.random() > 0.6:
            return
        received_at = sent_at + rng.randint(500, 60_000)
        kind = (
            "_campaign.received_foreground"
            if rng.random() < 0.3
            else ("_campaign.received_background")
        )
        received = self.envelope(campaign, kind, endpoint_id, received_at, rng.randint(50, 3000))
        received["attributes"] = dict(attrs)
        received["client_context"] = {
            "custom": {"endpoint": self.endpoint(attrs["delivery_type"], user_id)}
        }
        self.add(received)
        if rng.random() < 0.35:
            opened_at = received_at + rng.randint(2_000, 600_000)
            opened = self.envelope(
                campaign, "_campaign.opened_notification", endpoint_id, opened_at, 400
            )
            opened["attributes"] = dict(attrs)
            self.add(opened)

    def email_story(
        self, campaign: Campaign, attrs: dict[str, str], endpoint_id: str, sent_at: int
    ) -> None:
        """SES provider records [X1]: every one carries the send time as event_timestamp."""
        rng = self.rng
        message_id = f"0200000{_hex(rng)[:25]}-{_hex(rng)[:8]}-000000"
        address = f"recipient{rng.randrange(10**6)}@example.com"
        mail = {
            "message_id": message_id,
            "message_send_timestamp": sent_at,
            "from_address": "news@example.com",
            "destination": [address],
            "headers_truncated": False,
            "common_headers": {
                "from": "news@example.com",
                "to": [address],
                "subject": campaign.name,
            },
        }
        base_attrs = {k: v for k, v in attrs.items() if k != "campaign_send_status"}

        def email(event_type: str, after_ms: int, feedback: str, extra: dict[str, Any]) -> None:
            record = self.envelope(campaign, event_type, endpoint_id, sent_at, after_ms)
            record["attributes"] = dict(base_attrs, feedback=feedback)
            record["client_context"] = {"custom": {"legacy_identifier": attrs["campaign_id"]}}
            record["facets"] = {"email_channel": {"mail_event": {"mail": mail, **extra}}}
            self.add(record)

        email("_email.send", rng.randint(100, 900), "send", {"send": {}})
        if rng.random() < 0.01:
            email("_email.rendering_failure", rng.randint(100, 2000), "rendering_failure", {})
            return
        if rng.random() < 0.005:
            email("_email.rejected", rng.randint(100, 2000), "rejected", {})
            return
        roll = rng.random()
        if roll < 0.04:
            kind = "_email.hardbounce" if rng.random() < 0.7 else "_email.softbounce"
            email(kind, rng.randint(1000, 600_000), "bounced", {"bounce": {}})
            return
        delivered_after = rng.randint(500, 30_000)
        email(
            "_email.delivered",
            delivered_after,
            "received",
            {"delivery": {"smtp_response": "250 ok", "recipients": [address]}},
        )
        if rng.random() < 0.35:
            opened_after = delivered_after + rng.randint(10_000, 3_000_000)
            email("_email.open", opened_after, "opened", {"open": {"user_agent": "Mozilla/5.0"}})
            if rng.random() < 0.3:
                link = f"https://example.com/c/{campaign.index}?utm=pinpoint"
                email(
                    "_email.click",
                    opened_after + rng.randint(1000, 120_000),
                    link,
                    {"click": {"link": link, "user_agent": "Mozilla/5.0"}},
                )
        if rng.random() < 0.02:
            email("_email.unsubscribe", delivered_after + rng.randint(60_000, 900_000), "", {})
        if rng.random() < 0.01:
            email("_email.complaint", delivered_after + rng.randint(60_000, 900_000), "", {})

    def sms_story(self, campaign: Campaign, attrs: dict[str, str], sent_at: int) -> None:
        """SMS provider records [X2]: client_id is the account id, message_id per recipient."""
        rng = self.rng
        message_id = _uuid(rng)
        sms_attrs = {
            "sender_request_id": _uuid(rng),
            "campaign_activity_id": attrs["campaign_activity_id"],
            "origination_phone_number": "+12065550142",
            "destination_phone_number": f"+1425555{rng.randrange(10000):04d}",
            "iso_country_code": "US",
            "treatment_id": attrs["treatment_id"],
            "number_of_message_parts": "1",
            "message_id": message_id,
            "message_type": "Promotional",
            "campaign_id": attrs["campaign_id"],
        }

        def sms(event_type: str, at_ms: int, record_status: str) -> None:
            # [X2]: arrival can precede event_timestamp for carrier receipts.
            record = self.envelope(
                campaign, event_type, AWS_ACCOUNT_ID, at_ms, rng.randint(-400, 400)
            )
            record["attributes"] = dict(sms_attrs, record_status=record_status)
            record["metrics"] = {"price_in_millicents_usd": 645.0}
            self.add(record)

        buffered_at = sent_at + rng.randint(50, 500)
        sms("_SMS.BUFFERED", buffered_at, "SUCCESSFUL")
        receipt_at = buffered_at + rng.randint(1_000, 120_000)
        if rng.random() < 0.9:
            sms("_SMS.SUCCESS", receipt_at, "DELIVERED")
        else:
            sms("_SMS.FAILURE", receipt_at, rng.choice(["UNREACHABLE", "CARRIER_UNREACHABLE"]))
            return
        if rng.random() < 0.03:
            sms("_SMS.OPTOUT", receipt_at + rng.randint(60_000, 900_000), "OPTED_OUT")

    def unknown(self) -> None:
        """A type the mapping does not know (app analytics, future email types): OTHER."""
        rng = self.rng
        campaign = rng.choice(self.campaigns)
        at = self.base_ms - rng.randrange(WINDOW_MS)
        record = self.envelope(campaign, rng.choice(UNKNOWN_TYPES), _uuid(rng), at, 300)
        record["session"] = {"session_id": _uuid(rng), "start_timestamp": at}
        self.add(record)


# --- malformed records: (reason, builder) -----------------------------------------------------


def _invalid_json(record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    raw = orjson.dumps(record)
    return None, raw[: len(raw) // 2]  # a record cut off mid-write


def _missing_id(record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    record["client"] = {}
    return None, orjson.dumps(record)


def _missing_type(record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    del record["event_type"]
    return _keyed(record)


def _bad_timestamp(record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    iso = datetime.fromtimestamp(record["event_timestamp"] / 1000, UTC).isoformat()
    record["event_timestamp"] = iso  # a string, not epoch ms
    record["arrival_timestamp"] = iso
    return _keyed(record)


def _keyed(record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    key = vendor_event_id(record)
    return (key.encode() if key is not None else None), orjson.dumps(record)


MALFORMED: tuple[tuple[str, Callable[[dict[str, Any]], tuple[bytes | None, bytes]]], ...] = (
    ("invalid_json", _invalid_json),
    ("missing_event_id", _missing_id),
    ("missing_event_type", _missing_type),
    ("invalid_timestamp", _bad_timestamp),
)


def generate(rng: random.Random, n: int, campaigns: list[Campaign]) -> SampleSet:
    """About ``n`` raw Pinpoint records over ``campaigns``, deterministic for ``rng``."""
    if not campaigns:
        raise ValueError("pinpoint sample generator needs at least one campaign")
    builder = _Builder(rng, campaigns)
    n_duplicates = round(n * DUPLICATE_SHARE)
    n_malformed = round(n * MALFORMED_SHARE)
    n_unknown = max(1, n // 100) if n >= 20 else 0
    target = max(0, n - n_duplicates - n_malformed)
    for _ in range(n_unknown):
        builder.unknown()
    while len(builder.events) < target:
        builder.story()
    events = builder.events[:target] if target else []
    events.sort(key=lambda r: r["arrival_timestamp"])  # Kinesis delivers roughly by arrival

    records: list[tuple[bytes | None, bytes]] = []
    for record in events:
        key = vendor_event_id(record)
        if key is None:  # every kept record was built with a client_id
            raise RuntimeError("pinpoint sample record without a synthetic key")
        records.append((key.encode(), orjson.dumps(record)))
    expected_events = len(records)

    # Byte-identical repeats, each placed after its original.
    duplicates = rng.sample(range(len(records)), min(n_duplicates, len(records)))
    for original in sorted(duplicates, reverse=True):
        at = rng.randint(original + 1, len(records))
        records.insert(at, records[original])

    rejects: Counter[str] = Counter()
    for i in range(n_malformed if events else 0):
        reason, build = MALFORMED[i % len(MALFORMED)]
        source = orjson.loads(orjson.dumps(rng.choice(events)))  # a deep copy
        records.insert(rng.randint(0, len(records)), build(source))
        rejects[reason] += 1

    return SampleSet(
        vendor=VENDOR,
        records=records,
        expected_events=expected_events,
        expected_duplicates=len(duplicates),
        expected_rejects={reason: rejects[reason] for reason, _ in MALFORMED},
        expected_skips=0,
    )
