"""Where every stream partition of this worker stands, kept against the engine: placing the
partitions after a rebalance (:mod:`processors.placement` decides), admitting a batch's records
at their position, repairing a gap or a stall, and the offsets the engine may commit.

It is the engine's on-assigned hook (:class:`processors.engine.Positions`): the engine seeks to
the committed offsets, then asks :meth:`Positioning.on_positioned` to place each partition, and
commits only :meth:`Positioning.committable`. The bookkeeping is
:class:`processors.positions.PositionTracker` (pure); this module does the I/O around it: the
saved positions in the dedupe table, the broker probe, the seeks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from crmstream import metrics
from processors import placement
from processors.engine import Batch, Engine, Event, SeekError
from processors.outputs import Outputs
from processors.positions import TP, PositionTracker, TopicPartition, Verdict
from processors.probe import Probe
from processors.state.codecs import SavedPosition, encode_floors
from processors.state.keys import durable_key, position_key
from processors.state.table import Item, WindowedTable

log = logging.getLogger("crmstream.worker")

EXIT_STATE_LOST = 78  # EX_CONFIG: the dedupe state is gone; an operator must decide


class Floors:
    """Per output partition (events, dead letters): the newest offset acknowledged (or, before
    the first, the end at start-up). Saved with each raw position as its read-back floors."""

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = tuple(topics)
        self.offsets: dict[TopicPartition, int] = {}
        self.json: bytes | None = None

    def raise_to(self, offsets: Mapping[tuple[str, int], int]) -> None:
        changed = False
        for (topic, partition), offset in offsets.items():
            if topic in self.topics:
                tp = TopicPartition(topic, partition)
                if offset > self.offsets.get(tp, -2):
                    self.offsets[tp] = offset
                    changed = True
        if changed or self.json is None:
            self.json = encode_floors(self.offsets)


class Positioning:
    """The positions of this worker's stream partitions (raw, stats, and the ``streams`` placed
    like stats: the attribution agents' topics)."""

    def __init__(
        self,
        engine: Engine,
        probe: Probe,
        outputs: Outputs,
        dedupe: WindowedTable,
        *,
        raw_topics: Iterable[str],
        stats_topic: str,
        floors: Floors,
        allow_state_reset: bool,
        start_outputs: Callable[[], Awaitable[None]],
        drained: Callable[[], Awaitable[None]],
        busy: Callable[[str], bool],
        streams: Mapping[str, str] | None = None,
        placing: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.probe = probe
        self.outputs = outputs
        self.dedupe = dedupe
        self.raw_topics = frozenset(raw_topics)
        self.stats_topic = stats_topic
        self.floors = floors
        self.allow_state_reset = allow_state_reset
        self.start_outputs = start_outputs
        self.drained = drained
        self.busy = busy
        # Further streams placed like stats (at the committed offset): topic -> stream label.
        self.streams = dict(streams or {})
        # Runs before the partitions are placed after a rebalance: the stats windows held in
        # memory are dropped (processors.stats_path.StatsPath.placing).
        self.placing = placing
        self.tracker = PositionTracker()

    def stream(self, topic: str) -> str:
        if topic in self.streams:
            return self.streams[topic]
        return "stats" if topic == self.stats_topic else "raw"

    # -- the engine's hook ---------------------------------------------------------------

    def committable(self, tp: TP) -> int | None:
        return self.tracker.committable(tp)

    async def on_positioned(self, *, after_rebalance: bool) -> None:
        """Place every stream partition before it is resumed.

        Outside a rebalance (Faust seeks to the committed offsets when a fetch returns while its
        flow is stopped) a partition goes back to its own position. After a rebalance each
        partition starts afresh (:func:`processors.placement.place`).
        """
        assigned = self.engine.assignment()
        if not after_rebalance:
            back = {tp: self.tracker.expected(tp) for tp in _ordered(assigned)}
            await self.seek({tp: o for tp, o in back.items() if o is not None})
            return
        if self.placing is not None:
            self.placing()
        for tp in self.tracker.tracked():
            if tp not in assigned:
                self.tracker.forget(tp)
        await self.start_outputs()
        await self.drained()
        committed = {tp: self.engine.committed(tp) for tp in assigned}
        raw = _ordered(tp for tp in assigned if tp.topic in self.raw_topics)
        stats = _ordered(
            tp for tp in assigned if tp.topic == self.stats_topic or tp.topic in self.streams
        )
        saved = {tp: self.saved_position(tp) for tp in raw}
        if not self.floors.offsets:
            output_tps = [
                TopicPartition(topic, p)
                for topic in self.floors.topics
                for p in range(self.outputs.partitions(topic))
            ]
            ends = await asyncio.to_thread(self.probe.ends, output_tps)
            self.floors.raise_to({tp: end - 1 for tp, end in ends.items()})
        unplaced = placement.unplaced(raw, stats, committed, saved)
        first_offsets = await asyncio.to_thread(self.probe.starts, unplaced) if unplaced else {}
        plan = placement.place(raw, stats, committed, saved, first_offsets, self.floors.offsets)
        if plan.lost and not self.allow_state_reset:
            _stop_state_lost(plan.lost, committed)
        if plan.fresh:
            await self._save_fresh(plan.fresh)
        landed: dict[TopicPartition, set[int]] = {}
        if plan.resumed:
            landed = await asyncio.to_thread(
                self.probe.read_back,
                plan.read_back_floors,
                {TopicPartition(tp.topic, tp.partition): p.next for tp, p in plan.resumed.items()},
            )
        for tp in raw:
            position = plan.position(tp)
            self.tracker.start(
                tp,
                position.next,
                committed=committed[tp],
                landed=landed.get(TopicPartition(tp.topic, tp.partition), ()),
                floors=position.floors,
            )
        for tp in stats:
            self.tracker.start(tp, plan.starts[tp], committed=committed[tp])
        await self.seek(plan.starts)
        log.info(
            "positioned %d raw and %d stats partitions (%d new); %d raw records already had "
            "their outputs written",
            len(raw),
            len(stats),
            len(plan.fresh),
            sum(len(v) for v in landed.values()),
        )
        for tp in raw:
            position = plan.position(tp)
            log.info(
                "%s/%d at %d (%s, committed %s); %d read back; floors %s",
                tp.topic,
                tp.partition,
                position.next,
                "new" if tp in plan.fresh else "saved",
                committed[tp],
                len(landed.get(TopicPartition(tp.topic, tp.partition), ())),
                encode_floors(position.floors).decode(),
            )

    async def _save_fresh(self, fresh: Mapping[TP, SavedPosition]) -> None:
        """Save the new partitions' positions (changelog first, then the durable copy)."""
        for partition, items in by_partition(
            (tp.partition, position_key(tp.topic), position.encode())
            for tp, position in fresh.items()
        ).items():
            self.dedupe.put_many(partition, items, self.outputs)
        self.dedupe.set_persisted_offsets(await self.outputs.seal())
        for partition, items in by_partition(
            (tp.partition, durable_key(tp.topic), position.encode())
            for tp, position in fresh.items()
        ).items():
            self.dedupe.write(partition, items)

    def saved_position(self, tp: TP) -> SavedPosition | None:
        """The durable position when the local state has one, else the saved one (restored
        from the changelog, hence durable too)."""
        durable, saved = self.dedupe.get_many(
            tp.partition, [durable_key(tp.topic), position_key(tp.topic)]
        )
        value = durable or saved
        return None if value is None else SavedPosition.decode(value)

    def position_value(self, tp: TP, end: int) -> bytes:
        """What to save as ``tp``'s position once everything below ``end`` is processed."""
        floors = self.tracker.floors_for(tp, end, self.floors.offsets)
        if floors is None:
            return SavedPosition(end, {}).encode(self.floors.json)
        return SavedPosition(end, floors).encode()

    def landed(self, tp: TP, offset: int) -> bool:
        """Whether an earlier run wrote the outputs of the record at ``offset`` (once)."""
        return self.tracker.take_landed(tp, offset)

    def acknowledge(self, events: Sequence[Event]) -> None:
        """Hand ``events`` (a batch the stream's path is done with) to the engine as acknowledged:
        the engine commits the committable offsets (:meth:`durable`) of the partitions it holds
        acknowledgements for, and records from the readers never reach it otherwise."""
        self.engine.hold(events)
        self.engine.release(events)

    def durable(self, ends: Mapping[TP, int]) -> None:
        for tp, end in ends.items():
            self.tracker.durable(tp, end)

    # -- seeking -------------------------------------------------------------------------

    async def seek(self, offsets: Mapping[TP, int]) -> None:
        """Move fetch positions; leftovers of the old positions are dropped after it.

        A partition that cannot be sought because it is no longer assigned is forgotten (the
        next rebalance places it). One that is still assigned and cannot be sought would be
        read from where it is, not where the tracker says: :class:`SeekError` goes on (fatal).
        """
        if not offsets:
            return
        for tp, offset in offsets.items():
            self.tracker.rewind(tp, offset)
        try:
            await self.engine.seek(offsets)
        except SeekError as exc:
            assigned = self.engine.assignment()
            if any(tp in assigned for tp in offsets):
                raise
            log.warning("seeking %s failed, no longer assigned: %r", _names(offsets), exc)
            for tp in offsets:
                self.tracker.forget(tp)

    # -- admitting records ---------------------------------------------------------------

    async def admit(self, batch: Batch, stream: str) -> list[Event]:
        """The events of ``batch`` at their partition's position, in order; the others are
        leftovers of an earlier fetch, or show that records were skipped (then read again)."""
        admitted: list[Event] = []
        admit = self.tracker.admit
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
        expected = self.tracker.expected(tp)
        if expected is None:  # admit() says GAP only for a tracked partition
            return Verdict.STALE
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
            await self.seek({tp: expected if first is None else first})
            return Verdict.STALE
        await self._pass_over(tp, expected, offset, stream)
        self.tracker.accept_gap(tp, offset)
        return self.tracker.admit(tp, offset)

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

    async def watch(self) -> None:
        """A partition with records beyond its position that processes none of them for a
        whole interval has lost them on the way (where no later record shows the hole): seek
        it back to its position.

        The broker is asked in a thread, and the agents run meanwhile: when the partition moved
        in between (its records arrived after all, a gap was resolved, a rebalance placed it
        again), it is left alone. Seeking it back then would process its new records a second
        time: their events are held off by their dedupe marks, their dead letters by nothing.
        """
        if self.engine.rebalancing():
            return
        for tp in self.tracker.tracked():
            stream = self.stream(tp.topic)
            if self.busy(stream):
                continue
            if not self.tracker.stalled(tp, self.engine.highwater(tp)):
                continue
            before = self.tracker.progress(tp)
            expected = self.tracker.expected(tp)
            if before is None or expected is None:  # forgotten meanwhile (a rebalance)
                continue
            first = await asyncio.to_thread(self.probe.first_offset, tp, expected)
            if first is None:
                continue  # nothing to read after all
            if self._moved(tp, before):
                continue
            if first > expected:
                await self._pass_over(tp, expected, first, stream)
                if self._moved(tp, before):
                    continue
            # No await from here to the tracker's rewind (in seek): the agent cannot move it.
            log.warning(
                "%s/%d: nothing processed beyond offset %d although records are there: "
                "reading from %d again",
                tp.topic,
                tp.partition,
                expected,
                first,
            )
            metrics.REWINDS.labels(stream, "stalled").inc()
            await self.seek({tp: first})

    def _moved(self, tp: TP, before: tuple[int, int, int]) -> bool:
        """Whether ``tp`` moved (or a rebalance began) since the stall check saw ``before``."""
        if self.tracker.progress(tp) == before and not self.engine.rebalancing():
            return False
        log.info(
            "%s/%d: moved while its stall was being checked; not read again",
            tp.topic,
            tp.partition,
        )
        return True

    def lag(self, vendor_of_topic: Mapping[str, str]) -> dict[str, int]:
        """Records beyond each raw partition's position, summed per vendor."""
        lag = dict.fromkeys(vendor_of_topic.values(), 0)
        for tp in self.tracker.tracked():
            vendor = vendor_of_topic.get(tp.topic)
            expected = self.tracker.expected(tp)
            if vendor is None or expected is None:
                continue
            highwater = self.engine.highwater(tp)
            if highwater is not None:
                lag[vendor] += max(0, highwater - expected)
        return lag


def by_partition(items: Iterable[tuple[int, bytes, bytes]]) -> dict[int, list[Item]]:
    out: dict[int, list[Item]] = {}
    for partition, key, value in items:
        out.setdefault(partition, []).append((key, value))
    return out


def _ordered(tps: Iterable[TP]) -> list[TP]:
    return sorted(tps, key=lambda tp: (tp.topic, tp.partition))


def _names(offsets: Mapping[Any, int]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in offsets.items())


def _stop_state_lost(lost: list[Any], committed: Mapping[Any, int | None]) -> None:
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
