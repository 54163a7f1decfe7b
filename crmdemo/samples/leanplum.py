"""Sample Leanplum S3 Data Feed records (seed 000, TAXONOMY §6.1).

Three in four records use the JSON feed's shape (``{event_id, name, properties}``), the rest the
Parquet row shape the S3 connector emits (flat fields, ``time`` as epoch ms, nested ``Campaign``
/ ``Message`` / ``AbTest``), so one set exercises both. Duplicates are byte-identical re-sends
("the same event id" [S0]); the expected counts are tallied while generating, never by running
the normalizer.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from crmdemo.samples import Campaign, SampleSet

VENDOR = "leanplum"
# 2026-01-01T00:00:00Z; each set's base time lies within 30 days after it (from the rng).
EPOCH_BASE_MS = 1_767_225_600_000
WINDOW_MS = 2 * 3600 * 1000  # occurred times spread over the two hours before the base time
DUPLICATE_SHARE = 0.05
MALFORMED_SHARE = 0.01
ROW_SHARE = 0.25  # records in the Parquet row shape
# Leanplum ids are large longs; campaign.index picks one, the same in the Segment samples.
CAMPAIGN_ID_BASE = 5_066_549_580_791_808
CAMPAIGN_ID_STEP = 4096
AB_TEST_ID_BASE = 4_785_074_604_081_152

REJECTS = ("invalid_json", "missing_event_id", "missing_event_type", "invalid_timestamp")

# (family, channel, event_type, weight): channel and event_type as Leanplum writes them [S0].
EVENT_MIX: list[tuple[str, str, str, float]] = [
    ("campaign", "", "Triggered", 3),
    ("campaign", "", "Enter", 6),
    ("campaign", "", "Convert", 1.5),
    ("campaign", "", "Exit", 1.5),
    ("campaign", "", "Forced Exit", 0.7),
    ("message", "Email", "Send", 14),
    ("message", "Email", "Delivered", 12),
    ("message", "Email", "Deferred", 0.8),
    ("message", "Email", "Bounce", 1.5),
    ("message", "Email", "Open", 8),
    ("message", "Email", "Click", 3.5),
    ("message", "Email", "Marked as spam", 0.4),
    ("message", "Email", "Unsubscribed", 0.8),
    ("message", "Email", "Dropped", 0.4),
    ("message", "Push Notification", "Send", 12),
    ("message", "Push Notification", "Open", 4),
    ("message", "Push Notification", "Bounce", 1),
    ("message", "In App Message", "View", 5),
    ("message", "In App Message", "Accept", 1.5),
    ("message", "In App Message", "Submit", 0.4),
    ("message", "In App Message", "Select", 0.8),
    ("message", "App Inbox", "Send", 2),
    ("message", "App Inbox", "Open", 1),
    ("message", "Webhook", "Send", 1),
    ("experiment", "", "", 3),
    # Unknown to the taxonomy (OTHER): a future channel and a future email event type.
    ("message", "SMS", "Send", 0.4),
    ("message", "Email", "Forwarded", 0.3),
]
AB_TESTS = ["Button colour", "Subject line", "Onboarding length", "Price display"]
CITIES = ["Berlin", "Seoul", "Austin", "Lyon", "Osaka"]


def campaign_id(campaign: Campaign) -> int:
    return CAMPAIGN_ID_BASE + campaign.index * CAMPAIGN_ID_STEP


def message_id(campaign: Campaign, channel: str) -> int:
    """One message (campaign action) per campaign and channel."""
    channels = [c for c in dict.fromkeys(ch for _, ch, _, _ in EVENT_MIX) if c]
    return campaign_id(campaign) + 1 + channels.index(channel)


def leanplum_time(ms: int) -> str:
    """``yyyy-MM-dd HH:mm:ss.SSS``, no zone [S0]."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d}"


def _new_id(rng: random.Random, used: set[str]) -> str:
    while True:
        candidate = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if candidate not in used:
            used.add(candidate)
            return candidate


def _plan(rng: random.Random, n: int) -> list[str]:
    """Slot kinds in publish order: 'event', 'duplicate' or a reject reason."""
    malformed = max(len(REJECTS), round(n * MALFORMED_SHARE)) if n >= 50 else 0
    duplicates = round(n * DUPLICATE_SHARE)
    slots = [REJECTS[i % len(REJECTS)] for i in range(malformed)]
    slots += ["duplicate"] * duplicates
    slots += ["event"] * max(0, n - len(slots))
    rng.shuffle(slots)
    return slots


# Message record fields named as in the JSON properties [S0].
_MESSAGE_FIELDS = (
    "channel",
    "message_occurrence_id",
    "email_id",
    "link_url",
    "link_id",
    "event_type",
)


