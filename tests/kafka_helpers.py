"""Test-side Kafka reading: manual partition assignment, counting by consuming (never by
watermark, which Tansu can under-report)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message, TopicPartition

from crmstream.kafka import consumer_config
from crmstream.settings import Settings


def read_topic(
    settings: Settings,
    topic: str,
    *,
    until: Callable[[list[Message]], bool] | None = None,
    timeout: float = 60.0,
    idle: float = 2.0,
) -> list[Message]:
    """Every record of ``topic`` from the beginning.

    Stops when ``until(records)`` is true and then ``idle`` seconds pass with no new record (so
    that extra, unexpected records are seen too), or when ``timeout`` passes.

    A topic that does not exist yet (an output topic the worker has not created so far) is
    waited for: assigning the partitions of a missing topic assigns none, and the reader then
    saw nothing while the worker wrote every record (taken for lost records).
    """
    consumer = Consumer(consumer_config(settings, group_id=f"test-reader-{uuid.uuid4().hex}"))
    try:
        deadline = time.monotonic() + timeout
        parts = _partitions(consumer, topic, deadline)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        records: list[Message] = []
        satisfied_at: float | None = None
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                records.append(msg)
                last = time.monotonic()
                satisfied_at = None
                continue
            if until is None or until(records):
                satisfied_at = satisfied_at or time.monotonic()
                if time.monotonic() - max(last, satisfied_at) >= idle:
                    break
        return records
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str, deadline: float) -> list[int]:
    """The partitions of ``topic`` once it exists (until ``deadline``)."""
    while True:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return sorted(meta.partitions)
        if time.monotonic() >= deadline:
            raise AssertionError(f"topic {topic} does not exist: {meta.error if meta else None}")
        time.sleep(0.2)
