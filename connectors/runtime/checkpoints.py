"""Connector positions in the compacted ``connect-offsets`` topic (the format every connector
has written since its first release: a restarted connector resumes from any of them).

A position a connector will never need again (an object behind the object store's listing
horizon, a Kinesis shard past the stream's retention) is deleted with a tombstone
(:meth:`CheckpointStore.forget`), written only once the record that makes it obsolete (the
horizon) is acknowledged: compaction then drops the key, so the topic holds what the connectors
can still resume from, not every object ever seen."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from connectors.runtime.kafka import bounded_flush
from crmstream.errors import BrokerError
from crmstream.kafka import consumer_config, producer_config
from crmstream.settings import Settings


class CheckpointStore:
    """Connector positions in the compacted ``connect-offsets`` topic.

    Key ``<connector>/<position key>`` (an object key, a shard id, a stream name); value a JSON
    object the connector defines. The latest record per key wins, as compaction will keep it.
    """

    def __init__(self, settings: Settings, connector: str) -> None:
        self.settings = settings
        self.connector = connector
        self.topic = settings.topic("connect-offsets")
        self._producer = Producer(producer_config(settings, **{"linger.ms": 0}))

    def _key(self, position_key: str) -> bytes:
        return f"{self.connector}/{position_key}".encode()

    def load(self, idle_timeout: float = 1.0, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        """Every checkpoint of this connector: ``{position key: value}``.

        Reads the whole topic from the beginning with manually assigned partitions. It reads
        until the high watermark and then until ``idle_timeout`` passes with no record, since
        some brokers (Tansu) under-report the high watermark.
        """
        prefix = f"{self.connector}/".encode()
        consumer = Consumer(
            consumer_config(self.settings, group_id=f"crm-checkpoints-{self.connector}")
        )
        out: dict[str, dict[str, Any]] = {}
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            topic_meta = meta.topics.get(self.topic)
            if topic_meta is None or topic_meta.error is not None:
                raise BrokerError(
                    f"checkpoint topic {self.topic} is missing: run `crm-stream topics create`"
                )
            parts = [TopicPartition(self.topic, p, 0) for p in topic_meta.partitions]
            consumer.assign(parts)
            highs = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
            positions = {p.partition: 0 for p in parts}
            deadline = time.monotonic() + timeout
            last_record = time.monotonic()
            while time.monotonic() < deadline:
                msg = consumer.poll(0.1)
                if msg is None:
                    caught_up = all(positions[p] >= highs[p] for p in highs)
                    if caught_up and time.monotonic() - last_record >= idle_timeout:
                        break
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise BrokerError(f"reading {self.topic}: {error.str()}")
                last_record = time.monotonic()
                positions[msg.partition() or 0] = (msg.offset() or 0) + 1
                key = msg.key() or b""
                if not key.startswith(prefix):
                    continue
                name = key[len(prefix) :].decode()
                value = msg.value()
                if value is None:
                    out.pop(name, None)
                else:
                    out[name] = orjson.loads(value)
        finally:
            consumer.close()
        return out

    def commit(self, position_key: str, value: dict[str, Any], timeout: float = 30.0) -> None:
        """Write one checkpoint and wait for Kafka to acknowledge it."""
        self.commit_many({position_key: value}, timeout=timeout)

    def forget(
        self,
        position_keys: Iterable[str],
        *,
        after: dict[str, dict[str, Any]] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Write ``after`` (what makes the positions obsolete) and, only once Kafka acknowledged
        it, a tombstone for each of ``position_keys``. Raises :class:`BrokerError` when either is
        not acknowledged (the tombstones are then not all written: a later call writes them)."""
        if after:
            self.commit_many(after, timeout=timeout)
        keys = list(position_keys)
        if keys:
            self._write([(key, None) for key in keys], timeout)

    def commit_many(self, values: dict[str, dict[str, Any]], timeout: float = 30.0) -> None:
        self._write([(key, orjson.dumps(value)) for key, value in values.items()], timeout)

    def _write(self, records: list[tuple[str, bytes | None]], timeout: float) -> None:
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for position_key, value in records:
            self._producer.produce(
                self.topic, key=self._key(position_key), value=value, on_delivery=delivered
            )
        if bounded_flush(self._producer, timeout):
            raise BrokerError(f"checkpoint to {self.topic} not acknowledged in {timeout}s")
        if failures:
            raise BrokerError(f"checkpoint to {self.topic} failed: {failures[0]}")
