"""Sample Segment track calls from the Leanplum source (seed 002, envelope [X4], TAXONOMY §6.3).

Campaign and message ids are the Leanplum ids of the same campaigns (as strings, the way
Segment's Leanplum Source page types them [X7]). Duplicates are destination retries: the same
``messageId`` with later ``sentAt``/``receivedAt`` [X5]. The expected counts are tallied while
generating, never by running the normalizer.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from crmdemo.samples import Campaign, SampleSet
from crmdemo.samples.leanplum import AB_TEST_ID_BASE, AB_TESTS, campaign_id

VENDOR = "segment"
EPOCH_BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; base time within 30 days after it
WINDOW_MS = 2 * 3600 * 1000
DUPLICATE_SHARE = 0.05
MALFORMED_SHARE = 0.01
ANONYMOUS_SHARE = 0.08

REJECTS = ("invalid_json", "missing_event_id", "missing_event_type", "invalid_timestamp")

# (event, family, weight). Families pick the documented properties [S2].
EVENT_MIX: list[tuple[str, str, float]] = [
    ("Email Delivered", "email", 12),
    ("Email Opened", "email", 8),
    ("Email Link Clicked", "email", 3.5),
    ("Email Bounced", "email", 1.5),
    ("Email Marked as Spam", "email", 0.4),
    ("Unsubscribed", "email", 0.8),
    ("Push Notification Received", "push", 10),
    ("Push Notification Tapped", "push", 4),
    ("Push Notification Bounced", "push", 1),
    ("Experiment Viewed", "experiment", 3),
    # Not in the source's table (OTHER): names Leanplum might add.
    ("Email Sent", "email", 0.4),
    ("Campaign Entered", "none", 0.3),
]
EMAIL_MESSAGE_OFFSET = 1  # message id = campaign id + offset, as in the Leanplum samples
PUSH_MESSAGE_OFFSET = 2
VARIANTS = ["Control", "Variant A", "Variant B"]


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _plan(rng: random.Random, n: int) -> list[str]:
    """Slot kinds in publish order: 'event', 'duplicate' or a reject reason."""
    malformed = max(len(REJECTS), round(n * MALFORMED_SHARE)) if n >= 50 else 0
    duplicates = round(n * DUPLICATE_SHARE)
    slots = [REJECTS[i % len(REJECTS)] for i in range(malformed)]
    slots += ["duplicate"] * duplicates
    slots += ["event"] * max(0, n - len(slots))
    rng.shuffle(slots)
    return slots


def _properties(rng: random.Random, family: str, event: str, campaign: Campaign) -> dict:
    cid = campaign_id(campaign)
    if family == "email":
        props: dict[str, Any] = {
            "email_id": f"{rng.getrandbits(96):024x}",
            "email_subject": f"{campaign.name} Email",
            "message_id": str(cid + EMAIL_MESSAGE_OFFSET),
        }
        if rng.random() < 0.9:  # "Sent only if the email is part of a Leanplum campaign"
            props.update(campaign_id=str(cid), campaign_name=campaign.name)
        if event == "Email Link Clicked":
            link = rng.randrange(1, 6)
            props.update(
                link_url=f"https://shop.example.com/c{campaign.index}/l{link}", link_id=str(link)
            )
        return props
    if family == "push":
        push: dict[str, Any] = {
            "message_id": str(cid + PUSH_MESSAGE_OFFSET),
            "message_name": f"{campaign.name} Push Notification",
            "medium": "Push",
        }
        if rng.random() < 0.9:
            push.update(id=str(cid), name=campaign.name)
        return {"campaign": push}
    if family == "experiment":
        test = rng.randrange(len(AB_TESTS))
        variant = rng.randrange(len(VARIANTS))
        return {
            "experiment_id": str(AB_TEST_ID_BASE + test * 64),
            "experiment_name": AB_TESTS[test],
            "variant_id": str(AB_TEST_ID_BASE + test * 64 + variant + 1),
            "variant_name": VARIANTS[variant],
        }
    return {"campaign_id": str(cid), "campaign_name": campaign.name}


def _event(
    rng: random.Random,
    message_id: str,
    campaigns: list[Campaign],
    occurred_ms: int,
    users: list[str],
) -> dict[str, Any]:
    event, family, _ = rng.choices(EVENT_MIX, weights=[w for *_, w in EVENT_MIX])[0]
    campaign = rng.choice(campaigns)
    sent_ms = occurred_ms + rng.randrange(50, 5000)
    record: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "timestamp": iso(occurred_ms),
        "originalTimestamp": iso(occurred_ms),
        "sentAt": iso(sent_ms),
        "receivedAt": iso(sent_ms + rng.randrange(20, 800)),
        "anonymousId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "properties": _properties(rng, family, event, campaign),
        "context": {"library": {"name": "leanplum-segment-source", "version": "1.0.0"}},
        "integrations": {},
        "channel": "server",
        "version": 2,
    }
    if rng.random() >= ANONYMOUS_SHARE:
        record["userId"] = rng.choice(users)
    return record


def _retry(rng: random.Random, record: dict[str, Any]) -> dict[str, Any]:
    """The same message re-delivered later: only sentAt/receivedAt differ [X5]."""
    retry = dict(record)
    sent = datetime.fromisoformat(record["sentAt"])
    sent_ms = int(sent.timestamp()) * 1000 + sent.microsecond // 1000
    later_ms = sent_ms + rng.randrange(1000, 600_000)
    retry["sentAt"] = iso(later_ms)
    retry["receivedAt"] = iso(later_ms + rng.randrange(20, 800))
    return retry


def _malformed(reason: str, record: dict[str, Any]) -> tuple[bytes | None, bytes]:
    key: bytes | None = record["messageId"].encode()
    if reason == "invalid_json":
        whole = orjson.dumps(record)
        return None, whole[: len(whole) // 2]  # a body cut off mid-message
    if reason == "missing_event_id":
        del record["messageId"]
        key = None
    elif reason == "missing_event_type":
        del record["event"]
    else:
        record["timestamp"] = record["timestamp"].removesuffix("Z")  # no zone designator
    return key, orjson.dumps(record)


def generate(rng: random.Random, n: int, campaigns: list[Campaign]) -> SampleSet:
    sample = SampleSet(vendor=VENDOR)
    base_ms = EPOCH_BASE_MS + rng.randrange(30 * 24 * 3600) * 1000
    users = [f"user-{i:05d}" for i in rng.sample(range(100_000), 150)]
    used: set[str] = set()
    sent: list[dict[str, Any]] = []
    for slot in _plan(rng, n):
        if slot == "duplicate" and sent:
            retry = _retry(rng, rng.choice(sent))
            sample.records.append((retry["messageId"].encode(), orjson.dumps(retry)))
            sample.expected_duplicates += 1
            continue
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        while message_id in used:
            message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        used.add(message_id)
        record = _event(rng, message_id, campaigns, base_ms - rng.randrange(WINDOW_MS), users)
        if slot in REJECTS:
            sample.records.append(_malformed(slot, record))
            sample.expected_rejects[slot] = sample.expected_rejects.get(slot, 0) + 1
            continue
        sample.records.append((message_id.encode(), orjson.dumps(record)))
        sent.append(record)
        sample.expected_events += 1
    return sample
