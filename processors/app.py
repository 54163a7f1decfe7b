"""The Faust worker: raw topics -> normalize -> dedupe -> canonical events, stats, dead letters.

Two agents:

``normalize_agent`` consumes every raw topic in batches. Each record is normalized (pure
functions in :mod:`processors.normalize`); a rejected record goes to ``dead-letter``; a canonical
event is checked against the dedupe table (a tumbling window of ``CRM_DEDUPE_WINDOW`` on the raw
record's Kafka timestamp, looked up in the current and the previous window, so an id is
remembered for at least one full window and at most two), sent to ``events`` keyed by
``event_id``, and its stats increment goes to ``stats-updates``, to its campaign's partition
(one record per partition and batch). Only after Kafka acknowledged the batch's outputs are the
dedupe marks written: a crash may repeat an event, never lose one.

``stats_agent`` consumes ``stats-updates`` (so each campaign is counted by exactly one worker),
adds each increment to a tumbling window per configured size on ``occurred_at``, and emits the
window's new totals to the compacted ``campaign-stats`` topic as an upsert.

The tables are Faust tables in RocksDB (changelog, restore, standbys and assignment are Faust's),
read and written a batch at a time through :mod:`processors.state`.

Dedupe relies on raw records being keyed by the vendor event id (what every connector does), so
that all copies of an event land on the same raw partition and therefore the same table
partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import faust
import orjson
from faust.types import EventT

from crmstream import metrics
from crmstream.errors import ConfigError
from crmstream.kafka import faust_broker_kwargs
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import VENDORS, TopicSpec, create_topics, raw_topic
from processors import faust_patches
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
    stats_partition,
    stats_record,
    stats_updates_value,
    stats_upsert_key,
    window_start,
)
from processors.state import WindowedTable, window_key

log = logging.getLogger("crmstream.worker")

EXIT_BUG = 70  # EX_SOFTWARE: an unexpected error stopped the worker


class WorkerBug(Exception):
    """An error that is not about a bad record: the worker must stop, not skip."""


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


def _estimated_keys(table: WindowedTable) -> int:
    """RocksDB's own estimate of the keys in a table's local partitions (cheap, approximate)."""
    store = table.table.data
    total = 0
    for db in getattr(store, "_dbs", {}).values():
        estimate = db.property_int_value("rocksdb.estimate-num-keys")
        total += int(estimate or 0)
    return total


class _Candidate(NamedTuple):
    """A canonical event of the batch, waiting for its dedupe lookup."""

    event: CanonicalEvent
    pos: RawPosition
    vendor: str
    id_bytes: bytes
    current: bytes  # its dedupe key in the current window
    previous: bytes  # and in the previous one


@dataclass
class _Tally:
    """What one raw batch counted, added to the metrics once per batch."""

    records_in: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    out: dict[tuple[str, str], int] = field(default_factory=dict)
    ingested: list[tuple[str, int]] = field(default_factory=list)  # (vendor, ingested_at)


@dataclass
class _InFlight:
    """A raw batch whose outputs are produced but not yet acknowledged by Kafka."""

    acked: Awaitable[dict[tuple[str, int], int]]
    events: Sequence[EventT]
    marks: dict[int, list[tuple[bytes, bytes]]]
    keys: list[bytes]  # the marks' keys, held in Pipeline._pending_keys meanwhile
    tally: _Tally
    started: float
    done: asyncio.Future[None]  # set once its marks are written and its events acked


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
        faust_patches.apply()
        faust_patches.set_fetch_max_wait(settings.consumer_fetch_max_wait_s)
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
        self._contexts: dict[str | None, NormalizeContext] = {}
        self._outputs_started = False
        self._stats_partitions = settings.partitions
        self._stats_partition_of: dict[str, int] = {}
        # Raw batches produced but not yet acknowledged (CRM_WORKER_MAX_INFLIGHT): the next
        # batch is normalized and produced meanwhile instead of waiting for a broker round trip.
        self._slots = asyncio.Semaphore(settings.worker_max_inflight)
        self._last_in_flight: _InFlight | None = None
        self._pending_keys: set[bytes] = set()

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
            FaustOutputs(app, settings) if settings.exactly_once else ConfluentOutputs(settings)
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
        self.dedupe = WindowedTable(
            self._table("dedupe"),
            size_ms=int(self.window_s * 1000),
            # The current window and the previous one are read; older ones are deleted.
            keep_ms=int(2 * self.window_s * 1000),
        )
        self.stats_tables = {
            label: WindowedTable(
                self._table(f"stats-{label}"),
                size_ms=size * 1000,
                keep_ms=self.stats_retention_ms,
            )
            for label, size in self.windows
        }
        app.agent(self.raw, name="normalize")(self._normalize_agent)
        app.agent(self.stats_updates, name="stats")(self._stats_agent)
        app.timer(interval=10.0, name="observe")(self._observe)
        app.timer(interval=60.0, name="expire")(self._expire)

    # -- helpers -------------------------------------------------------------------------

    def _table(self, name: str) -> Any:
        """A Faust table of raw bytes, partitioned like the stream that writes it."""
        return self.app.Table(
            name,
            partitions=self.settings.partitions,
            key_type=bytes,
            value_type=bytes,
            schema=faust.Schema(key_serializer="raw", value_serializer="raw"),
        )

    def _all_tables(self) -> dict[str, WindowedTable]:
        return {"dedupe": self.dedupe, **{f"stats-{k}": t for k, t in self.stats_tables.items()}}

    async def _expire(self) -> None:
        now_ms = time.time_ns() // 1_000_000
        for table in self._all_tables().values():
            table.expire(now_ms)

    def _context(self, app_id: str | None) -> NormalizeContext:
        ctx = self._contexts.get(app_id)
        if ctx is None:
            ctx = self._contexts[app_id] = NormalizeContext(app_id=app_id)
        return ctx

    async def _start_outputs(self) -> None:
        if not self._outputs_started:
            await self.outputs.start()
            self._stats_partitions = self.outputs.partitions(self.stats_updates_topic)
            self._stats_partition_of.clear()
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
        for name, table in self._all_tables().items():
            metrics.TABLE_KEYS.labels(name).set(_estimated_keys(table))

    # -- raw records ---------------------------------------------------------------------

    async def _normalize_agent(self, stream: Any) -> None:
        try:
            await _each_batch(
                stream,
                self.settings.worker_batch_size,
                self.settings.worker_batch_within_s,
                self.process_raw_batch,
                "processing a raw batch",
            )
        finally:
            # Stopping (or rebalancing): let the batches in flight finish, so that their marks
            # are written and their offsets can be committed.
            last = self._last_in_flight
            if last is not None and not last.done.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(last.done), timeout=30)

    async def process_raw_batch(self, batch: Sequence[EventT]) -> None:
        """Normalize, dedupe and produce one batch, and hand it to :meth:`_finish`, which writes
        its dedupe marks and releases its raw records once Kafka acknowledged its outputs.

        Returns before that acknowledgement (up to ``CRM_WORKER_MAX_INFLIGHT`` batches wait for
        theirs at once). Meanwhile each raw record holds a reference, so Faust does not count it
        as processed (nor commit its offset) when ``take_events`` moves on to the next batch; and
        the batch's dedupe keys are held in memory, so the next batch sees them as marked.
        """
        await self._slots.acquire()
        started = time.perf_counter()
        await self._start_outputs()
        now_ms = time.time_ns() // 1_000_000
        tally = _Tally()
        candidates = self._normalize(batch, now_ms, tally)
        found = self._marked(candidates)
        marks = self._emit(candidates, found, now_ms, tally)
        for event in batch:
            event.message.incref()
        keys = [key for items in marks.values() for key, _ in items]
        self._pending_keys.update(keys)
        in_flight = _InFlight(
            self.outputs.seal(),
            batch,
            marks,
            keys,
            tally,
            started,
            asyncio.get_running_loop().create_future(),
        )
        previous, self._last_in_flight = self._last_in_flight, in_flight
        task = asyncio.ensure_future(self._finish(in_flight, previous))
        task.add_done_callback(_die_if_failed)

    async def _finish(self, batch: _InFlight, previous: _InFlight | None) -> None:
        """After ``previous``, and once Kafka acknowledged the batch's outputs: write its dedupe
        marks, release its raw records (Faust may now commit them) and count it."""
        try:
            if previous is not None:
                await previous.done
            offsets = await batch.acked
            acked_ms = time.time_ns() // 1_000_000
            self.dedupe.set_persisted_offsets(offsets)
            for partition, items in batch.marks.items():
                self.dedupe.put_many(partition, items, self.outputs)
            self._pending_keys.difference_update(batch.keys)
            on_message_out = self.app.sensors.on_message_out
            for event in batch.events:
                if event.ack():
                    message = event.message
                    on_message_out(message.tp, message.offset, message)
            self._count_batch(batch.tally, acked_ms, batch.started)
        finally:
            self._slots.release()
            if not batch.done.done():
                batch.done.set_result(None)
        # The marks' changelog records (this task's own batch of outputs): once acknowledged,
        # a restart with this local state restores only what came after them.
        self.dedupe.set_persisted_offsets(await self.outputs.seal())

    def _normalize(self, batch: Sequence[EventT], now_ms: int, tally: _Tally) -> list[_Candidate]:
        """Every record of the batch through its vendor's normalizer. Rejected records go to the
        dead-letter topic here; canonical events come back with their dedupe keys."""
        encode = self.serde.encode
        size_ms = self.dedupe.size_ms
        candidates: list[_Candidate] = []
        for event in batch:
            message = event.message
            vendor = self.vendor_of_topic[message.topic]
            tally.records_in[vendor] = tally.records_in.get(vendor, 0) + 1
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
            # The dedupe window is on the raw record's Kafka timestamp (the time it reached
            # crm-stream), not on occurred_at: a vendor replaying a week-old event must still
            # meet its mark.
            start = pos.timestamp_ms - pos.timestamp_ms % size_ms
            id_bytes = outcome.event_id.encode()
            candidates.append(
                _Candidate(
                    outcome,
                    pos,
                    vendor,
                    id_bytes,
                    window_key(start, id_bytes),
                    window_key(start - size_ms, id_bytes),
                )
            )
        return candidates

    def _marked(self, candidates: list[_Candidate]) -> set[bytes]:
        """The dedupe keys (current or previous window) already in the table: one RocksDB
        multi-get per partition."""
        lookups: dict[int, list[bytes]] = {}
        for c in candidates:
            keys = lookups.setdefault(c.pos.partition, [])
            keys.append(c.current)
            keys.append(c.previous)
        found: set[bytes] = set()
        pending = self._pending_keys
        for partition, keys in lookups.items():
            for key, value in zip(keys, self.dedupe.get_many(partition, keys), strict=True):
                if value is not None or key in pending:
                    found.add(key)
        return found

    def _emit(
        self, candidates: list[_Candidate], found: set[bytes], now_ms: int, tally: _Tally
    ) -> dict[int, list[tuple[bytes, bytes]]]:
        """Send each first-seen event and its stats increment; return the marks to write per
        table partition once Kafka has acknowledged them."""
        encode = self.serde.encode
        marks: dict[int, list[tuple[bytes, bytes]]] = {}
        # stats-updates partition -> campaign key -> increments
        stats: dict[int, dict[str, list[tuple[int, str, str]]]] = {}
        seen_in_batch: set[bytes] = set()
        for c in candidates:
            if c.id_bytes in seen_in_batch or c.current in found or c.previous in found:
                tally.duplicates[c.vendor] = tally.duplicates.get(c.vendor, 0) + 1
                continue
            seen_in_batch.add(c.id_bytes)
            record = canonical_record(c.event, c.pos, now_ms)
            self.outputs.send(
                self.events_topic,
                c.id_bytes,
                encode("CanonicalEvent", record, self.events_topic),
            )
            campaign = campaign_key(c.event)
            by_campaign = stats.setdefault(self._stats_partition(campaign), {})
            by_campaign.setdefault(campaign, []).append(stats_increment(c.event))
            marks.setdefault(c.pos.partition, []).append((c.current, b"1"))
            kind = (c.vendor, c.event.event_type.value)
            tally.out[kind] = tally.out.get(kind, 0) + 1
            tally.ingested.append((c.vendor, c.pos.ingested_at))

        # One stats-updates record per partition and batch, not per event or campaign: the
        # stats agent's cost is mostly per record.
        for partition, by_campaign in stats.items():
            self.outputs.send(
                self.stats_updates_topic,
                b"%d" % partition,
                stats_updates_value(by_campaign),
                partition=partition,
            )
        return marks

    def _stats_partition(self, campaign: str) -> int:
        target = self._stats_partition_of.get(campaign)
        if target is None:
            # murmur2 is pure Python: computed once per campaign.
            target = self._stats_partition_of[campaign] = stats_partition(
                campaign.encode(), self._stats_partitions
            )
        return target

    def _count_batch(self, tally: _Tally, acked_ms: int, started: float) -> None:
        """Counters once per batch and label set, not per record."""
        end_to_end = {v: metrics.END_TO_END_SECONDS.labels(v).observe for v in tally.records_in}
        for vendor, ingested_at in tally.ingested:
            end_to_end[vendor](max(0, acked_ms - ingested_at) / 1000)
        for (vendor, event_type), n in tally.out.items():
            metrics.EVENTS_OUT.labels(vendor, event_type).inc(n)
        for vendor, n in tally.duplicates.items():
            metrics.DUPLICATES.labels(vendor).inc(n)
        elapsed = time.perf_counter() - started
        for vendor, n in tally.records_in.items():
            metrics.RECORDS_IN.labels(vendor).inc(n)
            hist = metrics.PROCESSING_SECONDS.labels(vendor)
            for _ in range(n):
                hist.observe(elapsed)

    # -- stats ---------------------------------------------------------------------------

    async def _stats_agent(self, stream: Any) -> None:
        # Every window touched in a batch costs one table write, one changelog record and one
        # upsert, so larger batches cost less per increment (CRM_STATS_BATCH_SIZE). Batches of
        # 5000 within 1 s stalled the restart test on Tansu; the default stays at 500.
        await _each_batch(
            stream,
            self.settings.stats_batch_size,
            self.settings.stats_batch_within_s,
            self.process_stats_batch,
            "processing a stats batch",
        )

    async def process_stats_batch(self, batch: Sequence[EventT]) -> None:
        """Add a batch of increments to the windows, then write each touched window once.

        The touched windows' counts are read with one multi-get per table and partition, updated
        in memory, written back in one RocksDB write batch (one changelog record each) and
        upserted to ``campaign-stats``.
        """
        await self._start_outputs()
        now_ms = time.time_ns() // 1_000_000
        oldest_ms = now_ms - self.stats_retention_ms
        # (label, partition) -> {(campaign, window start): counts}
        touched: dict[tuple[str, int], dict[tuple[str, int], WindowCounts]] = {}
        late = 0
        for event in batch:
            message = event.message
            partition = message.partition
            tables = [
                (touched.setdefault((label, partition), {}), size) for label, size in self.windows
            ]
            for campaign, increments in parse_stats_updates(message.key, message.value or b"[]"):
                for occurred, event_type, channel in increments:
                    if occurred < oldest_ms:
                        # Its window has been closed (and expired from the table) already.
                        late += 1
                        continue
                    for windows, size in tables:
                        start = window_start(occurred, size)
                        counts = windows.get((campaign, start))
                        if counts is None:
                            counts = windows[(campaign, start)] = WindowCounts(0, {}, {})
                        counts.add(event_type, channel)
        if late:
            metrics.STATS_LATE.inc(late)

        outputs = self.outputs
        for (label, partition), windows in touched.items():
            table = self.stats_tables[label]
            size = self.window_size[label]
            keys = [window_key(start, campaign.encode()) for campaign, start in windows]
            items: list[tuple[bytes, bytes]] = []
            stored = table.get_many(partition, keys)
            for key, value, ((campaign, start), delta) in zip(
                keys, stored, windows.items(), strict=True
            ):
                counts = WindowCounts.load(orjson.loads(value) if value else None)
                counts.merge(delta)
                items.append((key, orjson.dumps(counts.dump())))
                record = stats_record(campaign, label, start, size, counts, now_ms)
                outputs.send(
                    self.stats_topic,
                    stats_upsert_key(campaign, label, start),
                    self.serde.encode("CampaignStats", record, self.stats_topic),
                )
            table.put_many(partition, items, outputs)
            metrics.STATS_UPSERTS.labels(label).inc(len(items))
        offsets = await outputs.seal()
        for table in self.stats_tables.values():
            table.set_persisted_offsets(offsets)


async def _each_batch(
    stream: Any,
    size: int,
    within: float,
    process: Callable[[Sequence[EventT]], Awaitable[None]],
    what: str,
) -> None:
    """``process`` every batch of up to ``size`` events (waiting ``within`` at most to fill one);
    an error stops the worker before Faust can ack the batch (see :func:`_die`)."""
    async for batch in stream.take_events(size, within=within):
        try:
            await process(batch)
        except Exception as exc:
            _die(exc, what)


def _die_if_failed(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _die(task.exception() or RuntimeError(), "finishing a raw batch")


def create_pipeline(settings: Settings) -> Pipeline:
    return Pipeline(settings)


def use_event_loop(name: str) -> None:
    """Make ``name`` (``CRM_EVENT_LOOP``) the event loop of this process's new loops: the
    worker's, and those of Faust's consumer thread.

    Faust hands every record to its agent through the loop (an ``await sleep(0)`` per event), so
    the loop's cost per iteration is the worker's floor: the benchmark's Faust floor ran ~25%
    faster on uvloop (bench/README.md).
    """
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError(
                "CRM_EVENT_LOOP", "uvloop is not installed (install it, or set asyncio)"
            ) from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)


def run_worker(settings: Settings) -> int:
    """``crm-stream worker``: create missing topics, serve metrics, run until signalled."""
    use_event_loop(settings.event_loop)
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
    log.info("worker starting on the %s event loop", settings.event_loop)
    worker.execute_from_commandline()
    return 0
