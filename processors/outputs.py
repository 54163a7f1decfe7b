"""How the worker writes its output records, and waits for Kafka to acknowledge a batch of them.

One small interface: ``send`` records, then ``seal()`` the batch and await what it returns, at
once or later while the next batch is being produced. Each asyncio task (each agent, each batch
finisher) has its own batch, so one task's ``seal()`` never waits for, or reports, another task's
records. The awaited result is the newest acknowledged offset of every partition the batch
wrote: table changelog offsets for Faust's restore bookkeeping, output offsets for the floors a
read-back starts from (:mod:`processors.probe`).

:class:`ConfluentOutputs` is a confluent-kafka producer owned by the pipeline. ``produce()`` is a
C call; delivery reports come back on a poll thread and complete one asyncio future per batch.
The benchmark's profile showed Faust's aiokafka send path (a future, a pure-Python record batch
and murmur2 per record) as the worker's largest cost. The partitioner is murmur2
(Java-compatible), keys are ``bytes``; the producer is idempotent, so what a crash leaves of a
partition's records is a prefix of what was sent, in order.

:class:`DeadLetters` builds the dead letters the raw and stats paths send through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.kafka import producer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.probe import RAW_POSITION_HEADER, raw_position
from processors.records import RawPosition, dead_letter_record

log = logging.getLogger("crmstream.worker")

Offsets = dict[tuple[str, int], int]
Headers = list[tuple[str, str | bytes | None]]


class Outputs(Protocol):
    async def start(self) -> None: ...

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None: ...

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (from the cluster's metadata)."""
        ...

    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """Send a table changelog record to an explicit partition (a None value is a
        tombstone: a restore deletes the key); its offset is reported by the ``seal()`` that
        covers it."""
        ...

    def seal(self) -> Awaitable[Offsets]:
        """End this task's batch: what it sends next starts a new one. The awaitable completes
        when every record of the sealed batch is acknowledged (raises if one was not), with the
        newest offset of every partition among them."""
        ...

    def alive(self) -> tuple[bool, str]: ...

    def reachable(self, timeout: float = 3.0) -> tuple[bool, str]: ...

    def close(self) -> int:
        """Flush and close: the records left unacknowledged (dropped)."""
        ...


async def _no_offsets() -> Offsets:
    return {}


def _partitions(metadata: Any, topic: str) -> int:
    meta = metadata.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise BrokerError(f"topic {topic} is missing: {getattr(meta, 'error', None)}")
    return len(meta.partitions)


CLOSE_TIMEOUT_S = 30.0
"""How long :meth:`ConfluentOutputs.close` waits for each producer's acknowledgements."""


