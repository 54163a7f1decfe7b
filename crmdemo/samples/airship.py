"""Sample Airship RTDS lines (seed 004 event shapes), as ``/api/events`` would stream them.

Each recipient of a campaign gets a plausible story per channel: push SEND then a direct OPEN,
email SEND then the SparkPost CUSTOM events, SMS SEND then delivery reports and short-link
clicks, in-app displays and resolutions, Message Center deliveries and reads. Around them sit
app opens, closes and tag changes (OTHER), a few types Airship has not invented yet, and
``OFFSET_UPDATE`` lines. About 5 % of the events are repeated the way the seed describes ("same
id, type, occurred, device, and body values but different offset and processed values") and
about 1 % of the lines are malformed. Expected outcomes are tallied while building.
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
from processors.normalize.airship import vendor_event_id

VENDOR = "airship"
CAMPAIGN_NAMESPACE = uuid.UUID("0b7d6c1e-2f43-4b8a-9e15-7a2c4d9e6f03")
WINDOW_MS = 2 * 3600 * 1000  # occurred times spread over the two hours before the base time
BASE_FROM = datetime(2026, 1, 5, tzinfo=UTC)
BASE_SPAN_S = 180 * 86400
FIRST_OFFSET = 1_000_001_215_643

DUPLICATE_SHARE = 0.05
MALFORMED_SHARE = 0.01
OFFSET_UPDATE_SHARE = 0.015
UNKNOWN_TYPES = ("LIVE_ACTIVITY_UPDATE", "WALLET_PASS_INSTALL", "EMAIL_AMP_INTERACTION")
NOISE_TYPES = ("CLOSE", "TAG_CHANGE", "SCREEN_VIEWED", "FIRST_OPEN", "OPEN", "CUSTOM")

# The kind of message a campaign sends, fixed by its index so every run agrees.
KINDS = ("push", "email", "sms", "in_app", "inbox", "web")


def group_id(campaign: Campaign) -> str:
    """The campaign's group id, Airship's closest thing to a campaign id [A-19]."""
    return str(uuid.uuid5(CAMPAIGN_NAMESPACE, f"campaign-{campaign.index}"))


def push_id(campaign: Campaign, wave: int) -> str:
    """Child pushes of the group: "each with a unique Push ID and a common Group ID"."""
    return str(uuid.uuid5(CAMPAIGN_NAMESPACE, f"campaign-{campaign.index}-push-{wave}"))


def campaign_kind(campaign: Campaign) -> str:
    return KINDS[campaign.index % len(KINDS)]


def iso(ms: int, rng: random.Random) -> str:
    """RTDS time: ``Z`` and 1-3 fractional digits (the seed has ``...21.12Z``)."""
    moment = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{ms % 1000:03d}"
    if rng.random() < 0.15:
        fraction = fraction.rstrip("0")
    return f"{moment}.{fraction}Z" if fraction else f"{moment}Z"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Builder:
    """Accumulates the events of one sample set (without offsets: those are stream positions)."""

    def __init__(self, rng: random.Random, campaigns: list[Campaign]) -> None:
        self.rng = rng
        self.campaigns = campaigns
        self.base_ms = int(BASE_FROM.timestamp() + rng.randrange(BASE_SPAN_S)) * 1000
        self.events: list[dict[str, Any]] = []  # with a private "_at" sort key

    # --- shapes --------------------------------------------------------------------------------

    def device(self, kind: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A device object and, for app channels, a user object (seed "Device information")."""
        rng = self.rng
        channel = _uuid(rng)
        named = f"nu-{rng.randrange(100000):05d}" if rng.random() < 0.6 else None
        device: dict[str, Any]
        if kind == "email":
            device = {
                "channel": channel,
                "device_type": "EMAIL",
                "delivery_address": f"subscriber{rng.randrange(10**6)}@example.com",
            }
            if named:
                device["named_user_id" if rng.random() < 0.5 else "named_user"] = named
            return device, None
        if kind == "sms":
            device = {
                "channel": channel,
                "device_type": "SMS",
                "delivery_address": f"1555{rng.randrange(10**7):07d}",
            }
            return device, None
        if kind == "web":
            device = {
                "channel": channel,
                "device_type": "WEB",
                "attributes": {
                    "web_browser_name": "chrome",
                    "web_browser_type": "desktop",
                    "web_user_agent_string": "Mozilla/5.0 (Macintosh) Chrome/120.0",
                    "push_opt_in": "true",
                    "ua_sdk_version": "1.1.0",
                },
            }
            return device, None
        platform = "IOS" if rng.random() < 0.5 else "ANDROID"
        device = {
            f"{platform.lower()}_channel": channel,
            "channel": channel,
            "device_type": platform,
            "attributes": {"app_version": "542", "ua_sdk_version": "17.1.0", "push_opt_in": "true"},
        }
        if named:
            device["named_user_id"] = named
        user = {"contact_id": _uuid(rng)}
        if named:
            user["named_user_id"] = named
        return device, user

    def add(
        self,
        type_: str,
        at_ms: int,
        device: dict[str, Any] | None,
        user: dict[str, Any] | None,
        body: dict[str, Any] | None,
        lag_ms: int | None = None,
    ) -> None:
        rng = self.rng
        lag = lag_ms if lag_ms is not None else rng.randint(150, 6000)
        event: dict[str, Any] = {
            "id": _uuid(rng),
            "offset": "",  # assigned in stream order
            "occurred": iso(at_ms, rng),
            "processed": iso(at_ms + lag, rng),
            "_at": at_ms + lag,
        }
        if device is not None:
            event["device"] = device
        if user is not None:
            event["user"] = user
        if body is not None:
            event["body"] = body
        event["type"] = type_
        self.events.append(event)

    def attribution(self, campaign: Campaign) -> dict[str, Any]:
        """The pushed message: body of SEND & co., or triggering_push of later events."""
        push: dict[str, Any] = {
            "push_id": push_id(campaign, self.rng.randrange(3)),
            "group_id": group_id(campaign),
            "campaigns": {"categories": [campaign.name.lower().replace(" ", "_")]},
        }
        if campaign.index % 4 == 0:  # an A/B test: variant per recipient
            push["variant_id"] = self.rng.randint(1, 2)
        return push

    # --- stories -------------------------------------------------------------------------------

    def story(self) -> None:
        rng = self.rng
        campaign = rng.choice(self.campaigns)
        kind = campaign_kind(campaign)
        device, user = self.device(kind)
        at = self.base_ms - WINDOW_MS + rng.randrange(WINDOW_MS - 20 * 60 * 1000)
        push = self.attribution(campaign)
        {
            "push": self.push_story,
            "web": self.push_story,
            "email": self.email_story,
            "sms": self.sms_story,
            "in_app": self.in_app_story,
            "inbox": self.inbox_story,
        }[kind](campaign, device, user, push, at)

    def send_or_not(
        self,
        campaign: Campaign,
        device: dict[str, Any],
        user: dict[str, Any] | None,
        push: dict[str, Any],
        at: int,
    ) -> bool:
        """SEND, or the reasons it did not happen; True when the message went out."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.03:
            control = {k: v for k, v in push.items() if k in ("push_id", "group_id")}
            self.add("CONTROL", at, device, user, control)
            return False
        if roll < 0.05:
            aborted = dict(
                push, reason=rng.choice(["FREQUENCY_LIMIT_REACHED", "FEED_RESOLVE_FAILURE"])
            )
            self.add("SEND_ABORTED", at, device, user, aborted)
            return False
        body = dict(push, alerting=True)
        if "variant_id" in push:
            body["experiments"] = {
                "experiment_id": str(uuid.uuid5(CAMPAIGN_NAMESPACE, f"exp-{campaign.index}")),
                "type": "GLOBAL",
                "variant_id": f"variant-{push['variant_id']}",
            }
        self.add("SEND", at, device, user, body)
        return True

    def push_story(
        self,
        campaign: Campaign,
        device: dict[str, Any],
        user: dict[str, Any] | None,
        push: dict[str, Any],
        at: int,
    ) -> None:
        rng = self.rng
        if not self.send_or_not(campaign, device, user, push, at):
            return
        if device["device_type"] != "WEB" and rng.random() < 0.04:
            rejected = dict(push, status=rng.choice(["BadDeviceToken", "Uninstalled"]))
            self.add("SEND_REJECTED", at + rng.randint(200, 3000), device, user, rejected)
            return
        if rng.random() < 0.25:
            tapped = at + rng.randint(5_000, 900_000)
            if device["device_type"] == "WEB":
                self.add("WEB_CLICK", tapped, device, user, dict(push))
            else:
                body = {"triggering_push": dict(push), "session_id": _uuid(rng)}
                self.add("OPEN", tapped, device, user, body)

    def email_story(
        self,
        campaign: Campaign,
        device: dict[str, Any],
        user: dict[str, Any] | None,
        push: dict[str, Any],
        at: int,
    ) -> None:
        rng = self.rng
        if not self.send_or_not(campaign, device, user, push, at):
            return

        def custom(name: str, after_ms: int, **properties: Any) -> None:
            body = {
                "name": name,
                "triggering_push": dict(push),
                "session_id": _uuid(rng),
                "source": "API",
                "properties": {
                    "sender": "news@example.com",
                    "subject": campaign.name,
                    "email": device["delivery_address"],
                    **properties,
                },
            }
            # SparkPost reports whole seconds (".000Z" in every seed example).
            self.add("CUSTOM", (at + after_ms) // 1000 * 1000, device, None, body)

        roll = rng.random()
        if roll < 0.04:
            custom(
                "bounce", rng.randint(2_000, 60_000), bounce_event_type="bounce", bounce_class="10"
            )
            return
        if roll < 0.07:
            custom("delay", rng.randint(2_000, 60_000))
        delivered = rng.randint(1_000, 90_000)
        custom("delivery", delivered)
        if rng.random() < 0.35:
            opened = delivered + rng.randint(30_000, 3_000_000)
            prefetched = "true" if rng.random() < 0.3 else "false"
            custom("initial_open", opened, is_prefetched=prefetched, is_mobile="true")
            if rng.random() < 0.6:
                custom("open", opened + rng.randint(1_000, 20_000), is_prefetched=prefetched)
            if rng.random() < 0.25:
                custom(
                    "click",
                    opened + rng.randint(5_000, 200_000),
                    link_name="Offer",
                    link_url=f"https://example.com/c/{campaign.index}?utm=airship",
                    is_prefetched="false",
                )
        if rng.random() < 0.02:
            custom("unsubscribe", delivered + rng.randint(60_000, 900_000))
        if rng.random() < 0.01:
            complaint = {
                "event_type": "spam_complaint",
                "properties": {"commercial_opted_out": "x"},
            }
            self.add("SUBSCRIPTION", at + rng.randint(60_000, 900_000), device, None, complaint)
        if rng.random() < 0.01:
            custom("injection", delivered + rng.randint(60_000, 900_000))

    def sms_story(
        self,
        campaign: Campaign,
        device: dict[str, Any],
        user: dict[str, Any] | None,
        push: dict[str, Any],
        at: int,
    ) -> None:
        rng = self.rng
        if not self.send_or_not(campaign, device, user, push, at):
            return
        delivery_id = _uuid(rng).replace("-", "")[:16]

        def report(name: str, after_ms: int, **properties: Any) -> None:
            body = {
                "interaction_type": "delivery_report",
                "name": name,
                "properties": {
                    "sender": 15551234567,
                    "vendor": "CLX",
                    "vendorDeliveryId": delivery_id,
                    **properties,
                },
                "source": "API",
                "triggering_push": {k: v for k, v in push.items() if k != "variant_id"},
            }
            self.add("CUSTOM", at + after_ms, device, None, body)

        report("dispatched", rng.randint(200, 2_000))
        roll = rng.random()
        if roll < 0.06:
            report(
                rng.choice(["failed", "undeliverable"]),
                rng.randint(5_000, 90_000),
                error_code="E101",
            )
            return
        if roll < 0.08:
            report("rejected", rng.randint(2_000, 10_000), error_code="E102")
            return
        report("delivered", rng.randint(5_000, 90_000))
        if rng.random() < 0.1:
            body = {
                "push_id": push["push_id"],
                "group_id": push["group_id"],
                "properties": {"original_url": f"https://example.com/s/{campaign.index}"},
            }
            self.add("SHORT_LINK_CLICK", at + rng.randint(60_000, 1_800_000), device, None, body)
        if rng.random() < 0.02:
            opt_out = {
                "event_type": "mobile_opt_out",
                "identifiers": {"sender": "15551234567", "msisdn": device["delivery_address"]},
                "properties": {"inbound_message": "STOP", "keyword": "STOP"},
            }
            self.add("COMPLIANCE", at + rng.randint(60_000, 1_800_000), device, None, opt_out)

    def in_app_story(
        self,
        campaign: Campaign,
        device: dict[str, Any],
        user: dict[str, Any] | None,
        push: dict[str, Any],
        at: int,
    ) -> None:
        rng = self.rng
        if rng.random() < 0.03:
            self.add("IN_APP_MESSAGE_CONTROL", at, device, user, dict(push, type="CONTROL"))
            return
        session = _uuid(rng)
        body = dict(push, session_id=session, time_sent=iso(at - 3_600_000, rng))
        self.add("IN_APP_MESSAGE_DISPLAY", at, device, user, body)
        resolution = rng.choices(
            ["BUTTON_CLICK", "MESSAGE_CLICK", "USER_DISMISSED", "TIMED_OUT"], [3, 1, 4, 2]
        )[0]
        resolved = dict(body, type=resolution, duration=rng.randint(800, 20_000))
        if resolution == "BUTTON_CLICK":
            resolved.update(button_id="cta", button_description="Show me")
            self.add("IN_APP_BUTTON_TAP", at + 2_000, device, user, dict(body, button_id="cta"))
        self.add(
            "IN_APP_MESSAGE_RESOLUTION", at + rng.randint(2_000, 20_000), device, user, resolved
        )
        if rng.random() < 0.05:
            form = dict(body, type="RESULT", forms=[{"form_id": _uuid(rng), "type": "nps"}])
            self.add("IN_APP_FORM_RESULT", at + rng.randint(5_000, 30_000), device, user, form)

    def inbox_story(
        self,
        campaign: Campaign,
        device: dict[str, Any],
        user: dict[str, Any] | None,
        push: dict[str, Any],
        at: int,
    ) -> None:
        rng = self.rng
        body = {k: v for k, v in push.items() if k in ("push_id", "group_id")}
        if rng.random() < 0.03:
            self.add("RICH_CONTROL", at, device, user, body)
            return
        self.add("RICH_DELIVERY", at, device, user, body)
        if rng.random() < 0.4:
            read_at = at + rng.randint(60_000, 3_000_000)
            self.add("RICH_READ", read_at, device, user, body)
            if rng.random() < 0.25:
                self.add("RICH_DELETE", read_at + rng.randint(5_000, 60_000), device, user, body)

    def noise(self) -> None:
        """Events that are not per-message campaign events (OTHER), and unknown future types."""
        rng = self.rng
        device, user = self.device("push")
        at = self.base_ms - rng.randrange(WINDOW_MS)
        body: dict[str, Any] = {"session_id": _uuid(rng)}
        if rng.random() < 0.2:
            body["new_thing"] = {"level": rng.randint(1, 9)}
            self.add(rng.choice(UNKNOWN_TYPES), at, device, user, body)
            return
        type_ = rng.choice(NOISE_TYPES)
        if type_ == "CUSTOM":
            body = {"name": "purchased", "value": 239.85, "source": "SDK", "session_id": _uuid(rng)}
        elif type_ == "TAG_CHANGE":
            body = {"add": {"crm": ["active"]}, "current": {"crm": ["active"]}}
        elif type_ == "SCREEN_VIEWED":
            body["duration"] = rng.randint(500, 30_000)
            body["viewed_screen"] = "home"
        lag = rng.randint(3_600_000, 80_000_000) if type_ == "CLOSE" else None  # latent (seed)
        self.add(type_, at, device, user, body, lag_ms=lag)


# --- malformed lines: (reason, builder) ------------------------------------------------------


def _invalid_json(event: dict[str, Any]) -> tuple[bytes | None, bytes]:
    raw = orjson.dumps(event)
    return None, raw[: len(raw) // 2]  # a line cut off mid-write


def _missing_id(event: dict[str, Any]) -> tuple[bytes | None, bytes]:
    del event["id"]
    return None, orjson.dumps(event)


def _missing_type(event: dict[str, Any]) -> tuple[bytes | None, bytes]:
    del event["type"]
    return _keyed(event)


def _bad_timestamp(event: dict[str, Any]) -> tuple[bytes | None, bytes]:
    event["occurred"] = event["occurred"].rstrip("Z")  # no zone designator
    return _keyed(event)


def _keyed(line: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """``(key, value)`` as a connector publishes it: keyed by the vendor event id."""
    key = vendor_event_id(line)
    return (key.encode() if key is not None else None), orjson.dumps(line)


MALFORMED: tuple[tuple[str, Callable[[dict[str, Any]], tuple[bytes | None, bytes]]], ...] = (
    ("invalid_json", _invalid_json),
    ("missing_event_id", _missing_id),
    ("missing_event_type", _missing_type),
    ("invalid_timestamp", _bad_timestamp),
)


def generate(rng: random.Random, n: int, campaigns: list[Campaign]) -> SampleSet:
    """About ``n`` raw Airship lines over ``campaigns``, deterministic for ``rng``."""
    if not campaigns:
        raise ValueError("airship sample generator needs at least one campaign")
    builder = _Builder(rng, campaigns)
    n_duplicates = round(n * DUPLICATE_SHARE)
    n_malformed = round(n * MALFORMED_SHARE)
    n_offset_updates = round(n * OFFSET_UPDATE_SHARE)
    target = max(0, n - n_duplicates - n_malformed - n_offset_updates)
    n_noise = target // 12
    for _ in range(n_noise):
        builder.noise()
    while len(builder.events) < target:
        builder.story()
    events = builder.events[:target] if target else []
    events.sort(key=lambda e: e["_at"])  # the stream is ordered by processing, not occurrence

    # Stream entries, in order: an event, a repeat of one, a control line or a malformed line.
    stream: list[tuple[str, dict[str, Any]]] = [("event", e) for e in events]
    duplicated = rng.sample(range(len(stream)), min(n_duplicates, len(stream)))
    for original in sorted(duplicated, reverse=True):
        stream.insert(rng.randint(original + 1, len(stream)), ("duplicate", stream[original][1]))
    n_offset_updates = n_offset_updates if stream else 0
    for _ in range(n_offset_updates):
        stream.insert(rng.randint(1, len(stream)), ("offset_update", {}))
    rejects: Counter[str] = Counter()
    for i in range(n_malformed if events else 0):
        reason, _build = MALFORMED[i % len(MALFORMED)]
        stream.insert(rng.randint(0, len(stream)), (reason, rng.choice(events)))
        rejects[reason] += 1
    builders = dict(MALFORMED)

    records: list[tuple[bytes | None, bytes]] = []
    offset = FIRST_OFFSET
    last_at = builder.base_ms - WINDOW_MS
    for kind, event in stream:
        offset += rng.randint(1, 40)
        line: dict[str, Any]
        if kind == "offset_update":
            # "no body or device field ... occurred and processed times indicating when sent"
            sent = iso(last_at + rng.randint(0, 2_000), rng)
            line = {"type": "OFFSET_UPDATE", "offset": str(offset), "occurred": sent}
            line["processed"] = sent
            records.append(_keyed(line))
            continue
        line = {k: v for k, v in event.items() if k != "_at"}
        line["offset"] = str(offset)
        if kind in builders:
            line = orjson.loads(orjson.dumps(line))  # a deep copy, then broken
            line["id"] = _uuid(rng)  # not a repeat of a real event
            records.append(builders[kind](line))
            continue
        if kind == "duplicate":
            # Same id, type, occurred, device and body; different offset and processed (seed).
            line["processed"] = iso(event["_at"] + rng.randint(1_000, 600_000), rng)
        else:
            last_at = event["_at"]
        records.append(_keyed(line))

    return SampleSet(
        vendor=VENDOR,
        records=records,
        expected_events=len(events),
        expected_duplicates=len(duplicated),
        expected_rejects={reason: rejects[reason] for reason, _ in MALFORMED},
        expected_skips=n_offset_updates,
    )
