"""Tumbling-window tables in RocksDB, read and written a batch at a time.

Each table is an engine table (:class:`processors.engine.TableStore`, a Faust table): its
changelog topic, its restore after a rebalance or a lost disk, standby replicas and partition
assignment are the engine's. What this module adds is the hot path.
Faust's table API costs, per key, a window computation, a RocksDB call, a changelog record sent
through aiokafka (a future, a pure-Python record batch) and an in-memory expiry entry. That was
most of the worker's CPU. Here one batch of records costs, per partition:

* one RocksDB multi-get for every key it reads;
* one RocksDB write batch for every key it writes;
* changelog records produced with the batch's other outputs, on the worker's own producer.

Keys are :func:`processors.state.keys.window_key`. Windows are therefore contiguous in RocksDB's
key order, and a window expires with one range delete per partition
(:func:`processors.state.keys.expiry_range`). This includes keys restored from the changelog
after a restart. Faust's own windowed-table expiry tracks only the keys set since the process
started, in memory, one entry per key.

The changelog topic keeps Faust's name (``<app id>-<table>-changelog``) and partitioning (table
partition = source partition). Its keys are the RocksDB keys, so Faust's restore writes them back
byte for byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import takewhile
from pathlib import Path
from typing import Protocol, cast

import rocksdict

from processors.engine import TableStore
from processors.state.keys import START_DIGITS, WINDOWS, KeyRange, expiry_ranges, window_key

log = logging.getLogger("crmstream.worker")


class ChangelogSink(Protocol):
    def send_changelog(
        self, topic: str, partition: int, key: bytes, value: bytes | None
    ) -> None: ...


Item = tuple[bytes, bytes | None]
"""A key and its new value; None deletes the key (and is a tombstone in the changelog)."""


class WindowedTable:
    """An engine table holding tumbling windows of ``size_ms``. Windows that start before
    ``now - keep_ms`` are deleted by :meth:`expire`."""

    def __init__(self, store: TableStore, size_ms: int, keep_ms: int) -> None:
        if size_ms <= 0:
            raise ValueError("window size must be positive")
        self.store = store
        self.size_ms = size_ms
        self.keep_ms = keep_ms

    @property
    def changelog_topic(self) -> str:
        return self.store.changelog_topic

    def window_start(self, timestamp_ms: int) -> int:
        return timestamp_ms - timestamp_ms % self.size_ms

    def _db(self, partition: int) -> rocksdict.Rdict:
        return self.store.db(partition)

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` in one partition; ``None`` if absent."""
        if not keys:
            return []
        values = cast(list[bytes | None], self._db(partition)[list(keys)])
        return values

    def put_many(self, partition: int, items: Sequence[Item], sink: ChangelogSink) -> int:
        """Write ``items`` to the partition in one RocksDB write batch, and send each to the
        changelog. Returns how many were written."""
        self.send_changelog(partition, items, sink)
        return self.write(partition, items)

    def send_changelog(self, partition: int, items: Iterable[Item], sink: ChangelogSink) -> None:
        """Send ``items`` to the partition's changelog only (see :meth:`write`)."""
        topic = self.changelog_topic
        for key, value in items:
            sink.send_changelog(topic, partition, key, value)

    def write(self, partition: int, items: Iterable[Item]) -> int:
        """Write ``items`` to the local partition in one RocksDB write batch (atomic: all of
        them or none survive a crash). Returns how many were written."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        n = 0
        for key, value in items:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            n += 1
        if n:
            self._db(partition).write(batch)
        return n

    def scan(self, partition: int, keys: KeyRange) -> Iterator[tuple[bytes, bytes]]:
        """The keys in ``keys`` of one local partition, in key order, with their values (a
        RocksDB iterator bounded by the range's upper end). Each key is checked against the
        range as well: a scan on a live worker was once seen to run past the iterator's bound,
        and a key beyond it (a reserved key, another table's layout) must never be read as a
        window."""
        options = rocksdict.ReadOptions()
        options.set_iterate_upper_bound(keys.upper)
        items = self._db(partition).items(from_key=keys.lower, read_opt=options)
        upper = keys.upper
        return takewhile(
            lambda item: item[0] < upper, cast(Iterator[tuple[bytes, bytes]], iter(items))
        )

    def holds_any(self, partition: int, keys: KeyRange) -> bool:
        """Whether the partition holds a key in ``keys`` (one seek)."""
        options = rocksdict.ReadOptions()
        options.set_iterate_upper_bound(keys.upper)
        it = self._db(partition).iter(options)
        it.seek(keys.lower)
        return bool(it.valid()) and cast(bytes, it.key()) < keys.upper

    def holds_window_of(self, partition: int, key: bytes) -> bool:
        """Whether the partition holds a window (any start) of ``key`` (a window key's part
        after the start, :func:`processors.state.keys.window_key`). Window keys sort by start,
        so this seeks once or twice per distinct window start held (a retention's worth of
        starts, a few thousand), not once per window."""
        options = rocksdict.ReadOptions()
        options.set_iterate_upper_bound(WINDOWS.upper)
        it = self._db(partition).iter(options)
        it.seek(WINDOWS.lower)
        while it.valid():
            found = cast(bytes, it.key())
            if found >= WINDOWS.upper:
                return False
            digits = found[:START_DIGITS]
            wanted = window_key(int(digits), key)
            if found < wanted:
                it.seek(wanted)
                if not it.valid():
                    return False
                found = cast(bytes, it.key())
            if found == wanted:
                return True
            if found[:START_DIGITS] == digits:
                # past the key at this start: on to the next start (``;`` sorts after ``:``)
                it.seek(digits + b";")
        return False

    def partitions(self) -> list[int]:
        """The partitions open here (active or standby)."""
        return sorted(self.store.open_partitions())

    def estimated_keys(self) -> int:
        """RocksDB's own estimate of the keys in the local partitions (cheap, approximate)."""
        total = 0
        for db in self.store.open_partitions().values():
            total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    def set_persisted_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Record the newest changelog offsets written, as Faust does after its own sends, so
        that a restart with the local state intact restores only what came after them."""
        topic = self.changelog_topic
        for (t, partition), offset in offsets.items():
            if t == topic:
                self.store.set_persisted_offset(partition, offset)

    def expire(self, now_ms: int) -> int:
        """Delete every window that started before ``now_ms - keep_ms`` in the partitions open
        here. Returns the number of partitions touched."""
        expired = expiry_ranges(self.window_start(now_ms - self.keep_ms))
        dbs = self.store.open_partitions()
        for db in dbs.values():
            for keys in expired:  # window keys, and dedupe marks (processors.state.keys)
                db.delete_range(keys.lower, keys.upper)
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


class LocalStore:
    """A table store on RocksDB databases under a directory, one per partition, with no engine
    behind it (no changelog restore, no assignment): the tables run in one process, for the
    bench's stats digest and the unit tests. A persisted offset is only remembered."""

    def __init__(self, root: Path, changelog_topic: str) -> None:
        self.root = root
        self.changelog_topic = changelog_topic
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.persisted: dict[int, int] = {}

    def db(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            self.root.mkdir(parents=True, exist_ok=True)
            self.dbs[partition] = rocksdict.Rdict(
                str(self.root / f"p{partition}"), options=rocksdict.Options(raw_mode=True)
            )
        return self.dbs[partition]

    def open_partitions(self) -> dict[int, rocksdict.Rdict]:
        return dict(self.dbs)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.persisted[partition] = offset

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
