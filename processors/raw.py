"""The raw path: one batch of raw records becomes canonical events, dead letters and stats
increments, and its dedupe marks and positions are saved once Kafka has acknowledged them.

A batch's way, top to bottom (:meth:`RawPath.process`):

1. **admit**: the records at their partition's position (:meth:`Positioning.admit`);
2. **normalize**: each record through its vendor's normalizer; rejected records become dead
   letters (:class:`processors.outputs.DeadLetters`);
3. **plan**: the dedupe marks already in the table, then :func:`processors.plan.plan_raw_batch`
   decides what is emitted, read back, too large or a duplicate;
4. **send**: events, too-large dead letters and one stats-updates record per partition (and,
   with ``CRM_ATTRIBUTION``, the touches and conversions: ``attribution``);
5. **finish** (a task of its own, :meth:`RawPath._finish`): once Kafka acknowledged the batch,
   its marks and positions are written (one RocksDB write batch per partition, with their
   changelog records), its records released to the engine, and once those changelog records
   are acknowledged too, its positions become committable. A raw partition's position is saved
   at most once per ``CRM_POSITIONS_INTERVAL`` (:class:`processors.positions.Checkpoints`),
   always with marks or after them, and for every partition before a stop and before the
   partitions are placed after a rebalance.

Up to ``CRM_WORKER_MAX_INFLIGHT`` batches wait for their acknowledgement at once (the next one is
normalized and produced meanwhile). Each holds its records (a rebalance waits for them) and its
dedupe keys (the next batch sees them as marked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.campaigns import stats_partition
from processors.engine import Batch, Engine, Event
from processors.normalize import normalize
from processors.normalize.model import (
    CanonicalEvent,
    NormalizeContext,
    Rejected,
    RejectReason,
    Skipped,
)
from processors.outputs import DeadLetters, Offsets, Outputs, position_headers, record_size
from processors.plan import Candidate, RawPlan, candidate, plan_raw_batch
from processors.positioning import Floors, Positioning, by_partition
from processors.positions import TP, Checkpoints, TopicPartition
from processors.records import RawPosition, canonical_record, headers_dict, stats_updates_value
from processors.stages import DEDUPE, ENCODE, NORMALIZE, PRODUCE, Stages
from processors.state.keys import durable_key, position_key
from processors.state.table import WindowedTable

log = logging.getLogger("crmstream.worker")

# How long a rebalance waits for this process's raw batches in flight before giving up (exit 70;
# the restart reads their outputs back).
IN_FLIGHT_WAIT_S = 120.0
# Bounds of the per-process caches (LRU): a campaign's stats partition, an app id's normalize
# context. Each entry is a few hundred bytes; without a bound they grew with every campaign and
# app id for the life of the process.
MAX_CACHED_CAMPAIGNS = 100_000
MAX_CACHED_CONTEXTS = 10_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A dict of at most ``size`` entries; the least recently used one goes first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an LRU cache holds at least one entry")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, make: Callable[[K], V]) -> V:
        items = self._items
        try:
            value = items[key]
        except KeyError:
            value = items[key] = make(key)
            if len(items) > self.size:
                items.popitem(last=False)
            return value
        items.move_to_end(key)
        return value

    def clear(self) -> None:
        self._items.clear()


class StatsPartitions:
    """A campaign's ``stats-updates`` partition (murmur2 is pure Python: cached per campaign)."""

    def __init__(self, partitions: int, cache: int = MAX_CACHED_CAMPAIGNS) -> None:
        self.count = partitions
        self._cache: Lru[str, int] = Lru(cache)

    def learn(self, partitions: int) -> None:
        """The topic's partition count as the cluster reports it."""
        if partitions != self.count:
            self.count = partitions
            self._cache.clear()

    def of(self, campaign: str) -> int:
        return self._cache.get(campaign, self._compute)

    def _compute(self, campaign: str) -> int:
        return stats_partition(campaign.encode(), self.count)


