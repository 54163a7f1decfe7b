"""Cheap, deterministic raw vendor events for the benchmark.

The benchmark needs a million records in seconds and an exact expected outcome, so it does not
use the per-vendor sample generators of :mod:`crmdemo.samples` (built for variety, ~1%
malformed): it builds records from one small template family per vendor here, shaped after the
vendor documents in ``../shared/seeds/`` and the TAXONOMY §6 field tables, with exactly the mix the
benchmark issue asks for: 5% exact duplicates (same key, same bytes, like a connector replay),
0.5% malformed records (the four TAXONOMY §5 reject reasons in turn) and a few hundred campaigns.

Every record's outcome is known when it is generated, so :class:`Dataset` carries the expected
number of distinct canonical events; the unit tests check it against the real normalizers.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from crmstream.topics import VENDORS

DUPLICATE_RATE = 0.05
MALFORMED_RATE = 0.005
DEFAULT_CAMPAIGNS = 300
APPS = 4
# Generated occurred_at values are spread over this span before the base time.
SPAN_MS = 3_600_000

# TAXONOMY §5 reject reasons, produced in turn for the malformed share.
MALFORMED_KINDS = ("invalid_json", "missing_event_id", "missing_event_type", "invalid_timestamp")

Record = tuple[bytes | None, bytes]


@dataclass
class Dataset:
    """Raw records per vendor, as ``(key, value)`` in publish order, and their expected fate."""

    records: dict[str, list[Record]] = field(default_factory=dict)
    expected_events: int = 0  # distinct canonical events
    duplicates: int = 0
    malformed: int = 0

    @property
    def total(self) -> int:
        return sum(len(r) for r in self.records.values())

    def per_vendor(self) -> dict[str, int]:
        return {v: len(r) for v, r in self.records.items()}


_ISO_SECONDS: dict[int, str] = {}


def _iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, without datetime (a million calls must be cheap)."""
    seconds, millis = divmod(ms, 1000)
    prefix = _ISO_SECONDS.get(seconds)
    if prefix is None:
        if len(_ISO_SECONDS) > 100_000:
            _ISO_SECONDS.clear()
        days, rem = divmod(seconds, 86400)
        hour, rem = divmod(rem, 3600)
        minute, second = divmod(rem, 60)
        year, month, day = _civil(days)
        prefix = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        _ISO_SECONDS[seconds] = prefix
    return f"{prefix}.{millis:03d}Z"


