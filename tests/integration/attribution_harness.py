"""Inputs and expectations of the attribution tests on the real broker.

Touches are raw vendor records (:func:`raw_touch`: the raw path takes them from its batch),
vendor conversions canonical events or raw records, customer conversions ``conversions``
records. What a correct
pipeline makes of them is computed here, per user, in the order the user's items were published
(touches first, then conversions), with the pure rule (``processors.attribution.apply``, itself
checked against a brute-force reference in the unit tests).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Producer

from crmstream.kafka import producer_config
from crmstream.settings import Settings
from processors.attribution import (
    UNATTRIBUTED,
    Attribution,
    Conversion,
    Item,
    Outcome,
    Tally,
    Touch,
    UserState,
    Windows,
    apply,
    from_event,
    rows,
    unattributed_rows,
)
from processors.normalize import normalize
from processors.normalize.model import (
    CanonicalEvent,
    NormalizeContext,
)


def iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def segment_track(message_id: str, user: str, name: str, at: int, **props: Any) -> bytes:
    """A Segment webhook track event."""
    return orjson.dumps(
        {
            "type": "track",
            "event": name,
            "messageId": message_id,
            "timestamp": iso(at),
            "userId": user,
            "properties": props,
        }
    )


RAW_TOUCH_TYPES = {"SEGMENT": ("DELIVERY",), "AIRSHIP": ("SEND", "CONTROL")}
"""The vendors and touch types :func:`raw_touch` writes."""


def raw_touch(
    vendor: str,
    n: int,
    user: str,
    at: int,
    campaign: str,
    kind: str,
    variant: str | None = None,
) -> tuple[str, bytes, bytes, Touch]:
    """A touch as the vendor sends it: (raw topic, key, raw record, the touch the raw path takes
    from it). The touch is what the vendor's normalizer makes of the record (the raw path's own
    reading, :func:`processors.attribution.from_event`), so the expectation is the pipeline's."""
    if vendor == "SEGMENT":
        assert kind == "DELIVERY", kind
        props: dict[str, Any] = {"campaign_id": campaign, "campaign_name": campaign.title()}
        if variant is not None:
            props["variant_id"] = variant
        raw = segment_track(f"t{n}", user, "Email Delivered", at, **props)
    else:
        assert vendor == "AIRSHIP" and kind in ("SEND", "CONTROL"), (vendor, kind)
        body: dict[str, Any] = {"push_id": f"push-{campaign}", "group_id": campaign}
        if variant is not None:
            body["variant_id"] = variant
        raw = orjson.dumps(
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"touch-{n}")),
                "offset": str(n),
                "occurred": iso(at),
                "processed": iso(at),
                "type": kind,
                "device": {
                    "channel": str(uuid.uuid5(uuid.NAMESPACE_OID, f"channel-{user}")),
                    "device_type": "ANDROID",
                    "named_user_id": user,
                },
                "body": body,
            }
        )
    event = normalize(vendor.lower(), raw, NormalizeContext())
    assert isinstance(event, CanonicalEvent), event
    found = from_event(event, {})
    assert found is not None and found[0] == user and isinstance(found[1], Touch), found
    return f"raw.{vendor.lower()}", event.vendor_event_id.encode(), raw, found[1]


def raw_leanplum_conversion(
    event_id: str, user: str, at: int, campaign: str
) -> tuple[str, bytes, bytes, Conversion]:
    """A Leanplum campaign ``Convert`` event as its feed writes it: (raw topic, key, raw record,
    the conversion the raw path takes from it)."""
    stamp = datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    raw = orjson.dumps(
        {
            "event_id": event_id,
            "name": "(Leanplum) Campaign Convert",
            "properties": {
                "user_id": user,
                "time": stamp,
                "name": campaign,
                "campaign_id": campaign,
                "event_type": "Convert",
            },
        }
    )
    event = normalize("leanplum", raw, NormalizeContext())
    assert isinstance(event, CanonicalEvent), event
    found = from_event(event, {})
    assert found is not None and isinstance(found[1], Conversion), found
    return "raw.leanplum", event_id.encode(), raw, found[1]


def conversion_json(c: Conversion, with_id: bool) -> bytes:
    body: dict[str, Any] = {"user_id": c.user_id, "name": c.name, "occurred_at": c.at}
    if c.value is not None:
        body["value"] = c.value
        body["currency"] = c.currency
    if with_id:
        body["conversion_id"] = c.conversion_id
    return orjson.dumps(body)


class Publisher:
    """Publishes and waits for every acknowledgement; the offsets are returned."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(producer_config(settings))

    def publish(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes]]
    ) -> list[tuple[int, int]]:
        landed: list[tuple[int, int]] = []
        errors: list[str] = []

        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err.str())
            else:
                landed.append((msg.partition(), msg.offset()))

        for key, value in records:
            while True:
                try:
                    self.producer.produce(
                        self.settings.topic(topic), value=value, key=key, on_delivery=done
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
        assert not self.producer.flush(60), "records not acknowledged"
        assert not errors, errors[:3]
        return landed


@dataclass
class Expected:
    """Per user, the items in publish order; what the rule makes of them."""

    windows: Windows
    items: dict[str, list[Item]] = field(default_factory=dict)

    def add(self, user: str, item: Item) -> None:
        self.items.setdefault(user, []).append(item)

    def attributions(self) -> dict[str, Attribution]:
        out: dict[str, Attribution] = {}
        for items in self.items.values():
            for a in apply(UserState(), items, self.windows, Outcome()):
                out[a.attribution_id] = a
        return out

    def tallies(self) -> list[tuple[str, str, Tally]]:
        out: list[tuple[str, str, Tally]] = []
        for items in self.items.values():
            outcome = Outcome()
            for a in apply(UserState(), items, self.windows, outcome):
                tally = Tally()
                tally.add(a)
                out.append((a.touch.campaign, a.conversion.name, tally))
            for c, why in outcome.misses:
                tally = Tally()
                tally.miss(why)
                out.append((UNATTRIBUTED, c.name, tally))
        return out

    def rows(self) -> list[dict[str, Any]]:
        return rows(self.tallies())

    def unattributed(self) -> list[dict[str, Any]]:
        return unattributed_rows(self.tallies())


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def settled_totals(get: Callable[[], Any], expected: Expected, timeout: float = 120) -> Any:
    """``GET /api/attribution``'s answer (``get``) once its totals equal ``expected``'s, read
    again 3 s later so that a count still growing shows; or the last answer after ``timeout``.
    Unattributed conversions make no ``attributions`` record to wait for, and after a last
    kill -9 the worker replays the batch it was killed in while the API already answers."""
    rows_, unattributed = expected.rows(), expected.unattributed()
    deadline = time.monotonic() + timeout
    while True:
        body = get()
        if body["campaigns"] == rows_ and body["unattributed"] == unattributed:
            time.sleep(3)
            return get()
        if time.monotonic() > deadline:
            return body
        time.sleep(1)
