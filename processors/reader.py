"""The stream partitions' reader: librdkafka fetches them, whole batches go to the agents.

Faust's own consume path costs ~110 us of CPU per record (aiokafka's fetcher and record
decoding on the consumer thread, then a Faust message, an event, the conductor, a queue, the
stream iteration and the acks on the event loop); ``bench/faust_floor.py``, an agent that only
counts, spent 64 CPU s per million records where librdkafka consumes and produces them for 3.2
(issue 21). So the records of the stream topics are read here, and Faust keeps everything else:
group membership and its assignor, table restore and standbys, commits (through the worker's
committable offsets), agent supervision. Faust's consumer still subscribes to the stream topics
(its assignor needs them) but never fetches them (:mod:`processors.faust_engine`).

A :class:`Reader` is one librdkafka consumer without a group (``assign`` by hand, nothing
committed) and one thread, per agent. The thread waits for a first record (``poll``, up to
:data:`IDLE_WAIT_S` at a time), then reads up to ``size`` records with it until ``within``
after the wait began (``consume``), adapts them to :class:`Record` and hands the batch to the
event loop.
(Each ``consume`` waits its whole ``within`` unless the batch fills: a reader calling it in a
loop with the dev profile's 10 ms woke 100 times a second, where a fetch brings records every
50 ms at most.) What the engine asks of it, from the event loop:

* :meth:`Reader.seek` (a partition's next offset), :meth:`Reader.pause` (nothing more of the
  partition is handed over, it stops being fetched) and :meth:`Reader.resume` (fetched again
  from its position: the last seek, else after the last record handed over, else ``start``).
  A partition is only fetched between a resume and the next pause.
* Every one of them bumps the partition's *epoch* at once, on the loop's thread; the reader's
  thread applies them (``incremental_assign``/``incremental_unassign``) before its next fetch,
  then notes the epochs. A batch read with an older epoch of a partition loses that partition's
  records when the loop takes it (:meth:`Reader.get`): nothing fetched before a seek or a pause
  is handed over after it (what aiokafka's fetcher does on a seek).
* :meth:`Reader.highwater`: the partition's high watermark as the latest fetch reported it
  (librdkafka's cached one, noted by the thread after each ``consume``; Tansu reports that one
  right, unlike its ListOffsets LATEST).

:class:`Readers` holds the readers of one worker, and the count of records *in hand*: handed to
an agent and not yet done with (its handler running on them, or held until released). A
rebalance waits for that count to reach zero after pausing every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTP

from crmstream.kafka import consumer_config
from crmstream.settings import Settings
from processors.positions import TP, TopicPartition

log = logging.getLogger("crmstream.worker")

QUEUED_BATCHES = 2
"""Batches a reader's thread reads ahead of its agent at most."""

IDLE_WAIT_S = 0.1
"""The longest a reader's thread waits for a first record before it applies what the event
loop asked (seeks, pauses, resumes) and notes the high watermarks again."""

FILL_FLOOR_S = 0.002
"""The least a reader's thread waits for more records once a first one came: librdkafka queues
a fetch's partitions one by one, and the thread wakes up at the first."""


class Record:
    """One consumed record (:class:`processors.engine.Message`), and its own event
    (:class:`processors.engine.Event`: ``message`` is itself)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "tp", "value")

    def __init__(
        self,
        tp: TopicPartition,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp: float,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = timestamp  # seconds
        self.headers = headers  # as librdkafka gives them: [(name, value)] or None

    @property
    def message(self) -> Record:
        return self

    def __repr__(self) -> str:
        return f"<Record {self.topic}/{self.partition}@{self.offset}>"


class ReaderError(Exception):
    """The reader's thread failed (a librdkafka error it cannot go on after)."""


class _Batch:
    __slots__ = ("epochs", "records")

    def __init__(self, records: list[Record], epochs: dict[TopicPartition, int]) -> None:
        self.records = records
        self.epochs = epochs


