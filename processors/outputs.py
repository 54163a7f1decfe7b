"""How the worker writes its output records, and waits for Kafka to acknowledge a batch of them.

Two implementations of one small interface (``send`` a record, then ``await acked()`` once per
batch):

* :class:`ConfluentOutputs` (the default): a confluent-kafka producer owned by the pipeline.
  ``produce()`` is a C call; delivery reports come back on a poll thread and complete one asyncio
  future per batch. The benchmark's profile showed Faust's aiokafka send path (a future, a
  pure-Python record batch and murmur2 per record) as the worker's largest cost.
* :class:`FaustOutputs`: Faust's own producer, used with ``CRM_EXACTLY_ONCE=true`` so that the
  outputs join Faust's per-partition transactions.

Either way the partitioner is murmur2 (Java-compatible), keys are ``bytes``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

from crmstream.errors import BrokerError
from crmstream.kafka import producer_config
from crmstream.settings import Settings


class Outputs(Protocol):
    async def start(self) -> None: ...

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    async def acked(self) -> None:
        """Wait until every record sent since the last call is acknowledged; raise if one
        was not."""
        ...

    def close(self) -> None: ...


class _Batch:
    """Acknowledgements of one batch. Counted under a lock: delivery reports arrive on the
    poll thread while the event loop is still producing."""

    __slots__ = ("done", "error", "expected", "future", "lock", "loop", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.sent = 0
        self.done = 0
        self.expected: int | None = None
        self.error: str | None = None
        self.future: asyncio.Future[None] = loop.create_future()

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        with self.lock:
            self.done += 1
            if err is not None and self.error is None:
                self.error = f"{msg.topic()}: {err.str()}"
            finished = self.expected is not None and self.done >= self.expected
        if finished:
            self.loop.call_soon_threadsafe(self._resolve)

    def close(self) -> None:
        with self.lock:
            self.expected = self.sent
            finished = self.done >= self.expected
        if finished:
            self._resolve()

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(BrokerError(f"output not acknowledged: {self.error}"))
        else:
            self.future.set_result(None)


class ConfluentOutputs:
    def __init__(self, settings: Settings) -> None:
        # A short linger: a batch is awaited as a whole, so records of one batch should travel
        # together, but the batch's latency is bounded by it.
        self._producer = Producer(producer_config(settings, **{"linger.ms": 5}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="outputs-poll", daemon=True)
        self._batch: _Batch | None = None

    async def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch(asyncio.get_running_loop())
        batch.sent += 1
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=batch.delivered)
                return
            except BufferError:
                # librdkafka's local queue is full: the poll thread is draining it.
                self._producer.poll(0.01)

    async def acked(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        batch.close()
        await batch.future

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._producer.flush(30)


class FaustOutputs:
    """Faust's producer (aiokafka; the transaction manager under exactly_once)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._producer: Any = None
        self._pending: list[Any] = []

    async def start(self) -> None:
        self._producer = await self._app.maybe_start_producer()

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._pending.append(
            asyncio.ensure_future(self._producer.send(topic, key, value, None, None, None))
        )

    async def acked(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            # Each send resolves to the delivery future; wait for those too.
            await asyncio.gather(*(await asyncio.gather(*pending)))

    def close(self) -> None:
        return None
