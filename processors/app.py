"""The Faust worker: raw topics -> normalize -> dedupe -> canonical events, stats, dead letters.

Two agents:

``normalize_agent`` consumes every raw topic in batches. Each record is normalized (pure
functions in :mod:`processors.normalize`); a rejected record goes to ``dead-letter``; a canonical
event is checked against the dedupe table (a tumbling window of ``CRM_DEDUPE_WINDOW`` on the raw
record's Kafka timestamp, looked up in the current and the previous window, so an id is
remembered for at least one full window and at most two), sent to ``events`` keyed by
``event_id``, and its stats increment goes to ``stats-updates``, to its campaign's partition
(one record per partition and batch). Only after Kafka acknowledged the batch's outputs are its
dedupe marks written, with the raw partitions' new positions, in one RocksDB write batch.

``stats_agent`` consumes ``stats-updates`` (so each campaign is counted by exactly one worker),
adds each increment to a tumbling window per configured size on ``occurred_at``, and emits the
window's new totals to the compacted ``campaign-stats`` topic as an upsert.

What a crash (kill -9 at any moment, with or without the local state) cannot do:

* **lose a record**: every stream partition's position is kept by what the agents processed
  (:mod:`processors.positions`): a record Faust drops is noticed and read again, and only a
  processed, acknowledged position is committed (:mod:`processors.faust_compat`). A raw
  partition's position is saved with its dedupe marks, atomically;
* **write an event or a dead letter twice**: every output carries its raw record's position
  (header ``raw_position``). A restarted worker reads back what an earlier run wrote for records
  beyond the saved position (:meth:`Probe.read_back`) and does not write those outputs again.
  Processing from the saved position, with the dedupe state saved with it, decides exactly as
  the earlier run did;
* **count an event twice**: each stats increment carries its raw position, and each window
  remembers the highest raw offset it counted per raw partition, in the same value as its
  counts (:class:`processors.records.WindowCounts`). The agent writes a window locally only
  after its changelog record and upsert are acknowledged, and upserts every window it touched,
  so the latest upsert of a window is its exact count.

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
from typing import Any

import faust
import orjson
from faust.types import EventT

from crmstream import metrics
from crmstream.errors import BrokerError, ConfigError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.stopping import watch_stop_signals
from crmstream.topics import VENDORS, TopicSpec, create_topics, raw_topic
from processors import faust_compat
from processors.faust_compat import faust_broker_kwargs
from processors.normalize import normalize
from processors.normalize.model import (
    CanonicalEvent,
    NormalizeContext,
    Rejected,
    RejectReason,
    Skipped,
)
from processors.outputs import ConfluentOutputs, Headers, Offsets, Outputs
from processors.plan import (
    Candidate,
    candidate,
    plan_raw_batch,
)
from processors.positions import TP, PositionTracker, TopicPartition, Verdict
from processors.probe import RAW_POSITION_HEADER, Probe, raw_position
from processors.records import (
    RawPosition,
    StatsUpdates,
    canonical_record,
    dead_letter_record,
    headers_dict,
    parse_stats_updates,
    stats_partition,
    stats_updates_value,
)
from processors.state import WindowedTable, quarantine_corrupt_stores
from processors.stats import StatsTables, expiry_interval_s

log = logging.getLogger("crmstream.worker")

EXIT_BUG = 70  # EX_SOFTWARE: an unexpected error stopped the worker
EXIT_STATE_LOST = 78  # EX_CONFIG: the dedupe state is gone; an operator must decide
HEARTBEAT_S = 5.0
# A loop that runs no timer for this long is stuck (liveness fails; Kubernetes restarts it).
# Generous: a large table restore or a long GC pause is not stuck.
STUCK_LOOP_S = 120.0
# How long a rebalance waits for this process's raw batches in flight before giving up (exit 70;
# the restart reads their outputs back).
IN_FLIGHT_WAIT_S = 120.0

# A raw partition's saved position lives in its dedupe table partition, next to the marks
# (``__`` sorts after the window keys' digits, so window expiry never deletes it).
POSITION_KEY_PREFIX = b"__crm/position/"
# The same, once its changelog records are acknowledged: local only. A restarted worker resumes
# from it, not from the local position, which can be ahead of the changelog (the killed run's
# last changelog records may never have landed): processing the records in between again
# re-sends their marks and positions, so the changelog has no hole for a later restore.
DURABLE_KEY_PREFIX = b"__crm/durable/"
# What a Kafka record costs besides its key, value and headers (record and batch framing).
RECORD_OVERHEAD_BYTES = 512


def _die(exc: BaseException, what: str) -> None:
    """Stop the process without committing the batch in hand.

    Faust acks the events of a batch when the batch's generator is closed, even by an error, and
    then commits them on shutdown. Exiting at once keeps them uncommitted, so the batch is
    processed again after a restart instead of being skipped.
    """
    log.critical("worker stopped: %s: %r", what, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_BUG)


def _estimated_keys(table: WindowedTable) -> int:
    """RocksDB's own estimate of the keys in a table's local partitions (cheap, approximate)."""
    total = 0
    for db in faust_compat.rocksdb_partitions(table.table).values():
        estimate = db.property_int_value("rocksdb.estimate-num-keys")
        total += int(estimate or 0)
    return total


@dataclass(frozen=True, slots=True)
class SavedPosition:
    """A raw partition's saved position: every record below ``next`` is processed, its outputs
    acknowledged and its dedupe marks written. ``floors``: per output partition, an offset after
    which every output of a record at or above ``next`` lands (the newest output offsets
    acknowledged when it was saved), where a read-back after a crash starts."""

    next: int
    floors: dict[TopicPartition, int]

    def encode(self, floors_json: bytes | None = None) -> bytes:
        if floors_json is None:
            floors_json = _floors_json(self.floors)
        return b'{"next":%d,"floors":%s}' % (self.next, floors_json)

    @classmethod
    def decode(cls, value: bytes) -> SavedPosition:
        data = orjson.loads(value)
        floors = {}
        for name, offset in data["floors"].items():
            topic, partition = name.rsplit("/", 1)
            floors[TopicPartition(topic, int(partition))] = int(offset)
        return cls(int(data["next"]), floors)


def _floors_json(floors: dict[TopicPartition, int]) -> bytes:
    return orjson.dumps({f"{tp.topic}/{tp.partition}": offset for tp, offset in floors.items()})


def position_key(raw_topic_name: str) -> bytes:
    return POSITION_KEY_PREFIX + raw_topic_name.encode()


def durable_key(raw_topic_name: str) -> bytes:
    return DURABLE_KEY_PREFIX + raw_topic_name.encode()


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

    acked: Awaitable[Offsets]
    events: Sequence[EventT]
    marks: dict[int, list[tuple[bytes, bytes]]]
    keys: list[bytes]  # the marks' keys, held in Pipeline._pending_keys meanwhile
    ends: dict[TP, int]  # each raw partition's position after this batch
    saved: dict[TP, bytes]  # ... as saved (SavedPosition.encode), once its marks are written
    tally: _Tally
    started: float
    written: asyncio.Future[None]  # its marks and positions are written locally
    done: asyncio.Future[None]  # ... and their changelog records acknowledged


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
        faust_compat.apply()
        faust_compat.set_fetch_max_wait(settings.consumer_fetch_max_wait_s)
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
        self.max_record_bytes = settings.max_message_bytes - RECORD_OVERHEAD_BYTES
        self._contexts: dict[str | None, NormalizeContext] = {}
        self._outputs_started = False
        self._stats_partitions = settings.partitions
        self._stats_partition_of: dict[str, int] = {}
        # Raw batches produced but not yet acknowledged (CRM_WORKER_MAX_INFLIGHT): the next
        # batch is normalized and produced meanwhile instead of waiting for a broker round trip.
        self._slots = asyncio.Semaphore(settings.worker_max_inflight)
        self._last_in_flight: _InFlight | None = None
        self._pending_keys: set[bytes] = set()
        self._busy = {"raw": 0, "stats": 0}  # batches in hand or in flight, per agent
        self.positions = PositionTracker()
        self.probe = Probe(settings)
        # Per output partition: the newest offset acknowledged (or, before the first, the end at
        # start-up). Saved with each raw position as its read-back floors.
        self.floors: dict[TopicPartition, int] = {}
        self._floors_json: bytes | None = None

        self.app = faust.App(
            # Under the topic prefix, so that Faust's own topics (table changelogs, the assignor's
            # leader topic) are named <prefix><app id>-... like everything else.
            settings.topic(settings.app_id),
            store="rocksdb://",
            datadir=str(settings.data_path / "faust"),
            topic_partitions=settings.partitions,
            topic_replication_factor=max(1, settings.replication_factor),
            web_enabled=False,
            key_serializer="raw",
            value_serializer="raw",
            table_cleanup_interval=60.0,
            table_standby_replicas=settings.table_standby_replicas,
            # The query API's URL, advertised to the group by Faust's assignor: how the other
            # workers find the owner of a campaign's stats (processors/cluster.py).
            canonical_url=settings.advertised_api_url,
            **faust_broker_kwargs(settings),
        )
        app = self.app
        app.crm_positions = self  # type: ignore[attr-defined]  # see faust_compat.Positioned
        self.outputs: Outputs = ConfluentOutputs(settings)
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
        self.stats = StatsTables(
            self.stats_tables,
            self.windows,
            self.serde,
            self.stats_topic,
            self.stats_retention_ms,
            settings.stats_hll_lg_k,
        )
        app.agent(self.raw, name="normalize")(self._normalize_agent)
        app.agent(self.stats_updates, name="stats")(self._stats_agent)
        app.timer(interval=10.0, name="observe")(self._observe)
        app.timer(interval=5.0, name="positions")(self._watch_positions)
        app.timer(interval=60.0, name="expire")(self._expire)
        app.timer(interval=expiry_interval_s(settings.stats_retention_s), name="stats-expire")(
            self._expire_stats
        )
        app.timer(interval=HEARTBEAT_S, name="heartbeat")(self._beat)
        self._heartbeat = time.monotonic()

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
        """Dedupe windows expire by their start (range deletes); stats windows by their last
        update (:meth:`_expire_stats`)."""
        self.dedupe.expire(time.time_ns() // 1_000_000)

    async def _expire_stats(self) -> None:
        if self.app.rebalancing or self.app.in_recovery or not faust_compat.recovered(self.app):
            return
        await self._start_outputs()
        active = {
            tp.partition
            for tp in self.app.consumer.assignment()
            if tp.topic == self.stats_updates_topic
        }
        await self.stats.expire(self.outputs, active, time.time_ns() // 1_000_000)

    def _context(self, app_id: str | None) -> NormalizeContext:
        ctx = self._contexts.get(app_id)
        if ctx is None:
            ctx = self._contexts[app_id] = NormalizeContext(app_id=app_id)
        return ctx

    def _stream(self, topic: str) -> str:
        return "stats" if topic == self.stats_updates_topic else "raw"

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
        for tp in self.positions.tracked():
            vendor = self.vendor_of_topic.get(tp.topic)
            expected = self.positions.expected(tp)
            if vendor is None or expected is None:
                continue
            highwater = _highwater(consumer, tp)
            if highwater is not None:
                lag[vendor] += max(0, highwater - expected)
        for vendor, records in lag.items():
            metrics.RAW_LAG.labels(vendor).set(records)
        for name, table in self._all_tables().items():
            metrics.TABLE_KEYS.labels(name).set(_estimated_keys(table))

    # -- health --------------------------------------------------------------------------

    async def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    def health(self) -> metrics.Health:
        """``/livez`` and ``/readyz`` of the worker (on its metrics port; the chart's probes)."""
        return metrics.Health(
            live={"event_loop": self._loop_alive, "outputs": self.outputs.alive},
            ready={"group": self._in_group, "kafka": self.outputs.reachable},
        )

    def _loop_alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        if age > STUCK_LOOP_S:
            return False, f"the event loop ran no timer for {age:.0f}s"
        return True, f"timer ran {age:.0f}s ago"

    def _in_group(self) -> tuple[bool, str]:
        app = self.app
        if not faust_compat.recovered(app):
            return False, "joining the group / restoring tables"
        if app.rebalancing:
            return False, "rebalancing"
        return True, f"in the group, {len(self.positions.tracked())} partitions assigned"

    # -- positions -----------------------------------------------------------------------

    def committable(self, tp: Any) -> int | None:
        """faust_compat.Positioned: the offset the consumer group may commit for ``tp``."""
        return self.positions.committable(tp)

    async def on_positioned(self, consumer: Any, *, after_rebalance: bool) -> None:
        """faust_compat.Positioned: place every stream partition before it is resumed.

        Outside a rebalance (Faust seeks to the committed offsets when a fetch returns while its
        flow is stopped) a partition goes back to its own position. After a rebalance each
        partition starts afresh: a raw partition at the position saved with its dedupe marks
        (knowing which outputs beyond it an earlier run wrote), a stats partition at its
        committed offset; a partition with neither at its first offset.
        """
        assigned = {
            tp for tp in consumer.assignment() if not faust_compat.is_changelog_tp(consumer, tp)
        }
        if not after_rebalance:
            back = {tp: self.positions.expected(tp) for tp in sorted(assigned)}
            await self._seek({tp: o for tp, o in back.items() if o is not None})
            return
        for tp in self.positions.tracked():
            if tp not in assigned:
                self.positions.forget(tp)
        await self._start_outputs()
        await self._batches_written()
        committed = {tp: faust_compat.committed_offset(consumer, tp) for tp in assigned}
        raw = sorted(tp for tp in assigned if tp.topic in self.vendor_of_topic)
        stats = sorted(tp for tp in assigned if tp.topic == self.stats_updates_topic)
        saved = {tp: self._saved_position(tp) for tp in raw}
        if not self.floors:
            output_tps = [
                TopicPartition(topic, p)
                for topic in (self.events_topic, self.dead_letter_topic)
                for p in range(self.outputs.partitions(topic))
            ]
            ends = await asyncio.to_thread(self.probe.ends, output_tps)
            self._raise_floors({tp: end - 1 for tp, end in ends.items()})
        lost = [tp for tp in raw if saved[tp] is None and committed[tp] is not None]
        if lost and not self.settings.allow_state_reset:
            _stop_state_lost(lost, committed)
        unplaced = [tp for tp in raw + stats if saved.get(tp) is None and committed[tp] is None]
        starts = await asyncio.to_thread(self.probe.starts, unplaced) if unplaced else {}

        # A raw partition without a saved position gets one before any of its records is
        # processed: a crash before its first batch is saved must still find the floors.
        fresh = {
            tp: SavedPosition(_first(committed[tp], starts.get(tp)), dict(self.floors))
            for tp in raw
            if saved[tp] is None
        }
        if fresh:
            for partition, items in _by_partition(
                (tp.partition, position_key(tp.topic), position.encode())
                for tp, position in fresh.items()
            ).items():
                self.dedupe.put_many(partition, items, self.outputs)
            self.dedupe.set_persisted_offsets(await self.outputs.seal())
            for partition, items in _by_partition(
                (tp.partition, durable_key(tp.topic), position.encode())
                for tp, position in fresh.items()
            ).items():
                self.dedupe.write(partition, items)

        resumed = {tp: p for tp, p in saved.items() if p is not None}
        landed: dict[TopicPartition, set[int]] = {}
        if resumed:
            floors: dict[TopicPartition, int] = {}
            for position in resumed.values():
                for otp, floor in position.floors.items():
                    floors[otp] = min(floor, floors.get(otp, floor))
            landed = await asyncio.to_thread(
                self.probe.read_back, floors, {tp: p.next for tp, p in resumed.items()}
            )
        placed: dict[Any, int] = {}
        for tp in raw:
            start = (saved[tp] or fresh[tp]).next
            origin = (saved[tp] or fresh[tp]).floors
            self.positions.start(
                tp, start, committed=committed[tp], landed=landed.get(tp, ()), floors=origin
            )
            placed[tp] = start
        for tp in stats:
            start = _first(committed[tp], starts.get(tp))
            self.positions.start(tp, start, committed=committed[tp])
            placed[tp] = start
        await self._seek(placed)
        written_back = sum(len(v) for v in landed.values())
        log.info(
            "positioned %d raw and %d stats partitions (%d new); %d raw records already had "
            "their outputs written",
            len(raw),
            len(stats),
            len(fresh),
            written_back,
        )
        for tp in raw:
            position = saved[tp] or fresh[tp]
            log.info(
                "%s/%d at %d (%s, committed %s); %d read back; floors %s",
                tp.topic,
                tp.partition,
                position.next,
                "new" if tp in fresh else "saved",
                committed[tp],
                len(landed.get(tp, ())),
                _floors_json(position.floors).decode(),
            )

    def _saved_position(self, tp: TopicPartition) -> SavedPosition | None:
        """The durable position when the local state has one, else the saved one (restored
        from the changelog, hence durable too)."""
        durable, saved = self.dedupe.get_many(
            tp.partition, [durable_key(tp.topic), position_key(tp.topic)]
        )
        value = durable or saved
        return None if value is None else SavedPosition.decode(value)

    def _position_value(self, tp: TP, end: int) -> bytes:
        floors = self.positions.floors_for(tp, end, self.floors)
        if floors is None:
            return SavedPosition(end, {}).encode(self._floors_json)
        return SavedPosition(end, floors).encode()

    def _raise_floors(self, offsets: dict[Any, int]) -> None:
        outputs = (self.events_topic, self.dead_letter_topic)
        changed = False
        for (topic, partition), offset in offsets.items():
            if topic in outputs:
                tp = TopicPartition(topic, partition)
                if offset > self.floors.get(tp, -2):
                    self.floors[tp] = offset
                    changed = True
        if changed or self._floors_json is None:
            self._floors_json = _floors_json(self.floors)

    async def _seek(self, offsets: dict[Any, int]) -> None:
        """Move fetch positions; leftovers of the old positions are dropped after it.

        Through Faust's ``seek_wait``, which seeks on the consumer's own thread: ``seek`` does it
        from the event loop's thread while the consumer thread reads the fetcher's records,
        and aiokafka then failed with a ``KeyError`` on a partition it was serving.
        """
        if not offsets:
            return
        for tp, offset in offsets.items():
            self.positions.rewind(tp, offset)
        try:
            await self.app.consumer.seek_wait(offsets)
        except Exception as exc:  # not assigned any more: the next rebalance places it
            log.warning("seeking %s failed: %r", _names(offsets), exc)

    async def _admit(self, batch: Sequence[EventT], stream: str) -> list[EventT]:
        """The events of ``batch`` at their partition's position, in order; the others are
        leftovers of an earlier fetch, or show that records were skipped (then read again)."""
        admitted: list[EventT] = []
        admit = self.positions.admit
        stale = 0
        for event in batch:
            message = event.message
            tp = message.tp
            verdict = admit(tp, message.offset)
            if verdict is Verdict.GAP:
                verdict = await self._resolve_gap(tp, message.offset, stream)
            if verdict is Verdict.PROCESS:
                admitted.append(event)
            else:
                stale += 1
        if stale:
            metrics.STALE_RECORDS.labels(stream).inc(stale)
        return admitted

    async def _resolve_gap(self, tp: Any, offset: int, stream: str) -> Verdict:
        """The consumer handed over ``offset`` beyond the position: ask the broker whether
        records lie in between. If so they were dropped on the way: read them again. If not
        (transaction markers, retention), go on from ``offset``."""
        expected = self.positions.expected(tp)
        assert expected is not None
        first = await asyncio.to_thread(self.probe.first_offset, tp, expected)
        if first is None or first < offset:
            log.warning(
                "%s/%d: handed offset %d while at %d; records from %s were skipped: reading "
                "them again",
                tp.topic,
                tp.partition,
                offset,
                expected,
                first,
            )
            metrics.REWINDS.labels(stream, "skipped").inc()
            await self._seek({tp: expected if first is None else first})
            return Verdict.STALE
        await self._pass_over(tp, expected, offset, stream)
        self.positions.accept_gap(tp, offset)
        return self.positions.admit(tp, offset)

    async def _pass_over(self, tp: Any, expected: int, first: int, stream: str) -> None:
        """Offsets ``expected`` .. ``first - 1`` hold no record: say why."""
        start = (await asyncio.to_thread(self.probe.starts, [tp]))[tp]
        lost = max(0, min(start, first) - expected)
        if lost:
            metrics.RECORDS_LOST_TO_RETENTION.labels(stream).inc(lost)
            log.error(
                "%s/%d: offsets %d-%d were deleted (retention) before they were processed",
                tp.topic,
                tp.partition,
                expected,
                expected + lost - 1,
            )
        if first - expected > lost:
            metrics.GAPS_ACCEPTED.labels(stream).inc()
            log.info(
                "%s/%d: no records at offsets %d-%d (transaction markers); going on",
                tp.topic,
                tp.partition,
                expected + lost,
                first - 1,
            )

    async def _watch_positions(self) -> None:
        """A partition with records beyond its position that processes none of them for a
        whole interval has lost them on the way (where no later record shows the hole): seek
        it back to its position."""
        if self.app.rebalancing:
            return
        consumer = self.app.consumer
        for tp in self.positions.tracked():
            stream = self._stream(tp.topic)
            if self._busy[stream]:
                continue
            if not self.positions.stalled(tp, _highwater(consumer, tp)):
                continue
            expected = self.positions.expected(tp)
            assert expected is not None
            first = await asyncio.to_thread(self.probe.first_offset, tp, expected)
            if first is None:
                continue  # nothing to read after all
            if first > expected:
                await self._pass_over(tp, expected, first, stream)
            log.warning(
                "%s/%d: nothing processed beyond offset %d although records are there: "
                "reading from %d again",
                tp.topic,
                tp.partition,
                expected,
                first,
            )
            metrics.REWINDS.labels(stream, "stalled").inc()
            await self._seek({tp: first})

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
            # Stopping: let the batches in flight finish, so that their marks and positions are
            # saved and can be committed.
            last = self._last_in_flight
            if last is not None and not last.done.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(last.done), timeout=30)

    async def _batches_written(self) -> None:
        """Wait until every raw batch of this process has its outputs acknowledged (and its
        marks written): the read-back that follows must see them all. A batch still waiting
        would land its dead letters after the read-back, and the partition's records processed
        again would send them a second time (events are held off by their pending dedupe
        keys, dead letters by nothing else). Faust's revocation already waits for the raw
        records' references; this makes the read-back independent of that."""
        last = self._last_in_flight
        if last is None or last.written.done():
            return
        log.info("waiting for the raw batches in flight before placing the partitions")
        try:
            await asyncio.wait_for(asyncio.shield(last.written), timeout=IN_FLIGHT_WAIT_S)
        except TimeoutError:
            raise BrokerError(
                f"raw batches still unacknowledged after {IN_FLIGHT_WAIT_S:.0f}s at a rebalance"
            ) from None

    async def process_raw_batch(self, batch: Sequence[EventT]) -> None:
        """Normalize, dedupe and produce one batch, and hand it to :meth:`_finish`, which writes
        its dedupe marks and positions once Kafka acknowledged its outputs.

        Returns before that acknowledgement (up to ``CRM_WORKER_MAX_INFLIGHT`` batches wait for
        theirs at once). Meanwhile each raw record holds a reference, so Faust waits for it
        before a rebalance; and the batch's dedupe keys are held in memory, so the next batch
        sees them as marked.
        """
        self._busy["raw"] += 1
        try:
            admitted = await self._admit(batch, "raw")
            if not admitted:
                return
            await self._slots.acquire()
        finally:
            self._busy["raw"] -= 1
        self._busy["raw"] += 1
        started = time.perf_counter()
        await self._start_outputs()
        now_ms = time.time_ns() // 1_000_000
        tally = _Tally()
        candidates = self._normalize(admitted, now_ms, tally)
        found = self._marked(candidates)
        marks = self._emit(candidates, found, now_ms, tally)
        ends: dict[TP, int] = {}
        for event in admitted:
            message = event.message
            message.incref()
            ends[message.tp] = message.offset + 1
        keys = [key for items in marks.values() for key, _ in items]
        self._pending_keys.update(keys)
        loop = asyncio.get_running_loop()
        in_flight = _InFlight(
            self.outputs.seal(),
            admitted,
            marks,
            keys,
            ends,
            {},
            tally,
            started,
            loop.create_future(),
            loop.create_future(),
        )
        previous, self._last_in_flight = self._last_in_flight, in_flight
        task = asyncio.ensure_future(self._finish(in_flight, previous))
        task.add_done_callback(_die_if_failed)

    async def _finish(self, batch: _InFlight, previous: _InFlight | None) -> None:
        """After ``previous``, and once Kafka acknowledged the batch's outputs: write its dedupe
        marks and its raw partitions' positions (one RocksDB write batch per partition, and
        their changelog records), release its raw records and count it. Once the changelog
        records are acknowledged too, the positions may be committed."""
        try:
            if previous is not None:
                await previous.written
            offsets = await batch.acked
            acked_ms = time.time_ns() // 1_000_000
            self._raise_floors(offsets)
            items = batch.marks
            for tp, end in batch.ends.items():
                saved = self._position_value(tp, end)
                batch.saved[tp] = saved
                items.setdefault(tp.partition, []).append((position_key(tp.topic), saved))
            for partition, partition_items in items.items():
                self.dedupe.put_many(partition, partition_items, self.outputs)
            self._pending_keys.difference_update(batch.keys)
            on_message_out = self.app.sensors.on_message_out
            for event in batch.events:
                if event.ack():
                    message = event.message
                    on_message_out(message.tp, message.offset, message)
            self._count_batch(batch.tally, acked_ms, batch.started)
        finally:
            self._slots.release()
            self._busy["raw"] -= 1
            if not batch.written.done():
                batch.written.set_result(None)
        # The marks' and positions' changelog records (this task's own batch of outputs).
        try:
            self.dedupe.set_persisted_offsets(await self.outputs.seal())
            durable = _by_partition(
                (tp.partition, durable_key(tp.topic), saved) for tp, saved in batch.saved.items()
            )
            for partition, partition_items in durable.items():
                self.dedupe.write(partition, partition_items)
            for tp, end in batch.ends.items():
                self.positions.durable(tp, end)
        finally:
            if not batch.done.done():
                batch.done.set_result(None)

    def _normalize(self, batch: Sequence[EventT], now_ms: int, tally: _Tally) -> list[Candidate]:
        """Every record of the batch through its vendor's normalizer. Rejected records go to the
        dead-letter topic here; canonical events come back with their dedupe keys."""
        size_ms = self.dedupe.size_ms
        candidates: list[Candidate] = []
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
            # Never raises for a record: a normalizer bug is a normalizer_error dead letter.
            outcome = normalize(vendor, raw, self._context(pos.app_id))

            if isinstance(outcome, Skipped):
                metrics.SKIPPED.labels(vendor, outcome.reason).inc()
                continue
            if isinstance(outcome, Rejected):
                self._dead_letter(
                    raw, message.key, vendor, outcome.reason.value, outcome.detail, pos, now_ms
                )
                continue

            assert isinstance(outcome, CanonicalEvent)
            candidates.append(candidate(outcome, pos, vendor, raw, message.key, size_ms))
        return candidates

    def _dead_letter(
        self,
        raw: bytes,
        raw_key: bytes | None,
        vendor: str | None,
        reason: str,
        detail: str,
        pos: RawPosition,
        now_ms: int,
    ) -> None:
        """Send one dead letter (unless an earlier run did: see ``PositionTracker.landed``),
        cut to the size limit if it must be: the raw value's first bytes, and its size."""
        metrics.DEAD_LETTERS.labels(vendor or "", reason).inc()
        log.info(
            "dead letter %s: %s",
            reason,
            detail,
            extra={"vendor": vendor, "source": pos.source or pos.kafka_position},
        )
        if self.positions.take_landed(TopicPartition(pos.topic, pos.partition), pos.offset):
            metrics.OUTPUTS_READ_BACK.labels(vendor or "", "dead_letter").inc()
            return
        topic = self.dead_letter_topic
        headers = self._headers(pos)

        def record(raw_value: bytes, raw_size: int | None = None) -> bytes:
            fields = dead_letter_record(
                raw=raw_value,
                raw_size=raw_size,
                raw_key=raw_key,
                vendor=vendor,
                reason=reason,
                detail=detail,
                pos=pos,
                now_ms=now_ms,
            )
            return self.serde.encode("DeadLetter", fields, topic)

        value = record(raw)
        key = raw_key
        if _record_size(key, value, headers) > self.max_record_bytes:
            if key is not None and len(key) > self.max_record_bytes // 4:
                key = None  # the raw key stays in the value (raw_key), the record goes unkeyed
            room = self.max_record_bytes - _record_size(key, value, headers) + len(raw)
            cut = raw[: max(0, room - 64)]  # the size field's bytes, and slack for varints
            value = record(cut, len(raw))
        self.outputs.send(topic, key, value, headers=headers)

    @staticmethod
    def _headers(pos: RawPosition) -> Headers:
        return [(RAW_POSITION_HEADER, raw_position(pos.topic, pos.partition, pos.offset))]

    def _marked(self, candidates: list[Candidate]) -> dict[bytes, bytes | None]:
        """The dedupe keys (current or previous window) already in the table, with the raw
        offset that wrote each (None for a key of a batch still in flight): one RocksDB
        multi-get per partition."""
        lookups: dict[int, list[bytes]] = {}
        for c in candidates:
            keys = lookups.setdefault(c.pos.partition, [])
            keys.append(c.current)
            keys.append(c.previous)
        found: dict[bytes, bytes | None] = {}
        pending = self._pending_keys
        for partition, keys in lookups.items():
            for key, value in zip(keys, self.dedupe.get_many(partition, keys), strict=True):
                if key in pending:
                    found[key] = None
                elif value is not None:
                    found[key] = value
        return found

    def _emit(
        self,
        candidates: list[Candidate],
        marked: dict[bytes, bytes | None],
        now_ms: int,
        tally: _Tally,
    ) -> dict[int, list[tuple[bytes, bytes]]]:
        """Plan the batch (:func:`processors.plan.plan_raw_batch`), send its events, too_large
        dead letters and stats increments; return the marks to write per table partition once
        Kafka has acknowledged them."""
        encode = self.serde.encode

        def encoded(c: Candidate) -> bytes:
            record = canonical_record(c.event, c.pos, now_ms)
            return encode("CanonicalEvent", record, self.events_topic)

        def written(c: Candidate) -> bool:
            return self.positions.take_landed(
                TopicPartition(c.pos.topic, c.pos.partition), c.pos.offset
            )

        plan = plan_raw_batch(
            candidates,
            marked,
            encode=encoded,
            size=lambda c, value: _record_size(c.id_bytes, value, self._headers(c.pos)),
            max_record_bytes=self.max_record_bytes,
            written=written,
            stats_partition=self._stats_partition,
        )
        for c, value in plan.emit:
            self.outputs.send(self.events_topic, c.id_bytes, value, headers=self._headers(c.pos))
        for c in plan.read_back:
            metrics.OUTPUTS_READ_BACK.labels(c.vendor, "event").inc()
        for c, size in plan.too_large:
            metrics.TOO_LARGE.labels(c.vendor).inc()
            self._dead_letter(
                c.raw,
                c.raw_key,
                c.vendor,
                RejectReason.TOO_LARGE.value,
                f"the canonical event is {size} bytes with its key and headers; the limit is "
                f"CRM_MAX_MESSAGE_BYTES={self.settings.max_message_bytes}",
                c.pos,
                now_ms,
            )
        # One stats-updates record per partition and batch, not per event or campaign: the
        # stats agent's cost is mostly per record.
        for partition, by_campaign in plan.increments.items():
            self.outputs.send(
                self.stats_updates_topic,
                b"%d" % partition,
                stats_updates_value(
                    by_campaign, plan.recipients.get(partition), plan.names.get(partition)
                ),
                partition=partition,
            )
        for vendor, n in plan.duplicates.items():
            tally.duplicates[vendor] = tally.duplicates.get(vendor, 0) + n
        for c in plan.counted:
            kind = (c.vendor, c.event.event_type.value)
            tally.out[kind] = tally.out.get(kind, 0) + 1
            tally.ingested.append((c.vendor, c.pos.ingested_at))
        return plan.marks

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

        The touched windows are read with one multi-get per table and partition, and each
        increment is counted unless the window counted its raw record already. Every touched
        window's new value goes to its changelog and as an upsert to ``campaign-stats``; only
        once Kafka acknowledged those is it written to RocksDB (one write batch per table and
        partition) and the batch's position made committable. A crash before that replays the
        batch, which then counts nothing twice and upserts the windows again.
        """
        self._busy["stats"] += 1
        try:
            await self._process_stats_batch(batch)
        finally:
            self._busy["stats"] -= 1

    async def _process_stats_batch(self, batch: Sequence[EventT]) -> None:
        admitted = await self._admit(batch, "stats")
        if not admitted:
            return
        await self._start_outputs()
        now_ms = time.time_ns() // 1_000_000
        ends: dict[Any, int] = {}
        parsed: list[tuple[int, StatsUpdates]] = []
        for event in admitted:
            message = event.message
            ends[message.tp] = message.offset + 1
            try:
                parsed.append(
                    (message.partition, parse_stats_updates(message.key, message.value or b""))
                )
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self._invalid_stats_update(message, exc, now_ms)
        # Counted, upserted, and written once Kafka acknowledged (processors/stats.py).
        await self.stats.count(parsed, self.outputs, now_ms)
        for tp, end in ends.items():
            self.positions.durable(tp, end)

    def _invalid_stats_update(self, message: Any, exc: BaseException, now_ms: int) -> None:
        """A stats-updates record nobody here could have written: kept as a dead letter."""
        metrics.STATS_INVALID.inc()
        pos = RawPosition(
            message.topic,
            message.partition,
            message.offset,
            int(message.timestamp * 1000),
            headers_dict(message.headers),
        )
        self._dead_letter(
            message.value or b"",
            message.key,
            None,
            RejectReason.INVALID_STATS_UPDATE.value,
            f"not a stats-updates record: {exc!r}"[:1000],
            pos,
            now_ms,
        )


def _record_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    return len(value) + (len(key) if key else 0) + sum(len(k) + len(v or b"") for k, v in headers)


def _first(*offsets: int | None) -> int:
    for offset in offsets:
        if offset is not None:
            return offset
    return 0


def _by_partition(
    items: Any,
) -> dict[int, list[tuple[bytes, bytes]]]:
    out: dict[int, list[tuple[bytes, bytes]]] = {}
    for partition, key, value in items:
        out.setdefault(partition, []).append((key, value))
    return out


def _stop_state_lost(lost: list[Any], committed: dict[Any, int | None]) -> None:
    """Raw partitions the group has processed (a committed offset) whose dedupe state is in
    neither the local store nor the changelog: going on would let through a copy of every event
    seen before. Stop, and say what to do (a commit is only made once the position is in the
    changelog, so this means the changelog lost it: deleted, or expired by retention)."""
    names = ", ".join(f"{tp.topic}/{tp.partition} (committed {committed[tp]})" for tp in lost)
    log.critical(
        "dedupe state lost for %s: neither the local store nor the changelog holds their "
        "position. Restore the changelog topic, or set CRM_ALLOW_STATE_RESET=true to go on from "
        "the committed offsets (events seen before may then be emitted again)",
        names,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_STATE_LOST)


def _names(offsets: dict[Any, int]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in offsets.items())


def _highwater(consumer: Any, tp: Any) -> int | None:
    try:
        highwater = consumer.highwater(tp)
    except Exception:  # not assigned (any more)
        return None
    return None if highwater is None else int(highwater)


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


def api_server(pipeline: Pipeline) -> Any:
    """The query API and web view over the pipeline's stats (``CRM_API_PORT``), as a service
    started with the worker; None when disabled."""
    settings = pipeline.settings
    if not settings.api_port:
        return None
    from processors.cluster import ApiServer, FaustRouting
    from processors.stats_api import WorkerSource

    first = next(iter(pipeline.stats_tables.values()))
    routing = FaustRouting(
        pipeline.app,
        settings,
        first.changelog_topic,
        pipeline.stats_updates_topic,
        lambda: pipeline._stats_partitions,
    )
    return ApiServer(settings, WorkerSource(pipeline.stats, routing), loop=pipeline.app.loop)


class _Worker(faust.Worker):
    """faust.Worker with a deadline on stopping (issue 22 item 1): the watchdog of
    ``crmstream.stopping`` chained after the signal handlers Faust installs (they still run the
    clean stop)."""

    crm_settings: Settings

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        watch_stop_signals(self.crm_settings)


def run_worker(settings: Settings) -> int:
    """``crm-stream worker``: create missing topics, serve metrics and the query API, run until
    signalled."""
    use_event_loop(settings.event_loop)
    create_topics(settings, extra=changelog_specs(settings))
    (settings.data_path / "faust").mkdir(parents=True, exist_ok=True)
    quarantine_corrupt_stores(settings.data_path / "faust")
    pipeline = create_pipeline(settings)
    # /metrics, /livez and /readyz (the chart's probes).
    metrics.serve(settings.metrics_port, pipeline.health())
    services = [s for s in (api_server(pipeline),) if s is not None]
    worker = _Worker(
        pipeline.app,
        *services,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.crm_settings = settings
    log.info("worker starting on the %s event loop", settings.event_loop)
    worker.execute_from_commandline()
    return 0
