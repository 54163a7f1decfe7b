"""The demo's conversion stream: purchases by the sample users, in which one vendor's campaign
clearly wins the last-touch attribution (``GET /api/attribution``, the page's attribution table).

The touches are read from the samples themselves (each vendor's normalizer, as the worker reads
them): a user whose last message came from the winning campaign (the one that was the last
message of the most users) converts far more often than the others, so the table ranks it first
by far, its vendor ahead of the other four. The holdout's
``CONTROL`` events of the samples (Airship) are touches too: their users convert at the base
rate, as a control group does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import orjson
from confluent_kafka import Producer

from crmdemo.samples import SampleSet
from crmstream.errors import BrokerError
from crmstream.kafka import producer_config
from crmstream.settings import Settings
from processors.attribution import CONTROL, Touch, from_canonical
from processors.normalize import normalize
from processors.normalize.model import CanonicalEvent, NormalizeContext

WIN_RATE = 0.7
BASE_RATE = 0.05
NAME = "Order Completed"


def last_touches(samples: Mapping[str, SampleSet]) -> dict[str, Touch]:
    """Each sample user's latest touch (any vendor)."""
    last: dict[str, Touch] = {}
    for vendor, sample in samples.items():
        ctx = NormalizeContext(app_id=f"demo-{vendor}")
        for _key, value in sample.records:
            event = normalize(vendor, value, ctx)
            if not isinstance(event, CanonicalEvent):
                continue
            found = from_canonical(event.to_record(), {})
            if found is None:
                continue
            user, touch = found
            if not isinstance(touch, Touch):
                continue
            if user not in last or (touch.at, touch.event_id) > (
                last[user].at,
                last[user].event_id,
            ):
                last[user] = touch
    return last


def winning_campaign(last: Mapping[str, Touch]) -> str | None:
    """The campaign key that wins: the one that was the last message of the most users."""
    counts: dict[str, int] = {}
    for touch in last.values():
        if touch.event_type != CONTROL:
            counts[touch.campaign] = counts.get(touch.campaign, 0) + 1
    return max(sorted(counts), key=lambda c: counts[c]) if counts else None


def conversions(samples: Mapping[str, SampleSet], seed: int) -> list[tuple[bytes, bytes]]:
    """The conversion records (key: the user), JSON as a customer would send them."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    last = last_touches(samples)
    winner = winning_campaign(last)
    for user, touch in sorted(last.items()):
        wins = touch.campaign == winner and touch.event_type != CONTROL
        if rng.random() >= (WIN_RATE if wins else BASE_RATE):
            continue
        body = {
            "user_id": user,
            "name": NAME,
            "occurred_at": touch.at + rng.randint(10 * 60_000, 20 * 3_600_000),
            "value": round(rng.uniform(10, 120), 2),
            "currency": "USD",
            "conversion_id": f"demo-order-{user}",
        }
        out.append((user.encode(), orjson.dumps(body)))
    return out


def publish_conversions(settings: Settings, records: list[tuple[bytes, bytes]]) -> int:
    """Publish to the ``conversions`` topic; returns how many (Kafka acknowledged them)."""
    producer = Producer(producer_config(settings))
    topic = settings.topic("conversions")
    for key, value in records:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    if producer.flush(60):
        raise BrokerError("the demo's conversions were not acknowledged in 60 s")
    return len(records)
