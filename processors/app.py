"""The Faust worker: raw topics -> normalize -> dedupe -> canonical events, stats, dead letters.

Two agents:

``normalize_agent`` consumes every raw topic in batches. Each record is normalized (pure
functions in :mod:`processors.normalize`); a rejected record goes to ``dead-letter``; a canonical
event is checked against the dedupe table (a tumbling window of ``CRM_DEDUPE_WINDOW``, looked up
in the current and the previous window, so an id is remembered for at least one full window and
at most two), sent to ``events`` keyed by ``event_id``, and its stats increment goes to
``stats-updates`` keyed by campaign. Only after Kafka acknowledged the batch's outputs are the
dedupe marks written: a crash may repeat an event, never lose one.

``stats_agent`` consumes ``stats-updates`` (so each campaign is counted by exactly one worker),
adds each increment to a tumbling window per configured size on ``occurred_at``, and emits the
window's new totals to the compacted ``campaign-stats`` topic as an upsert.

Dedupe relies on raw records being keyed by the vendor event id (what every connector does), so
that all copies of an event land on the same raw partition and therefore the same table
partition.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
import weakref
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import EventT

from crmstream import metrics
from crmstream.kafka import faust_broker_kwargs
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import VENDORS, TopicSpec, create_topics, raw_topic
from processors.normalize import NORMALIZERS
from processors.normalize.model import CanonicalEvent, NormalizeContext, Rejected, Skipped
from processors.outputs import ConfluentOutputs, FaustOutputs, Outputs
from processors.records import (
    RawPosition,
    WindowCounts,
    campaign_key,
    canonical_record,
    dead_letter_record,
    headers_dict,
    parse_stats_updates,
    stats_increment,
    stats_record,
    stats_updates_value,
    stats_upsert_key,
    window_start,
)

log = logging.getLogger("crmstream.worker")

EXIT_BUG = 70  # EX_SOFTWARE: an unexpected error stopped the worker


class WorkerBug(Exception):
    """An error that is not about a bad record: the worker must stop, not skip."""


def _set_current(event: EventT) -> None:
    """Make ``event`` Faust's current event.

    Faust writes a table change to the changelog partition of the *current* event and takes a
    window's time from it. In a batch, the current event is the batch's last one, so before each
    table operation the record it belongs to is made current again.
    """
    _current_event.set(weakref.ref(event))


def _die(exc: BaseException, what: str) -> None:
    """Stop the process without committing the batch in hand.

    Faust acks the events of a batch when the batch's generator is closed, even by an error, and
    then commits them on shutdown. Exiting at once keeps them uncommitted, so the batch is
    processed again after a restart (at-least-once) instead of being skipped.
    """
    log.critical("worker stopped: %s: %r", what, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_BUG)


def _estimated_keys(wrapper: Any) -> int:
    """RocksDB's own estimate of the keys in a table's local partitions (cheap, approximate)."""
    store = wrapper.table.data
    total = 0
    for db in getattr(store, "_dbs", {}).values():
        estimate = db.property_int_value("rocksdb.estimate-num-keys")
        total += int(estimate or 0)
    return total


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """The Faust changelog topics, created up front with the configured partitions and
    replication (Faust would create them with its own defaults otherwise)."""
    specs = [
        TopicSpec(
            f"{settings.app_id}-dedupe-changelog",
            "dedupe marks",
            {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(settings.dedupe_window_s * 2 * 1000) + 86400000),
            },
        )
    ]
    for label, _size in settings.stats_window_seconds():
        specs.append(
            TopicSpec(
                f"{settings.app_id}-stats-{label}-changelog",
                f"campaign stats, {label} windows",
                {
                    "cleanup.policy": "compact,delete",
                    "retention.ms": str(int(settings.stats_retention_s * 1000) + 86400000),
                },
            )
        )
    return specs


class Pipeline:
    """The worker's state and its two batch handlers, bound to one Faust app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serde = AvroSerde(settings)
        self.events_topic = settings.topic("events")
        self.dead_letter_topic = settings.topic("dead-letter")
        self.stats_updates_topic = settings.topic("stats-updates")
        self.stats_topic = settings.topic("campaign-stats")
        self.vendor_of_topic = {settings.topic(raw_topic(v)): v for v in VENDORS}
        self.window_s = settings.dedupe_window_s
        self.windows = settings.stats_window_seconds()
        self.window_size = dict(self.windows)
        self.stats_retention_ms = int(settings.stats_retention_s * 1000)
        # The occurred_at (seconds) of the stats increment being applied; the stats tables'
        # windows are relative to it.
        self._occurred_s: contextvars.ContextVar[float] = contextvars.ContextVar("occurred_s")
        self._contexts: dict[str | None, NormalizeContext] = {}
        self._outputs_started = False

        self.app = faust.App(
            # Under the topic prefix, so that Faust's own topics (table changelogs, the assignor's
            # leader topic) are named <prefix><app id>-... like everything else.
            settings.topic(settings.app_id),
            store="rocksdb://",
            datadir=str(settings.data_path / "faust"),
            topic_partitions=settings.partitions,
            topic_replication_factor=max(1, settings.replication_factor),
            processing_guarantee="exactly_once" if settings.exactly_once else "at_least_once",
            web_enabled=False,
            key_serializer="raw",
            value_serializer="raw",
            table_cleanup_interval=60.0,
            **faust_broker_kwargs(settings),
        )
        app = self.app
        self.outputs: Outputs = (
            FaustOutputs(app) if settings.exactly_once else ConfluentOutputs(settings)
        )
        self.raw = app.topic(
            *self.vendor_of_topic,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        self.stats_updates = app.topic(
            self.stats_updates_topic,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        self.dedupe = app.Table(
            "dedupe",
            default=bytes,
            partitions=settings.partitions,
            schema=faust.Schema(key_serializer="json", value_serializer="raw"),
        ).tumbling(timedelta(seconds=self.window_s), expires=timedelta(seconds=2 * self.window_s))
        self.stats_tables = {
            label: app.Table(
                f"stats-{label}",
                default=dict,
                partitions=settings.partitions,
                schema=faust.Schema(key_serializer="json", value_serializer="json"),
            )
            .tumbling(size, expires=timedelta(seconds=settings.stats_retention_s))
            .relative_to(self._stats_time)  # type: ignore[attr-defined]
            for label, size in self.windows
        }
        app.agent(self.raw, name="normalize")(self._normalize_agent)
        app.agent(self.stats_updates, name="stats")(self._stats_agent)
        app.timer(interval=10.0, name="observe")(self._observe)

    # -- helpers -------------------------------------------------------------------------

    def _stats_time(self, event: EventT | None) -> float:
        return self._occurred_s.get()

    def _context(self, app_id: str | None) -> NormalizeContext:
        ctx = self._contexts.get(app_id)
        if ctx is None:
            ctx = self._contexts[app_id] = NormalizeContext(app_id=app_id)
        return ctx

    async def _start_outputs(self) -> None:
        if not self._outputs_started:
            await self.outputs.start()
            self._outputs_started = True

    async def _observe(self) -> None:
        """Gauges that are read, not counted: raw-topic lag and the tables' key counts."""
        consumer = self.app.consumer
        lag = dict.fromkeys(VENDORS, 0)
        read_offsets = getattr(consumer, "_read_offset", {})
        for tp in consumer.assignment():
            vendor = self.vendor_of_topic.get(tp.topic)
            highwater = consumer.highwater(tp) if vendor else None
            if vendor is None or highwater is None:
                continue
            read = read_offsets.get(tp)
            lag[vendor] += max(0, highwater - (read + 1 if read is not None else 0))
        for vendor, records in lag.items():
            metrics.RAW_LAG.labels(vendor).set(records)
        tables = {"dedupe": self.dedupe, **{f"stats-{k}": t for k, t in self.stats_tables.items()}}
        for name, wrapper in tables.items():
            metrics.TABLE_KEYS.labels(name).set(_estimated_keys(wrapper))

    # -- raw records ---------------------------------------------------------------------

    async def _normalize_agent(self, stream: Any) -> None:
        async for batch in stream.take_events(
            self.settings.worker_batch_size, within=self.settings.worker_batch_within_s
        ):
            try:
                await self.process_raw_batch(batch)
            except Exception as exc:
                _die(exc, "processing a raw batch")

    async def process_raw_batch(self, batch: Sequence[EventT]) -> None:
        started = time.perf_counter()
        await self._start_outputs()
        encode = self.serde.encode
        now_ms = time.time_ns() // 1_000_000
        marks: list[tuple[EventT, str, str, str, int]] = []
        seen_in_batch: set[str] = set()
        stats: dict[bytes, list[tuple[int, str, str]]] = {}
        counts_in: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        out: dict[tuple[str, str], int] = {}
        dedupe = self.dedupe

        for event in batch:
            message = event.message
            vendor = self.vendor_of_topic[message.topic]
            counts_in[vendor] = counts_in.get(vendor, 0) + 1
            raw = message.value or b""
            pos = RawPosition(
                message.topic,
                message.partition,
                message.offset,
                int(message.timestamp * 1000),
                headers_dict(message.headers),
            )
            try:
                outcome = NORMALIZERS[vendor](raw, self._context(pos.app_id))
            except Exception as exc:
                raise WorkerBug(
                    f"{vendor} normalizer raised on {pos.kafka_position}: {exc!r}"
                ) from exc

            if isinstance(outcome, Skipped):
                metrics.SKIPPED.labels(vendor, outcome.reason).inc()
                continue
            if isinstance(outcome, Rejected):
                record = dead_letter_record(
                    raw=raw,
                    raw_key=message.key,
                    vendor=vendor,
                    reason=outcome.reason.value,
                    detail=outcome.detail,
                    pos=pos,
                    now_ms=now_ms,
                )
                self.outputs.send(
                    self.dead_letter_topic,
                    message.key,
                    encode("DeadLetter", record, self.dead_letter_topic),
                )
                metrics.DEAD_LETTERS.labels(vendor, outcome.reason.value).inc()
                log.info(
                    "dead letter %s: %s",
                    outcome.reason.value,
                    outcome.detail,
                    extra={"vendor": vendor, "source": pos.source or pos.kafka_position},
                )
                continue

            assert isinstance(outcome, CanonicalEvent)
            event_id = outcome.event_id
            _set_current(event)
            if event_id in seen_in_batch or self._seen(dedupe, event_id):
                duplicates[vendor] = duplicates.get(vendor, 0) + 1
                continue
            seen_in_batch.add(event_id)
            key = event_id.encode()
            self.outputs.send(
                self.events_topic,
                key,
                encode("CanonicalEvent", canonical_record(outcome, pos, now_ms), self.events_topic),
            )
            stats.setdefault(campaign_key(outcome).encode(), []).append(stats_increment(outcome))
            marks.append((event, event_id, vendor, outcome.event_type.value, pos.ingested_at))

        # One stats-updates record per campaign and batch, not per event.
        for key, increments in stats.items():
            self.outputs.send(self.stats_updates_topic, key, stats_updates_value(increments))
        # Everything this batch produced must be acknowledged before any dedupe mark is written.
        await self.outputs.acked()
        acked_ms = time.time_ns() // 1_000_000
        for event, event_id, vendor, event_type, ingested_at in marks:
            _set_current(event)
            dedupe[event_id] = b"1"
            out[(vendor, event_type)] = out.get((vendor, event_type), 0) + 1
            metrics.END_TO_END_SECONDS.labels(vendor).observe(max(0, acked_ms - ingested_at) / 1000)
        # Counters once per batch and label set, not per record.
        for (vendor, event_type), n in out.items():
            metrics.EVENTS_OUT.labels(vendor, event_type).inc(n)
        for vendor, n in duplicates.items():
            metrics.DUPLICATES.labels(vendor).inc(n)
        elapsed = time.perf_counter() - started
        for vendor, n in counts_in.items():
            metrics.RECORDS_IN.labels(vendor).inc(n)
            hist = metrics.PROCESSING_SECONDS.labels(vendor)
            for _ in range(n):
                hist.observe(elapsed)

    def _seen(self, dedupe: Any, event_id: str) -> bool:
        """In the current window or the previous one (so an id is kept >= one window)."""
        window_set = dedupe[event_id]
        return bool(window_set.current() or window_set.delta(self.window_s))

    # -- stats ---------------------------------------------------------------------------

    async def _stats_agent(self, stream: Any) -> None:
        # Every window touched in a batch costs one table write, one changelog record and one
        # upsert, so larger batches cost less per increment (CRM_STATS_BATCH_SIZE). Batches of
        # 5000 within 1 s stalled the restart test on Tansu; the default stays at 500.
        async for batch in stream.take_events(
            self.settings.stats_batch_size, within=self.settings.stats_batch_within_s
        ):
            try:
                await self.process_stats_batch(batch)
            except Exception as exc:
                _die(exc, "processing a stats batch")

    async def process_stats_batch(self, batch: Sequence[EventT]) -> None:
        """Add a batch of increments to the windows, then write each touched window once.

        A window's counts are read from the table on first touch, updated in memory for the
        rest of the batch, and written back (one changelog record) and upserted once.
        """
        await self._start_outputs()
        now_ms = time.time_ns() // 1_000_000
        oldest_ms = now_ms - self.stats_retention_ms
        touched: dict[tuple[str, str, int], tuple[EventT, WindowCounts]] = {}
        for event in batch:
            message = event.message
            campaign = (message.key or b"").decode()
            _set_current(event)
            for occurred, event_type, channel in parse_stats_updates(message.value or b"[]"):
                if occurred < oldest_ms:
                    # Its window has been closed (and expired from the table) already.
                    metrics.STATS_LATE.inc()
                    continue
                for label, size in self.windows:
                    start = window_start(occurred, size)
                    entry = touched.get((label, campaign, start))
                    if entry is None:
                        self._occurred_s.set(start / 1000)
                        # value(), not current(): current() is always relative to the Kafka
                        # timestamp, value() to the table's relative_to (occurred_at here).
                        value = self.stats_tables[label][campaign].value()
                        entry = touched[(label, campaign, start)] = (
                            event,
                            WindowCounts.load(value),
                        )
                    entry[1].add(event_type, channel)
        for (label, campaign, start), (event, counts) in touched.items():
            # The campaign's records all come from one partition: any of its events is the
            # right context for the changelog; the window is the one starting at `start`.
            _set_current(event)
            self._occurred_s.set(start / 1000)
            self.stats_tables[label][campaign] = counts.dump()
            size = self.window_size[label]
            record = stats_record(campaign, label, start, size, counts, now_ms)
            self.outputs.send(
                self.stats_topic,
                stats_upsert_key(campaign, label, start),
                self.serde.encode("CampaignStats", record, self.stats_topic),
            )
            metrics.STATS_UPSERTS.labels(label).inc()
        await self.outputs.acked()


def create_pipeline(settings: Settings) -> Pipeline:
    return Pipeline(settings)


def run_worker(settings: Settings) -> int:
    """``crm-stream worker``: create missing topics, serve metrics, run until signalled."""
    create_topics(settings, extra=changelog_specs(settings))
    (settings.data_path / "faust").mkdir(parents=True, exist_ok=True)
    metrics.serve(settings.metrics_port)
    pipeline = create_pipeline(settings)
    worker = faust.Worker(
        pipeline.app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()
    return 0
