"""Where each stream partition stands: the next offset to process, and what may be committed.

The worker does not trust its consumer to hand over every record exactly once and in order. Faust
0.15.3 can drop records it has already fetched (when flow control stops mid-fetch, when a
partition is paused, when a delivery to the stream is cut short), and then count the hole they
leave as a gap to commit past: the records are never processed and never read again. That is how
events were lost after kill -9 restarts (issue 11). So the position of every partition is kept
here, by what the agents actually processed:

* ``expected`` is the next offset the agent must process. A record below it is a leftover of an
  earlier fetch and is dropped (``STALE``); a record above it means records in between were not
  handed over (``GAP``). A gap is checked against the broker (:mod:`processors.probe`): either
  the offsets in between hold no record (transaction markers, retention), and the gap is
  accepted, or they do, and the partition is sought back to ``expected`` (``rewind``).
* After a seek, records of the partition that are not ``expected`` are leftovers of the earlier
  position (Faust's and aiokafka's buffers) and are dropped until ``expected`` arrives.
* ``committable`` is the position whose outputs, dedupe marks and table changelog records Kafka
  has acknowledged. It is what the consumer group commits (``faust_engine``), never an offset the
  agent has not processed.

Pure bookkeeping: no Kafka, no Faust, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class TP(Protocol):
    """Faust's, aiokafka's and this module's partition tuples: all of them compare and hash as
    ``(topic, partition)``, so the tracker takes any of them."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    def __hash__(self) -> int: ...


class Verdict(Enum):
    PROCESS = "process"  # the expected record: process it
    STALE = "stale"  # below the position, or a leftover after a seek: drop it
    GAP = "gap"  # above the position: check the offsets in between before going on


@dataclass(slots=True)
class _Track:
    expected: int
    sought: bool = True  # sought to ``expected``: records other than it are leftovers
    committable: int | None = None
    processed: int = 0  # records processed so far (the stall check compares it)
    checked: int = -1  # ``processed`` at the previous stall check
    idle_checks: int = 0  # stall checks in a row that found records there and none processed
    landed: set[int] = field(default_factory=set)
    # The floors the read-back started from, while read-back offsets remain ahead: until the
    # position passes them, outputs of an earlier run still lie after these floors, not after
    # this run's (see :meth:`PositionTracker.floors_for`).
    landed_floors: dict[TopicPartition, int] | None = None
    landed_until: int = -1
    run: int = 0  # which start() of the partition this is (see PositionTracker.progress)


