"""The source loop: list a feed's objects, publish their records, checkpoint after Kafka acks."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from connectors.feeds import FeedProfile
from connectors.objectstore.errors import ObjectChangedError, ObjectReadError, TransientSourceError
from connectors.objectstore.reader import ObjectReader
from connectors.objectstore.settings import ObjectStoreSettings
from connectors.objectstore.stores import ObjectInfo, ObjectStore, S3Store, open_store
from connectors.runtime.backoff import Backoff
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.deadletter import DeadLetters, Skipped
from connectors.runtime.kafka import KeyFunction, RawPublisher
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.settings import Settings

log = logging.getLogger("connectors.objectstore")

DEFERRED_OBJECTS = 200  # finished objects whose checkpoints are written together
PREFETCH_THREADS = 4
PREFETCH_DEPTH = 8
PREFETCH_MAX_BYTES = 8 << 20  # so prefetched bodies hold at most 64 MiB
KAFKA_BACKOFF_S = (1.0, 30.0)  # first and longest wait after Kafka did not acknowledge a pass
STORE_BACKOFF_S = (1.0, 60.0)  # ... after the store did not answer


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


class _Stopped(Exception):
    """:meth:`ObjectStoreSource.stop` was called; raised where the run can end cleanly."""


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
        self._deferred: dict[str, dict[str, Any]] = {}
        self._records_since_commit = 0
        self._dead_letters: DeadLetters | None = None
        self._connector = profile.connector
        self._stopping = threading.Event()
        self._pass = PassStats()

    def stop(self) -> None:
        """Ask the run to end (SIGTERM): the object being read is checkpointed at the last row
        Kafka acknowledged and :meth:`run` returns; a restart resumes at that row."""
        self._stopping.set()

    # positions ------------------------------------------------------------------------------

    def position_key(self, obj: ObjectInfo) -> str:
        """``<bucket>/<key>`` (S3) or the absolute path: unique per object across sources."""
        if isinstance(self.store, S3Store):
            return f"{self.store.bucket}/{obj.key}"
        return self.store.url(obj).removeprefix("file://")

    def _is_pending(self, obj: ObjectInfo) -> bool:
        assert self.positions is not None
        done = self.positions.get(self.position_key(obj))
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

        The first pass lists everything; later passes start ``late_days`` partitions before the
        newest partition seen, so late files in recent partitions are found without re-listing
        the whole history on every poll. The newest day is kept per root (FlareLane projects
        lag independently) and never runs ahead of tomorrow, so one object in a bogus future
        partition cannot hide the real ones.
        """
        if self.positions is None:
            self.positions = self.checkpoints.load()
        pending: list[tuple[date, str, ObjectInfo]] = []
        ceiling = datetime.now(UTC).date() + timedelta(days=1)
        for root in self._roots():
            newest = self.newest_days.get(root)
            start_after = ""
            if newest is not None:
                start_day = newest - timedelta(days=self.config.late_days)
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

    # ingesting ------------------------------------------------------------------------------

    def _checkpoint(
        self, obj: ObjectInfo, rows_done: int, *, defer: bool = False, **state: Any
    ) -> None:
        """Flush first: a position is written only once every record it covers is acked.

        ``defer`` batches the checkpoints of finished objects: Firehose delivers many small
        objects, and one flush and one checkpoint round trip per object would bound the feed
        to a few dozen objects a second. Deferred positions are written by
        :meth:`_commit_deferred`, after the flush that covers them.
        """
        assert self.positions is not None
        value = {
            "etag": obj.etag,
            "size": obj.size,
            "rows_done": rows_done,
            "done": False,
            "failed": None,
            "updated_at": int(time.time() * 1000),
            **state,
        }
        self._deferred[self.position_key(obj)] = value
        if not defer or len(self._deferred) >= DEFERRED_OBJECTS:
            self._commit_deferred()

    def _commit_deferred(self) -> None:
        assert self.positions is not None
        if not self._deferred:
            return
        self.publisher.flush()
        self.checkpoints.commit_many(self._deferred)
        self.positions.update(self._deferred)
        self._deferred = {}
        self._records_since_commit = 0

    def _dead_letter(
        self, obj: ObjectInfo, position: str, fmt: str, exc: ObjectReadError, published: int
    ) -> None:
        """One ``DeadLetter`` for an object that cannot be read to its end (see
        :mod:`connectors.runtime.deadletter`)."""
        if self._dead_letters is None:
            self._dead_letters = DeadLetters(self.settings, self.profile.vendor)
        self._dead_letters.write(
            Skipped(
                kind=exc.kind,
                reason=f"unreadable_object:{exc.kind}",
                detail=f"{exc} ({published} records before it were published)",
                source_position=position,
                raw_key=self.store.url(obj).encode(),
                headers={
                    "connector": self.profile.connector,
                    "format": fmt,
                    "etag": obj.etag,
                    "size": str(obj.size),
                },
            ),
            source_topic=self.publisher.topic,
        )

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

    def ingest(
        self, obj: ObjectInfo, stats: PassStats, prefetched: Future[bytes] | None = None
    ) -> None:
        """Publish one object's records from its checkpointed row on, then mark it done."""
        assert self.positions is not None
        previous = self.positions.get(self.position_key(obj))
        skip = 0
        if previous is not None and previous.get("etag") == obj.etag:
            skip = int(previous.get("rows_done", 0))
        url = self.store.url(obj)
        reader = ObjectReader(self.store, obj, skip, prefetched)
        rows_done = skip
        records = metrics.CONNECTOR_RECORDS.labels(self._connector)
        try:
            for row in reader:
                self.publisher.publish(
                    self._key(row.doc), row.value, source=f"{url}#{row.index}", fmt=reader.fmt
                )
                records.inc()
                stats.records += 1
                rows_done = row.index + 1
                self._records_since_commit += 1
                if self._records_since_commit >= self.config.checkpoint_every:
                    self._checkpoint(obj, rows_done, format=reader.fmt)
                if self._stopping.is_set():
                    self._checkpoint(obj, rows_done, format=reader.fmt)
                    raise _Stopped
        except ObjectReadError as exc:
            # Publish what was readable, dead-letter the object, then park it: it is retried
            # only if its ETag changes. Dead letter before checkpoint: at least once.
            self._commit_deferred()
            self._dead_letter(obj, f"{url}#{rows_done}", reader.fmt, exc, rows_done - skip)
            self._checkpoint(obj, rows_done, format=reader.fmt, failed=f"{exc.kind}: {exc}")
            self._error(stats, exc.kind)
            stats.failed += 1
            metrics.OBJECTSTORE_OBJECTS_INGESTED.labels(self._connector, "failed").inc()
            log.error(
                "object %s cannot be read past row %d (%s): %s; it is skipped until it changes",
                url,
                rows_done,
                exc.kind,
                exc,
                extra={"connector": self.profile.connector, "source": url, "reason": exc.kind},
            )
            return
        except ObjectChangedError as exc:
            self._commit_deferred()
            self._error(stats, "changed")
            log.warning("object %s changed while being read (%s); re-listing", url, exc)
            return
        except TransientSourceError:
            if rows_done > skip:  # keep the progress: the retry resumes here
                self._checkpoint(obj, rows_done, format=reader.fmt)
            raise
        self._checkpoint(obj, rows_done, format=reader.fmt, done=True, defer=True)
        stats.ingested += 1
        stats.bytes += obj.size
        metrics.OBJECTSTORE_OBJECTS_INGESTED.labels(self._connector, "done").inc()
        metrics.CONNECTOR_BYTES.labels(self._connector).inc(obj.size)
        log.info(
            "ingested %s: %d records from row %d (%s)",
            url,
            rows_done - skip,
            skip,
            reader.fmt,
            extra={"connector": self.profile.connector, "source": url},
        )

    def poll(self) -> PassStats:
        """One listing pass and the ingestion of everything it found pending."""
        stats = self._pass = PassStats()
        pending = self.list_pending(stats)
        self._set_lag(pending)
        # Small objects are fetched a few ahead: one GET costs tens of milliseconds, and a backlog
        # of Firehose objects would otherwise be read at the speed of request latency.
        pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
        ahead: dict[int, Future[bytes]] = {}

        def prefetch(j: int) -> None:
            if j < len(pending) and 0 < pending[j].size <= PREFETCH_MAX_BYTES:
                ahead[j] = pool.submit(self.store.fetch, pending[j])

        try:
            for j in range(PREFETCH_DEPTH):
                prefetch(j)
            for i, obj in enumerate(pending):
                if self._stopping.is_set():
                    raise _Stopped
                prefetch(i + PREFETCH_DEPTH)
                try:
                    self.ingest(obj, stats, ahead.pop(i, None))
                except TransientSourceError:
                    self._error(stats, "transient")
                    raise
                self._set_lag(pending[i + 1 :])
        except BaseException:
            for future in ahead.values():
                future.cancel()
            with contextlib.suppress(Exception):  # best effort: keep what finished before
                self._commit_deferred()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._commit_deferred()
        return stats

    def run(self, *, max_transient_failures: int = 5) -> PassStats:
        """Poll until stopped; with ``once``, until a pass finds nothing new.

        Transient store failures back off and retry; in ``once`` mode, after
        ``max_transient_failures`` in a row the run stops with the last error.
        """
        total = PassStats()
        kafka = Backoff(*KAFKA_BACKOFF_S)
        store = Backoff(*STORE_BACKOFF_S)
        while not self._stopping.is_set():
            try:
                stats = self.poll()
            except _Stopped:
                total.add(self._pass)
                log.info("stopped; positions checkpointed", extra={"connector": self._connector})
                return total
            except BrokerError as exc:
                # Kafka away longer than a flush waits, or the producer fenced: nothing past
                # the last checkpoint counts; the next pass re-reads from it (at least once).
                if self.config.once:
                    raise
                delay = kafka.failed()
                self._error(PassStats(), "kafka")
                log.error(
                    "Kafka did not acknowledge (%d in a row): %s; retrying from the checkpoints",
                    kafka.failures,
                    exc,
                    extra={"connector": self._connector},
                )
                self.publisher.renew_if_broken()
                self.positions = None
                self._deferred = {}
                self._records_since_commit = 0
                self._stopping.wait(delay)
                continue
            except TransientSourceError as exc:
                delay = store.failed()
                log.warning("pass failed (%d in a row): %s", store.failures, exc)
                if self.config.once and store.failures >= max_transient_failures:
                    raise
                self._stopping.wait(delay)
                continue
            kafka.succeeded()
            store.succeeded()
            total.add(stats)
            nothing_new = stats.ingested + stats.failed == 0 and not stats.errors
            if self.config.once and nothing_new:
                return total
            if not self.config.once:
                self._stopping.wait(self.config.poll_interval_s)
        return total