class Reader:
    """One librdkafka consumer on its own thread, reading the partitions it is told to."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        name: str,
        *,
        size: int,
        within: float,
        readers: Readers,
    ) -> None:
        self.settings = settings
        self.topics = frozenset(topics)
        self.name = name
        self.size = size
        self.within = within
        self.readers = readers
        # Loop side (touched from the event loop's thread only, except under _lock).
        self._positions: dict[TopicPartition, int] = {}  # next offset to hand over
        self._active: set[TopicPartition] = set()
        self._lock = threading.Lock()
        self._epochs: dict[TopicPartition, int] = {}  # under _lock
        self._ops: list[tuple[str, TopicPartition, int]] = []  # under _lock
        self._applied: list[asyncio.Future[None]] = []  # under _lock: resolved once ops ran
        self._room = threading.Semaphore(QUEUED_BATCHES)
        self._queue: asyncio.Queue[_Batch | BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._consumer: Any = None  # the thread's; highwater() reads its cache
        self._fetching: set[TopicPartition] = set()  # the thread's librdkafka assignment
        # ... as librdkafka's partitions, for the high watermarks (built once per change).
        self._watched: list[tuple[TopicPartition, KafkaTP]] = []
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        # Set by the thread after each fetch (librdkafka's cached high watermarks; asked from
        # the loop's thread while the reader's consumed, the worker froze).
        self._highwaters: dict[TopicPartition, int] = {}

    # -- the loop's side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (from the event loop)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._consumer = Consumer(
            consumer_config(
                self.settings,
                group_id=f"{self.settings.app_id}-reader",
                **{
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": False,
                    "auto.offset.reset": "earliest",
                    # What Faust's consumer read (its default isolation level).
                    "isolation.level": "read_uncommitted",
                    "fetch.wait.max.ms": max(
                        1, int(self.settings.consumer_fetch_max_wait_s * 1000)
                    ),
                    "queued.max.messages.kbytes": 16 * 1024,
                },
            )
        )
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the thread and close the consumer."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._room.release()  # a thread waiting for room wakes up
        await asyncio.to_thread(thread.join, 30)
        self._thread = None

    def handles(self, tp: TP) -> bool:
        return tp.topic in self.topics

    def seek(self, offsets: Mapping[TP, int]) -> None:
        """Hand over each partition from its offset on; nothing fetched before."""
        with self._lock:
            for tp, offset in offsets.items():
                key = TopicPartition(tp.topic, tp.partition)
                self._positions[key] = offset
                self._epochs[key] = self._epochs.get(key, 0) + 1
                if key in self._active:
                    self._ops.append(("assign", key, offset))

    def pause(self, tps: Iterable[TP]) -> None:
        """Hand over nothing more of these partitions; stop fetching them."""
        with self._lock:
            for tp in tps:
                key = TopicPartition(tp.topic, tp.partition)
                self._epochs[key] = self._epochs.get(key, 0) + 1
                if key in self._active:
                    self._active.discard(key)
                    self._ops.append(("unassign", key, -1))

    def resume(self, tps: Iterable[TP], start: Callable[[TP], int | None]) -> None:
        """Fetch these partitions from their position (``start(tp)`` when they have none:
        the committed offset; None: the beginning)."""
        with self._lock:
            for tp in tps:
                key = TopicPartition(tp.topic, tp.partition)
                if key in self._active:
                    continue
                position = self._positions.get(key)
                if position is None:
                    first = start(tp)
                    position = OFFSET_BEGINNING if first is None else first
                    if first is not None:
                        self._positions[key] = first
                self._epochs[key] = self._epochs.get(key, 0) + 1
                self._active.add(key)
                self._ops.append(("assign", key, position))

    def forget(self, tps: Iterable[TP]) -> None:
        """Revoked partitions: paused, and their positions dropped."""
        tps = list(tps)
        self.pause(tps)
        with self._lock:
            for tp in tps:
                self._positions.pop(TopicPartition(tp.topic, tp.partition), None)

    async def applied(self, timeout: float = 5.0) -> None:
        """Wait until the thread has applied what was asked so far (before its next fetch;
        ``timeout`` at most: a thread waiting for its agent to take a batch applies nothing
        meanwhile, and the epochs already keep what it fetches from being handed over)."""
        if self._thread is None or self._loop is None:
            return
        future = self._loop.create_future()
        with self._lock:
            if not self._ops:
                return
            self._applied.append(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, timeout)

    def highwater(self, tp: TP) -> int | None:
        key = TopicPartition(tp.topic, tp.partition)
        if key not in self._active:
            return None
        return self._highwaters.get(key)

    async def get(self) -> list[Record]:
        """The next batch: its records of partitions whose epoch has not moved since it was
        read (possibly empty)."""
        if self._queue is None:
            raise ReaderError(f"reader {self.name}: not started")
        item = await self._queue.get()
        self._room.release()
        if isinstance(item, BaseException):
            raise ReaderError(f"reader {self.name}: {item!r}") from item
        records = item.records
        epochs = self._epochs
        stale = [tp for tp, epoch in item.epochs.items() if epochs.get(tp) != epoch]
        if stale:
            stale_set = set(stale)
            records = [r for r in records if r.tp not in stale_set]
        positions = self._positions
        for record in records:  # in offset order per partition
            positions[record.tp] = record.offset + 1
        return records

    # -- the thread ----------------------------------------------------------------------

    def _apply(self) -> dict[TopicPartition, int]:
        """Apply the pending assignment changes; the epochs they leave."""
        consumer = self._consumer
        with self._lock:
            ops, self._ops = self._ops, []
            applied, self._applied = self._applied, []
            for op, tp, offset in ops:
                ktp = KafkaTP(tp.topic, tp.partition)
                if tp in self._fetching:
                    consumer.incremental_unassign([ktp])
                    self._fetching.discard(tp)
                    self._highwaters.pop(tp, None)
                if op == "assign":
                    consumer.incremental_assign([KafkaTP(tp.topic, tp.partition, offset)])
                    self._fetching.add(tp)
            if ops:
                self._watched = [(tp, KafkaTP(tp.topic, tp.partition)) for tp in self._fetching]
            epochs = {tp: self._epochs.get(tp, 0) for tp in self._fetching}
        loop = self._loop
        if loop is not None:
            for future in applied:
                loop.call_soon_threadsafe(_resolve, future)
        return epochs

    def _run(self) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        consumer = self._consumer
        tps = self._tps
        size, within = self.size, self.within
        try:
            while not self._stop.is_set():
                epochs = self._apply()
                if not self._fetching:
                    self._stop.wait(within)
                    continue
                messages = self._fetch(consumer, size, within, self._asked)
                self._note_highwaters()
                if not messages:
                    continue
                records: list[Record] = []
                append = records.append
                for m in messages:
                    error = m.error()
                    if error is not None:
                        self._error(error)
                        continue
                    key = (m.topic(), m.partition())
                    tp = tps.get(key)
                    if tp is None:
                        tp = tps[key] = TopicPartition(*key)
                    if tp not in epochs:  # not (any more) asked for: nothing to hand over
                        continue
                    append(
                        Record(
                            tp, m.offset(), m.key(), m.value(), m.timestamp()[1] / 1000, m.headers()
                        )
                    )
                if not records:
                    continue
                self._room.acquire()
                if self._stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, _Batch(records, epochs))
        except BaseException as exc:  # handed to the agent, which stops the worker
            log.exception("reader %s failed", self.name)
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            consumer.close()

    def _asked(self) -> bool:
        """Whether the event loop asked for a seek, pause or resume not applied yet (read
        without the lock: a list's truth is read atomically, and a late answer costs one
        slice)."""
        return bool(self._ops)

    @staticmethod
    def _fetch(
        consumer: Any, size: int, within: float, asked: Callable[[], bool] = lambda: False
    ) -> list[Any]:
        """The next batch of messages, in the order librdkafka gives them: the first one as
        soon as it is there (``IDLE_WAIT_S`` at most, else none), then up to ``size`` in all
        until ``within`` after the wait began (:data:`FILL_FLOOR_S` at least: the rest of the
        fetch that brought the first one). A batch is handed over as a ``consume`` loop did, at
        the end of the ``within`` in which its first record came, or ``FILL_FLOOR_S`` after
        a first record that ended a longer wait. A long ``within`` (e.g. a stats batch's, raised
        with ``CRM_STATS_BATCH_WITHIN``) is waited in slices of ``IDLE_WAIT_S``, and the batch
        is handed over early once the loop asks for a seek, pause or resume (``asked``): a
        rebalance's placement waits for the reader to apply those."""
        began = time.monotonic()
        first = consumer.poll(IDLE_WAIT_S)
        if first is None:
            return []
        if size == 1:
            return [first]
        messages = [first]
        left = max(FILL_FLOOR_S, within - (time.monotonic() - began))
        deadline = time.monotonic() + min(left, within)
        while True:
            wait = max(0.0, deadline - time.monotonic())
            step = min(wait, IDLE_WAIT_S)
            messages += consumer.consume(size - len(messages), step)
            if len(messages) >= size or wait - step < FILL_FLOOR_S or asked():
                return messages

    def _note_highwaters(self) -> None:
        watermarks, highwaters = self._consumer.get_watermark_offsets, self._highwaters
        for tp, ktp in self._watched:
            _low, high = watermarks(ktp, cached=True)
            if high is not None and high >= 0:
                highwaters[tp] = high

    def _error(self, error: KafkaError) -> None:
        if error.fatal():
            raise ReaderError(f"reader {self.name}: {error.str()}")
        log.warning("reader %s: %s", self.name, error.str())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Readers:
    """The readers of one worker, by topic, and the records in hand."""

    def __init__(self) -> None:
        self.readers: list[Reader] = []
        # The readers' partitions assigned to this worker as the event loop learnt it (the last
        # assignment handled, less what was revoked since): what may be sought. Read from the
        # group client, it can already be the next rebalance's.
        self.assigned: set[TopicPartition] = set()
        # Those of them sought since that assignment (placed by the worker).
        self.placed: set[TopicPartition] = set()
        # Revokes and assignments handled so far: a placement begun before the latest of them
        # may have sought partitions the next recovery has not placed yet.
        self.rebalances = 0
        self._by_topic: dict[str, Reader] = {}
        self.in_hand = 0
        self._released: asyncio.Event | None = None

    def add(self, reader: Reader) -> None:
        self.readers.append(reader)
        for topic in reader.topics:
            self._by_topic[topic] = reader

    def of(self, tp: TP) -> Reader | None:
        return self._by_topic.get(tp.topic)

    def handles(self, tp: TP) -> bool:
        return tp.topic in self._by_topic

    def in_step(self, group: Iterable[TP]) -> bool:
        """Whether the readers' assignment is the group client's ``group`` (its partitions of
        the readers' topics): not so from a revoke until the next assignment is handled."""
        listed = {TopicPartition(tp.topic, tp.partition) for tp in group if self.handles(tp)}
        return listed == self.assigned

    def _split(self, tps: Iterable[TP]) -> dict[Reader, list[TP]]:
        out: dict[Reader, list[TP]] = {}
        for tp in tps:
            reader = self._by_topic.get(tp.topic)
            if reader is not None:
                out.setdefault(reader, []).append(tp)
        return out

    def seek(self, offsets: Mapping[TP, int]) -> None:
        self.placed.update(TopicPartition(tp.topic, tp.partition) for tp in offsets)
        for reader, tps in self._split(offsets).items():
            reader.seek({tp: offsets[tp] for tp in tps})

    def pause(self, tps: Iterable[TP]) -> None:
        for reader, some in self._split(tps).items():
            reader.pause(some)

    def resume(
        self, tps: Iterable[TP], start: Callable[[TP], int | None], *, placed_only: bool
    ) -> None:
        """Resume the partitions assigned as the event loop knows it; with ``placed_only``,
        only those sought since (a resume Faust's recovery computed from the group client's
        assignment can come after a revoke, or before the placement: such a partition was
        read from its committed offset by a worker that no longer owned it)."""
        assigned, placed = self.assigned, self.placed
        keep = []
        for tp in tps:
            key = TopicPartition(tp.topic, tp.partition)
            if key in assigned and (not placed_only or key in placed):
                keep.append(tp)
        for reader, some in self._split(keep).items():
            reader.resume(some, start)

    def forget(self, tps: Iterable[TP]) -> None:
        """Revoked partitions: no longer assigned, paused, their positions dropped."""
        tps = list(tps)
        keys = {TopicPartition(tp.topic, tp.partition) for tp in tps}
        self.assigned.difference_update(keys)
        self.placed.difference_update(keys)
        self.rebalances += 1
        for reader, some in self._split(tps).items():
            reader.forget(some)

    def assign(self, tps: Iterable[TP]) -> None:
        """A new assignment (every partition of this worker): the readers' ones may be sought."""
        self.assigned = {
            TopicPartition(tp.topic, tp.partition) for tp in tps if tp.topic in self._by_topic
        }
        self.placed = set()
        self.rebalances += 1

    def highwater(self, tp: TP) -> int | None:
        reader = self._by_topic.get(tp.topic)
        return None if reader is None else reader.highwater(tp)

    async def applied(self) -> None:
        for reader in self.readers:
            await reader.applied()

    # -- records in hand -----------------------------------------------------------------

    def take(self, n: int) -> None:
        self.in_hand += n

    def done(self, n: int) -> None:
        self.in_hand -= n
        if self.in_hand <= 0 and self._released is not None:
            self._released.set()

    async def wait_released(self, timeout: float) -> None:
        """Wait (``timeout`` at most) until no record is in hand."""
        if self.in_hand <= 0:
            return
        self._released = released = asyncio.Event()
        try:
            await asyncio.wait_for(released.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._released = None
