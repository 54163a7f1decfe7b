"""The campaign-stats tables of one worker: counting a stats batch into its windows, expiring
idle windows, and reading a campaign's windows for the query API.

The decisions are pure functions of :mod:`processors.plan` (which windows, which increments, what
expires) and :mod:`processors.records` (the window values); this module reads and writes the
tables (:mod:`processors.state`) and sends the upserts and changelog records.

**Counting** (:meth:`StatsTables.count`): the touched windows of each table partition are read
with one multi-get (with the entries of the campaigns that have a window not held yet, if the
partition holds any entry), counted, and each written once: its changelog record and its
``campaign-stats`` upsert are sent, and only once Kafka acknowledged them is it written to
RocksDB (one write batch per table partition). A crash before that replays the batch, which
counts nothing twice (``WindowCounts.applied``: counts, sketches and all, are one value) and
upserts the windows again.

**Expiry** (:meth:`StatsTables.expire`): a window expires its size's ``CRM_STATS_RETENTION``
(e.g. ``1m=3d,1h=90d``) after its last update, not by its start, so a backfill of last month's
events gets its windows and keeps them as long as today's. A window that expired is deleted, with
a changelog tombstone and a ``campaign-stats`` tombstone (its upsert key, a null value: the
output holds exactly the windows the tables hold), and its campaign's entry remembers its start;
an event for an expired window is refused rather than counted into a new, partial window. A
campaign's entry is written at its first expiry (a window never seen costs no entry), and goes
its size's retention after its last window expired (:func:`processors.plan.plan_expiry`). The
query API knows a campaign that holds a window or has an entry (:meth:`StatsTables._held`).

**Write-behind** (``CRM_STATS_FLUSH_INTERVAL`` > 0, :meth:`StatsTables.count_behind`): a batch
counts its hot windows into windows held in memory (:class:`DirtyWindow`, per table partition,
loaded from RocksDB at their first touch), and a window is written as above (changelog record,
upsert, then RocksDB once acknowledged) once it has been dirty for the interval, oldest first, at
most :func:`flush_limit` per batch, so a window touched by twenty batches a second is written once
a second and the writes stay spread over the batches as they come. A window is hot when it is
held or was written within the last interval or two; a batch writes its other windows at once,
as at interval 0, unless most of the worker's touches are hot (:class:`HotWindows`; a worker
starts writing them): so many sparse campaigns, where nothing would coalesce, cost what interval
0 costs. A stats partition's position
may be committed only up to the first offset of the oldest batch whose windows are not all
written (:meth:`StatsTables.pending_from`): a crash loses what was only in memory and the replay
counts it again, skipping what a written window counted already (``applied``). The windows in
memory are bounded by count (:data:`DIRTY_MAX_WINDOWS`) and by estimated bytes
(``CRM_STATS_FLUSH_MAX_MB``, :func:`held_bytes`): beyond either the oldest are written early. Every
reader sees them: the expiry writes them first, the query API reads through them, and a window
in memory is held (:func:`processors.plan.admit_windows` never refuses it). A rebalance drops
them (:meth:`StatsTables.drop_dirty`; their positions were never committed past them, the
partition's next owner restores the table and replays), and nothing is written for a partition
no longer assigned; a clean stop writes them all.

Counting and expiry of one worker never interleave (:attr:`StatsTables.lock`): a batch reads,
awaits Kafka and writes; an expiry in between could delete a window the batch then writes back.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crmstream import metrics
from crmstream.serde import AvroSerde
from processors.api.query import CampaignKey, TimeRange
from processors.figures import HeldWindow, campaign_figures
from processors.outputs import Offsets, Outputs
from processors.plan import (
    Admission,
    admit_windows,
    apply_increments,
    group_increments,
    plan_expiry,
)
from processors.records import (
    DEFAULT_MAX_KEYS,
    StatsUpdates,
    StatsUpserts,
    WindowCounts,
    load_window,
    stats_upsert_key,
    window_updated_ms,
)
from processors.stages import STATS, Stages
from processors.state import keys
from processors.state.codecs import CampaignEntry
from processors.state.keys import campaign_entry_key, parse_window_key, window_key
from processors.state.table import Item, WindowedTable

log = logging.getLogger("crmstream.worker")


_ALL_HELD = Admission()
"""A table partition's admission when nothing can be refused: the batch's windows are all
held, or the partition holds no campaign entry (read-only)."""


def expiry_interval_s(retention_s: float | Iterable[float]) -> float:
    """How often the tables are scanned for idle windows: an eighth of the retention, between
    1 s and 5 minutes (a scan reads every window of the worker's partitions); of the shortest
    retention when there are several."""
    shortest = retention_s if isinstance(retention_s, float | int) else min(retention_s)
    return min(300.0, max(1.0, shortest / 8))


YIELD_WINDOWS = 64
"""How many windows a stats batch counts before it lets the event loop run the raw batches
waiting (between two table partitions: see :meth:`StatsTables.count`)."""


DIRTY_MAX_WINDOWS = 20_000
"""The most windows held in memory unwritten (write-behind): beyond it the oldest are written
at the next batch, due or not. Their bytes are bounded too (``CRM_STATS_FLUSH_MAX_MB``, by
:func:`held_bytes`), whichever bound comes first."""

DEFAULT_MAX_HELD_BYTES = 32 << 20
"""The default bound of the held windows' estimated bytes (``CRM_STATS_FLUSH_MAX_MB``, 32):
~10,000 sparse windows, several seconds' worth of the new windows of 50,000 campaigns at
2,500 events/s, were they all held."""

HELD_WINDOW_BYTES = 3_072
"""What a held window takes in memory before its sketches' images (:func:`held_bytes`): its
``WindowCounts`` and their dicts, measured with tracemalloc over the bench's windows at 20, 300
and 50,000 campaigns (2.5-3.1 KB each, most of it the objects, not the images)."""

HELD_EVENT_BYTES = 64
"""What each increment counted into a held window is taken to add (:func:`held_bytes`): a
recipient in each of its sketches' exact modes, a breakdown key. An overestimate for a dense
window (its sketches stop growing at 2^lg_k / 2 bytes each): the bound then writes it early."""


def held_bytes(stored: bytes | None, increments: int) -> int:
    """The estimated memory of a window held in memory: :data:`HELD_WINDOW_BYTES`, twice its
    stored value (its sketch images, and the live sketch DataSketches deserializes from one
    when it is updated, which tracemalloc does not see), and :data:`HELD_EVENT_BYTES` per
    increment counted into it since it was loaded."""
    return HELD_WINDOW_BYTES + 2 * len(stored or b"") + HELD_EVENT_BYTES * increments


HOT_MIN_TOUCHES = 512
"""How many window touches an interval needs before its share of hot ones decides whether the
worker holds new windows (:class:`HotWindows`): fewer (a quiet worker), and it keeps its choice
(at start: write them at once)."""

HOT_SHARE = 0.25
"""The share of an interval's window touches that must hit a hot window (held, or written
within the last one or two intervals) for new windows to be held the next interval. Below
it, a window touched again soon is the exception, and holding every new window cost memory
and bookkeeping for nothing to coalesce (bench/README.md, "Write-behind stats windows":
~25% of the throughput and ~90 MB per worker at 50,000 campaigns). On the bench's records at
1,200-2,000 events/s (``bench.stats_digest``, a live feed's batches) 2-3% of the touches are
hot at 50,000 campaigns, 80-93% at 300, and 20-28% at 3,000 (where the choice flips, and
either costs about the same)."""


class HotWindows:
    """Which windows a write-behind batch holds in memory, and which it writes at once.

    A window is *hot* when it is held (dirty) or was written within the last one or two
    intervals (the writes of the current interval and of the one before are remembered, by
    the hash of the window: a collision only holds a window that could have been written).
    A batch holds its hot windows: a window touched again soon after a write will be touched
    again, and is written once per interval however often that is. A window that is not hot
    is written at once, by the path of interval 0 (:meth:`StatsTables._count_partition`: the
    same reads, bytes, changelog records and upserts), while the worker's touches are mostly
    cold; while at least :data:`HOT_SHARE` of an interval's touches were hot, new windows are
    held too, as they were before this rule: most of them will be touched again within the
    interval.

    A worker starts cold (new windows written at once) and learns from its first interval of
    :data:`HOT_MIN_TOUCHES` touches. Starting the other way, a feed of many sparse campaigns
    held every new window of its first interval, up to ``CRM_STATS_FLUSH_MAX_MB`` in a
    backlog, before the rule learnt it was cold: ~50 MB more peak memory per worker at 50,000
    campaigns (bench/README.md, "Only hot windows held"). A hot feed loses little by the cold
    start: a window written at once is hot from its next touch on (held from then), and the
    interval's touches, mostly of those, switch new windows to held at its end (a second at
    1 s; bench/README.md, "Write-behind starts cold"). Each change is logged, and the mode is
    the gauge ``crm_worker_stats_hold_new_windows``.

    So a few busy campaigns keep the whole of write-behind's saving, many sparse ones cost what
    interval 0 costs (each window written at once, nothing held but the few touched twice),
    and a mix of both holds the busy windows only. Whether a window is held or written never
    changes what it counts: both paths are exact (``applied``), and a held window holds its
    stats partition's position back (:meth:`StatsTables.pending_from`)."""

    __slots__ = ("before", "hold_new", "hot", "interval_s", "started", "touches", "written")

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.hold_new = False  # start cold: see the class's docstring
        # (label, table partition) -> hashes of the windows written this interval / the last
        self.written: dict[tuple[str, int], set[int]] = {}
        self.before: dict[tuple[str, int], set[int]] = {}
        self.started: float | None = None  # monotonic start of the current interval
        self.touches = 0  # windows touched this interval
        self.hot = 0  # of which hot

    def turn(self, mono: float) -> None:
        """Start a new interval once the current one is over: decide on its touches whether
        new windows are held, and forget the writes of the one before."""
        started = self.started
        if started is None:
            self.started = mono
            return
        elapsed = mono - started
        if elapsed < self.interval_s:
            return
        touches = self.touches
        if touches >= HOT_MIN_TOUCHES:
            hold_new = self.hot >= HOT_SHARE * touches
            if hold_new != self.hold_new:
                self.hold_new = hold_new
                log.info(
                    "stats write-behind: new windows %s (%d of %d window touches hot in %.1f s)",
                    "now held" if hold_new else "now written at once",
                    self.hot,
                    touches,
                    elapsed,
                )
        self.before = self.written if elapsed < 2 * self.interval_s else {}
        self.written = {}
        self.touches = self.hot = 0
        self.started = mono

    def split(
        self,
        where: tuple[str, int],
        windows: dict[tuple[str, int], Any],
        dirty: Dirty | None,
    ) -> tuple[dict[tuple[str, int], Any], dict[tuple[str, int], Any]]:
        """A table partition's touched ``windows``: (those to hold, those to write at once),
        each in the batch's order (``windows`` itself when it all goes one way)."""
        written = self.written.get(where)
        before = self.before.get(where)
        hold_new = self.hold_new
        held: dict[tuple[str, int], Any] = {}
        at_once: dict[tuple[str, int], Any] = {}
        hot = 0
        for window, work in windows.items():
            if dirty and window in dirty:
                hot += 1
                held[window] = work
                continue
            if written or before:
                h = hash(window)
                if (written and h in written) or (before and h in before):
                    hot += 1
                    held[window] = work
                    continue
            if hold_new:
                held[window] = work
            else:
                at_once[window] = work
        self.touches += len(windows)
        self.hot += hot
        if not at_once:
            return windows, at_once
        if not held:
            return held, windows
        return held, at_once

    def wrote(self, where: tuple[str, int], windows: Iterable[tuple[str, int]]) -> None:
        """``windows`` of a table partition were written (at once, or from memory)."""
        recent = self.written.get(where)
        if recent is None:
            recent = self.written[where] = set()
        recent.update(map(hash, windows))

    def forget(self) -> None:
        """A rebalance: the writes remembered may be of partitions now elsewhere (the choice
        whether to hold new windows stays: it is the worker's feed)."""
        self.written = {}
        self.before = {}


