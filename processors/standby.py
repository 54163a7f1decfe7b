"""Standby table partitions, followed by the worker's own changelog reader (issue 21).

A standby replica (``CRM_TABLE_STANDBY_REPLICAS``) is a copy of another worker's table partition,
kept up to date from its changelog so that a takeover restores only the tail. Faust follows it
through its recovery path: each changelog record through its consumer, conductor, an event, a
queue and per-record bookkeeping on the event loop, ~90 us of CPU per record (issue 23). Every
dedupe mark and window the active worker writes is one such record, so with two workers each
spent about as much CPU following the other as processing its own records, and the half-rate
p50 went from 0.15 s to 2.2 s.

:class:`StandbyFollower` reads the standby changelog partitions on its own thread with librdkafka
and applies what each poll returns as one RocksDB write batch per partition, with the partition's
persisted offset (the offset of its last record applied, where Faust keeps it) in the same batch:
a kill -9 leaves the offset with the data it covers. It polls every
``CRM_STANDBY_APPLY_INTERVAL`` (what arrived meanwhile, at once) and writes the last value of each
key of a poll only: a standby lags by about twice that interval, which a takeover restores. When
the partition becomes active, Faust reads that offset and the fast restore
(``processors.faust_engine``, patch 6) reads only what came after it. The engine stops the
follower, and waits for it, before a rebalance touches the stores.

Its write batches skip RocksDB's write-ahead log (issue 21: the log's ZSTD compression and
write were most of the follower's CPU, ~15-20 ms a second per worker with two workers). A
standby is a copy of its changelog, so a kill -9 may lose what a memtable held of it, as long as
what survives is a prefix of what was written: a batch carries its offset, and a store's
memtables are flushed in the order they were written, so the offset read back after a crash
is that of the data kept, and a takeover restores the rest. The one write order that would
break this, a logged write (the partition's active path, after a takeover) over an unlogged one
not yet flushed, is kept out by flushing every store the follower wrote when it ends, before the
engine (which waits for it) lets anything else write to the stores.

Nothing here knows Faust: the engine hands over the stores, their offset key and the offset to
start from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import rocksdict

from crmstream.settings import Settings

log = logging.getLogger("crmstream.worker")

FOLLOW_POLL_S = 0.0
"""How long one poll waits for records: none, it takes what librdkafka has fetched; the follower
waits between polls (``CRM_STANDBY_APPLY_INTERVAL``), and a stop ends that wait at once."""

FOLLOW_MAX_RECORDS = 10_000
"""Most records one poll returns (one write batch per partition per poll); a poll that returns
this many (a backlog) is followed by the next one at once."""

QUEUED_KBYTES = 16 * 1024
"""librdkafka's prefetch queue of the follower (its default: 64 MB)."""


Upgrade = Callable[[bytes, bytes | None], tuple[bytes, bytes | None]]


def stage(
    batches: dict[Any, rocksdict.WriteBatch],
    tp: Any,
    key: bytes,
    value: bytes | None,
    upgrade: Upgrade | None,
) -> None:
    """One changelog record into its partition's write batch (a null value deletes the key),
    through the table's ``upgrade`` if it has one: the fast restore's way of applying a record
    (the follower keeps the last value of each key of a poll, :meth:`StandbyFollower._apply`,
    the same upgrade and the same delete for a null value)."""
    if upgrade is not None:
        key, value = upgrade(key, value)
    batch = batches.get(tp)
    if batch is None:
        batch = batches[tp] = rocksdict.WriteBatch(raw_mode=True)
    if value is None:
        batch.delete(key)
    else:
        batch.put(key, value)


class Followed(NamedTuple):
    """A standby table partition: its changelog is read from ``start`` (None: its first record)
    and applied to ``db``, each record through ``upgrade`` (if any); ``offset_key``: where the
    partition's persisted offset is kept."""

    start: int | None
    db: Any
    upgrade: Upgrade | None
    offset_key: bytes