class PositionTracker:
    """The read and commit position of every stream partition assigned to this worker."""

    def __init__(self) -> None:
        self._tracks: dict[TP, _Track] = {}
        self._runs = 0

    def start(
        self,
        tp: TP,
        expected: int,
        *,
        committed: int | None = None,
        landed: Iterable[int] = (),
        floors: dict[TopicPartition, int] | None = None,
    ) -> None:
        """Begin tracking ``tp`` at ``expected`` (the consumer has just been sought there).

        ``landed`` are offsets at or above ``expected`` whose outputs an earlier run already
        wrote (read back from the output topics after a crash): they are processed again, for
        their dedupe marks and stats, but their outputs are not written twice. ``floors`` are the
        output offsets the read-back started from.
        """
        pending = {o for o in landed if o >= expected}
        self._runs += 1
        self._tracks[tp] = _Track(
            expected=expected,
            committable=committed,
            landed=pending,
            landed_floors=dict(floors) if floors is not None and pending else None,
            landed_until=max(pending, default=-1),
            run=self._runs,
        )

    def forget(self, tp: TP) -> None:
        self._tracks.pop(tp, None)

    def tracked(self) -> list[TP]:
        return list(self._tracks)

    def expected(self, tp: TP) -> int | None:
        track = self._tracks.get(tp)
        return None if track is None else track.expected

    def progress(self, tp: TP) -> tuple[int, int, int] | None:
        """Where ``tp`` stands, to compare across an await: equal only while no record was
        processed, no seek or gap moved it and it was not placed again (None: not tracked)."""
        track = self._tracks.get(tp)
        return None if track is None else (track.run, track.expected, track.processed)

    def admit(self, tp: TP, offset: int) -> Verdict:
        """What to do with the record at ``offset``; a processed record moves the position."""
        track = self._tracks.get(tp)
        if track is None:
            # Not (or no longer) assigned here: a leftover of a revoked partition.
            return Verdict.STALE
        if offset == track.expected:
            track.expected = offset + 1
            track.sought = False
            track.processed += 1
            return Verdict.PROCESS
        if offset < track.expected or track.sought:
            return Verdict.STALE
        return Verdict.GAP

    def accept_gap(self, tp: TP, offset: int) -> None:
        """The broker holds no record between the position and ``offset``: continue there."""
        track = self._tracks[tp]
        track.expected = offset
        track.sought = False

    def rewind(self, tp: TP, offset: int) -> None:
        """The consumer was sought back to ``offset``: drop leftovers until it arrives."""
        track = self._tracks[tp]
        track.expected = offset
        track.sought = True

    def take_landed(self, tp: TP, offset: int) -> bool:
        """Whether the outputs of the record at ``offset`` were already written (once)."""
        track = self._tracks.get(tp)
        if track is None or not track.landed:
            return False
        if offset in track.landed:
            track.landed.discard(offset)
            return True
        return False

    def floors_for(
        self, tp: TP, position: int, current: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int] | None:
        """The floors to save with ``position``, or None when this run's ``current`` floors do.

        A saved position promises that every output of a record at or above it lands after its
        floors. This run's floors hold for what this run writes; but outputs an earlier run
        wrote for records this run has not reached yet (read back at the start) lie before
        them. Until the position passes the last of those, the read-back's floors are kept.
        """
        track = self._tracks.get(tp)
        if track is None or track.landed_floors is None or position > track.landed_until:
            return None
        origin = track.landed_floors
        return {otp: min(offset, origin.get(otp, offset)) for otp, offset in current.items()}

    def durable(self, tp: TP, position: int) -> None:
        """Everything below ``position`` is processed and acknowledged: it may be committed."""
        track = self._tracks.get(tp)
        if track is not None and (track.committable is None or position > track.committable):
            track.committable = position

    def committable(self, tp: TP) -> int | None:
        track = self._tracks.get(tp)
        return None if track is None else track.committable

    def stalled(self, tp: TP, highwater: int | None, checks: int = 3) -> bool:
        """True when ``tp`` has had records beyond its position (``highwater``, from the latest
        fetch) and processed none of them at ``checks`` calls in a row: records were dropped
        where no later record can reveal the hole (the end of the partition). One idle interval
        is not enough: a partition can wait its turn behind another stream's backlog."""
        track = self._tracks.get(tp)
        if track is None:
            return False
        idle = track.processed == track.checked
        track.checked = track.processed
        if idle and highwater is not None and highwater > track.expected:
            track.idle_checks += 1
        else:
            track.idle_checks = 0
        if track.idle_checks >= checks:
            track.idle_checks = 0
            return True
        return False


class Checkpoints:
    """Which raw partitions' positions to save, and when: at most once per ``interval`` seconds
    each (``CRM_POSITIONS_INTERVAL``; 0: with every batch), not with every batch.

    A position costs, per raw partition and batch, a RocksDB key, a changelog record, a durable
    key and the persisted changelog offset: on a live feed a batch of ~50 records spans 20-30
    raw partitions, so that was as many writes and records again as its marks. A position saved
    less often is never wrong, only older: every record below it is processed, and the records
    from it on that were processed since have their dedupe marks and outputs, which a restart
    from it finds (their own marks and the read-back, :func:`processors.plan.plan_raw_batch`),
    so they are marked and counted again but not written or counted twice.

    A batch's partition ends are :meth:`due` when the interval since the partition's last saved
    position has passed (or ``force``: a rebalance or a stop); the others are kept
    (:attr:`pending`) until a later batch or :meth:`flush` saves them. Pure: the caller gives the
    clock's reading.
    """

    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError("a checkpoint interval is 0 or more seconds")
        self.interval = interval
        self.pending: dict[TP, int] = {}  # a partition's latest end not saved yet
        self._saved_at: dict[TP, float] = {}

    def due(self, ends: Mapping[TP, int], now: float, *, force: bool = False) -> dict[TP, int]:
        """The ends of one batch (each partition's position after it): those to save now with
        its marks. The others wait, superseding the partition's earlier pending end."""
        if self.interval <= 0:
            return dict(ends)
        pending = self.pending
        saved_at = self._saved_at
        out: dict[TP, int] = {}
        for tp, end in ends.items():
            last = saved_at.get(tp)
            if force or last is None or now - last >= self.interval:
                out[tp] = end
                saved_at[tp] = now
                pending.pop(tp, None)
            else:
                pending[tp] = end
        return out

    def flush(self, now: float, keep: Callable[[TP], bool] | None = None) -> dict[TP, int]:
        """Every pending end (of the partitions ``keep`` accepts; the others are dropped: no
        longer assigned), to save now."""
        out = {tp: end for tp, end in self.pending.items() if keep is None or keep(tp)}
        self.pending.clear()
        for tp in out:
            self._saved_at[tp] = now
        return out

    def forget(self) -> None:
        """A rebalance placed the partitions again, from their saved positions: what was
        pending is of the previous placement."""
        self.pending.clear()
        self._saved_at.clear()
