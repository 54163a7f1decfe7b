"""Inputs and expectations of the attribution tests on the real broker.

Touches are written as canonical events to ``events`` (what the raw path writes there; the
attribution reads every vendor's events from it), conversions to ``conversions``. What a correct
pipeline makes of them is computed here, per user, in the order the user's items were published
(touches first, then conversions), with the pure rule (``processors.attribution.apply``, itself
checked against a brute-force reference in the unit tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Producer

from crmstream.kafka import producer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.attribution import (
    Attribution,
    Conversion,
    Item,
    Outcome,
    Tally,
    Touch,
    UserState,
    Windows,
    apply,
    rows,
)
from processors.normalize.model import Channel, EventType, Vendor, make
from processors.records import RawPosition, canonical_record


def canonical(serde: AvroSerde, topic: str, t: Touch | Conversion, user: str) -> bytes:
    """A canonical event (Avro, as the raw path writes it) for a touch or a vendor conversion."""
    vendor, vid = (t.event_id if isinstance(t, Touch) else t.conversion_id).split(":", 1)
    if isinstance(t, Touch):
        event = make(
            Vendor(vendor),
            vid,
            vendor_event_type=t.event_type.title(),
            event_type=EventType(t.event_type),
            channel=Channel.EMAIL,
            occurred_at=t.at,
            user_id=user,
            campaign_id=t.campaign_id,
            campaign_name=t.campaign_name,
            app_id=t.app_id or None,
        )
    else:
        event = make(
            Vendor(vendor),
            vid,
            vendor_event_type=t.name,
            event_type=EventType.CONVERSION,
            channel=Channel.NONE,
            occurred_at=t.at,
            user_id=user,
        )
    pos = RawPosition(f"raw.{vendor.lower()}", 0, 0, t.at, {})
    return serde.encode("CanonicalEvent", canonical_record(event, pos, t.at), topic)


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

    def rows(self) -> list[dict[str, Any]]:
        tallies: list[tuple[str, str, Tally]] = []
        for a in self.attributions().values():
            tally = Tally()
            tally.add(a)
            tallies.append((a.touch.campaign, a.conversion.name, tally))
        return rows(tallies)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