def _civil(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's civil_from_days)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


_MASK128 = (1 << 128) - 1


def _uuid(salt: int, seq: int) -> str:
    # Multiplying by odd 128-bit constants spreads small inputs over every hex digit.
    h = (
        seq * 0x9E3779B97F4A7C15F39CC0605CEDC835 + salt * 0xD1B54A32D192ED03AEF7A76E3C6B4E5B
    ) & _MASK128
    s = f"{h:032x}"
    return f"{s[:8]}-{s[8:12]}-4{s[13:16]}-a{s[17:20]}-{s[20:]}"


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_B32_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def _ulid(ms: int, salt: int, seq: int) -> str:
    """A ULID: 48-bit ms time (10 chars) and 80 "random" bits (16 chars), Crockford base32."""
    time_part = []
    value = ms
    for _ in range(10):
        value, rem = divmod(value, 32)
        time_part.append(_CROCKFORD[rem])
    rand = ((salt * 0x9E3779B97F4A7C15 + seq * 0xD1B54A32D192ED03) & ((1 << 80) - 1)).to_bytes(10)
    return (
        "".join(reversed(time_part)) + base64.b32encode(rand).translate(_B32_TO_CROCKFORD).decode()
    )


# --- one template family per vendor ------------------------------------------------------
# Each builder returns (raw key, record dict) for the seq-th event of the vendor, occurring at ms.

LEANPLUM_MESSAGE = (
    ("Email", "Sent"),
    ("Email", "Open"),
    ("Email", "Click"),
    ("Push Notification", "Sent"),
    ("Push Notification", "Open"),
    ("In-App Message", "View"),
)


def _leanplum(seq: int, ms: int, camp: int, salt: int, rng: random.Random) -> tuple[str, Any]:
    # [S0] JSON feed: {event_id, name, properties{time "yyyy-MM-dd HH:mm:ss.SSS" (UTC )...}}
    event_id = f"{salt:06d}{seq:013d}"
    stamp = _iso(ms)
    props: dict[str, Any] = {
        "time": f"{stamp[:10]} {stamp[11:23]}",
        "user_id": f"user-{rng.randrange(50_000)}",
        "device_id": f"dev-{rng.randrange(80_000):06d}",
    }
    pick = seq % 10
    if pick == 0:
        name = "(Leanplum) Campaign Enter"
        props.update(campaign_id=5_100_000_000 + camp, name=f"Campaign {camp}", event_type="Enter")
    else:
        channel, event_type = LEANPLUM_MESSAGE[pick % len(LEANPLUM_MESSAGE)]
        name = f"Message {camp}"
        props.update(
            campaign_id=5_100_000_000 + camp,
            campaign_name=f"Campaign {camp}",
            message_id=6_200_000_000 + camp,
            channel=channel,
            event_type=event_type,
            message_occurrence_id=f"{salt:x}-{seq:x}",
            email_id=f"e{camp}",
        )
        if event_type == "Click":
            props["link_url"] = f"https://shop.example.com/c/{camp}?utm_source=crm"
            props["link_id"] = f"l{camp}"
    return event_id, {"event_id": event_id, "name": name, "properties": props}


PINPOINT_TYPES = (
    "_campaign.send",
    "_campaign.opened_notification",
    "_email.send",
    "_email.open",
    "_email.click",
    "_SMS.SUCCESS",
)


def _pinpoint(seq: int, ms: int, camp: int, salt: int, rng: random.Random) -> tuple[str, Any]:
    # Seed 001 "Campaign event attributes"; no event id, the key is synthesized.
    event_type = PINPOINT_TYPES[seq % len(PINPOINT_TYPES)]
    client_id = f"ep-{rng.randrange(200_000):07d}"
    arrival = ms + rng.randrange(1, 900)
    activity = f"{camp:08x}{salt:08x}a1b2c3d4e5f60718"
    attrs: dict[str, Any] = {
        "campaign_id": f"{camp:08x}c0ffee0000000000000000",
        "campaign_activity_id": activity,
        "treatment_id": "0",
    }
    record: dict[str, Any] = {
        "event_type": event_type,
        "event_timestamp": ms,
        "arrival_timestamp": arrival,
        "event_version": "3.1",
        "application": {"app_id": f"pp-app-{camp % APPS}", "sdk": {}},
        "client": {"client_id": client_id},
        "device": {"platform": {}},
        "session": {},
        "attributes": attrs,
        "awsAccountId": "123456789012",
    }
    k = activity
    if event_type.startswith("_email."):
        k = f"0100018f{seq:08x}-{salt:08x}-000000"
        attrs["delivery_type"] = "EMAIL"
        record["facets"] = {
            "email_channel": {
                "mail_event": {
                    "mail": {"message_id": k, "from_address": "news@example.com"},
                    **(
                        {"click": {"link": f"https://example.com/p/{camp}"}}
                        if event_type == "_email.click"
                        else {}
                    ),
                }
            }
        }
    elif event_type.startswith("_SMS."):
        k = f"sms-{salt:x}-{seq:x}"
        attrs.update(delivery_type="SMS", message_id=k, record_status="DELIVERED")
    else:
        attrs.update(delivery_type="GCM", campaign_send_status="SUCCESS")
        record["client_context"] = {
            "custom": {"endpoint": f'{{"ChannelType":"GCM","User":{{"UserId":"u{seq % 9973}"}}}}'}
        }
    key = "|".join((event_type, client_id, k, str(ms), str(arrival)))
    return key, record


SEGMENT_EVENTS = (
    "Email Delivered",
    "Email Opened",
    "Email Link Clicked",
    "Push Notification Received",
    "Push Notification Tapped",
    "Experiment Viewed",
)


def _segment(seq: int, ms: int, camp: int, salt: int, rng: random.Random) -> tuple[str, Any]:
    # [S2] Leanplum events in the Segment track envelope [X4].
    event = SEGMENT_EVENTS[seq % len(SEGMENT_EVENTS)]
    message_id = f"ajs-next-{_uuid(salt, seq)}"
    stamp = _iso(ms)
    if event.startswith("Email"):
        props: dict[str, Any] = {
            "campaign_id": str(5_100_000_000 + camp),
            "campaign_name": f"Campaign {camp}",
            "message_id": str(6_200_000_000 + camp),
            "email_subject": f"Deals for you #{camp}",
        }
    elif event.startswith("Push"):
        props = {
            "campaign": {
                "id": str(5_100_000_000 + camp),
                "name": f"Campaign {camp}",
                "message_id": str(6_200_000_000 + camp),
            }
        }
    else:
        props = {"experiment_id": f"exp-{camp}", "variant_id": f"v{seq % 2}"}
    record = {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "userId": f"user-{rng.randrange(50_000)}",
        "anonymousId": None,
        "timestamp": stamp,
        "sentAt": stamp,
        "receivedAt": stamp,
        "properties": props,
        "context": {"library": {"name": "leanplum", "version": "1.0"}},
        "integrations": {},
        "version": 2,
    }
    return message_id, record


FLARELANE_TYPES = (
    "push.sent",
    "push.delivered",
    "push.clicked",
    "email.sent",
    "email.opened",
    "sms.sent",
    "kakaoalimtalk.delivered",
    "iam.displayed",
)


def _flarelane(seq: int, ms: int, camp: int, salt: int, rng: random.Random) -> tuple[str, Any]:
    # [S3] one exported row per event: id (ULID), type "<channel>.<suffix>", RFC 3339 time.
    event_type = FLARELANE_TYPES[seq % len(FLARELANE_TYPES)]
    event_id = _ulid(ms, salt, seq)
    channel = event_type.partition(".")[0]
    record = {
        "id": event_id,
        "type": event_type,
        "channel": channel,
        "time": _iso(ms),
        "projectid": f"fl-project-{camp % APPS}",
        "userid": f"user-{rng.randrange(50_000)}",
        "deviceid": _uuid(salt + 7, rng.randrange(120_000)),
        "campaign_id": _uuid(1, camp),
        "campaign_name": f"Campaign {camp}",
        "template_id": _uuid(2, camp),
        "template_name": f"Template {camp}",
        "trigger_type": "journey" if camp % 3 == 0 else "manual",
        "platform": "android" if seq % 2 else "ios",
        "provider": "fcm" if channel == "push" else channel,
        "provider_message_id": f"pm-{salt:x}-{seq:x}",
        "is_advertisement": "false",
        "date": _iso(ms)[:10],
    }
    return event_id, record


AIRSHIP_TYPES = ("SEND", "OPEN", "IN_APP_MESSAGE_DISPLAY", "RICH_READ", "WEB_CLICK", "SEND")


def _airship(seq: int, ms: int, camp: int, salt: int, rng: random.Random) -> tuple[str, Any]:
    # Seed 004 "Events": id, offset, occurred, processed, type, device, body.
    event_type = AIRSHIP_TYPES[seq % len(AIRSHIP_TYPES)]
    event_id = _uuid(salt + 3, seq)
    push = {"push_id": _uuid(4, camp * 7 + seq % 7), "group_id": _uuid(5, camp)}
    body: dict[str, Any] = dict(push)
    if event_type == "OPEN":
        body = {"session_id": _uuid(6, seq), "triggering_push": push}
    elif event_type == "IN_APP_MESSAGE_DISPLAY":
        body = {**push, "session_id": _uuid(6, seq)}
    record = {
        "id": event_id,
        "offset": str(1_000_001_778_910 + seq),
        "occurred": _iso(ms),
        "processed": _iso(ms + rng.randrange(50, 3000)),
        "type": event_type,
        "device": {
            "channel": _uuid(7, rng.randrange(150_000)),
            "device_type": "IOS" if seq % 3 else "ANDROID",
            "named_user_id": f"user-{rng.randrange(50_000)}",
        },
        "body": body,
    }
    return event_id, record


BUILDERS: dict[str, Callable[[int, int, int, int, random.Random], tuple[str, Any]]] = {
    "leanplum": _leanplum,
    "pinpoint": _pinpoint,
    "segment": _segment,
    "flarelane": _flarelane,
    "airship": _airship,
}

# Where each vendor keeps the fields a malformed record lacks (TAXONOMY §6 "What a record is").
_ID_PATH: dict[str, tuple[str, ...]] = {
    "leanplum": ("event_id",),
    "pinpoint": ("client", "client_id"),  # the synthetic key cannot be built without it
    "segment": ("messageId",),
    "flarelane": ("id",),
    "airship": ("id",),
}
_TYPE_FIELD = {
    "leanplum": "name",
    "pinpoint": "event_type",
    "segment": "event",
    "flarelane": "type",
    "airship": "type",
}
_BAD_TIME: dict[str, tuple[tuple[str, ...], Any]] = {
    "leanplum": (("properties", "time"), "yesterday noon"),
    # A string, not epoch ms; engagement email events read arrival_timestamp instead.
    "pinpoint": (("event_timestamp",), "1732540000000"),
    "segment": (("timestamp",), "2026-11-25T10:00:00"),  # no zone designator
    "flarelane": (("time",), "25/11/2026 10:00"),
    "airship": (("occurred",), None),
}


def _set_path(record: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = record
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


_DELETE = object()


def _malform(vendor: str, kind: str, record: dict[str, Any], value: bytes) -> bytes:
    if kind == "invalid_json":
        return value[: len(value) // 2]  # a truncated line
    if kind == "missing_event_id":
        _set_path(record, _ID_PATH[vendor], _DELETE)
    elif kind == "missing_event_type":
        record[_TYPE_FIELD[vendor]] = ""
    else:
        path, bad = _BAD_TIME[vendor]
        _set_path(record, path, bad)
        if vendor == "pinpoint":
            record["arrival_timestamp"] = bad
    return orjson.dumps(record)


def generate(
    n: int,
    *,
    seed: int = 1,
    campaigns: int = DEFAULT_CAMPAIGNS,
    base_ms: int = 1_764_000_000_000,
    id_salt: int = 0,
    duplicate_rate: float = DUPLICATE_RATE,
    malformed_rate: float = MALFORMED_RATE,
    span_ms: int = SPAN_MS,
) -> Dataset:
    """``n`` raw records split evenly over the five vendors, their ``occurred_at`` spread evenly
    over the ``span_ms`` before ``base_ms``.

    ``id_salt`` gives disjoint event ids (the latency phases must not collide with the preload).
    Duplicates repeat an earlier good record of the same vendor byte for byte, with its key.
    """
    if n < len(VENDORS):
        raise ValueError(f"need at least {len(VENDORS)} events, got {n}")
    rng = random.Random(seed)
    data = Dataset()
    for index, vendor in enumerate(VENDORS):
        count = n // len(VENDORS) + (1 if index < n % len(VENDORS) else 0)
        build = BUILDERS[vendor]
        salt = id_salt * 10 + index + 1
        out: list[Record] = []
        good: list[Record] = []
        step = max(1, span_ms // max(1, count))
        seq = 0
        malformed_due = 0.0
        for _ in range(count):
            roll = rng.random()
            if good and roll < duplicate_rate:
                out.append(good[rng.randrange(len(good))])
                data.duplicates += 1
                continue
            seq += 1
            ms = base_ms - span_ms + seq * step
            key, record = build(seq, ms, rng.randrange(campaigns), salt, rng)
            value = orjson.dumps(record)
            malformed_due += malformed_rate / (1 - duplicate_rate)
            if malformed_due >= 1.0:
                malformed_due -= 1.0
                kind = MALFORMED_KINDS[data.malformed % len(MALFORMED_KINDS)]
                value = _malform(vendor, kind, record, value)
                # A connector keys by the vendor id; without a parseable id there is no key.
                bad_key = kind in ("invalid_json", "missing_event_id")
                out.append((None if bad_key else key.encode(), value))
                data.malformed += 1
                continue
            item = (key.encode(), value)
            out.append(item)
            good.append(item)
            data.expected_events += 1
        data.records[vendor] = out
    return data
