"""What every source connector shares: publishing raw records and checkpointing source positions.

The contract (DEVELOPERS.md, "Nothing is lost"): a source position is committed only after every
record it covers has been acknowledged by Kafka. :class:`RawPublisher` tracks acknowledgements;
:class:`CheckpointStore` writes positions to the compacted ``connect-offsets`` topic and is only
called by a connector once :meth:`RawPublisher.flush` has returned without error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from crmstream.errors import BrokerError
from crmstream.kafka import consumer_config, producer_config
from crmstream.settings import Settings, describe_fields, values_from_env
from crmstream.topics import H_APP_ID, H_FORMAT, H_INGESTED_AT, H_SOURCE, H_VENDOR, raw_topic

_S = TypeVar("_S")


KeyFunction = Callable[[Mapping[str, Any]], str | None]
"""A vendor's event id of one parsed record (``processors.normalize.EVENT_IDS``): the raw-topic
key. The CLI hands each connector its vendor's function, so connectors need not import the
normalizers and the id has one definition (TAXONOMY §1, §6.x)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RawPublisher:
    """Publishes one vendor's raw records, unchanged, to its raw topic.

    ``publish`` is asynchronous; ``flush`` blocks until every record published so far is
    acknowledged and raises :class:`BrokerError` if any was not. Callers checkpoint after
    ``flush`` returns, never before.
    """

    def __init__(
        self,
        settings: Settings,
        vendor: str,
        *,
        app_id: str | None = None,
        producer: Producer | None = None,
    ) -> None:
        self.vendor = vendor
        self.topic = settings.topic(raw_topic(vendor))
        self.app_id = app_id
        self._producer = producer or Producer(producer_config(settings))
        self._failures: list[str] = []
        self.acked = 0

    def publish(
        self,
        key: str | bytes | None,
        value: bytes,
        *,
        source: str,
        fmt: str,
        ingested_at: int | None = None,
        on_ack: Callable[[], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """Queue one record. With ``on_error`` the caller owns a failed delivery (an async
        receiver answers its request with it) and it is not kept for :meth:`flush` to raise."""
        headers: list[tuple[str, str | bytes | None]] = [
            (H_VENDOR, self.vendor.encode()),
            (H_SOURCE, source.encode()),
            (H_FORMAT, fmt.encode()),
            (H_INGESTED_AT, str(ingested_at or now_ms()).encode()),
        ]
        if self.app_id:
            headers.append((H_APP_ID, self.app_id.encode()))

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                if on_error is not None:
                    on_error(f"{source}: {err.str()}")
                else:
                    self._failures.append(f"{source}: {err.str()}")
            else:
                self.acked += 1
                if on_ack is not None:
                    on_ack()

        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                # Local queue full: serve delivery callbacks until there is room.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; a receiver that never calls :meth:`flush` polls from a
        background thread so acknowledgements reach it without blocking its event loop."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every outstanding acknowledgement; raise if any record was not acknowledged."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise BrokerError(f"{remaining} records to {self.topic} not acknowledged in {timeout}s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise BrokerError(
                f"{len(failures)} records to {self.topic} failed, first: {failures[0]}"
            )


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

    def commit_many(self, values: dict[str, dict[str, Any]], timeout: float = 30.0) -> None:
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for position_key, value in values.items():
            self._producer.produce(
                self.topic,
                key=self._key(position_key),
                value=orjson.dumps(value),
                on_delivery=delivered,
            )
        if self._producer.flush(timeout):
            raise BrokerError(f"checkpoint to {self.topic} not acknowledged in {timeout}s")
        if failures:
            raise BrokerError(f"checkpoint to {self.topic} failed: {failures[0]}")


def settings_from_env(
    cls: type[_S], environ: Mapping[str, str] | None = None, **overrides: Any
) -> _S:
    """Build a connector's frozen settings class (fields declared with
    :func:`crmstream.settings.setting`) from ``CRM_*`` variables.

    ``overrides`` are command-line values; ``None`` means "not given", so the variable or the
    default applies. Parse errors raise :class:`ConfigError` naming the variable; the class's own
    ``__post_init__`` checks the combination.
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    given = {
        name: value for name, value in overrides.items() if name in names and value is not None
    }
    values = values_from_env(cls, environ, skip=given)
    values.update(given)
    return cls(**values)


def describe_settings(cls: type[Any], instance: Any) -> list[tuple[str, str, str]]:
    """(variable, current value, description) rows of a connector's settings; secrets masked."""
    return describe_fields(instance)
