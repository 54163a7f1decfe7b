"""The stats path: one batch of ``stats-updates`` records counted into the campaign windows
(:class:`processors.stats.StatsTables`), and the periodic expiry of idle windows.

A batch's way: admit (:meth:`Positioning.admit`) -> parse (a record nobody here could have
written becomes a dead letter) -> count, upsert and write once Kafka acknowledged
(:meth:`StatsTables.count`) -> its positions become committable.
"""

from __future__ import annotations

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
            parsed: list[tuple[int, StatsUpdates]] = []
            for event in admitted:
                message = event.message
                ends[message.tp] = message.offset + 1
                try:
                    parsed.append(
                        (message.partition, parse_stats_updates(message.key, message.value or b""))
                    )
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    self._invalid(message, exc, now_ms)
            # Counted, upserted, and written once Kafka acknowledged (processors/stats.py).
            cpu.lap(STATS)
            await self.tables.count(parsed, self.outputs, now_ms, cpu)
            cpu.resume()
            self.positioning.durable(ends)
            cpu.lap(STATS)
            cpu.count()
        finally:
            self.busy -= 1

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