class StandbyFollower:
    """Follows standby changelog partitions (keyed by ``(topic, partition)``) on one thread until
    :meth:`stop`. A failure is logged and stops the following, never the worker: the standby then
    lags, and a takeover restores what it misses from the changelog."""

    def __init__(self, settings: Settings, partitions: Mapping[tuple[str, int], Followed]) -> None:
        self.settings = settings
        self.partitions = dict(partitions)
        self.applied: dict[tuple[str, int], int] = {}
        self.records = 0
        self.failed: BaseException | None = None
        # The stores written without the write-ahead log, flushed when the follower ends.
        self.written: set[tuple[str, int]] = set()
        self._write_options = rocksdict.WriteOptions()
        # A property (rocksdict 0.3), which its type stub declares as a method.
        self._write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crm-standby", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop; it writes nothing more after its current write."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # a standby that lags is recovered from at takeover
            self.failed = exc
            log.error("standby follower stopped: %r", exc, exc_info=exc)
        finally:
            self.flush()

    def flush(self) -> None:
        """Flush the memtables of every store written (without the write-ahead log) to disk,
        so that nothing written after, with the log, can outlive it in a crash (the module's
        docstring). Run on the follower's thread as it ends: the engine's join waits for it."""
        written, self.written = self.written, set()
        for tp in sorted(written):
            try:
                self.partitions[tp].db.flush(True)
            except Exception as exc:  # a closed store (the stop closed it) has nothing to lose
                log.error("standby follower: flushing %s/%d: %r", *tp, exc)

    def _follow(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
        from confluent_kafka import Consumer as KafkaConsumer

        from crmstream.kafka import consumer_config

        interval = self.settings.standby_apply_interval_s
        consumer = KafkaConsumer(
            consumer_config(
                self.settings,
                group_id=f"{self.settings.app_id}-standby",
                **{
                    "enable.partition.eof": False,
                    # A fetch with nothing to return waits on the broker up to the interval.
                    # (fetch.min.bytes at 1 MB: 60% fewer fetches, but Tansu then spent more CPU
                    # holding them than the follower saved.)
                    "fetch.wait.max.ms": max(1, int(interval * 1000)),
                    "queued.max.messages.kbytes": QUEUED_KBYTES,
                },
            )
        )
        partitions = self.partitions
        stop = self._stop
        try:
            consumer.assign(
                [
                    TopicPartition(t, p, OFFSET_BEGINNING if f.start is None else f.start)
                    for (t, p), f in partitions.items()
                ]
            )
            started = time.monotonic()
            due = started
            while not stop.is_set():
                # What arrived since the last apply is applied at once, every ``interval`` at
                # most (a stop ends the wait): fewer, fuller write batches, and a key written
                # several times meanwhile is written once.
                wait = due - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
                messages = consumer.consume(FOLLOW_MAX_RECORDS, FOLLOW_POLL_S)
                due = time.monotonic() + (0 if len(messages) >= FOLLOW_MAX_RECORDS else interval)
                if messages and not self._apply(messages, KafkaError):
                    return
            log.info(
                "standby follower: %d changelog records of %d partitions in %.1f s",
                self.records,
                len(partitions),
                time.monotonic() - started,
            )
        finally:
            consumer.close()

    def _apply(self, messages: list[Any], kafka_error: Any) -> bool:
        """One poll's records, the last value of each key (after the table's upgrade), as one
        write batch per partition with the offset of its last record. False: stopped first.

        A poll returns each partition's records in runs, so the partition is looked up once per
        run, not per record (with the poll itself and the writes, the follower's CPU)."""
        partitions = self.partitions
        latest: dict[tuple[str, int], dict[bytes, bytes | None]] = {}
        last: dict[tuple[str, int], Any] = {}
        topic: str | None = None
        partition: int | None = None
        values: dict[bytes, bytes | None] = {}
        upgrade: Upgrade | None = None
        previous: Any = None
        n = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise RuntimeError(f"following a standby changelog: {error.str()}")
                if error.code() != kafka_error._PARTITION_EOF:
                    log.warning("following a standby changelog: %s", error.str())
                continue
            t, p = message.topic(), message.partition()
            if p != partition or t != topic:
                if previous is not None:
                    last[(topic, partition)] = previous  # type: ignore[index]
                topic, partition = t, p
                values = latest.setdefault((t, p), {})
                upgrade = partitions[(t, p)].upgrade
            if upgrade is None:
                values[message.key() or b""] = message.value()
            else:
                key, value = upgrade(message.key() or b"", message.value())
                values[key] = value
            previous = message
            n += 1
        if previous is not None:
            last[(topic, partition)] = previous  # type: ignore[index]
        for tp, values in latest.items():
            if self._stop.is_set():  # a rebalance: nothing written behind its back
                return False
            spec = partitions[tp]
            offset = int(last[tp].offset())
            batch = rocksdict.WriteBatch(raw_mode=True)
            put, delete = batch.put, batch.delete
            for key, value in values.items():
                if value is None:
                    delete(key)
                else:
                    put(key, value)
            put(spec.offset_key, str(offset).encode())
            self.written.add(tp)
            spec.db.write(batch, self._write_options)
            self.applied[tp] = offset
        self.records += n
        return True
