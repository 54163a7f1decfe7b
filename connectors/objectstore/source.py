"""The object-store source: list a feed's objects and hand their rows to the runner
(:mod:`connectors.runtime.runner`), which publishes them and checkpoints after Kafka acks.

Positions are per object (``<bucket>/<key>`` or the path): ETag, size, rows done, done or failed
with its error. A batch is at most :data:`BATCH_ROWS` rows of one object and ends at every
``checkpoint_every`` rows (a mid-file checkpoint); finished objects are checkpointed together,
:data:`DEFERRED_OBJECTS` at a time or at the end of a listing pass, since Firehose delivers many
small objects and one round trip per object would bound the feed to a few dozen a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.feeds import FeedProfile
from connectors.objectstore.errors import ObjectChangedError, ObjectReadError, TransientSourceError
from connectors.objectstore.reader import ObjectReader
from connectors.objectstore.settings import ObjectStoreSettings
from connectors.objectstore.stores import LocalStore, ObjectInfo, ObjectStore, S3Store, open_store
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.deadletter import DeadLetters, Skipped
from connectors.runtime.kafka import KeyFunction, RawPublisher
from connectors.runtime.runner import Batch, Runner, SourceRecord
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.settings import Settings

log = logging.getLogger("connectors.objectstore")

DEFERRED_OBJECTS = 200  # finished objects whose checkpoints are written together
HORIZON_PREFIX = "__horizon/"
"""Position key ``__horizon/<root>``: the first date partition a listing of ``root`` starts at
(no S3 bucket name and no absolute path starts with ``_``, so no object's key is one)."""
BATCH_ROWS = 1000  # rows per batch: what a stop waits for before its flush and checkpoint
MAX_TRANSIENT_FAILURES = 5  # passes in a row the store may fail before --once gives up
PREFETCH_THREADS = 4
PREFETCH_DEPTH = 8
PREFETCH_MAX_BYTES = 8 << 20  # so prefetched bodies hold at most 64 MiB


@dataclass
class PassStats:
    """What one listing pass did; ``crm-stream connect --once`` prints the run's total."""

    listed: int = 0
    ingested: int = 0
    failed: int = 0
    records: int = 0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: PassStats) -> None:
        self.listed += other.listed
        self.ingested += other.ingested
        self.failed += other.failed
        self.records += other.records
        self.bytes += other.bytes
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


