"""What a batch does, decided by pure functions over plain data (STYLE: pure planning, thin
wiring). The agents in :mod:`processors.app` fetch, call these, send what they return and
acknowledge; everything here is unit-tested without Kafka or Faust
(``tests/unit/processors/test_plan.py``).

Raw batches: :func:`plan_raw_batch` takes the batch's canonical events (:class:`Candidate`, in
raw-offset order) and the dedupe marks found for them, and says which events to write, which are
duplicates, which were written by an earlier run already, which are too large, which dedupe
marks to write and which stats increments to send where.

Stats batches: :func:`group_increments` files each increment under the windows it counts in;
:func:`apply_increments` adds them to a window's stored counts, skipping what it counted before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from processors.normalize.model import CanonicalEvent
from processors.records import (
    Increment,
    RawPosition,
    WindowCounts,
    campaign_key,
    raw_source,
    stats_increment,
    window_key,
    window_start,
)


class Candidate(NamedTuple):
    """A canonical event of the batch, with its dedupe keys."""

    event: CanonicalEvent
    pos: RawPosition
    vendor: str
    id_bytes: bytes
    current: bytes  # its dedupe key in the current window
    previous: bytes  # and in the previous one
    raw: bytes  # the raw record (a too_large dead letter keeps it)
    raw_key: bytes | None


def candidate(
    event: CanonicalEvent,
    pos: RawPosition,
    vendor: str,
    raw: bytes,
    raw_key: bytes | None,
    window_ms: int,
) -> Candidate:
    """The dedupe window is on the raw record's Kafka timestamp (the time it reached
    crm-stream), not on occurred_at: a vendor replaying a week-old event must still meet its
    mark."""
    start = pos.timestamp_ms - pos.timestamp_ms % window_ms
    id_bytes = event.event_id.encode()
    return Candidate(
        event,
        pos,
        vendor,
        id_bytes,
        window_key(start, id_bytes),
        window_key(start - window_ms, id_bytes),
        raw,
        raw_key,
    )


def mark_value(raw_offset: int) -> bytes:
    """A dedupe mark's value: the raw offset of the record that wrote it, so that a record
    meeting its own mark (processed again after a restart) is told from a duplicate. "@":
    never equal to the ``b"1"`` marks of earlier versions."""
    return b"@%d" % raw_offset


@dataclass
class RawPlan:
    """What one raw batch does (see :func:`plan_raw_batch`)."""

    emit: list[tuple[Candidate, bytes]] = field(default_factory=list)  # (event, encoded value)
    read_back: list[Candidate] = field(default_factory=list)  # first seen, already written
    too_large: list[tuple[Candidate, int]] = field(default_factory=list)  # (event, its size)
    duplicates: dict[str, int] = field(default_factory=dict)  # vendor -> records
    marks: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # by partition
    # stats-updates partition -> campaign key -> raw source -> increments (raw-offset order)
    increments: dict[int, dict[str, dict[str, list[Increment]]]] = field(default_factory=dict)

    @property
    def counted(self) -> list[Candidate]:
        """The first-seen events, written now or before: what the stats count."""
        return [c for c, _ in self.emit] + self.read_back


def plan_raw_batch(
    candidates: Sequence[Candidate],
    marked: Mapping[bytes, bytes | None],
    *,
    encode: Callable[[Candidate], bytes],
    size: Callable[[Candidate, bytes], int],
    max_record_bytes: int,
    written: Callable[[Candidate], bool],
    stats_partition: Callable[[str], int],
) -> RawPlan:
    """Decide a raw batch.

    ``marked``: the dedupe keys (current or previous window) already marked, with the mark's
    value (None for a mark of a batch still in flight). ``encode`` gives an event's value and
    ``size`` the size of its record (key, value, headers); over ``max_record_bytes`` it is
    too large (a dead letter instead, not marked, not counted). ``written`` says whether an
    earlier run already wrote the event (read back after a restart; asked once per first-seen
    event). ``stats_partition`` maps a campaign key to its stats-updates partition.

    An event is a duplicate when an earlier record of this batch had its id, or a mark exists
    for its id in the current or the previous window, unless that mark is its own: written by
    this very raw record before a restart, whose output was acknowledged before the mark was
    written. Such an event, and one read back, is marked and counted again but not written.
    """
    plan = RawPlan()
    seen: set[bytes] = set()
    for c in candidates:
        value = mark_value(c.pos.offset)
        own = marked.get(c.current) == value
        if not own and (c.id_bytes in seen or c.current in marked or c.previous in marked):
            plan.duplicates[c.vendor] = plan.duplicates.get(c.vendor, 0) + 1
            continue
        encoded = encode(c)
        record_size = size(c, encoded)
        if record_size > max_record_bytes:
            plan.too_large.append((c, record_size))
            continue
        seen.add(c.id_bytes)
        if own or written(c):
            plan.read_back.append(c)
        else:
            plan.emit.append((c, encoded))
        campaign = campaign_key(c.event)
        by_source = plan.increments.setdefault(stats_partition(campaign), {}).setdefault(
            campaign, {}
        )
        by_source.setdefault(raw_source(c.pos.topic, c.pos.partition), []).append(
            stats_increment(c.event, c.pos.offset)
        )
        plan.marks.setdefault(c.pos.partition, []).append((c.current, value))
    return plan


# --- stats ------------------------------------------------------------------------------------

Counted = tuple[str | None, Any, str, str]  # (raw source, raw offset, event type, channel)
# (window label, stats partition) -> {(campaign key, window start): increments in arrival order}
Touched = dict[tuple[str, int], dict[tuple[str, int], list[Counted]]]


def group_increments(
    updates: Iterable[tuple[int, Sequence[tuple[str, str | None, Sequence[Increment]]]]],
    windows: Sequence[tuple[str, int]],
    oldest_ms: int,
) -> tuple[Touched, int]:
    """File every increment under the windows it counts in: per (window label, partition),
    per (campaign, window start), in arrival order. ``updates`` are parsed ``stats-updates``
    records with their partition. Increments older than ``oldest_ms`` are late (their windows
    are closed); returns them as a count."""
    touched: Touched = {}
    late = 0
    for partition, parsed in updates:
        tables = [(touched.setdefault((label, partition), {}), size) for label, size in windows]
        for campaign, source, increments in parsed:
            for raw_offset, occurred, event_type, channel in increments:
                if occurred < oldest_ms:
                    late += 1
                    continue
                for by_window, size in tables:
                    by_window.setdefault((campaign, window_start(occurred, size)), []).append(
                        (source, raw_offset, event_type, channel)
                    )
    return touched, late


def apply_increments(counts: WindowCounts, increments: Iterable[Counted]) -> int:
    """Add ``increments`` to a window's counts; returns how many it had counted already (a
    replay after a restart), which it skips."""
    replayed = 0
    for source, raw_offset, event_type, channel in increments:
        if not counts.apply(source, raw_offset, event_type, channel):
            replayed += 1
    return replayed