def _event(
    rng: random.Random,
    event_id: str,
    campaigns: list[Campaign],
    occurred_ms: int,
    users: list[str],
) -> dict[str, Any]:
    family, channel, event_type, _ = rng.choices(EVENT_MIX, weights=[w for *_, w in EVENT_MIX])[0]
    campaign = rng.choice(campaigns)
    user = rng.choice(users)
    row = rng.random() < ROW_SHARE
    device = f"{rng.getrandbits(64):016X}"
    if family == "campaign":
        name = f"(Leanplum) Campaign {event_type}"
        fields: dict[str, Any] = {
            "name": campaign.name,
            "campaign_id": campaign_id(campaign),
            "event_type": event_type,
        }
    elif family == "experiment":
        name = "(Leanplum) A/B Test Impression"
        test = rng.randrange(len(AB_TESTS))
        fields = {
            "name": AB_TESTS[test],
            "ab_test_id": AB_TEST_ID_BASE + test * 64,
            "variant_id": AB_TEST_ID_BASE + test * 64 + rng.randrange(1, 4),
        }
    else:
        name = f"(Leanplum) {channel} {event_type}"
        part_of_campaign = rng.random() < 0.9  # "Only for messages part of a campaign" [S0]
        fields = {
            "message_occurrence_id": f"{rng.getrandbits(64):x}",
            "name": f"{campaign.name} {channel}",
            "message_id": message_id(campaign, channel),
            "event_type": event_type,
            "channel": channel,
            "campaign_id": campaign_id(campaign) if part_of_campaign else 0,
            "campaign_name": campaign.name if part_of_campaign else "",
        }
        if channel == "Email":
            fields.update(email_id=f"{rng.getrandbits(96):024x}", link_url=None, link_id=None)
            if event_type == "Click":
                link = rng.randrange(1, 6)
                fields.update(link_url=f"https://shop.example.com/c{campaign.index}/l{link}")
                fields.update(link_id=str(link))
    if not row:
        properties = {"user_id": user, "device_id": device, "time": leanplum_time(occurred_ms)}
        return {"event_id": event_id, "name": name, "properties": properties | fields}
    record: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "event_id": event_id,
        "user_id": user or None,
        "device_id": device,
        "time": occurred_ms,  # epoch ms
        "user_attributes": {"city": rng.choice(CITIES)},
        "user_attributes_numeric": {"sessions": rng.randrange(1, 90)},
        "AbTest": None,
        "Campaign": None,
        "Message": None,
    }
    if family == "campaign":
        record["Campaign"] = {
            "name": fields["name"],
            "id": fields["campaign_id"],
            "event_type": event_type,
        }
    elif family == "experiment":
        record["AbTest"] = {
            "name": fields["name"],
            "id": fields["ab_test_id"],
            "variant_id": fields["variant_id"],
        }
    else:
        message = {key: fields.get(key) for key in _MESSAGE_FIELDS}
        message.update(
            name=fields["name"],
            id=fields["message_id"],
            campaign_id=fields["campaign_id"] or None,
            campaign_name=fields["campaign_name"] or None,
        )
        record["Message"] = message
    return record


def _malformed(reason: str, record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """A broken copy of a fresh record, keyed as a connector would key it."""
    key: bytes | None = record["event_id"].encode()
    if reason == "invalid_json":
        whole = orjson.dumps(record)
        return None, whole[: len(whole) // 2]  # a file cut off mid-record
    if reason == "missing_event_id":
        record["event_id"] = ""
        key = None
    elif reason == "missing_event_type":
        del record["name"]
    elif "properties" in record:
        record["properties"]["time"] = "1970-01-01 00:00:00.000"  # the "unset" default [S0]
    else:
        record["time"] = 0
    return key, orjson.dumps(record)


def generate(rng: random.Random, n: int, campaigns: list[Campaign]) -> SampleSet:
    sample = SampleSet(vendor=VENDOR)
    base_ms = EPOCH_BASE_MS + rng.randrange(30 * 24 * 3600) * 1000
    users = [f"user-{i:05d}" for i in rng.sample(range(100_000), 150)] + [""] * 10  # "" = anon
    used: set[str] = set()
    sent: list[tuple[bytes | None, bytes]] = []
    for slot in _plan(rng, n):
        if slot == "duplicate" and sent:
            sample.records.append(rng.choice(sent))  # same bytes, same event id [S0]
            sample.expected_duplicates += 1
            continue
        occurred_ms = base_ms - rng.randrange(WINDOW_MS)
        record = _event(rng, _new_id(rng, used), campaigns, occurred_ms, users)
        if slot in REJECTS:
            sample.records.append(_malformed(slot, record))
            sample.expected_rejects[slot] = sample.expected_rejects.get(slot, 0) + 1
            continue
        entry = (record["event_id"].encode(), orjson.dumps(record))
        sample.records.append(entry)
        sent.append(entry)
        sample.expected_events += 1
    return sample