@dataclass
class Tally:
    """What one raw batch counted, added to the metrics once per batch."""

    records_in: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    out: dict[tuple[str, str], int] = field(default_factory=dict)
    ingested: list[tuple[str, int]] = field(default_factory=list)  # (vendor, ingested_at)


@dataclass
class InFlight:
    """A raw batch whose outputs are produced but not yet acknowledged by Kafka."""

    acked: Awaitable[Offsets]
    events: Sequence[Event]
    marks: dict[int, list[tuple[bytes, bytes]]]
    keys: list[bytes]  # the marks' keys, held in RawPath.pending_keys meanwhile
    ends: dict[TP, int]  # each raw partition's position after this batch
    saved: dict[TP, bytes]  # the positions it saves (SavedPosition.encode), see Checkpoints
    tally: Tally
    started: float
    written: asyncio.Future[None]  # its marks and positions are written locally
    done: asyncio.Future[None]  # ... and their changelog records acknowledged
    # No batch: it saves the positions pending (Checkpoints.flush) of the partitions ``keep``
    # accepts, after the batches before it.
    flush: bool = False
    keep: Callable[[TP], bool] | None = None
    saving: dict[TP, int] = field(default_factory=dict)  # the ends whose positions it saves
    failed: bool = False  # it raised (the worker stops): the batches after it save nothing