FLUSH_MIN_WINDOWS = 256
"""A batch writes at most :func:`flush_limit` due windows (the rest wait for the next batch or
the timer)."""


def flush_limit(touched: int) -> int:
    """How many due windows one batch writes at most: twice the windows it touched, and at least
    :data:`FLUSH_MIN_WINDOWS`. So writes never come in a burst of more than a few batches'
    worth (the burst a one-second batch made at 50,000 campaigns), and still outpace the
    windows the batches make dirty (a backlog of due windows drains)."""
    return max(FLUSH_MIN_WINDOWS, 2 * touched)


@dataclass(slots=True)
class DirtyWindow:
    """A window counted in memory and not yet written (write-behind)."""

    counts: WindowCounts
    updated_ms: int  # the clock of the last batch that counted into it (its stored update time)
    since: float  # monotonic seconds when it became dirty (written once that is an interval old)
    first_offset: int  # the first stats-updates offset of the batch that made it dirty
    size: int = HELD_WINDOW_BYTES  # its estimated memory (held_bytes)


Dirty = dict[tuple[str, int], DirtyWindow]
"""A table partition's dirty windows, (campaign, start) -> window, oldest first (insertion order:
a written window leaves, and comes back at the end when counted again)."""

Selected = list[tuple[str, int, tuple[str, int], DirtyWindow]]
"""Dirty windows chosen to be written: (label, partition, window, its state)."""


