"""Publishing raw records to Kafka: the producer every connector publishes through, the
raw-topic key function, and the topics a connector creates at start.

The contract (README, "Crashes: what is guaranteed"): a source position is committed only after
every record it covers has been acknowledged by Kafka. :class:`RawPublisher` tracks
acknowledgements; the runner (:mod:`connectors.runtime.runner`) writes positions to
``connect-offsets`` (:mod:`connectors.runtime.checkpoints`) only once
:meth:`RawPublisher.flush` has returned without error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.runtime.stop import PROCESS_STOP, StopRequested
from crmstream.errors import BrokerError, ConfigError
from crmstream.kafka import producer_config, reach
from crmstream.settings import Settings
from crmstream.topics import (
    H_APP_ID,
    H_FORMAT,
    H_INGESTED_AT,
    H_SOURCE,
    H_VENDOR,
    create_topics,
    raw_topic,
    topic_specs,
)

log = logging.getLogger(__name__)

DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
DEFAULT_MAX_QUEUED = 100_000  # librdkafka's queue.buffering.max.messages default
HEADER_ALLOWANCE = 512  # room for the raw-topic headers and the record's framing

# Delivery errors after which an idempotent producer publishes nothing more: its producer id or
# epoch is no longer the broker's (seen on Tansu after a broker paused for ~10 s: every later
# record fails with "a newer producer ... fences the current one"; after a broker replacement:
# UNKNOWN_PRODUCER_ID). librdkafka does not always raise them as fatal; a new producer fixes it.
BROKEN_PRODUCER_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    }
)


KeyFunction = Callable[[Mapping[str, Any]], str | None]
"""A vendor's event id of one parsed record (``processors.normalize.EVENT_IDS``): the raw-topic
key. The CLI hands each connector its vendor's function, so connectors need not import the
normalizers and the id has one definition (TAXONOMY §1, §6.x)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def bounded_flush(producer: Producer, timeout: float, step: float = 0.2) -> int:
    """``producer.flush(timeout)`` in short steps, ending at most ``FINAL_FLUSH_S`` after a
    stop was asked (:mod:`connectors.runtime.stop`). Returns the records still unacknowledged."""
    deadline = time.monotonic() + timeout
    while True:
        left = PROCESS_STOP.bound(deadline - time.monotonic())
        remaining = int(producer.flush(max(0.0, min(step, left))))
        if not remaining or left <= step:
            return remaining


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
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.vendor = vendor
        self.topic = settings.topic(raw_topic(vendor))
        self.app_id = app_id
        self.fatal_error: str | None = None
        """librdkafka's fatal error (an idempotent producer fenced or its id lost): the producer
        can publish nothing more. A long-lived connector rebuilds its publisher; others stop."""
        conf = producer_config(settings, **(config or {}))
        self.max_record_bytes = (
            int(conf.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)) - HEADER_ALLOWANCE
        )
        # librdkafka's local queue: publish() blocks (polling) when it is full; an event loop
        # asks has_room() first and waits without blocking.
        self.max_queued = int(conf.get("queue.buffering.max.messages", DEFAULT_MAX_QUEUED))
        self._conf: dict[str, Any] | None = None
        if producer is None:
            conf["error_cb"] = self._on_client_error
            self._conf = conf
            producer = Producer(conf)
        self._producer = producer
        self._failures: list[str] = []
        self.acked = 0

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in BROKEN_PRODUCER_CODES:
            self.fatal_error = err.str()
            log.error("Kafka producer for %s is in a fatal state: %s", self.topic, err.str())
        else:
            log.debug("Kafka client error for %s: %s", self.topic, err.str())

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
                if err.fatal() or err.code() in BROKEN_PRODUCER_CODES:
                    self.fatal_error = self.fatal_error or err.str()
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

    def has_room(self, records: int = 1) -> bool:
        """Whether ``records`` more fit in librdkafka's local queue (by count; records over
        the byte limit still make :meth:`publish` wait). An asyncio caller awaits while this
        is false instead of letting ``publish`` block its event loop."""
        return len(self._producer) + records <= self.max_queued

    def reachable(self, timeout: float = 5.0) -> bool:
        """Whether the cluster answers a metadata request for the raw topic within ``timeout``
        (a paused or unreachable broker does not)."""
        try:
            self._producer.list_topics(self.topic, timeout=timeout)
        except KafkaException:
            return False
        return True

    def renew_if_broken(self) -> bool:
        """After a fatal error, replace the producer with a new one (a new producer id): the
        records the old one held are given up (the caller re-reads them from its checkpoint).
        True if it was replaced. A producer handed in by the caller is never replaced."""
        if self.fatal_error is None or self._conf is None:
            return False
        reason = self.fatal_error
        self.abandon()
        self._producer = Producer(self._conf)
        self._failures = []
        self.fatal_error = None
        log.warning("Kafka producer for %s replaced after: %s", self.topic, reason)
        return True

    def abandon(self, timeout: float = 1.0) -> None:
        """Give up every record not yet acknowledged (each gets its error callback) and release
        the producer: used when a fatal error has made it useless."""
        try:
            self._producer.purge()
        except (KafkaException, RuntimeError) as exc:
            log.debug("purge after fatal error: %s", exc)
        try:
            self._producer.flush(timeout)
        except (KafkaException, RuntimeError) as exc:
            log.debug("flush after fatal error: %s", exc)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; a receiver that never calls :meth:`flush` polls from a
        background thread so acknowledgements reach it without blocking its event loop."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every outstanding acknowledgement; raise if any record was not acknowledged.

        A failed flush while the cluster answers metadata means this producer, not Kafka, is
        the problem (e.g. its producer id is unknown to a replaced broker, and librdkafka keeps
        retrying until the records time out): it is then marked broken, for
        :meth:`renew_if_broken`."""
        remaining = bounded_flush(self._producer, timeout)
        if remaining:
            self.suspect(f"{remaining} records not acknowledged in {timeout}s")
            raise BrokerError(f"{remaining} records to {self.topic} not acknowledged in {timeout}s")
        if self._failures:
            failures, self._failures = self._failures, []
            self.suspect(f"{len(failures)} records failed, first: {failures[0]}")
            raise BrokerError(
                f"{len(failures)} records to {self.topic} failed, first: {failures[0]}"
            )

    def suspect(self, problem: str) -> bool:
        """Records were not acknowledged: if Kafka answers a metadata request all the same, mark
        the producer broken (``fatal_error``). True if it was marked."""
        if PROCESS_STOP.is_set():  # stopping: no time for a metadata round trip
            return False
        if self.fatal_error is not None or not self.reachable(3.0):
            return False
        self.fatal_error = f"{problem} while Kafka answers metadata requests"
        log.warning("Kafka producer for %s looks broken: %s", self.topic, self.fatal_error)
        return True


def ensure_topics(
    settings: Settings, vendor: str, *, timeout: float | None = None
) -> dict[str, str]:
    """Create or verify, at start, the topics a connector writes: its raw topic (with the
    configured partitions), ``connect-offsets`` and ``dead-letter``.

    Without this a connector started before ``crm-stream topics create`` has its raw topic
    auto-created by the broker with the broker's default partition count, and the worker's
    layout silently differs from ``CRM_PARTITIONS``. A raw topic that exists with another
    partition count is refused with :class:`ConfigError` naming the setting. Listing every topic
    (not one by name) never triggers the broker's auto-creation itself.
    """
    wanted = {raw_topic(vendor), "connect-offsets", "dead-letter"}
    specs = [s for s in topic_specs(settings) if s.name in wanted]

    def stop_asked() -> None:
        if PROCESS_STOP.is_set():
            raise StopRequested("stopped while waiting for Kafka at start")

    # One-second attempts, so a stop asked meanwhile is seen within a second (issue 22 item 7);
    # a TLS or SASL mistake is a ConfigError at once; no answer for CRM_KAFKA_WAIT, exit 69.
    _, metadata = reach(settings, timeout, interrupt=stop_asked)
    existing = metadata.topics
    raw = settings.topic(raw_topic(vendor))
    if raw in existing and len(existing[raw].partitions) != settings.partitions:
        raise ConfigError(
            "CRM_PARTITIONS",
            f"topic {raw} exists with {len(existing[raw].partitions)} partitions but "
            f"CRM_PARTITIONS is {settings.partitions}: set CRM_PARTITIONS to the topic's count, "
            "or recreate the topic (crm-stream topics create) before starting connectors",
        )
    missing = [s for s in specs if settings.topic(s.name) not in existing]
    result = {settings.topic(s.name): "exists" for s in specs if s not in missing}
    if missing:
        result.update(
            create_topics(settings, specs=missing, timeout=30.0 if timeout is None else timeout)
        )
        log.info("created topics %s", ", ".join(settings.topic(s.name) for s in missing))
    return result