class RawPath:
    """The raw topics' batch handler (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        serde: AvroSerde,
        outputs: Outputs,
        dedupe: WindowedTable,
        positioning: Positioning,
        dead_letters: DeadLetters,
        stats_partitions: StatsPartitions,
        floors: Floors,
        *,
        vendor_of_topic: dict[str, str],
        ready: Callable[[], Awaitable[None]],
        attribution: Callable[[Iterable[CanonicalEvent]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.serde = serde
        self.outputs = outputs
        self.dedupe = dedupe
        self.positioning = positioning
        self.dead_letters = dead_letters
        self.stats_partitions = stats_partitions
        self.floors = floors
        self.vendor_of_topic = vendor_of_topic
        self.ready = ready
        # CRM_ATTRIBUTION: the batch's touches and conversions, sent with its outputs
        # (processors.attribution_path.RawFeed.send).
        self.attribution = attribution
        self.events_topic = settings.topic("events")
        self.stats_updates_topic = settings.topic("stats-updates")
        self.max_record_bytes = dead_letters.max_record_bytes
        self.contexts: Lru[str | None, NormalizeContext] = Lru(MAX_CACHED_CONTEXTS)
        self.slots = asyncio.Semaphore(settings.worker_max_inflight)
        self.last_in_flight: InFlight | None = None
        self.pending_keys: set[bytes] = set()
        self.busy = 0  # batches in hand or in flight
        self.clock = clock
        self.checkpoints = Checkpoints(settings.positions_interval_s)

    # -- the batch -----------------------------------------------------------------------

    async def process(self, batch: Batch) -> None:
        """Normalize, dedupe and produce one batch, and hand it to :meth:`_finish`, which writes
        its dedupe marks and positions once Kafka acknowledged its outputs.

        Returns before that acknowledgement (up to ``CRM_WORKER_MAX_INFLIGHT`` batches wait for
        theirs at once). Meanwhile each raw record is held, so the engine waits for it before a
        rebalance; and the batch's dedupe keys are held in memory, so the next batch sees them as
        marked.
        """
        self.busy += 1
        try:
            admitted = await self.positioning.admit(batch, "raw")
            if not admitted:
                return
            await self.ready()
            await self.slots.acquire()
        finally:
            self.busy -= 1
        self.busy += 1
        started = time.perf_counter()
        now_ms = time.time_ns() // 1_000_000
        tally = Tally()
        cpu = Stages()
        candidates = self._normalize(admitted, now_ms, tally)
        cpu.lap(NORMALIZE)
        wall = time.perf_counter()
        encoding = [0.0]  # the wall time spent encoding (perf_counter is cheap, thread_time not)
        plan = self._plan(candidates, now_ms, encoding)
        # The plan's CPU time, split between dedupe and encode as its wall time was.
        cpu.split(DEDUPE, ENCODE, encoding[0] / max(time.perf_counter() - wall, 1e-9))
        self._send(plan, now_ms, tally)
        cpu.lap(PRODUCE)
        self._hand_over(admitted, plan.marks, tally, started)
        cpu.lap(DEDUPE)
        cpu.count()

    def _normalize(self, batch: Sequence[Event], now_ms: int, tally: Tally) -> list[Candidate]:
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
            outcome = normalize(vendor, raw, self.contexts.get(pos.app_id, _context))
            if isinstance(outcome, Skipped):
                metrics.SKIPPED.labels(vendor, outcome.reason).inc()
            elif isinstance(outcome, Rejected):
                self.dead_letters.send(
                    raw, message.key, vendor, outcome.reason.value, outcome.detail, pos, now_ms
                )
            elif isinstance(outcome, CanonicalEvent):
                candidates.append(candidate(outcome, pos, vendor, raw, message.key, size_ms))
            else:
                raise TypeError(f"a normalizer returned {type(outcome).__name__}")
        return candidates

    def _plan(self, candidates: list[Candidate], now_ms: int, encoding: list[float]) -> RawPlan:
        """What the batch does (:func:`processors.plan.plan_raw_batch`), from the dedupe keys
        already marked. The time spent encoding is added to ``encoding[0]``."""
        encode = self.serde.encode
        events_topic = self.events_topic
        clock = time.perf_counter

        def encoded(c: Candidate) -> bytes:
            t0 = clock()
            value = encode("CanonicalEvent", canonical_record(c.event, c.pos, now_ms), events_topic)
            encoding[0] += clock() - t0
            return value

        def written(c: Candidate) -> bool:
            return self.positioning.landed(
                TopicPartition(c.pos.topic, c.pos.partition), c.pos.offset
            )

        return plan_raw_batch(
            candidates,
            self._marked(candidates),
            encode=encoded,
            size=lambda c, value: record_size(c.id_bytes, value, position_headers(c.pos)),
            max_record_bytes=self.max_record_bytes,
            written=written,
            stats_partition=self.stats_partitions.of,
        )

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
        pending = self.pending_keys
        for partition, keys in lookups.items():
            for key, value in zip(keys, self.dedupe.get_many(partition, keys), strict=True):
                if key in pending:
                    found[key] = None
                elif value is not None:
                    found[key] = value
        return found

    def _send(self, plan: RawPlan, now_ms: int, tally: Tally) -> None:
        """Send the plan's events, too-large dead letters and stats increments."""
        for c, value in plan.emit:
            self.outputs.send(self.events_topic, c.id_bytes, value, headers=position_headers(c.pos))
        for c in plan.read_back:
            metrics.OUTPUTS_READ_BACK.labels(c.vendor, "event").inc()
        for c, size in plan.too_large:
            metrics.TOO_LARGE.labels(c.vendor).inc()
            self.dead_letters.send(
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
                    by_campaign,
                    plan.recipients.get(partition),
                    plan.names.get(partition),
                    plan.dimensions.get(partition),
                ),
                partition=partition,
            )
        if self.attribution is not None:
            self.attribution(c.event for c in plan.counted)
        for vendor, n in plan.duplicates.items():
            tally.duplicates[vendor] = tally.duplicates.get(vendor, 0) + n
        for c in plan.counted:
            kind = (c.vendor, c.event.event_type.value)
            tally.out[kind] = tally.out.get(kind, 0) + 1
            tally.ingested.append((c.vendor, c.pos.ingested_at))

    def _hand_over(
        self,
        admitted: Sequence[Event],
        marks: dict[int, list[tuple[bytes, bytes]]],
        tally: Tally,
        started: float,
    ) -> None:
        """Seal the batch's outputs and start its :meth:`_finish`, after the previous batch's."""
        ends: dict[TP, int] = {}
        for event in admitted:
            message = event.message
            ends[message.tp] = message.offset + 1
        self.engine.hold(admitted)
        keys = [key for items in marks.values() for key, _ in items]
        self.pending_keys.update(keys)
        loop = asyncio.get_running_loop()
        in_flight = InFlight(
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
        previous, self.last_in_flight = self.last_in_flight, in_flight
        task = asyncio.ensure_future(self._finish(in_flight, previous))
        task.add_done_callback(self._fatal_if_failed)

    def _fatal_if_failed(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.engine.fatal(task.exception() or RuntimeError(), "finishing a raw batch")

    async def _finish(self, batch: InFlight, previous: InFlight | None) -> None:
        """After ``previous``, and once Kafka acknowledged the batch's outputs: write its dedupe
        marks and the raw partitions' positions due (one RocksDB write batch per partition, and
        their changelog records), release its raw records and count it. Once the changelog
        records are acknowledged too, those positions may be committed.

        A position is due at most once per ``CRM_POSITIONS_INTERVAL`` per partition
        (:class:`processors.positions.Checkpoints`), and always while a rebalance waits for
        the batch. A flush (:meth:`flush`) is a batch without records: the positions pending."""
        try:
            await self._write(batch, previous)
            await self._make_durable(batch, previous)
        except BaseException:
            batch.failed = True
            raise
        finally:
            for future in (batch.written, batch.done):
                if not future.done():
                    future.set_result(None)

    async def _write(self, batch: InFlight, previous: InFlight | None) -> None:
        """The first half of :meth:`_finish`: the marks and positions written locally."""
        try:
            if previous is not None:
                await previous.written
            offsets = await batch.acked
            cpu = Stages()
            acked_ms = time.time_ns() // 1_000_000
            self.floors.raise_to(offsets)
            if batch.flush:
                batch.saving = self.checkpoints.flush(self.clock(), batch.keep)
            else:
                batch.saving = self.checkpoints.due(
                    batch.ends, self.clock(), force=self.engine.rebalancing()
                )
            items = batch.marks
            for tp, end in batch.saving.items():
                saved = self.positioning.position_value(tp, end)
                batch.saved[tp] = saved
                items.setdefault(tp.partition, []).append((position_key(tp.topic), saved))
            for partition, partition_items in items.items():
                self.dedupe.put_many(partition, partition_items, self.outputs)
            if not batch.flush:
                self.pending_keys.difference_update(batch.keys)
                cpu.lap(DEDUPE)
                self.engine.release(batch.events)
                _count_batch(batch.tally, acked_ms, batch.started)
                cpu.count()
        finally:
            if not batch.flush:
                self.slots.release()
                self.busy -= 1
            if not batch.written.done():
                batch.written.set_result(None)

    async def _make_durable(self, batch: InFlight, previous: InFlight | None) -> None:
        """The second half: once the marks' and positions' changelog records (this task's own
        batch of outputs) and the earlier batches' are acknowledged (a position saved here may
        cover records whose marks an earlier batch wrote), the positions' durable copies, and
        they may be committed. The persisted changelog offset only goes with positions: a
        restart with an older one restores the records after it again, in order (the same
        values)."""
        offsets = await self.outputs.seal()
        if previous is not None:
            await previous.done
            if previous.failed:
                raise RuntimeError("an earlier raw batch failed")
        if not batch.saved:
            return
        self.dedupe.set_persisted_offsets(offsets)
        durable = by_partition(
            (tp.partition, durable_key(tp.topic), saved) for tp, saved in batch.saved.items()
        )
        for partition, durable_items in durable.items():
            self.dedupe.write(partition, durable_items)
        self.positioning.durable(batch.saving)

    def flush(self, keep: Callable[[TP], bool] | None = None) -> InFlight | None:
        """Save the pending positions (of the partitions ``keep`` accepts; the others are
        dropped) after the batches in flight: a batch of its own, without records. None when
        none is pending."""
        if not self.checkpoints.pending:
            return None
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Offsets] = loop.create_future()
        acked.set_result({})
        in_flight = InFlight(
            acked,
            (),
            {},
            [],
            {},
            {},
            Tally(),
            time.perf_counter(),
            loop.create_future(),
            loop.create_future(),
            flush=True,
            keep=keep,
        )
        previous, self.last_in_flight = self.last_in_flight, in_flight
        task = asyncio.ensure_future(self._finish(in_flight, previous))
        task.add_done_callback(self._fatal_if_failed)
        return in_flight

    async def checkpoint(self) -> None:
        """The positions timer: save the positions still pending (a feed that went quiet, a
        partition whose records stopped), once per ``CRM_POSITIONS_INTERVAL``. Not while a
        rebalance moves the partitions: the placement after it saves them
        (:meth:`written`)."""
        if self.engine.rebalancing():
            return
        assigned = self.engine.assignment()
        self.flush(lambda tp: tp in assigned)

    # -- around the batches --------------------------------------------------------------

    async def written(self) -> None:
        """Wait until every raw batch of this process has its outputs acknowledged (and its
        marks written): the read-back that follows a rebalance must see them all. A batch still
        waiting would land its dead letters after the read-back, and the partition's records
        processed again would send them a second time (events are held off by their pending
        dedupe keys, dead letters by nothing else). The engine's revocation already waits for
        the held records; this makes the read-back independent of that.

        Then the positions still pending (``CRM_POSITIONS_INTERVAL``) of the partitions still
        assigned are saved, and made durable: the placement that follows resumes from them
        (the revoked partitions' are dropped: no longer this worker's to write)."""
        last = self.last_in_flight
        if last is not None and not last.written.done():
            log.info("waiting for the raw batches in flight before placing the partitions")
            await self._wait(last.written, "unacknowledged")
        assigned = self.engine.assignment()
        flushed = self.flush(lambda tp: tp in assigned)
        if flushed is not None:
            await self._wait(flushed.done, "without their positions saved")
        self.checkpoints.forget()

    async def _wait(self, future: asyncio.Future[None], what: str) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=IN_FLIGHT_WAIT_S)
        except TimeoutError:
            raise BrokerError(
                f"raw batches still {what} after {IN_FLIGHT_WAIT_S:.0f}s at a rebalance"
            ) from None

    async def stopping(self) -> None:
        """The worker stops (before its tables close): let the batches in flight finish, and
        save the positions pending after them, so that every processed record's position is
        saved and can be committed."""
        last = self.last_in_flight
        if last is None:
            return
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            # Their positions are pending once written (Checkpoints.due), then flushed.
            await asyncio.wait_for(asyncio.shield(last.written), timeout=30)
            last = self.flush() or last
            if not last.done.done():
                await asyncio.wait_for(asyncio.shield(last.done), timeout=30)


