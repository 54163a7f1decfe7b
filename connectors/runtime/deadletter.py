"""Dead letters written by a connector: a piece of its source it cannot read (a
:class:`~connectors.runtime.errors.SkippableError`), as one ``DeadLetter`` record.

There is no raw record to point at, so ``raw`` is empty (the piece can be far too big to copy),
``raw_key`` names the piece (an object URL), the source partition and offset are -1, and
``source_position`` is where reading stopped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crmstream.errors import BrokerError
from crmstream.settings import Settings


@dataclass(frozen=True)
class Skipped:
    """One dead letter: ``kind`` (the metric label), ``reason`` (bounded, e.g.
    ``unreadable_object:truncated``), ``detail``, where (``source_position``), which piece
    (``raw_key``) and extra ``headers``."""

    kind: str
    reason: str
    detail: str
    source_position: str
    raw_key: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class DeadLetters:
    """Writes :class:`Skipped` pieces to ``dead-letter`` and waits for Kafka's acknowledgement
    (a dead letter is written before the checkpoint that moves past its piece)."""

    def __init__(self, settings: Settings, vendor: str) -> None:
        self.settings = settings
        self.vendor = vendor
        self.topic = settings.topic("dead-letter")
        self._client: tuple[Any, Any] | None = None

    def write(self, item: Skipped, *, source_topic: str, timeout: float = 30.0) -> None:
        from confluent_kafka import Producer

        from connectors.runtime.kafka import bounded_flush
        from crmstream.kafka import producer_config
        from crmstream.serde import AvroSerde

        if self._client is None:
            self._client = (
                AvroSerde(self.settings),
                Producer(producer_config(self.settings, **{"linger.ms": 0})),
            )
        serde, producer = self._client
        record = {
            "raw": b"",
            "raw_key": item.raw_key,
            "vendor": self.vendor,
            "reason": item.reason,
            "detail": item.detail,
            "source_topic": source_topic,
            "source_partition": -1,
            "source_offset": -1,
            "source_position": item.source_position,
            "headers": dict(item.headers),
            "dead_lettered_at": int(time.time() * 1000),
        }
        failures: list[str] = []
        producer.produce(
            self.topic,
            key=item.raw_key,
            value=serde.encode("DeadLetter", record, self.topic),
            on_delivery=lambda err, _msg: failures.append(err.str()) if err else None,
        )
        if bounded_flush(producer, timeout) or failures:
            raise BrokerError(f"dead letter to {self.topic} not acknowledged: {failures[:1]}")