class _Batch:
    """Acknowledgements of one batch. Counted under a lock: delivery reports arrive on the
    poll thread while the event loop is still producing."""

    __slots__ = ("done", "error", "expected", "future", "lock", "loop", "offsets", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.sent = 0
        self.done = 0
        self.expected: int | None = None
        self.error: str | None = None
        self.offsets: Offsets = {}
        self.future: asyncio.Future[None] = loop.create_future()

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        tp = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        with self.lock:
            self.done += 1
            if err is not None:
                if self.error is None:
                    self.error = f"{msg.topic()}: {err.str()}"
            elif offset > self.offsets.get(tp, -1):
                self.offsets[tp] = offset
            finished = self.expected is not None and self.done >= self.expected
        if finished:
            # RuntimeError: the event loop is closed (the outputs' last flush): nobody awaits it.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._resolve)

    def close(self) -> None:
        with self.lock:
            self.expected = self.sent
            finished = self.done >= self.expected
        if finished:
            self._resolve()

    async def wait(self) -> Offsets:
        await self.future
        return self.offsets

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(BrokerError(f"output not acknowledged: {self.error}"))
        else:
            self.future.set_result(None)


class ConfluentOutputs:
    def __init__(self, settings: Settings) -> None:
        # A short linger (CRM_OUTPUT_LINGER): a batch is awaited as a whole, so records of one
        # batch should travel together, but the batch's latency is bounded by it. Each request
        # costs the producer's librdkafka thread a fixed share, so a longer one costs less CPU.
        linger_ms = settings.output_linger_s * 1000
        self._fatal: str | None = None
        self._probe_topic = settings.topic("events")
        self._producer = Producer(
            producer_config(
                settings,
                **{
                    "linger.ms": linger_ms,
                    "message.max.bytes": settings.max_message_bytes,
                    "error_cb": self._on_error,
                },
            )
        )
        # Table changelog records get their own producer (CRM_CHANGELOG_LINGER,
        # CRM_CHANGELOG_MAX_BATCH_BYTES). librdkafka sends one partition per produce request, so
        # small batches or a short linger cost a request per changelog partition every few ms.
        self._changelog_producer = Producer(
            producer_config(
                settings,
                **{
                    "linger.ms": settings.changelog_linger_s * 1000,
                    "batch.size": settings.changelog_max_batch_bytes,
                },
            )
        )
        self._producers = (self._producer, self._changelog_producer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="outputs-poll", daemon=True)
        self._batches: dict[asyncio.Task[Any] | None, _Batch] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop sending
        self._started = False
        self._closed = False

    async def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()
            self._started = True

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error.str()

    def alive(self) -> tuple[bool, str]:
        """Liveness: the delivery-report thread runs and the producer is not in a fatal state
        (after which it never delivers again: the worker exits 70 on the next batch)."""
        if self._fatal is not None:
            return False, f"producer fatal error: {self._fatal}"
        if self._closed:
            return True, "closed: the worker is stopping"
        if self._started and not self._thread.is_alive():
            return False, "the delivery-report thread stopped"
        return True, "producing"

    def reachable(self, timeout: float = 3.0) -> tuple[bool, str]:
        """Readiness: the cluster answers a metadata request (for one of our topics: a request
        for every topic grows with the cluster, and this runs on each probe)."""
        if self._closed:
            return False, "the outputs are closed (the worker is stopping)"
        try:
            self._producer.list_topics(self._probe_topic, timeout=timeout)
        except KafkaException as exc:
            return False, f"Kafka unreachable: {exc}"
        except RuntimeError:  # closed meanwhile (a probe on the metrics thread during the stop)
            return False, "the outputs are closed (the worker is stopping)"
        return True, "Kafka reachable"

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.025)
            self._changelog_producer.poll(0.025)

    def _current(self) -> _Batch:
        """This task's batch. Called for every record sent: ``asyncio.current_task()`` without
        a loop asks ``get_running_loop()`` (with a ``getpid()``) each time, 0.29 us against
        0.12 with the loop given; the loop is known after the first record (and asked again if
        no task of it is running: another loop)."""
        loop = self._loop
        task = None if loop is None else asyncio.current_task(loop)
        if task is None or loop is None:
            loop = self._loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
        batch = self._batches.get(task)
        if batch is None:
            batch = self._batches[task] = _Batch(loop)
        return batch

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        batch = self._current()
        batch.sent += 1
        self._produce(
            self._producer,
            batch.delivered,
            topic,
            value,
            key,
            -1 if partition is None else partition,
            headers,
        )

    def partitions(self, topic: str) -> int:
        return _partitions(self._producer.list_topics(topic, timeout=30), topic)

    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        batch = self._current()
        batch.sent += 1
        self._produce(self._changelog_producer, batch.delivered, topic, value, key, partition)

    @staticmethod
    def _produce(
        producer: Producer,
        callback: Any,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int = -1,
        headers: Headers | None = None,
    ) -> None:
        while True:
            try:
                producer.produce(
                    topic, value, key, partition, on_delivery=callback, headers=headers
                )
                return
            except BufferError:
                # librdkafka's local queue is full: the poll thread is draining it.
                producer.poll(0.01)

    def seal(self) -> Awaitable[Offsets]:
        batch = self._batches.pop(asyncio.current_task(), None)
        if batch is None:
            return _no_offsets()
        batch.close()
        return batch.wait()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int:
        """Flush both producers (``timeout`` seconds at most each) and close them: their
        librdkafka threads end. What is still unacknowledged then is purged, and its number
        returned. The worker calls it once its agents have stopped (:meth:`Worker.run
        <processors.app.Worker.run>`): a batch that was not acknowledged is not committed, so a
        purged record is one that the next start processes again (and reads back if it landed).
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._closed:
            return 0
        self._closed = True
        left = 0
        for producer in self._producers:
            remaining = producer.flush(timeout)
            if remaining:
                left += remaining
                producer.purge()
                producer.poll(0)  # the purged records' delivery reports
            producer.close()
        return left


# --- dead letters -------------------------------------------------------------------------------

# What a Kafka record costs besides its key, value and headers (record and batch framing).
RECORD_OVERHEAD_BYTES = 512


def record_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    return len(value) + (len(key) if key else 0) + sum(len(k) + len(v or b"") for k, v in headers)


def position_headers(pos: RawPosition) -> Headers:
    """Every output carries its raw record's position: how a restart reads back what an earlier
    run wrote (:meth:`processors.probe.Probe.read_back`)."""
    return [(RAW_POSITION_HEADER, raw_position(pos.topic, pos.partition, pos.offset))]


class DeadLetters:
    """Builds and sends dead letters: one per record that cannot become an event (or a stats
    update), cut to the size limit if it must be, never twice for a record whose dead letter an
    earlier run wrote (``landed``)."""

    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        outputs: Outputs,
        landed: Callable[[RawPosition], bool],
    ) -> None:
        self.topic = settings.topic("dead-letter")
        self.serde = serde
        self.outputs = outputs
        self.landed = landed
        self.max_record_bytes = settings.max_message_bytes - RECORD_OVERHEAD_BYTES

    def send(
        self,
        raw: bytes,
        raw_key: bytes | None,
        vendor: str | None,
        reason: str,
        detail: str,
        pos: RawPosition,
        now_ms: int,
    ) -> None:
        """Send one dead letter (unless an earlier run did), cut to the size limit if it must
        be: the raw value's first bytes, and its size."""
        metrics.DEAD_LETTERS.labels(vendor or "", reason).inc()
        landed = self.landed(pos)
        # The raw position in the text too: it is what tells two dead letters of one record apart.
        log.info(
            "dead letter %s at %s%s: %s",
            reason,
            pos.kafka_position,
            " (already written by an earlier run)" if landed else "",
            detail,
            extra={"vendor": vendor, "source": pos.source or pos.kafka_position},
        )
        if landed:
            metrics.OUTPUTS_READ_BACK.labels(vendor or "", "dead_letter").inc()
            return
        headers = position_headers(pos)

        def record(raw_value: bytes, raw_size: int | None = None) -> bytes:
            fields = dead_letter_record(
                raw=raw_value,
                raw_size=raw_size,
                raw_key=raw_key,
                vendor=vendor,
                reason=reason,
                detail=detail,
                pos=pos,
                now_ms=now_ms,
            )
            return self.serde.encode("DeadLetter", fields, self.topic)

        value = record(raw)
        key = raw_key
        limit = self.max_record_bytes
        if record_size(key, value, headers) > limit:
            if key is not None and len(key) > limit // 4:
                key = None  # the raw key stays in the value (raw_key), the record goes unkeyed
            room = limit - record_size(key, value, headers) + len(raw)
            cut = raw[: max(0, room - 64)]  # the size field's bytes, and slack for varints
            value = record(cut, len(raw))
        self.outputs.send(self.topic, key, value, headers=headers)