def _context(app_id: str | None) -> NormalizeContext:
    return NormalizeContext(app_id=app_id)


_END_TO_END = metrics.Children(metrics.END_TO_END_SECONDS)
_EVENTS_OUT = metrics.Children(metrics.EVENTS_OUT)
_DUPLICATES = metrics.Children(metrics.DUPLICATES)
_RECORDS_IN = metrics.Children(metrics.RECORDS_IN)
_PROCESSING = metrics.Children(metrics.PROCESSING_SECONDS)


def _count_batch(tally: Tally, acked_ms: int, started: float) -> None:
    """Counters once per batch and label set, not per record (each metric's children looked up
    once per process, each histogram's buckets incremented once per batch and vendor)."""
    end_to_end: dict[str, list[float]] = {vendor: [] for vendor in tally.records_in}
    for vendor, ingested_at in tally.ingested:
        end_to_end[vendor].append(max(0, acked_ms - ingested_at) / 1000)
    for vendor, amounts in end_to_end.items():  # every vendor's series, as labels() made it
        metrics.observe_all(_END_TO_END(vendor), amounts)
    for (vendor, event_type), n in tally.out.items():
        _EVENTS_OUT(vendor, event_type).inc(n)
    for vendor, n in tally.duplicates.items():
        _DUPLICATES(vendor).inc(n)
    elapsed = time.perf_counter() - started
    for vendor, n in tally.records_in.items():
        _RECORDS_IN(vendor).inc(n)
        metrics.observe_many(_PROCESSING(vendor), elapsed, n)
