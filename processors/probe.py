"""Questions the worker asks Kafka outside its consumer group, with a confluent-kafka consumer.

* :meth:`Probe.first_offset` checks a gap: is there a record between the position and the
  offset the consumer handed over? (:mod:`processors.positions`)
* :meth:`Probe.read_back` finds, after a restart, the outputs an earlier run already wrote for
  raw records it had not yet marked as done: every output record carries a ``raw_position``
  header (``topic/partition/offset`` of its raw record), so the output partitions are read from
  the positions saved with the raw partition's position (its floors) to their end.
* :meth:`Probe.ends` and :meth:`Probe.starts` give the partitions' offsets (ListOffsets).

Ends are found by reading to end-of-partition (the fetch's high watermark), never by ListOffsets
LATEST, which the development broker (Tansu) reports as the newest batch's base offset + 1.
All calls block; the worker runs them in a thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTP

from crmstream.errors import BrokerError
from crmstream.kafka import consumer_config
from crmstream.settings import Settings
from processors.positions import TP, TopicPartition

RAW_POSITION_HEADER = "raw_position"


def raw_position(topic: str, partition: int, offset: int) -> bytes:
    """The ``raw_position`` header value of an output record: where its raw record is."""
    return b"%s/%d/%d" % (topic.encode(), partition, offset)


def parse_raw_position(value: bytes) -> tuple[TopicPartition, int] | None:
    try:
        topic, partition, offset = value.decode().rsplit("/", 2)
        return TopicPartition(topic, int(partition)), int(offset)
    except (UnicodeDecodeError, ValueError):
        return None


class Probe:
    """One consumer without a group, assigned by hand for each question."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self._consumer = Consumer(
            consumer_config(
                settings,
                group_id=f"crm-probe-{uuid.uuid4().hex}",
                **{
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    # What Faust's consumer reads too (its default isolation level).
                    "isolation.level": "read_uncommitted",
                    "fetch.wait.max.ms": 50,
                },
            )
        )
        self._timeout = timeout_s
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._consumer.close()

    def starts(self, tps: Iterable[TP]) -> dict[TP, int]:
        """The first offset each partition still holds (ListOffsets EARLIEST)."""
        with self._lock:
            return {tp: self._watermarks(tp)[0] for tp in tps}

    def ends(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """ListOffsets LATEST of each partition: a lower bound of where the next record lands
        (exact on Kafka; on Tansu it can be lower, which only makes a read-back longer)."""
        with self._lock:
            return {tp: self._watermarks(tp)[1] for tp in tps}

    def _watermarks(self, tp: TP) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                KafkaTP(tp.topic, tp.partition), timeout=self._timeout
            )
        except KafkaException as exc:
            raise BrokerError(f"offsets of {tp.topic}/{tp.partition}: {exc}") from exc
        return int(low), int(high)

    def first_offset(self, tp: TP, offset: int) -> int | None:
        """The offset of the first record at or after ``offset`` (records below the partition's
        start are gone: the first one there), or None when there is none yet."""
        with self._lock:
            self._consumer.assign([KafkaTP(tp.topic, tp.partition, offset)])
            try:
                deadline = time.monotonic() + self._timeout
                while time.monotonic() < deadline:
                    msg = self._consumer.poll(0.5)
                    if msg is None:
                        continue
                    error = msg.error()
                    if error is None:
                        return int(msg.offset() or 0)
                    if error.code() == KafkaError._PARTITION_EOF:
                        return None
                    if not error.retriable():
                        raise BrokerError(f"reading {tp.topic}/{tp.partition}: {error.str()}")
                raise BrokerError(f"no answer reading {tp.topic}/{tp.partition} at {offset}")
            finally:
                self._consumer.unassign()

    def read_back(
        self,
        floors: Mapping[TopicPartition, int],
        positions: Mapping[TopicPartition, int],
    ) -> dict[TopicPartition, set[int]]:
        """Raw offsets whose outputs are already in the output partitions.

        ``floors``: per output partition, the offset after which the outputs of every raw
        record at or above its raw partition's position land. ``positions``: raw partition ->
        its position. Returns raw partition -> offsets (at or above its position) found in a
        ``raw_position`` header.
        """
        found: dict[TopicPartition, set[int]] = {tp: set() for tp in positions}
        if not floors or not positions:
            return found
        with self._lock:
            self._consumer.assign(
                [
                    KafkaTP(tp.topic, tp.partition, floor + 1 if floor >= 0 else OFFSET_BEGINNING)
                    for tp, floor in floors.items()
                ]
            )
            try:
                open_tps = set(floors)
                deadline = time.monotonic() + max(self._timeout, 120.0)
                while open_tps:
                    if time.monotonic() > deadline:
                        raise BrokerError(f"reading back outputs: no end of {sorted(open_tps)}")
                    for msg in self._consumer.consume(1000, 0.5):
                        error = msg.error()
                        if error is not None:
                            if error.code() == KafkaError._PARTITION_EOF:
                                open_tps.discard(
                                    TopicPartition(msg.topic() or "", msg.partition() or 0)
                                )
                            elif not error.retriable():
                                raise BrokerError(f"reading back outputs: {error.str()}")
                            continue
                        for header in msg.headers() or ():
                            name, value = header[0], header[1]
                            if name != RAW_POSITION_HEADER or not isinstance(value, bytes):
                                continue
                            parsed = parse_raw_position(value)
                            if parsed is None:
                                continue
                            raw_tp, raw_offset = parsed
                            start = positions.get(raw_tp)
                            if start is not None and raw_offset >= start:
                                found[raw_tp].add(raw_offset)
            finally:
                self._consumer.unassign()
        return found
