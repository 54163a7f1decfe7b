"""The campaign-stats tables of one worker: counting a stats batch into its windows, expiring
idle windows, and reading a campaign's windows for the query API.

The decisions are pure functions of :mod:`processors.plan` (which windows, which increments, what
expires) and :mod:`processors.records` (the window values); this module reads and writes the
tables (:mod:`processors.state`) and sends the upserts and changelog records.

**Counting** (:meth:`StatsTables.count_open`): the touched windows of each table partition that
are not open yet are read with one multi-get (with the entries of the campaigns that have a window
not held) and decoded, then kept *open*: decoded, their sketches live, counted by every later
batch without being read, decoded or serialized again. **Flushing** (:meth:`StatsTables.
flush_open`) writes each open window once, however many batches touched it: its changelog record
and its ``campaign-stats`` upsert are sent, and only once Kafka acknowledged them is it written
to RocksDB (one write batch per table partition); then the positions of the batches it covers
become committable (:attr:`StatsTables.on_flushed`). The stats path flushes every
``CRM_STATS_FLUSH_INTERVAL`` (:mod:`processors.stats_path`); :meth:`StatsTables.count` counts and
flushes at once.

A crash before a flush is acknowledged and written replays its batches from the committed
position, which counts nothing twice (``WindowCounts.applied``: counts, sketches and all, are one
value, written as one) and upserts the windows again: the restored state always corresponds to a
committed position or one ahead of it, never behind. What a rebalance takes away is dropped
unwritten (:meth:`StatsTables.drop_open`): the partition is read again from its committed
position.

**Expiry** (:meth:`StatsTables.expire`): a window expires its size's ``CRM_STATS_RETENTION``
(e.g. ``1m=3d,1h=90d``) after its last update, not by its start, so a backfill of last month's
events gets its windows and keeps them as long as today's. A window that expired is deleted, with
a changelog tombstone and a ``campaign-stats`` tombstone (its upsert key, a null value: the
output holds exactly the windows the tables hold), and its campaign's entry remembers its start;
an event for an expired window is refused rather than counted into a new, partial window. A
campaign's entry goes too, its size's retention after its last window expired
(:func:`processors.plan.plan_expiry`).

Counting, flushing and expiry of one worker never interleave (:attr:`StatsTables.lock`): a flush
awaits Kafka, then writes; a batch counted meanwhile would read a window before it is written,
and an expiry in between could delete a window the flush then writes back. An expiry flushes the
open windows first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmstream import metrics
from crmstream.serde import AvroSerde
from processors.api.query import CampaignKey, TimeRange
from processors.figures import HeldWindow, campaign_figures
from processors.outputs import Offsets, Outputs
from processors.plan import (
    admit_windows,
    apply_increments,
    group_increments,
    plan_expiry,
)
from processors.records import (
    DEFAULT_MAX_KEYS,
    StatsUpdates,
    WindowCounts,
    load_window,
    stats_record,
    stats_upsert_key,
    window_updated_ms,
    window_value,
)
from processors.stages import STATS, Stages
from processors.state import keys
from processors.state.codecs import CampaignEntry
from processors.state.keys import campaign_entry_key, parse_window_key, window_key
from processors.state.table import Item, WindowedTable

log = logging.getLogger("crmstream.worker")


def expiry_interval_s(retention_s: float | Iterable[float]) -> float:
    """How often the tables are scanned for idle windows: an eighth of the retention, between
    1 s and 5 minutes (a scan reads every window of the worker's partitions); of the shortest
    retention when there are several."""
    shortest = retention_s if isinstance(retention_s, float | int) else min(retention_s)
    return min(300.0, max(1.0, shortest / 8))


@dataclass
class Counted:
    """What one stats batch did, for the metrics."""

    upserts: dict[str, int]
    replayed: int
    refused: int


@dataclass
class _Open:
    """One table partition's windows counted since the last flush, decoded (their sketches
    live), each with the time it was last counted at; and the campaigns seen for the first time
    since, with that time (their entries are written with the windows)."""

    windows: dict[tuple[str, int], tuple[WindowCounts, int]] = field(default_factory=dict)
    campaigns: dict[str, int] = field(default_factory=dict)


def _ignore(ends: Mapping[Any, int]) -> None:
    pass


def _always(tp: Any) -> bool:
    return True


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
        self.lock = asyncio.Lock()
        # Counted, not yet flushed: per (window label, table partition), and the positions of
        # the batches counted into them (given to on_flushed once written).
        self._open: dict[tuple[str, int], _Open] = {}
        self._ends: dict[Any, int] = {}
        self.on_flushed: Callable[[Mapping[Any, int]], None] = _ignore
        # Whether a stream partition with positions waiting is still placed as when they were
        # counted (False: placed again by a rebalance, or gone; its open windows are dropped).
        self.is_current: Callable[[Any], bool] = _always

    # -- counting ------------------------------------------------------------------------

    async def count(
        self,
        parsed: Iterable[tuple[int, StatsUpdates]],
        outputs: Outputs,
        now_ms: int,
        cpu: Stages | None = None,
        ends: Mapping[Any, int] | None = None,
    ) -> Offsets:
        """Count a batch of parsed ``stats-updates`` records (with their partitions) into the
        windows, then flush every open window (:meth:`flush_open`): each is upserted and written
        once Kafka acknowledged the upserts and changelog records. Returns the acknowledged
        offsets. ``cpu``: where the stats stage's CPU time is booked (not the waits)."""
        cpu = cpu or Stages()
        async with self.lock:
            cpu.resume()
            self.count_open(parsed, now_ms, ends)
            return await self.flush_open(outputs, cpu)

    def count_open(
        self,
        parsed: Iterable[tuple[int, StatsUpdates]],
        now_ms: int,
        ends: Mapping[Any, int] | None = None,
    ) -> None:
        """Count a batch into the open windows (the caller holds :attr:`lock`): a window already
        open is counted as it is, the others are read (one multi-get per table partition, with
        the entries of the campaigns that have a window not held) and opened. Nothing is written
        or sent: :meth:`flush_open` does. ``ends``: the batch's stream positions (partition
        tuple -> next offset), handed to :attr:`on_flushed` once a flush covered the batch."""
        self._drop_stale()
        done = Counted({}, 0, 0)
        for (label, partition), windows in group_increments(parsed, self.windows).items():
            if windows:
                self._count_partition(label, partition, windows, now_ms, done)
        for tp, end in (ends or {}).items():
            if end > self._ends.get(tp, -1):
                self._ends[tp] = end
        if done.replayed:
            metrics.STATS_REPLAYED.inc(done.replayed)
        if done.refused:
            metrics.STATS_LATE.inc(done.refused)

    def open_windows(self) -> int:
        """How many windows are open (counted since the last flush)."""
        return sum(len(o.windows) for o in self._open.values())

    def open_positions(self) -> list[Any]:
        """The stream partitions whose positions wait for the next flush."""
        return list(self._ends)

    def drop_open(self, partitions: Iterable[int]) -> int:
        """Forget what was counted since the last flush in these table partitions, and their
        stream positions (the caller holds :attr:`lock`): the partition was placed again (a
        rebalance), so its batches are read again from its committed position and counted into
        the tables as the changelog left them. Returns how many windows were dropped."""
        gone = set(partitions)
        dropped = 0
        for key in [k for k in self._open if k[1] in gone]:
            dropped += len(self._open.pop(key).windows)
        for tp in [tp for tp in self._ends if tp.partition in gone]:
            del self._ends[tp]
        return dropped

    def _drop_stale(self) -> None:
        stale = {tp.partition for tp in self._ends if not self.is_current(tp)}
        if stale:
            dropped = self.drop_open(stale)
            log.info(
                "stats partitions %s placed again: %d windows counted since the last flush "
                "dropped, read again from the committed position",
                sorted(stale),
                dropped,
            )

    async def flush_open(self, outputs: Outputs, cpu: Stages | None = None) -> Offsets:
        """Write every open window once (the caller holds :attr:`lock`): its value and its
        campaign's new entry to the changelog, its upsert to ``campaign-stats``, and, once Kafka
        acknowledged them, to RocksDB (one write batch per table partition). Then the positions
        of the batches counted into them are handed to :attr:`on_flushed`. Returns the
        acknowledged offsets (also those of the caller's task's other sends, e.g. dead
        letters)."""
        cpu = cpu or Stages()
        self._drop_stale()
        opened, self._open = self._open, {}
        ends, self._ends = self._ends, {}
        writes: list[tuple[WindowedTable, int, list[Item]]] = []
        upserts: dict[str, int] = {}
        for (label, partition), o in opened.items():
            writes.append(
                (self.tables[label], partition, self._flush_partition(label, partition, o, outputs))
            )
            upserts[label] = upserts.get(label, 0) + len(o.windows)
        cpu.lap(STATS)
        offsets = await outputs.seal()
        cpu.resume()
        for table, partition, items in writes:
            table.write(partition, items)
        if writes:
            for table in self.tables.values():
                table.set_persisted_offsets(offsets)
        if ends:
            self.on_flushed(ends)
        cpu.lap(STATS)
        for label, n in upserts.items():
            metrics.STATS_UPSERTS.labels(label).inc(n)
        return offsets

    def _count_partition(
        self,
        label: str,
        partition: int,
        windows: dict[tuple[str, int], Any],
        now_ms: int,
        done: Counted,
    ) -> None:
        table = self.tables[label]
        o = self._open.get((label, partition))
        if o is None:
            o = self._open[label, partition] = _Open()
        held = o.windows
        unread = [w for w in windows if w not in held]
        wanted = [window_key(start, campaign.encode()) for campaign, start in unread]
        stored = dict(zip(unread, table.get_many(partition, wanted), strict=True))
        unheld = {campaign for (campaign, _), value in stored.items() if value is None}
        # A campaign opened since the last flush has its entry waiting to be written.
        entries: dict[str, CampaignEntry | None] = {
            c: CampaignEntry(-1, o.campaigns[c]) for c in unheld if c in o.campaigns
        }
        unknown = sorted(unheld - entries.keys())
        found = table.get_many(partition, [campaign_entry_key(c) for c in unknown])
        for campaign, value in zip(unknown, found, strict=True):
            entries[campaign] = CampaignEntry.decode(value) if value else None
        admission = admit_windows(
            windows,
            lambda w: w in held or stored[w] is not None,
            entries,
            lambda w: len(windows[w].counted),
        )
        for window, work in windows.items():
            if window in admission.refused:
                continue
            found_open = held.get(window)
            counts = (
                found_open[0]
                if found_open is not None
                else load_window(stored[window], self.lg_k, self.max_keys)
            )
            done.replayed += apply_increments(counts, work.counted)
            if work.name is not None:
                counts.named(work.name)
            held[window] = (counts, now_ms)
        for campaign in admission.new_campaigns:
            o.campaigns[campaign] = now_ms
        if admission.refused:
            done.refused += sum(admission.refused.values())
            log.warning(
                "%s windows: %d increments refused for %d expired windows, e.g. %s",
                label,
                sum(admission.refused.values()),
                len(admission.refused),
                sorted(admission.refused)[:3],
            )

    def _flush_partition(
        self, label: str, partition: int, o: _Open, outputs: Outputs
    ) -> list[Item]:
        """Send an open table partition's windows (upserts) and its changelog records; returns
        the items to write once Kafka acknowledged them."""
        table = self.tables[label]
        size = self.window_size[label]
        items: list[Item] = []
        encode = self.serde.encode
        for (campaign, start), (counts, at) in o.windows.items():
            items.append((window_key(start, campaign.encode()), window_value(counts, at)))
            record = stats_record(campaign, label, start, size, counts, at)
            outputs.send(
                self.stats_topic,
                stats_upsert_key(campaign, label, start),
                encode("CampaignStats", record, self.stats_topic),
            )
        for campaign, at in o.campaigns.items():
            items.append((campaign_entry_key(campaign), CampaignEntry(-1, at).encode()))
        table.send_changelog(partition, items, outputs)
        return items

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
        async with self.lock:
            # The open windows first: a window counted since the last flush is not idle, and the
            # scan below reads the tables as written.
            if self._open or self._ends:
                await self.flush_open(outputs)
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
        held = [
            HeldWindow(start, load_window(value, self.lg_k), window_updated_ms(value))
            for start, value in zip(r.starts(), values, strict=True)
            if value is not None
        ]
        if held:
            return held, True
        entry = table.get_many(partition, [campaign_entry_key(key.decode())])[0]
        return held, entry is not None

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
            for key, value in table.scan(partition, in_range):
                campaign, start = parse_window_key(key)
                found.setdefault(campaign, []).append(
                    HeldWindow(start, load_window(value, self.lg_k), window_updated_ms(value))
                )
            for campaign, windows in found.items():
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


def _key_fields(key: CampaignKey) -> dict[str, Any]:
    return {
        "vendor": key.vendor,
        "app_id": key.app_id or None,
        "campaign_id": key.campaign_id or None,
    }