@dataclass
class Counted:
    """What one stats batch did, for the metrics."""

    upserts: dict[str, int]
    replayed: int
    refused: int


class StatsTables:
    """The worker's stats tables, one per window size (``CRM_STATS_WINDOWS``)."""

    def __init__(
        self,
        tables: dict[str, WindowedTable],
        windows: Sequence[tuple[str, int]],
        serde: AvroSerde,
        stats_topic: str,
        retention_ms: int | Mapping[str, int],
        lg_k: int,
        max_keys: int | Mapping[str, int] = DEFAULT_MAX_KEYS,
        flush_interval_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
    ) -> None:
        self.tables = tables
        self.windows = list(windows)
        self.window_size = dict(windows)
        self.serde = serde
        self.stats_topic = stats_topic
        # per window size (CRM_STATS_RETENTION); one figure: every size
        self.retention_ms = (
            {label: retention_ms for label, _ in self.windows}
            if isinstance(retention_ms, int)
            else {label: retention_ms[label] for label, _ in self.windows}
        )
        self.lg_k = lg_k
        # per window and dimension (CRM_STATS_MAX_MESSAGES, CRM_STATS_MAX_VARIANTS)
        self.max_keys = max_keys
        self.upserts = StatsUpserts(serde, stats_topic)
        self.lock = asyncio.Lock()
        # Write-behind (CRM_STATS_FLUSH_INTERVAL; 0: every batch writes what it touched).
        self.flush_interval_s = flush_interval_s
        self.monotonic = monotonic
        self.dirty: dict[tuple[str, int], Dirty] = {}  # (label, table partition) -> windows
        self.dirty_count = 0
        self.dirty_bytes = 0  # their estimated memory (held_bytes)
        self.max_held_bytes = max_held_bytes  # CRM_STATS_FLUSH_MAX_MB
        self.hot = HotWindows(flush_interval_s)  # which windows a batch holds
        metrics.STATS_HELD_WINDOWS.set_function(lambda: self.dirty_count)
        metrics.STATS_HELD_BYTES.set_function(lambda: self.dirty_bytes)
        metrics.STATS_HOLD_NEW.set_function(lambda: float(self.hot.hold_new))
        self.generation = 0  # raised by drop_dirty: a write in flight then changes nothing
        # The metric's child per window size, looked up once (a look-up takes a lock).
        self._upserts_metric = {label: metrics.STATS_UPSERTS.labels(label) for label in tables}

    # -- counting ------------------------------------------------------------------------

    async def count(
        self,
        parsed: Iterable[tuple[int, StatsUpdates]],
        outputs: Outputs,
        now_ms: int,
        cpu: Stages | None = None,
    ) -> Offsets:
        """Count a batch of parsed ``stats-updates`` records (with their partitions) into the
        windows, upsert each touched window, and write it once Kafka acknowledged the upserts
        and changelog records. Returns the acknowledged offsets. ``cpu``: where the stats
        stage's CPU time is booked (not the waits)."""
        cpu = cpu or Stages()
        async with self.lock:
            cpu.resume()
            self.upserts.new_batch()
            touched = group_increments(parsed, self.windows)
            writes: list[tuple[WindowedTable, int, list[Item]]] = []
            done = Counted({}, 0, 0)
            counted = 0  # windows since the last yield
            for (label, partition), windows in touched.items():
                if windows:
                    if counted >= YIELD_WINDOWS:
                        # Let the raw batches in between the table partitions: a batch's
                        # windows are counted on the event loop, a backlog's batch can touch
                        # thousands of windows at ~60 us each, and every raw record waiting
                        # meanwhile carried that as latency. The tables are this task's under
                        # the lock, and what it sends goes to its own batch of outputs. (Not
                        # after every partition: a live feed's batch touches a few windows in
                        # each, and a yield cost more than they did.)
                        cpu.lap(STATS)
                        await asyncio.sleep(0)
                        cpu.resume()
                        counted = 0
                    items = self._count_partition(label, partition, windows, outputs, now_ms, done)
                    writes.append((self.tables[label], partition, items))
                    counted += len(windows)
            cpu.lap(STATS)
            offsets = await outputs.seal()
            cpu.resume()
            for table, partition, items in writes:
                table.write(partition, items)
            for table in self.tables.values():
                table.set_persisted_offsets(offsets)
            cpu.lap(STATS)
        self._book(done)
        return offsets

    def _book(self, done: Counted) -> None:
        """A stats batch's upserts, replayed and refused increments, on their metrics."""
        for label, count in done.upserts.items():
            self._upserts_metric[label].inc(count)
        if done.replayed:
            metrics.STATS_REPLAYED.inc(done.replayed)
        if done.refused:
            metrics.STATS_LATE.inc(done.refused)

    @staticmethod
    def _admission(
        table: WindowedTable,
        partition: int,
        windows: dict[tuple[str, int], Any],
        read: list[tuple[str, int]],
        values: list[bytes | None],
    ) -> Admission:
        """Which of a batch's ``windows`` to count: those ``read`` from RocksDB as ``values``
        and found there, or not read (held in memory), are held; the others are new, or expired
        (:func:`admit_windows`). Entries are written by expiries only: a table partition
        without any (nothing expired here yet, or every entry forgotten since) refuses nothing,
        and its windows cost no entry read (one seek)."""
        if None not in values or not table.holds_any(partition, keys.CAMPAIGNS):
            return _ALL_HELD
        absent = {window for window, value in zip(read, values, strict=True) if value is None}
        unheld = sorted({campaign for campaign, _ in absent})
        found = table.get_many(partition, [campaign_entry_key(c) for c in unheld])
        entries = {
            campaign: CampaignEntry.decode(value) if value else None
            for campaign, value in zip(unheld, found, strict=True)
        }
        return admit_windows(
            windows, lambda w: w not in absent, entries, lambda w: len(windows[w].counted)
        )

    def _count_partition(
        self,
        label: str,
        partition: int,
        windows: dict[tuple[str, int], Any],
        outputs: Outputs,
        now_ms: int,
        done: Counted,
    ) -> list[Item]:
        table = self.tables[label]
        size = self.window_size[label]
        wanted = [window_key(start, campaign.encode()) for campaign, start in windows]
        values = table.get_many(partition, wanted)
        admission = self._admission(table, partition, windows, list(windows), values)
        items: list[Item] = []
        upserts = 0
        refused = admission.refused
        lg_k, max_keys = self.lg_k, self.max_keys
        topic, send, write = self.stats_topic, outputs.send, self.upserts.window
        for (window, work), key, value in zip(windows.items(), wanted, values, strict=True):
            if refused and window in refused:
                continue
            campaign, start = window
            counts = load_window(value, lg_k, max_keys)
            done.replayed += apply_increments(counts, work.counted)
            if work.name is not None:
                counts.named(work.name)
            value, upserted = write(campaign, label, start, size, counts, now_ms)
            items.append((key, value))
            send(topic, stats_upsert_key(campaign, label, start), upserted)
            upserts += 1
        if admission.refused:
            done.refused += sum(admission.refused.values())
            log.warning(
                "%s windows: %d increments refused for %d expired windows, e.g. %s",
                label,
                sum(admission.refused.values()),
                len(admission.refused),
                sorted(admission.refused)[:3],
            )
        table.send_changelog(partition, items, outputs)
        done.upserts[label] = done.upserts.get(label, 0) + upserts
        return items

    # -- write-behind ----------------------------------------------------------------------

    async def count_behind(
        self,
        parsed: Iterable[tuple[int, StatsUpdates]],
        outputs: Outputs,
        now_ms: int,
        firsts: Mapping[int, int],
        active: Iterable[int] | None = None,
        cpu: Stages | None = None,
    ) -> Offsets:
        """Count a batch: its hot windows into memory, the others written at once as
        :meth:`count` writes them (:class:`HotWindows`); then write the due windows in memory
        (:meth:`_select`; a bounded number, oldest first, of the ``active`` stats partitions:
        None, all), and seal it all with the batch's outputs (its dead letters, if any).
        ``firsts``: the batch's first offset per stats partition (where a window it makes dirty
        holds the partition's position back, :meth:`pending_from`). Returns the acknowledged
        offsets."""
        cpu = cpu or Stages()
        async with self.lock:
            cpu.resume()
            self.upserts.new_batch()
            touched = group_increments(parsed, self.windows)
            done = Counted({}, 0, 0)
            n = 0
            counted = 0  # windows since the last yield
            mono = self.monotonic()
            hot = self.hot
            hot.turn(mono)
            sent: list[tuple[str, int, list[Item]]] = []
            for where, windows in touched.items():
                if windows:
                    if counted >= YIELD_WINDOWS:
                        cpu.lap(STATS)
                        await asyncio.sleep(0)  # the raw batches waiting (see count)
                        cpu.resume()
                        counted = 0
                    label, partition = where
                    held, at_once = hot.split(where, windows, self.dirty.get(where))
                    if at_once:
                        items = self._count_partition(
                            label, partition, at_once, outputs, now_ms, done
                        )
                        sent.append((label, partition, items))
                        hot.wrote(where, at_once)
                    if held:
                        self._count_dirty(
                            label, partition, held, now_ms, mono, firsts[partition], done
                        )
                    n += len(windows)
                    counted += len(windows)
            selected = self._select(mono, flush_limit(n), active=active)
            offsets = await self._write(selected, outputs, cpu, sent)
            cpu.lap(STATS)
        self._book(done)
        return offsets

    def _count_dirty(
        self,
        label: str,
        partition: int,
        windows: dict[tuple[str, int], Any],
        now_ms: int,
        mono: float,
        first_offset: int,
        done: Counted,
    ) -> None:
        """:meth:`_count_partition` into the windows held in memory: a window not held there
        is read from RocksDB (with the same refusal of an expired one), counted, and kept."""
        table = self.tables[label]
        dirty = self.dirty.setdefault((label, partition), {})
        missing = [w for w in windows if w not in dirty]
        values = table.get_many(
            partition, [window_key(start, campaign.encode()) for campaign, start in missing]
        )
        stored = dict(zip(missing, values, strict=True))
        # (a window held in memory is held: admit_windows never refuses it)
        admission = self._admission(table, partition, windows, missing, values)
        refused = admission.refused
        lg_k, max_keys = self.lg_k, self.max_keys
        for window, work in windows.items():
            if refused and window in refused:
                continue
            held = dirty.get(window)
            if held is None:
                value = stored[window]
                counts = load_window(value, lg_k, max_keys)
                size = held_bytes(value, len(work.counted))
                dirty[window] = DirtyWindow(counts, now_ms, mono, first_offset, size)
                self.dirty_count += 1
            else:
                counts = held.counts
                held.updated_ms = now_ms
                size = HELD_EVENT_BYTES * len(work.counted)
                held.size += size
            self.dirty_bytes += size
            done.replayed += apply_increments(counts, work.counted)
            if work.name is not None:
                counts.named(work.name)
        if refused:
            done.refused += sum(refused.values())
            log.warning(
                "%s windows: %d increments refused for %d expired windows, e.g. %s",
                label,
                sum(refused.values()),
                len(refused),
                sorted(refused)[:3],
            )

    def _select(
        self,
        mono: float,
        limit: int,
        *,
        active: Iterable[int] | None = None,
        everything: bool = False,
    ) -> Selected:
        """The dirty windows to write now, oldest first: those dirty for the interval, at most
        ``limit``; and, whatever the limit, as many more of the oldest as keep the windows in
        memory within :data:`DIRTY_MAX_WINDOWS` and :attr:`max_held_bytes`. ``everything``:
        all of them (the expiry, a stop). Only of the ``active`` partitions (None: all)."""
        wanted = None if active is None else set(active)
        groups = [
            _entries(label, partition, dirty)
            for (label, partition), dirty in self.dirty.items()
            if dirty and (wanted is None or partition in wanted)
        ]
        if not groups:
            return []
        over = self.dirty_count - DIRTY_MAX_WINDOWS
        over_bytes = self.dirty_bytes - self.max_held_bytes
        freed = 0
        due = mono - self.flush_interval_s
        out: Selected = []
        for item in heapq.merge(*groups, key=lambda item: item[3].since):
            if (
                not everything
                and len(out) >= over
                and freed >= over_bytes
                and (len(out) >= limit or item[3].since > due)
            ):
                break
            out.append(item)
            freed += item[3].size
        return out

    async def _write(
        self,
        selected: Selected,
        outputs: Outputs,
        cpu: Stages,
        sent: Sequence[tuple[str, int, list[Item]]] = (),
    ) -> Offsets:
        """Write ``selected``: encode, changelog record and upsert of each, one seal for them
        and whatever the task sent before (a batch's dead letters, and the windows it wrote at
        once, ``sent``: written to RocksDB with them), then RocksDB once acknowledged, and out
        of memory. After a :meth:`drop_dirty` meanwhile, the windows acknowledged are still
        written locally (the changelog holds them) but the memory left as the drop made it.
        The caller started the upserts' batch (``self.upserts.new_batch()``)."""
        generation = self.generation
        upserts: dict[str, int] = {}
        writes: dict[tuple[str, int], list[Item]] = {}
        topic, send, write = self.stats_topic, outputs.send, self.upserts.window
        wrote = self.hot.wrote
        for i, (label, partition, window, held) in enumerate(selected):
            campaign, start = window
            if i and i % YIELD_WINDOWS == 0:
                cpu.lap(STATS)
                await asyncio.sleep(0)  # the raw batches waiting (see count)
                cpu.resume()
            value, upserted = write(
                campaign, label, start, self.window_size[label], held.counts, held.updated_ms
            )
            writes.setdefault((label, partition), []).append(
                (window_key(start, campaign.encode()), value)
            )
            send(topic, stats_upsert_key(campaign, label, start), upserted)
            upserts[label] = upserts.get(label, 0) + 1
            wrote((label, partition), (window,))
        for (label, partition), items in writes.items():
            self.tables[label].send_changelog(partition, items, outputs)
        cpu.lap(STATS)
        offsets = await outputs.seal()
        cpu.resume()
        for label, partition, items in sent:
            self.tables[label].write(partition, items)
        for (label, partition), items in writes.items():
            self.tables[label].write(partition, items)
        if writes or sent:
            for table in self.tables.values():
                table.set_persisted_offsets(offsets)
        if generation == self.generation:
            for label, partition, window, held in selected:
                dirty = self.dirty.get((label, partition))
                if dirty is not None and dirty.get(window) is held:
                    del dirty[window]
                    self.dirty_count -= 1
                    self.dirty_bytes -= held.size
        for label, n in upserts.items():
            self._upserts_metric[label].inc(n)
        return offsets

    async def flush(
        self,
        outputs: Outputs,
        active: Iterable[int] | None = None,
        *,
        everything: bool = False,
        cpu: Stages | None = None,
    ) -> int:
        """Write the due windows of the ``active`` partitions (all of them with
        ``everything``): the timer on an idle feed, and a clean stop. Returns how many."""
        if not self.dirty_count:
            return 0
        cpu = cpu or Stages()
        async with self.lock:
            cpu.resume()
            selected = self._select(
                self.monotonic(), DIRTY_MAX_WINDOWS, active=active, everything=everything
            )
            if selected:
                self.upserts.new_batch()
                await self._write(selected, outputs, cpu)
            cpu.lap(STATS)
        return len(selected)

    def pending_from(self, partition: int) -> int | None:
        """The first offset of the oldest stats batch of ``partition`` whose windows are not all
        written (its position may be committed up to there, not beyond); None: all written."""
        oldest: int | None = None
        for label in self.window_size:
            dirty = self.dirty.get((label, partition))
            if dirty:
                first = next(iter(dirty.values())).first_offset
                if oldest is None or first < oldest:
                    oldest = first
        return oldest

    def drop_dirty(self) -> int:
        """Forget the windows held in memory (a rebalance: their partitions may have moved,
        and the positions were never committed past them; each partition is placed at its
        committed offset and the batches are counted again). Returns how many."""
        dropped = self.dirty_count
        self.dirty = {}
        self.dirty_count = 0
        self.dirty_bytes = 0
        self.hot.forget()
        self.generation += 1
        if dropped:
            log.info("stats: %d windows counted in memory dropped for a rebalance", dropped)
        return dropped

    def _dirty_window(
        self, label: str, partition: int, window: tuple[str, int]
    ) -> DirtyWindow | None:
        dirty = self.dirty.get((label, partition))
        return None if dirty is None else dirty.get(window)

    # -- expiry --------------------------------------------------------------------------

    async def expire(self, outputs: Outputs, partitions: Iterable[int], now_ms: int) -> int:
        """Delete the windows idle for their size's retention in ``partitions`` (the stats
        partitions this worker is active for: a standby follows the changelog's tombstones), and
        tombstone them on ``campaign-stats``. Returns how many expired.

        The output tombstones are sent first; once Kafka acknowledged them, the changelog
        tombstones (and the campaign entries); once those are acknowledged, the windows are
        deleted locally. So a window the changelog has deleted (a restore, or a restart that
        replays the changelog's tail, would not see it again) has its output tombstone, and a
        crash before that plans the same deletes again at the next expiry: a tombstone sent
        twice deletes nothing twice."""
        expired = 0
        partitions = set(partitions)
        async with self.lock:
            if self.dirty_count:
                # The windows in memory first: their update times decide what is idle, and a
                # window deleted here must not be written back from memory afterwards.
                selected = self._select(
                    self.monotonic(), DIRTY_MAX_WINDOWS, active=partitions, everything=True
                )
                if selected:
                    self.upserts.new_batch()
                    await self._write(selected, outputs, Stages())
            planned: list[tuple[str, WindowedTable, int, list[Item]]] = []
            tombstones: list[bytes] = []
            for label, table in self.tables.items():
                open_here = set(table.partitions())
                for partition in sorted(set(partitions) & open_here):
                    plan = plan_expiry(
                        table.scan(partition, keys.WINDOWS),
                        (
                            (keys.campaign_of_entry(key), CampaignEntry.decode(v))
                            for key, v in table.scan(partition, keys.CAMPAIGNS)
                        ),
                        now_ms,
                        self.retention_ms[label],
                        self.window_size[label] * 1000,
                    )
                    # Tombstones first, then the entries: a changelog that has an entry
                    # remembering a window has its tombstone too.
                    items: list[Item] = [(key, None) for key in plan.deletes]
                    items += [(campaign_entry_key(c), e.encode()) for c, e in plan.entries.items()]
                    items += [(campaign_entry_key(c), None) for c in plan.forgets]
                    for key in plan.deletes:
                        campaign, start = parse_window_key(key)
                        tombstones.append(stats_upsert_key(campaign, label, start))
                    if items:
                        planned.append((label, table, partition, items))
                    if plan.deletes:
                        expired += len(plan.deletes)
                    if plan.forgets:
                        metrics.STATS_CAMPAIGNS_FORGOTTEN.labels(label).inc(len(plan.forgets))
            if tombstones:
                for key in tombstones:
                    outputs.send(self.stats_topic, key, None)
                await outputs.seal()
            if planned:
                for _label, table, partition, items in planned:
                    table.send_changelog(partition, items, outputs)
                offsets = await outputs.seal()
                for label, table, partition, items in planned:
                    table.write(partition, items)
                    deleted = sum(
                        1 for key, value in items if value is None and key in keys.WINDOWS
                    )
                    if deleted:
                        metrics.STATS_EXPIRED.labels(label).inc(deleted)
                for table in self.tables.values():
                    table.set_persisted_offsets(offsets)
        return expired

    # -- reading, for the query API ------------------------------------------------------

    def has_window_size(self, label: str) -> bool:
        return label in self.tables

    def _held(
        self, label: str, partition: int, key: bytes, r: TimeRange
    ) -> tuple[list[HeldWindow], bool]:
        """The campaign's windows in the range, and whether the table knows the campaign."""
        table = self.tables[label]
        wanted = [window_key(start, key) for start in r.starts()]
        values = table.get_many(partition, wanted) if wanted else []
        dirty = self.dirty.get((label, partition))
        campaign = key.decode()
        held: list[HeldWindow] = []
        for start, value in zip(r.starts(), values, strict=True):
            # A window counted in memory is newer than its stored value (write-behind).
            unwritten = dirty.get((campaign, start)) if dirty else None
            if unwritten is not None:
                held.append(HeldWindow(start, unwritten.counts, unwritten.updated_ms))
            elif value is not None:
                held.append(
                    HeldWindow(start, load_window(value, self.lg_k), window_updated_ms(value))
                )
        if held:
            return held, True
        # Known: it holds a window out of the range, or an entry remembers an expired one (a
        # campaign gets its entry at its first expiry, not when first seen).
        if table.get_many(partition, [campaign_entry_key(key.decode())])[0] is not None:
            return held, True
        return held, table.holds_window_of(partition, key)

    def campaign(
        self, label: str, partition: int, campaign: CampaignKey, r: TimeRange, *, series: bool
    ) -> dict[str, Any] | None:
        """One campaign's figures over ``r`` from this worker's partition ``partition``; None
        when the table has never seen the campaign."""
        windows, known = self._held(label, partition, campaign.key.encode(), r)
        if not known:
            return None
        return campaign_figures(
            _key_fields(campaign),
            windows,
            r.window_ms,
            self.lg_k,
            series=series,
            max_keys=self.max_keys,
        )

    def campaigns(
        self,
        label: str,
        partitions: Iterable[int],
        r: TimeRange,
        matches: Callable[[CampaignKey, str | None], bool],
    ) -> list[dict[str, Any]]:
        """Every campaign with a window in ``r`` in ``partitions``, that ``matches``."""
        table = self.tables[label]
        in_range = keys.window_range(r.from_ms, r.to_ms)
        out: list[dict[str, Any]] = []
        for partition in partitions:
            found: dict[str, list[HeldWindow]] = {}
            dirty = self.dirty.get((label, partition)) or {}
            for key, value in table.scan(partition, in_range):
                campaign, start = parse_window_key(key)
                if (campaign, start) in dirty:
                    continue  # read from memory below (write-behind)
                found.setdefault(campaign, []).append(
                    HeldWindow(start, load_window(value, self.lg_k), window_updated_ms(value))
                )
            for (campaign, start), unwritten in dirty.items():
                if r.from_ms <= start < r.to_ms:
                    found.setdefault(campaign, []).append(
                        HeldWindow(start, unwritten.counts, unwritten.updated_ms)
                    )
            for campaign, windows in found.items():
                if dirty:
                    windows.sort(key=lambda w: w.start)
                try:
                    parsed = CampaignKey.from_key(campaign)
                except ValueError:
                    continue  # not a key the API can name (an unknown vendor)
                name = max((w.counts.name for w in windows if w.counts.name), default=None)
                if matches(parsed, name[1] if name else None):
                    out.append(
                        campaign_figures(
                            _key_fields(parsed), windows, r.window_ms, self.lg_k, series=False
                        )
                    )
        return out


def _entries(
    label: str, partition: int, dirty: Dirty
) -> Iterator[tuple[str, int, tuple[str, int], DirtyWindow]]:
    """A table partition's dirty windows, oldest first, for :meth:`StatsTables._select` (a
    function, so that each generator keeps its own label and partition)."""
    for window, held in dirty.items():
        yield label, partition, window, held


def _key_fields(key: CampaignKey) -> dict[str, Any]:
    return {
        "vendor": key.vendor,
        "app_id": key.app_id or None,
        "campaign_id": key.campaign_id or None,
    }
