"""Sample FlareLane CRM export rows (seed 003, TAXONOMY §6.4).

Each row fills the columns its channel uses ("Column usage by channel") and leaves the rest
null, with fake delivery addresses and bodies so the PII rule has something to keep out.
``projectid`` is the campaign's app id. Duplicates are byte-identical re-exports of a row; the
expected counts are tallied while generating, never by running the normalizer.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from crmdemo.samples import Campaign, SampleSet

VENDOR = "flarelane"
EPOCH_BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; base time within 30 days after it
WINDOW_MS = 2 * 3600 * 1000
DUPLICATE_SHARE = 0.05
MALFORMED_SHARE = 0.01
CAMPAIGN_UUID_PREFIX = 0x0B6F0C1E_8D2A_4C55  # campaign.index fills the low bits

REJECTS = ("invalid_json", "missing_event_id", "missing_event_type", "invalid_timestamp")

# (type, weight). The documented types per channel [S3], plus two it does not define (OTHER).
EVENT_MIX: list[tuple[str, float]] = [
    ("push.created", 10),
    ("push.sent", 9),
    ("push.aborted", 0.8),
    ("push.failed", 0.6),
    ("push.clicked", 3.5),
    ("sms.created", 3),
    ("sms.sent", 2.8),
    ("sms.aborted", 0.2),
    ("sms.failed", 0.2),
    ("sms.delivered", 2.5),
    ("sms.undelivered", 0.3),
    ("kakaoalimtalk.created", 2),
    ("kakaoalimtalk.sent", 2),
    ("kakaoalimtalk.aborted", 0.1),
    ("kakaoalimtalk.failed", 0.1),
    ("kakaoalimtalk.delivered", 1.8),
    ("kakaoalimtalk.undelivered", 0.2),
    ("kakaobrandmessage.created", 1),
    ("kakaobrandmessage.sent", 1),
    ("kakaobrandmessage.aborted", 0.1),
    ("kakaobrandmessage.failed", 0.1),
    ("kakaobrandmessage.delivered", 0.9),
    ("kakaobrandmessage.undelivered", 0.1),
    ("email.created", 5),
    ("email.sent", 5),
    ("email.delivered", 4.5),
    ("email.failed", 0.3),
    ("email.aborted", 0.3),
    ("email.complaint", 0.1),
    ("email.opened", 2.5),
    ("email.clicked", 1),
    ("iam.created", 2),
    ("iam.displayed", 3),
    ("iam.clicked", 1),
    ("iam.closed", 1.5),
    ("push.dismissed", 0.3),
    ("email.bounced", 0.3),
]
PLATFORMS = ["android", "ios", "webDesktop", "webMobile"]
PROVIDER_OF_PLATFORM = {
    "android": "fcm",
    "ios": "apns",
    "webDesktop": "webpush",
    "webMobile": "webpush",
}
ABORT_REASONS = ["frequency capping", "opt-out", "liquid interruption"]
FAILURES = {
    "push": "UNREGISTERED",
    "sms": "INVALID_NUMBER",
    "kakaoalimtalk": "TEMPLATE_MISMATCH",
    "kakaobrandmessage": "NOT_FRIEND",
    "email": "PROVIDER_REJECTED",
}
TRIGGERS = ["console", "api", "journey", "recurring"]
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def campaign_uuid(campaign: Campaign) -> str:
    return str(uuid.UUID(int=(CAMPAIGN_UUID_PREFIX << 64) | (0x9E77 << 48) | campaign.index))


def ulid(ms: int, rng: random.Random) -> str:
    """A ULID: 48-bit epoch ms + 80 random bits, Crockford base32 (the seed's `id`)."""
    value = (ms << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def rfc3339(ms: int) -> str:
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


def _phone(rng: random.Random) -> str:
    return f"+8210{rng.randrange(10**8):08d}"


def _row(
    rng: random.Random, event_id: str, campaign: Campaign, occurred_ms: int, users: list[str]
) -> dict[str, Any]:
    type_ = rng.choices(EVENT_MIX, weights=[w for _, w in EVENT_MIX])[0][0]
    channel, _, suffix = type_.partition(".")
    user = rng.choice(users)
    trigger = rng.choice(TRIGGERS if channel != "iam" else ["console", "journey"])
    row: dict[str, Any] = {
        "id": event_id,
        "type": type_,
        "channel": channel,
        "time": rfc3339(occurred_ms),
        "deviceid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "userid": user or None,  # null for unidentified users
        "campaign_id": campaign_uuid(campaign),
        "campaign_name": campaign.name,
        "trigger_type": trigger,
        "projectid": campaign.app_id,
        "date": rfc3339(occurred_ms)[:10],
    }
    if trigger == "journey":
        row.update(
            journey_id=f"jrn-{campaign.index:03d}",
            journey_name=f"{campaign.name} journey",
            journey_step_id=f"step-{rng.randrange(1, 6)}",
            journey_enrollment_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
    elif trigger == "recurring":
        row["recurring_message_id"] = f"rec-{campaign.index:03d}"
    template = {
        "template_id": f"tpl-{channel}-{campaign.index:03d}",
        "template_name": f"{campaign.name} {channel}",
    }
    if channel == "push":
        platform = rng.choice(PLATFORMS)
        row.update(template, subject=f"{campaign.name}!", body="A deal for {{name}}")
        row.update(platform=platform, provider=PROVIDER_OF_PLATFORM[platform])
        if suffix in {"sent", "clicked"}:
            row["provider_message_id"] = f"0:{occurred_ms}%{rng.getrandbits(48):x}"
        if suffix == "failed":
            row["provider_error"] = FAILURES[channel]
    elif channel == "sms":
        kind = rng.choice(["SMS", "LMS", "MMS"])
        row.update(message_type=kind, sender="+8215881234", recipient=_phone(rng))
        row.update(body="[Shop] {{name}}, 20% off today", is_advertisement=rng.random() < 0.5)
        if kind != "SMS":
            row["subject"] = f"{campaign.name}"
    elif channel == "kakaoalimtalk":
        row.update(template, kakaoalimtalk_template_code=f"TPL_{campaign.index:04d}")
        row.update(recipient=_phone(rng), body="Your order has shipped", message_type="AT")
    elif channel == "kakaobrandmessage":
        row.update(kakao_sender_key=f"{rng.getrandbits(160):040x}", recipient=_phone(rng))
        row.update(body="New arrivals", message_type="FT", is_advertisement=True)
    elif channel == "email":
        row.update(template, subject=f"{campaign.name}: this week", sender="news@shop.example")
        row["recipient"] = f"{user or 'guest'}@mail.example"
    else:  # iam
        row.update(iam_group=rng.choice(["promo", "onboarding"]))
        if suffix != "created":  # "Populated only for SDK events (null for iam.created)"
            row["platform"] = rng.choice(PLATFORMS[:2])
        if suffix == "clicked":
            row["iam_clickable_id"] = f"cta-{rng.randrange(1, 4)}"
        if suffix == "closed":
            row["iam_dont_show_minutes"] = rng.choice([0, 0, 60, 1440])
    if suffix == "aborted":
        row["error"] = rng.choice(ABORT_REASONS)  # "The reason is included in error" [S3]
    elif suffix in {"failed", "undelivered"}:
        row["error"] = FAILURES[channel]
    return row


def _malformed(reason: str, row: dict[str, Any]) -> tuple[bytes | None, bytes]:
    key: bytes | None = row["id"].encode()
    if reason == "invalid_json":
        whole = orjson.dumps(row)
        return None, whole[: len(whole) // 2]  # a line cut off mid-row
    if reason == "missing_event_id":
        row["id"] = None
        key = None
    elif reason == "missing_event_type":
        row["type"] = None
    else:
        row["time"] = row["time"].replace("T", " ").removesuffix("Z")  # no zone designator
    return key, orjson.dumps(row)


def generate(rng: random.Random, n: int, campaigns: list[Campaign]) -> SampleSet:
    sample = SampleSet(vendor=VENDOR)
    base_ms = EPOCH_BASE_MS + rng.randrange(30 * 24 * 3600) * 1000
    users = [f"fl-user-{i:05d}" for i in rng.sample(range(100_000), 150)] + [""] * 15
    used: set[str] = set()
    sent: list[tuple[bytes | None, bytes]] = []
    for slot in _plan(rng, n):
        if slot == "duplicate" and sent:
            sample.records.append(rng.choice(sent))  # the same row exported twice
            sample.expected_duplicates += 1
            continue
        occurred_ms = base_ms - rng.randrange(WINDOW_MS)
        event_id = ulid(occurred_ms, rng)
        while event_id in used:
            event_id = ulid(occurred_ms, rng)
        used.add(event_id)
        row = _row(rng, event_id, rng.choice(campaigns), occurred_ms, users)
        if slot in REJECTS:
            sample.records.append(_malformed(slot, row))
            sample.expected_rejects[slot] = sample.expected_rejects.get(slot, 0) + 1
            continue
        entry = (event_id.encode(), orjson.dumps(row))
        sample.records.append(entry)
        sent.append(entry)
        sample.expected_events += 1
    return sample