class ObjectStoreSource:
    """Lists a feed's objects and publishes their records to the vendor's raw topic."""

    def __init__(
        self,
        profile: FeedProfile,
        config: ObjectStoreSettings,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        prefix: str | None = None,
        publisher: RawPublisher | None = None,
        checkpoints: CheckpointStore | None = None,
        key_of: KeyFunction,
    ) -> None:
        self.profile = profile
        self.config = config
        self.settings = settings
        if store is None:
            store, opened_prefix = open_store(config)
            prefix = opened_prefix if prefix is None else prefix
        self.store = store
        self.prefix = prefix or ""
        self.publisher = publisher or RawPublisher(settings, profile.vendor, app_id=config.app_id)
        self.checkpoints = checkpoints or CheckpointStore(settings, profile.connector)
        self.key_of = key_of
        self.positions: dict[str, dict[str, Any]] | None = None
        self.newest_days: dict[str, date] = {}  # per root: the late-file window's anchor
        self.connector = profile.connector
        self.total = PassStats()
        self._connector = profile.connector
        self._stopping = threading.Event()
        self._runner: Runner | None = None
        # the listing pass in progress
        self._pass: PassStats | None = None
        self._last_pass = PassStats()
        self._pending: list[ObjectInfo] | None = None
        self._next = 0
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[int, Future[bytes]] = {}
        self._reading: _Reading | None = None
        # positions handed out since the last snapshot
        self._progress: dict[str, dict[str, Any]] = {}
        self._rows_since = 0
        self._finished_since = 0
        # how the run ends
        self._passes_left: int | None = None
        self._idle = False
        self._give_up_on_kafka = config.once

    def stop(self) -> None:
        """Ask the run to end (SIGTERM): after the current batch, the object being read is
        checkpointed at the last row Kafka acknowledged and :meth:`run` returns; a restart
        resumes at that row."""
        self._stopping.set()
        if self._runner is not None:
            self._runner.stop()

    # running (the runner does the work) ------------------------------------------------------

    def _run(self, *, once: bool, max_retries: int | None) -> None:
        self._runner = Runner(
            self,
            self.publisher,
            self.checkpoints,
            dead_letters=DeadLetters(self.settings, self.profile.vendor),
            max_retries=max_retries,
        )
        if self._stopping.is_set():
            self._runner.stop()
        try:
            # Positions are read from connect-offsets once; later passes keep them up to date.
            self._runner.run(once=once, positions=self.positions)
        finally:
            self._close_pass()

    def run(self, *, max_transient_failures: int = MAX_TRANSIENT_FAILURES) -> PassStats:
        """Poll until stopped; with ``once``, until a pass finds nothing new.

        Transient store failures back off and retry; in ``once`` mode, after
        ``max_transient_failures`` in a row the run stops with the last error, and a Kafka
        failure stops it at once.
        """
        self.total = PassStats()
        once = self.config.once
        self._run(once=once, max_retries=max_transient_failures if once else None)
        if self._stopping.is_set():
            log.info("stopped; positions checkpointed", extra={"connector": self._connector})
        return self.total

    def poll(self) -> PassStats:
        """One listing pass and the ingestion of everything it found pending. A store or Kafka
        failure is raised."""
        self._passes_left, give_up = 1, self._give_up_on_kafka
        self._give_up_on_kafka = True
        try:
            self._run(once=True, max_retries=1)
        finally:
            self._passes_left, self._give_up_on_kafka = None, give_up
        return self._last_pass

    # positions ------------------------------------------------------------------------------

    def position_key(self, obj: ObjectInfo) -> str:
        """``<bucket>/<key>`` (S3) or the absolute path: unique per object across sources."""
        if isinstance(self.store, S3Store):
            return f"{self.store.bucket}/{obj.key}"
        return self.store.url(obj).removeprefix("file://")

    def _is_pending(self, obj: ObjectInfo) -> bool:
        done = (self.positions or {}).get(self.position_key(obj))
        if done is None or done.get("etag") != obj.etag:
            return True
        return not (done.get("done") or done.get("failed"))

    # listing --------------------------------------------------------------------------------

    def _roots(self) -> list[str]:
        if self.profile.root_dir is None:
            return [self.prefix]
        if self.config.project_id is not None:
            return [f"{self.prefix}{self.profile.root_dir}{self.config.project_id}/"]
        return [
            d
            for d in self.store.list_dirs(self.prefix)
            if d[len(self.prefix) :].startswith(self.profile.root_dir)
        ]

    def list_pending(self, stats: PassStats) -> list[ObjectInfo]:
        """One listing pass: the objects not yet (completely) ingested, oldest partition first.

        The first pass lists everything (from the listing horizon a previous run checkpointed,
        when there is one); later passes start ``late_days`` partitions before the newest
        partition seen, so late files in recent partitions are found without re-listing the
        whole history on every poll. The newest day is kept per root (FlareLane projects lag
        independently) and never runs ahead of tomorrow, so one object in a bogus future
        partition cannot hide the real ones.
        """
        if self.positions is None:
            self.positions = self.checkpoints.load()
        pending: list[tuple[date, str, ObjectInfo]] = []
        ceiling = datetime.now(UTC).date() + timedelta(days=1)
        for root in self._roots():
            newest = self.newest_days.get(root)
            start_after = ""
            # Never behind the horizon (its objects' positions may be forgotten), even after a
            # restart or with a larger late_days than the run that checkpointed it.
            start_day = self._horizon(root)
            if newest is not None:
                late_start = newest - timedelta(days=self.config.late_days)
                start_day = late_start if start_day is None else max(start_day, late_start)
            if start_day is not None:
                start_after = root + self.profile.day_dir(start_day).rstrip("/")
            for obj in self.store.list_objects(root, start_after):
                day = self.profile.day_of(obj.key[len(self.prefix) :])
                if day is None or obj.key.endswith("/"):
                    continue
                stats.listed += 1
                if day <= ceiling and (newest is None or day > newest):
                    newest = day
                if self._is_pending(obj):
                    pending.append((day, obj.key, obj))
            if newest is not None:
                self.newest_days[root] = newest
        metrics.OBJECTSTORE_OBJECTS_LISTED.labels(self._connector).inc(stats.listed)
        pending.sort(key=lambda item: (item[0], item[1]))
        return [obj for _day, _key, obj in pending]

    def _set_lag(self, remaining: list[ObjectInfo]) -> None:
        oldest = min((o.last_modified for o in remaining), default=None)
        lag = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        metrics.OBJECTSTORE_SOURCE_LAG.labels(self._connector).set(lag)

    # the listing horizon --------------------------------------------------------------------

    def _horizon(self, root: str) -> date | None:
        value = (self.positions or {}).get(HORIZON_PREFIX + root)
        return None if value is None else date.fromisoformat(value["horizon"])

    def _listed_at(self, position_key: str) -> tuple[str, date] | None:
        """(root, date partition) of the object a position key names; None when it is not
        one of this feed's objects (another prefix, a horizon)."""
        if isinstance(self.store, S3Store):
            bucket = f"{self.store.bucket}/"
            if not position_key.startswith(bucket):
                return None
            key = position_key[len(bucket) :]
        elif isinstance(self.store, LocalStore):
            try:
                key = Path(position_key).relative_to(self.store.root.resolve()).as_posix()
            except ValueError:
                return None
        else:
            return None
        if not key.startswith(self.prefix):
            return None
        day = self.profile.day_of(key[len(self.prefix) :])
        root = next((r for r in self.newest_days if key.startswith(r)), None)
        return None if day is None or root is None else (root, day)

    def forget_behind_horizon(self) -> int:
        """Tombstone the positions of the objects no listing reads again: done or failed, in a
        date partition before the listing horizon of their root (``late_days`` before the
        newest partition seen). The horizon is written first, and only once Kafka acknowledged
        it are the tombstones (:meth:`CheckpointStore.forget`): a restart lists from the
        horizon, so a forgotten object is never listed, let alone read, again. Returns how many
        positions were forgotten; a Kafka failure leaves them for the next pass."""
        if not self.newest_days or self.positions is None:
            return 0
        now_ms = int(time.time() * 1000)
        horizons: dict[str, dict[str, Any]] = {}
        for root, newest in self.newest_days.items():
            horizon = newest - timedelta(days=self.config.late_days)
            known = self._horizon(root)
            if known is None or horizon > known:
                horizons[HORIZON_PREFIX + root] = {"horizon": horizon.isoformat(), "at": now_ms}
        limit: dict[str, date] = {}
        for root in self.newest_days:
            value = horizons.get(HORIZON_PREFIX + root) or self.positions.get(HORIZON_PREFIX + root)
            if value is not None:
                limit[root] = date.fromisoformat(value["horizon"])
        obsolete = []
        for key, value in self.positions.items():
            if key.startswith(HORIZON_PREFIX) or not (value.get("done") or value.get("failed")):
                continue
            where = self._listed_at(key)
            if where is not None and where[0] in limit and where[1] < limit[where[0]]:
                obsolete.append(key)
        if not horizons and not obsolete:
            return 0
        try:
            self.checkpoints.forget(obsolete, after=horizons)
        except BrokerError as exc:
            log.warning(
                "listing horizon not checkpointed (%s); the obsolete positions stay",
                exc,
                extra={"connector": self._connector},
            )
            return 0
        self.positions.update(horizons)
        for key in obsolete:
            del self.positions[key]
        if obsolete:
            metrics.CHECKPOINTS_FORGOTTEN.labels(self._connector).inc(len(obsolete))
            log.info(
                "forgot %d positions behind the listing horizon %s",
                len(obsolete),
                ", ".join(f"{r}{d}" for r, d in sorted(limit.items())),
                extra={"connector": self._connector},
            )
        return len(obsolete)

    # the Source protocol -------------------------------------------------------------------

    def open(self, checkpoints: dict[str, dict[str, Any]]) -> None:
        self.positions = checkpoints

    def next_batch(self) -> Batch:
        pending = self._start_pass() if self._pending is None else self._pending
        stats = self._pass or PassStats()
        reading = self._reading
        if reading is None:
            if self._stopping.is_set():
                return Batch(checkpoint=True)
            if self._next >= len(pending):
                return self._end_pass()
            reading = self._open_next(pending)
        try:
            return self._read(reading, stats)
        except TransientSourceError:
            self._close_pass()
            raise

    def snapshot(self) -> dict[str, dict[str, Any]]:
        progress, self._progress = self._progress, {}
        self._rows_since = self._finished_since = 0
        self.positions = {**(self.positions or {}), **progress}
        return progress

    def rewind(self) -> None:
        """Kafka did not acknowledge: nothing since the last snapshot counts; the next pass
        re-lists and resumes every object at its checkpoint. A bounded run gives up."""
        self._progress = {}
        self._rows_since = self._finished_since = 0
        self._close_pass()
        if self._give_up_on_kafka:
            raise BrokerError(
                "Kafka did not acknowledge the records; nothing past them checkpointed"
            )

    def caught_up(self) -> bool:
        if self._pending is not None or self._progress:
            return False
        if self._passes_left is not None:
            return self._passes_left <= 0
        return self._idle or not self.config.once

    def pause(self, published: int) -> float:
        if self._pending is not None or self.config.once:
            return 0.0
        return self.config.poll_interval_s

    # passes ---------------------------------------------------------------------------------

    def _start_pass(self) -> list[ObjectInfo]:
        stats = PassStats()
        self.forget_behind_horizon()
        pending = self.list_pending(stats)
        self._set_lag(pending)
        self._pass, self._pending, self._next = stats, pending, 0
        # Small objects are fetched a few ahead: one GET costs tens of milliseconds, and a
        # backlog of Firehose objects would otherwise be read at the speed of request latency.
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
        self._ahead = {}
        for j in range(PREFETCH_DEPTH):
            self._prefetch(j)
        return pending

    def _prefetch(self, j: int) -> None:
        if self._pending is None or self._pool is None:
            return
        if j < len(self._pending) and 0 < self._pending[j].size <= PREFETCH_MAX_BYTES:
            self._ahead[j] = self._pool.submit(self.store.fetch, self._pending[j])

    def _end_pass(self) -> Batch:
        stats = self._pass or PassStats()
        self._pass = None  # finished: counted below, not as a stopped pass
        self._close_pass()
        self._last_pass = stats
        self.total.add(stats)
        self._idle = stats.ingested + stats.failed == 0 and not stats.errors
        if self._passes_left is not None:
            self._passes_left -= 1
        return Batch(checkpoint=True)  # the finished objects not yet checkpointed

    def _close_pass(self) -> None:
        """End the pass in progress (finished, failed or stopped): no prefetch left running."""
        if self._pass is not None and self._pending is not None and self._stopping.is_set():
            self.total.add(self._pass)
        for future in self._ahead.values():
            future.cancel()
        self._ahead = {}
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._pending = None
        self._pass = None
        self._reading = None

    # reading --------------------------------------------------------------------------------

    def _open_next(self, pending: list[ObjectInfo]) -> _Reading:
        i = self._next
        self._next += 1
        obj = pending[i]
        self._prefetch(i + PREFETCH_DEPTH)
        previous = (self.positions or {}).get(self.position_key(obj))
        skip = 0
        if previous is not None and previous.get("etag") == obj.etag:
            skip = int(previous.get("rows_done", 0))
        reader = ObjectReader(self.store, obj, skip, self._ahead.pop(i, None))
        self._reading = _Reading(obj, self.store.url(obj), reader, iter(reader), skip)
        return self._reading

    def _position(self, reading: _Reading, **state: Any) -> None:
        self._progress[self.position_key(reading.obj)] = {
            "etag": reading.obj.etag,
            "size": reading.obj.size,
            "rows_done": reading.rows_done,
            "done": False,
            "failed": None,
            "updated_at": int(time.time() * 1000),
            "format": reading.reader.fmt,
            **state,
        }

    def _read(self, reading: _Reading, stats: PassStats) -> Batch:
        """Up to :data:`BATCH_ROWS` rows of the object being read, ending at a mid-file
        checkpoint; the object's position moves with them."""
        every = self.config.checkpoint_every
        limit = max(1, min(BATCH_ROWS, every - self._rows_since)) if every else BATCH_ROWS
        records: list[SourceRecord] = []
        fmt = reading.reader.fmt
        try:
            for row in reading.rows:
                fmt = reading.reader.fmt
                records.append(
                    SourceRecord(
                        self._key(row.doc), row.value, source=f"{reading.url}#{row.index}", fmt=fmt
                    )
                )
                reading.rows_done = row.index + 1
                if len(records) >= limit:
                    break
            else:
                return self._finished(reading, stats, records)
        except ObjectReadError as exc:
            return self._unreadable(reading, stats, records, exc)
        except ObjectChangedError as exc:
            self._error(stats, "changed")
            log.warning("object %s changed while being read (%s); re-listing", reading.url, exc)
            self._reading = None
            return Batch(records=records, checkpoint=True)
        stats.records += len(records)
        self._rows_since += len(records)
        self._position(reading)
        return Batch(records=records, checkpoint=bool(every) and self._rows_since >= every)

    def _finished(self, reading: _Reading, stats: PassStats, records: list[SourceRecord]) -> Batch:
        stats.records += len(records)
        self._rows_since += len(records)
        self._position(reading, done=True)
        self._reading = None
        self._finished_since += 1
        stats.ingested += 1
        stats.bytes += reading.obj.size
        metrics.OBJECTSTORE_OBJECTS_INGESTED.labels(self._connector, "done").inc()
        metrics.CONNECTOR_BYTES.labels(self._connector).inc(reading.obj.size)
        log.info(
            "ingested %s: %d records from row %d (%s)",
            reading.url,
            reading.rows_done - reading.skip,
            reading.skip,
            reading.reader.fmt,
            extra={"connector": self._connector, "source": reading.url},
        )
        if self._pending is not None:
            self._set_lag(self._pending[self._next :])
        every = self.config.checkpoint_every
        due = self._finished_since >= DEFERRED_OBJECTS or (every and self._rows_since >= every)
        return Batch(records=records, checkpoint=bool(due))

    def _unreadable(
        self,
        reading: _Reading,
        stats: PassStats,
        records: list[SourceRecord],
        exc: ObjectReadError,
    ) -> Batch:
        """Publish what was readable, dead-letter the object, then park it: it is retried only
        if its ETag changes. The runner writes the dead letter before the checkpoint."""
        stats.records += len(records)
        self._reading = None
        fmt = reading.reader.fmt
        self._position(reading, failed=f"{exc.kind}: {exc}")
        stats.failed += 1
        stats.errors[exc.kind] = stats.errors.get(exc.kind, 0) + 1  # the runner counts the metric
        metrics.OBJECTSTORE_OBJECTS_INGESTED.labels(self._connector, "failed").inc()
        log.error(
            "object %s cannot be read past row %d (%s): %s; it is skipped until it changes",
            reading.url,
            reading.rows_done,
            exc.kind,
            exc,
            extra={"connector": self._connector, "source": reading.url, "reason": exc.kind},
        )
        skipped = Skipped(
            kind=exc.kind,
            reason=f"unreadable_object:{exc.kind}",
            detail=f"{exc} ({reading.rows_done - reading.skip} records before it were published)",
            source_position=f"{reading.url}#{reading.rows_done}",
            raw_key=reading.url.encode(),
            headers={
                "connector": self.profile.connector,
                "format": fmt,
                "etag": reading.obj.etag,
                "size": str(reading.obj.size),
            },
        )
        return Batch(records=records, skipped=[skipped], checkpoint=True)

    def _error(self, stats: PassStats, kind: str) -> None:
        stats.errors[kind] = stats.errors.get(kind, 0) + 1
        metrics.CONNECTOR_ERRORS.labels(self._connector, kind).inc()

    def _key(self, doc: Any) -> str | None:
        if not isinstance(doc, dict):
            return None
        try:
            return self.key_of(doc)
        except Exception:
            # No usable id (the normalizer's RecordError, a wrong-typed field): the record is
            # published without a key and the worker rejects it as missing_event_id (§5).
            return None


@dataclass
class _Reading:
    """The object being read: its rows' iterator survives from one batch to the next."""

    obj: ObjectInfo
    url: str
    reader: ObjectReader
    rows: Iterator[Any]
    skip: int
    rows_done: int = 0

    def __post_init__(self) -> None:
        self.rows_done = self.skip
