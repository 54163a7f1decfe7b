"""Tumbling-window tables in RocksDB, read and written a batch at a time.

Each table is a Faust table: its changelog topic, its restore after a rebalance or a lost disk,
standby replicas and partition assignment are Faust's. What this module adds is the hot path.
Faust's table API costs, per key, a window computation, a RocksDB call, a changelog record sent
through aiokafka (a future, a pure-Python record batch) and an in-memory expiry entry. That was
most of the worker's CPU. Here one batch of records costs, per partition:

* one RocksDB multi-get for every key it reads;
* one RocksDB write batch for every key it writes;
* changelog records produced with the batch's other outputs, on the worker's own producer.

Keys are ``<window start, 13-digit epoch ms>:<key>``. Windows are therefore contiguous in
RocksDB's key order, and a window expires with one range delete per partition. This includes keys
restored from the changelog after a restart. Faust's own windowed-table expiry tracks only the
keys set since the process started, in memory, one entry per key.

The changelog topic keeps Faust's name (``<app id>-<table>-changelog``) and partitioning (table
partition = source partition). Its keys are the RocksDB keys, so Faust's restore writes them back
byte for byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import rocksdict
from faust.types import TP

from processors import faust_compat
from processors.records import window_key

log = logging.getLogger("crmstream.worker")

OFFSET_KEY_PREFIX = b"__faust"  # Faust keeps the persisted changelog offset under this key


class ChangelogSink(Protocol):
    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes) -> None: ...


class WindowedTable:
    """A Faust table holding tumbling windows of ``size_ms``. Windows that start before
    ``now - keep_ms`` are deleted by :meth:`expire`."""

    def __init__(self, table: Any, size_ms: int, keep_ms: int) -> None:
        if size_ms <= 0:
            raise ValueError("window size must be positive")
        self.table = table
        self.size_ms = size_ms
        self.keep_ms = keep_ms

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def window_start(self, timestamp_ms: int) -> int:
        return timestamp_ms - timestamp_ms % self.size_ms

    def _db(self, partition: int) -> rocksdict.Rdict:
        return faust_compat.rocksdb_partition(self.table, partition)

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` (``window_key`` bytes) in one partition; ``None`` if absent."""
        if not keys:
            return []
        values = cast(list[bytes | None], self._db(partition)[list(keys)])
        return values

    def put_many(
        self, partition: int, items: Sequence[tuple[bytes, bytes]], sink: ChangelogSink
    ) -> int:
        """Write ``items`` to the partition in one RocksDB write batch, and send each to the
        changelog. Returns how many were written."""
        self.send_changelog(partition, items, sink)
        return self.write(partition, items)

    def send_changelog(
        self, partition: int, items: Iterable[tuple[bytes, bytes]], sink: ChangelogSink
    ) -> None:
        """Send ``items`` to the partition's changelog only (see :meth:`write`)."""
        topic = self.changelog_topic
        for key, value in items:
            sink.send_changelog(topic, partition, key, value)

    def write(self, partition: int, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Write ``items`` to the local partition in one RocksDB write batch (atomic: all of
        them or none survive a crash). Returns how many were written."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        n = 0
        for key, value in items:
            batch.put(key, value)
            n += 1
        if n:
            self._db(partition).write(batch)
        return n

    def set_persisted_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Record the newest changelog offsets written, as Faust does after its own sends, so
        that a restart with the local state intact restores only what came after them."""
        topic = self.changelog_topic
        for (t, partition), offset in offsets.items():
            if t == topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)

    def expire(self, now_ms: int) -> int:
        """Delete every window that started before ``now_ms - keep_ms`` in the partitions open
        here. Returns the number of partitions touched."""
        oldest = self.window_start(now_ms - self.keep_ms)
        upper = window_key(oldest, b"")
        dbs = faust_compat.rocksdb_partitions(self.table)
        for db in dbs.values():
            # Keys below b"0" and Faust's offset key (b"__faust...") sort outside the range.
            db.delete_range(b"0", upper)
        return len(dbs)


def quarantine_corrupt_stores(root: Path) -> list[Path]:
    """Move aside every local RocksDB store under ``root`` that does not open (read-only): its
    table partitions are then restored from their changelogs, as after a lost disk, instead of
    the worker failing on them at every start. The moved stores stay for inspection
    (``<name>.corrupt-<epoch s>``)."""
    moved: list[Path] = []
    for store in sorted(root.glob("**/tables/*.db")):
        try:
            db = rocksdict.Rdict(
                str(store),
                options=rocksdict.Options(raw_mode=True),
                access_type=rocksdict.AccessType.read_only(),
            )
        except Exception as exc:  # rocksdict raises a bare Exception("Corruption: ...")
            target = store.with_name(f"{store.name}.corrupt-{int(time.time())}")
            store.rename(target)
            log.error(
                "local table store %s does not open (%s); moved to %s, its partition is "
                "restored from the changelog",
                store,
                str(exc)[:300],
                target.name,
            )
            moved.append(target)
        else:
            db.close()
    return moved
