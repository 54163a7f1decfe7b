"""The stats path: one batch of ``stats-updates`` records counted into the campaign windows
(:class:`processors.stats.StatsTables`), and the periodic expiry of idle windows.

A batch's way: admit (:meth:`Positioning.admit`) -> parse (a record nobody here could have
written becomes a dead letter) -> count, upsert and write once Kafka acknowledged
(:meth:`StatsTables.count`) -> its positions become committable.

With ``CRM_STATS_FLUSH_INTERVAL`` > 0 (write-behind, :meth:`StatsTables.count_behind`) a batch
counts its hot windows into windows held in memory (the others it writes at once,
:class:`processors.stats.HotWindows`) and writes those due; a partition's position becomes
committable up to the oldest batch not yet written (:meth:`StatsPath._durable`). A timer writes
the due windows of an idle feed (:meth:`StatsPath.flush`), a rebalance drops the windows in
memory before the partitions are placed again (:meth:`StatsPath.placing`), and the agent's stop
writes them all (:meth:`StatsPath.stopping`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from crmstream import metrics
from processors.engine import Batch, Engine
from processors.normalize.model import RejectReason
from processors.outputs import DeadLetters, Outputs
from processors.positioning import Positioning
from processors.positions import TP
from processors.records import RawPosition, StatsUpdates, headers_dict, parse_stats_updates
from processors.stages import STATS, Stages
from processors.stats import StatsTables

log = logging.getLogger("crmstream.worker")

STOP_FLUSH_TIMEOUT_S = 30.0
"""How long a stop waits to write the windows held in memory (their positions were not
committed past them: if it cannot, the next start counts them again)."""


class StatsPath:
    """The ``stats-updates`` batch handler and the stats expiry."""

    def __init__(
        self,
        engine: Engine,
        tables: StatsTables,
        outputs: Outputs,
        positioning: Positioning,
        dead_letters: DeadLetters,
        *,
        stats_updates_topic: str,
        ready: Callable[[], Awaitable[None]],
        start_outputs: Callable[[], Awaitable[None]],
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.outputs = outputs
        self.positioning = positioning
        self.dead_letters = dead_letters
        self.stats_updates_topic = stats_updates_topic
        self.ready = ready  # the outputs started and the schemas registered
        self.start_outputs = start_outputs
        self.busy = 0  # batches in hand
        # Write-behind: each stats partition's latest batch end (what becomes committable once
        # the partition holds no window unwritten), by partition.
        self.seen: dict[int, tuple[TP, int]] = {}
        # When the latest batch was counted (the tables' monotonic clock): the timer writes
        # only for a feed idle since a quarter of the interval (flush).
        self.last_batch: float | None = None
        # Epoch ms: a window's last update and its expiry are measured on it.
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)

    async def process(self, batch: Batch) -> None:
        """Add a batch of increments to the windows, then write each touched window once.

        The touched windows are read with one multi-get per table and partition, and each
        increment is counted unless the window counted its raw record already. Every touched
        window's new value goes to its changelog and as an upsert to ``campaign-stats``; only
        once Kafka acknowledged those is it written to RocksDB (one write batch per table and
        partition) and the batch's position made committable. A crash before that replays the
        batch, which then counts nothing twice and upserts the windows again.
        """
        self.busy += 1
        try:
            admitted = await self.positioning.admit(batch, "stats")
            if not admitted:
                return
            await self.ready()
            cpu = Stages()
            now_ms = self.clock()
            ends: dict[TP, int] = {}
            firsts: dict[int, int] = {}
            parsed: list[tuple[int, StatsUpdates]] = []
            for event in admitted:
                message = event.message
                ends[message.tp] = message.offset + 1
                firsts.setdefault(message.partition, message.offset)
                try:
                    parsed.append(
                        (message.partition, parse_stats_updates(message.key, message.value or b""))
                    )
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    self._invalid(message, exc, now_ms)
            # Counted, upserted, and written once Kafka acknowledged (processors/stats.py).
            cpu.lap(STATS)
            if self.tables.flush_interval_s > 0:
                self.last_batch = self.tables.monotonic()
                generation = self.tables.generation
                await self.tables.count_behind(
                    parsed, self.outputs, now_ms, firsts, self._active(), cpu
                )
                cpu.resume()
                if generation == self.tables.generation:
                    for tp, end in ends.items():
                        self.seen[tp.partition] = (tp, end)
                    self._durable()
            else:
                await self.tables.count(parsed, self.outputs, now_ms, cpu)
                cpu.resume()
                self.positioning.durable(ends)
            # Acknowledged to the engine: Faust commits the committable offsets only of the
            # partitions it holds acknowledgements for, and the readers' records never reach
            # it. Without this no stats-updates partition was ever committed (a start or a
            # rebalance counted each again from its first offset, exact only by the windows'
            # raw offsets), and no committable position was ever tested by a kill.
            self.positioning.acknowledge(admitted)
            cpu.lap(STATS)
            cpu.count()
        finally:
            self.busy -= 1

    def _active(self) -> set[int]:
        """The stats partitions assigned here now (only their windows are written)."""
        topic = self.stats_updates_topic
        return {tp.partition for tp in self.engine.assignment() if tp.topic == topic}

    def _durable(self) -> None:
        """Each stats partition's position committable up to its oldest batch not written
        (write-behind): the end of its latest batch when it holds no window unwritten."""
        pending = self.tables.pending_from
        durable: dict[TP, int] = {}
        for partition, (tp, end) in self.seen.items():
            first = pending(partition)
            durable[tp] = end if first is None else min(first, end)
        self.positioning.durable(durable)

    async def flush(self) -> None:
        """The timer: write the windows due in memory when no batch comes to do it (an idle
        feed), not while the group moves (a rebalance drops them, :meth:`placing`)."""
        if not self.tables.dirty_count or not self.engine.settled()[0]:
            return
        if self.tables.lock.locked():
            # A batch (or the expiry) is writing: it writes the due windows itself, and waiting
            # for it here made the tick outlast its interval ("Timer stats-flush is overlapping").
            return
        last = self.last_batch
        if last is not None and self.tables.monotonic() - last < self.tables.flush_interval_s / 4:
            # Batches are coming: each writes the due windows, a bounded number, as it goes.
            # The timer writing every window due meanwhile, at once, was a burst of writes on
            # the event loop between them (what write-behind is there to avoid).
            return
        await self._flush(everything=False)

    async def _flush(self, *, everything: bool) -> None:
        self.busy += 1
        try:
            await self.start_outputs()
            generation = self.tables.generation
            cpu = Stages()
            written = await self.tables.flush(
                self.outputs, self._active(), everything=everything, cpu=cpu
            )
            if written and generation == self.tables.generation:
                cpu.resume()
                self._durable()
                cpu.lap(STATS)
        finally:
            self.busy -= 1

    def placing(self) -> None:
        """Before the partitions are placed after a rebalance: the windows in memory are
        dropped (a partition may have moved, and come back after another worker wrote it);
        their positions were never made committable past them, and each partition starts
        again at its committed offset, so the batches are counted again, exactly."""
        self.tables.drop_dirty()
        self.seen.clear()

    async def stopping(self) -> None:
        """The agent stops (a clean stop): write every window held in memory, so that the
        positions of all its batches can be committed."""
        if not self.tables.dirty_count:
            return
        try:
            await asyncio.wait_for(self._flush(everything=True), timeout=STOP_FLUSH_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("stats: the windows in memory were not written at the stop")
        except Exception as exc:  # Kafka gone: the next start counts them again
            log.warning("stats: the windows in memory were not written at the stop: %r", exc)

    def _invalid(self, message: Any, exc: BaseException, now_ms: int) -> None:
        """A stats-updates record nobody here could have written: kept as a dead letter."""
        metrics.STATS_INVALID.inc()
        pos = RawPosition(
            message.topic,
            message.partition,
            message.offset,
            int(message.timestamp * 1000),
            headers_dict(message.headers),
        )
        self.dead_letters.send(
            message.value or b"",
            message.key,
            None,
            RejectReason.INVALID_STATS_UPDATE.value,
            f"not a stats-updates record: {exc!r}"[:1000],
            pos,
            now_ms,
        )

    async def expire(self) -> None:
        """Expire the idle windows of the stats partitions this worker is active for, with
        tombstones on their changelogs and on ``campaign-stats`` (not while the group is moving:
        a standby follows the changelog's tombstones)."""
        if not self.engine.settled()[0]:
            return
        await self.start_outputs()
        active = {
            tp.partition for tp in self.engine.assignment() if tp.topic == self.stats_updates_topic
        }
        await self.tables.expire(self.outputs, active, self.clock())
