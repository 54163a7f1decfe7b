"""The stats path: one batch of ``stats-updates`` records counted into the campaign windows
(:class:`processors.stats.StatsTables`), their periodic flush, and the periodic expiry of idle
windows.

A batch's way: admit (:meth:`Positioning.admit`) -> parse (a record nobody here could have
written becomes a dead letter) -> count into the open windows (:meth:`StatsTables.count_open`)
-> at the next flush, upsert and write once Kafka acknowledged (:meth:`StatsTables.flush_open`)
-> its positions become committable.

**The flush interval** (``CRM_STATS_FLUSH_INTERVAL``, :attr:`StatsPath.flush_interval_s`): a
window costs a value and sketches serialized, a changelog record, an Avro upsert and a table
write each time it is flushed, whether it gained one event or a thousand; flushing every interval
instead of after every batch makes a busy window cost that once per interval. The price: a
window's ``campaign-stats`` upsert (what Grafana and downstream consumers see) and the stats API
(which reads the tables) lag its events by up to the interval more, and a crash or a rebalance
reads up to an interval of stats batches again (nothing is counted twice). A batch flushes when
the last flush is an interval old, the timer (:meth:`StatsPath.flush`) when batches stopped
coming; a batch with a dead letter flushes at once (its dead letter is awaited with it), and so
does one that leaves more than :data:`MAX_OPEN_WINDOWS` open. 0: every batch flushes, as before
the interval existed.

**Rebalances**: a partition's open windows and positions belong to one placement of it
(:meth:`PositionTracker.progress`); once it is placed again (or gone), they are dropped unwritten
and its batches read again from its committed position, as after a crash. A batch admitted
before a placement and counted after it is not counted. The timer does not flush while the group
is moving.
"""

from __future__ import annotations

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


MAX_OPEN_WINDOWS = 50_000
"""Windows counted since the last flush at which a batch flushes them before the interval is
over (bounds the memory they hold: decoded, with live sketches)."""


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
        flush_interval_s: float = 0.0,
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
        # Epoch ms: a window's last update and its expiry are measured on it.
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.flush_interval_s = flush_interval_s
        self.flushed_at = time.monotonic()
        self._runs: dict[Any, int | None] = {}  # placement of each partition when counted
        tables.on_flushed = positioning.durable
        tables.is_current = self._current

    async def process(self, batch: Batch) -> None:
        """Count a batch of increments into the open windows, and flush them when the last flush
        is ``flush_interval_s`` old (at once with 0; :mod:`processors.stats`).

        The windows not open yet are read with one multi-get per table and partition, and each
        increment is counted unless the window counted its raw record already. A flush sends
        every open window's new value to its changelog and as an upsert to ``campaign-stats``;
        only once Kafka acknowledged those is it written to RocksDB (one write batch per table
        and partition) and the positions of the batches it covers made committable. A crash
        before that replays those batches, which then count nothing twice and upsert the
        windows again.
        """
        self.busy += 1
        try:
            placed = {event.message.tp: self._run(event.message.tp) for event in batch}
            admitted = await self.positioning.admit(batch, "stats")
            if not admitted:
                return
            await self.ready()
            cpu = Stages()
            async with self.tables.lock:
                cpu.resume()
                if any(self._run(tp) != run for tp, run in placed.items()):
                    # Placed again (a rebalance) since it was admitted: read again from there.
                    log.info("a stats batch admitted before a rebalance is left uncounted")
                    return
                now_ms = self.clock()
                ends: dict[TP, int] = {}
                parsed: list[tuple[int, StatsUpdates]] = []
                invalid = False
                for event in admitted:
                    message = event.message
                    ends[message.tp] = message.offset + 1
                    try:
                        parsed.append(
                            (
                                message.partition,
                                parse_stats_updates(message.key, message.value or b""),
                            )
                        )
                    except (ValueError, TypeError, KeyError, AttributeError) as exc:
                        self._invalid(message, exc, now_ms)
                        invalid = True
                self.tables.count_open(parsed, now_ms, ends)
                for tp in ends:
                    self._runs[tp] = placed[tp]
                # A dead letter is awaited by a flush in this task (its sends are this task's).
                if (
                    invalid
                    or time.monotonic() - self.flushed_at >= self.flush_interval_s
                    or self.tables.open_windows() >= MAX_OPEN_WINDOWS
                ):
                    await self._flush(cpu)
                else:
                    cpu.lap(STATS)
            cpu.count()
        finally:
            self.busy -= 1

    async def flush(self) -> None:
        """The timer: flush the open windows (not while the group is moving: what a rebalance
        takes away is dropped, never written)."""
        if not self.tables.open_positions() or not self.engine.settled()[0]:
            return
        cpu = Stages()
        try:
            async with self.tables.lock:
                cpu.resume()
                await self._flush(cpu)
        except Exception as exc:
            self.engine.fatal(exc, "flushing the stats windows")
            return
        cpu.count()

    async def _flush(self, cpu: Stages) -> None:
        self.flushed_at = time.monotonic()
        await self.tables.flush_open(self.outputs, cpu)

    def _run(self, tp: Any) -> int | None:
        """Which placement of ``tp`` this is (None: not placed here)."""
        progress = self.positioning.tracker.progress(tp)
        return None if progress is None else progress[0]

    def _current(self, tp: Any) -> bool:
        """Whether ``tp`` is still placed as when its open batches were counted (a revoked
        partition is forgotten by the tracker, one assigned again is started afresh)."""
        run = self._runs.get(tp)
        return run is not None and self._run(tp) == run

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
