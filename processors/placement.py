"""Where each stream partition starts after a rebalance: a pure decision from what the engine,
the local state and the broker say (no I/O; :mod:`processors.positioning` gathers the inputs
and carries the decision out).

* A **raw** partition starts at the position saved with its dedupe marks. One with none gets a
  fresh saved position (its committed offset, else the partition's first offset, with the
  current floors) before any of its records is processed: a crash before its first batch is
  saved must still find the floors.
* A raw partition the group has processed (a committed offset) with no saved position has lost
  its dedupe state (:attr:`Placement.lost`): going on would let through a copy of every event
  seen before.
* A **stats** partition starts at its committed offset, else at its first offset.
* The outputs an earlier run wrote beyond the saved positions are read back from the lowest of
  the saved floors (:attr:`Placement.read_back_floors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from processors.positions import TP, TopicPartition
from processors.state.codecs import SavedPosition


@dataclass(frozen=True)
class Placement:
    """The decision for one rebalance."""

    starts: dict[TP, int]
    """Every assigned stream partition's first offset to process."""
    fresh: dict[TP, SavedPosition]
    """The raw partitions without a saved position, with the one to save now."""
    resumed: dict[TP, SavedPosition]
    """The raw partitions resuming from a saved position."""
    lost: list[TP]
    """Raw partitions whose dedupe state is gone (committed, but no saved position)."""
    read_back_floors: dict[TopicPartition, int]
    """Per output partition, where the read-back of the resumed partitions starts."""

    def position(self, tp: TP) -> SavedPosition:
        return self.resumed[tp] if tp in self.resumed else self.fresh[tp]


def first(*offsets: int | None) -> int:
    """The first offset that is known, else 0."""
    for offset in offsets:
        if offset is not None:
            return offset
    return 0


def unplaced(
    raw: Sequence[TP],
    stats: Sequence[TP],
    committed: Mapping[TP, int | None],
    saved: Mapping[TP, SavedPosition | None],
) -> list[TP]:
    """The partitions with neither a saved position nor a committed offset: their first offset
    must be asked of the broker."""
    return [tp for tp in [*raw, *stats] if saved.get(tp) is None and committed[tp] is None]


def place(
    raw: Sequence[TP],
    stats: Sequence[TP],
    committed: Mapping[TP, int | None],
    saved: Mapping[TP, SavedPosition | None],
    first_offsets: Mapping[TP, int],
    floors: Mapping[TopicPartition, int],
) -> Placement:
    """Where every assigned partition starts (see the module docstring). ``first_offsets``: the
    broker's first offset of (at least) the :func:`unplaced` partitions; ``floors``: this run's
    current output floors."""
    lost = [tp for tp in raw if saved.get(tp) is None and committed[tp] is not None]
    fresh = {
        tp: SavedPosition(first(committed[tp], first_offsets.get(tp)), dict(floors))
        for tp in raw
        if saved.get(tp) is None
    }
    resumed: dict[TP, SavedPosition] = {}
    for tp in raw:
        position = saved.get(tp)
        if position is not None:
            resumed[tp] = position
    read_back: dict[TopicPartition, int] = {}
    for position in resumed.values():
        for otp, floor in position.floors.items():
            read_back[otp] = min(floor, read_back.get(otp, floor))
    starts: dict[TP, int] = {}
    for tp in raw:
        starts[tp] = (resumed.get(tp) or fresh[tp]).next
    for tp in stats:
        starts[tp] = first(committed[tp], first_offsets.get(tp))
    return Placement(starts, fresh, resumed, lost, read_back)
