"""What a batch does, decided by pure functions over plain data (STYLE: pure planning, thin
wiring). The agents in :mod:`processors.app` fetch, call these, send what they return and
acknowledge; everything here is unit-tested without Kafka or Faust
(``tests/unit/processors/test_plan.py``).

Raw batches: :func:`plan_raw_batch` takes the batch's canonical events (:class:`Candidate`, in
raw-offset order) and the dedupe marks found for them, and says which events to write, which are
duplicates, which were written by an earlier run already, which are too large, which dedupe
marks to write and which stats increments to send where.

Stats batches: :func:`group_increments` files each increment under the windows it counts in;
:func:`admit_windows` says which of those windows may count them (not one that expired);
:func:`apply_increments` adds them to a window's stored counts, skipping what it counted before.
Expiry: :func:`plan_expiry` says which windows expired (idle for ``CRM_STATS_RETENTION``) and what
each campaign's entry must remember of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from processors.normalize.model import CanonicalEvent
from processors.records import (
    Increment,
    Named,
    RawPosition,
    StatsUpdates,
    WindowCounts,
    breakdown_values,
    campaign_key,
    raw_source,
    recipient_of,
    stats_increment,
    window_updated_ms,
)
from processors.state.codecs import CampaignEntry
from processors.state.keys import id_digest, mark_key, parse_window_key
from processors.state.keys import mark_value as keys_mark_value


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
    digest = id_digest(id_bytes)
    return Candidate(
        event,
        pos,
        vendor,
        id_bytes,
        mark_key(start, digest),
        mark_key(start - window_ms, digest),
        raw,
        raw_key,
    )


def mark_value(raw_offset: int) -> bytes:
    """A dedupe mark's value: the raw offset of the record that wrote it, so that a record
    meeting its own mark (processed again after a restart) is told from a duplicate
    (:func:`processors.state.keys.mark_value`: big-endian, never equal to the ``b"1"`` marks of
    earlier versions once upgraded)."""
    return keys_mark_value(raw_offset)


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
    # ... and their recipients, in the same order
    recipients: dict[int, dict[str, dict[str, list[str | None]]]] = field(default_factory=dict)
    # stats-updates partition -> campaign key -> its latest name in the batch
    names: dict[int, dict[str, Named]] = field(default_factory=dict)
    # stats-updates partition -> dimension -> campaign key -> raw source -> values (same order)
    dimensions: dict[int, dict[str, dict[str, dict[str, list[str | None]]]]] = field(
        default_factory=dict
    )

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
        target = stats_partition(campaign)
        source = raw_source(c.pos.topic, c.pos.partition)
        by_source = plan.increments.setdefault(target, {}).setdefault(campaign, {})
        by_source.setdefault(source, []).append(stats_increment(c.event, c.pos.offset))
        whom = plan.recipients.setdefault(target, {}).setdefault(campaign, {})
        whom.setdefault(source, []).append(recipient_of(c.event))
        dims = plan.dimensions.setdefault(target, {})
        for name, dim_value in breakdown_values(c.event).items():
            of_dim = dims.setdefault(name, {}).setdefault(campaign, {})
            of_dim.setdefault(source, []).append(dim_value)
        if c.event.campaign_name:
            named = (c.event.occurred_at, c.event.campaign_name)
            names = plan.names.setdefault(target, {})
            if campaign not in names or named > names[campaign]:
                names[campaign] = named
        plan.marks.setdefault(c.pos.partition, []).append((c.current, value))
    return plan


# --- stats ------------------------------------------------------------------------------------

Counted = tuple[str | None, Any, str, str, str | None, dict[str, str | None]]
"""(raw source, raw offset, event type, channel, recipient, dimension values)"""


@dataclass(slots=True)
class WindowWork:
    """What a stats batch brings one (campaign, window): increments in arrival order, and the
    latest campaign name among them."""

    counted: list[Counted] = field(default_factory=list)
    name: Named | None = None


# (window label, stats partition) -> {(campaign key, window start): its work}
Touched = dict[tuple[str, int], dict[tuple[str, int], WindowWork]]


def group_increments(
    updates: Iterable[tuple[int, StatsUpdates]],
    windows: Sequence[tuple[str, int]],
) -> Touched:
    """File every increment under the windows it counts in: per (window label, partition),
    per (campaign, window start), in arrival order. ``updates`` are parsed ``stats-updates``
    records with their partition. A record's campaign name goes to the window of the event
    that carried it."""
    touched: Touched = {}
    for partition, parsed in updates:
        # (window_start, inline: this runs for every increment and window size)
        tables = [
            (touched.setdefault((label, partition), {}), size * 1000) for label, size in windows
        ]
        for campaign, source, increments in parsed.increments:
            for raw_offset, occurred, event_type, channel, recipient, dims in increments:
                counted = (source, raw_offset, event_type, channel, recipient, dims)
                for by_window, size_ms in tables:
                    key = (campaign, occurred - occurred % size_ms)
                    work = by_window.get(key)
                    if work is None:
                        work = by_window[key] = WindowWork()
                    work.counted.append(counted)
        for campaign, named in parsed.names.items():
            for by_window, size_ms in tables:
                work = by_window.get((campaign, named[0] - named[0] % size_ms))
                if work is not None and (work.name is None or named > work.name):
                    work.name = named
    return touched


@dataclass
class Admission:
    """What one table partition does with a batch's windows (:func:`admit_windows`)."""

    refused: dict[tuple[str, int], int] = field(default_factory=dict)  # window -> increments


def admit_windows(
    windows: Iterable[tuple[str, int]],
    held: Callable[[tuple[str, int]], bool],
    entries: Mapping[str, CampaignEntry | None],
    increments: Callable[[tuple[str, int]], int],
) -> Admission:
    """Which windows of a batch count their increments.

    A window held in the table counts them. A window not held is new, unless it expired: its
    start is at or before its campaign's ``expired_through``. Its last upsert holds its complete
    count, which a window started afresh would replace with a partial one, so its increments are
    refused (``crm_worker_stats_late_total``). ``entries``: the campaign entry of every campaign
    with a window not held (None: no window of it expired here, or not since its entry was
    forgotten; a campaign gets its entry at its first expiry, :func:`plan_expiry`, so a window
    never seen costs no entry write).
    """
    out = Admission()
    for window in windows:
        if held(window):
            continue
        campaign, start = window
        entry = entries.get(campaign)
        if entry is not None and start <= entry.expired_through:
            out.refused[window] = increments(window)
    return out


def apply_increments(counts: WindowCounts, increments: Iterable[Counted]) -> int:
    """Add ``increments`` to a window's counts; returns how many it had counted already (a
    replay after a restart), which it skips."""
    return counts.apply_all(increments)


@dataclass
class ExpiryPlan:
    """What :func:`plan_expiry` decided for one table partition."""

    deletes: list[bytes] = field(default_factory=list)  # window keys
    entries: dict[str, CampaignEntry] = field(default_factory=dict)  # campaign -> entry to write
    forgets: list[str] = field(default_factory=list)  # campaigns whose entry is deleted


def plan_expiry(
    windows: Iterable[tuple[bytes, bytes]],
    entries: Iterable[tuple[str, CampaignEntry]],
    now_ms: int,
    keep_ms: int,
    size_ms: int,
) -> ExpiryPlan:
    """Windows expire ``keep_ms`` after their last update, whatever their start: a backfill of
    last month's events keeps its windows as long as today's. A window stored before windows kept
    their update time expires as before, ``keep_ms`` after its end. Each campaign's entry
    remembers the latest start it lost (``expired_through``, see :func:`admit_windows`): a
    campaign without an entry (none is written when it is first seen) gets one at its first
    expiry.

    An entry is bounded too: once its campaign holds no window here, it is kept ``keep_ms``
    after its last write (the expiry of the campaign's last window), then deleted; an event for
    the campaign after that starts a new window. While the campaign holds windows, its entry is
    written again when its last write is older than half of ``keep_ms``, so that its changelog
    record outlives the changelog's retention (the window size's retention plus a day).

    ``windows``: (key, value) of every window of the partition; ``entries``: its campaign
    entries."""
    plan = ExpiryPlan()
    oldest = now_ms - keep_ms
    lost: dict[str, int] = {}
    holding: set[str] = set()
    for key, value in windows:
        updated = window_updated_ms(value)
        campaign, start = parse_window_key(key)
        if (start + size_ms if updated is None else updated) < oldest:
            plan.deletes.append(key)
            lost[campaign] = max(start, lost.get(campaign, -1))
        else:
            holding.add(campaign)
    known: dict[str, CampaignEntry] = dict(entries)
    for campaign, start in lost.items():
        entry = known.get(campaign) or CampaignEntry()
        plan.entries[campaign] = CampaignEntry(max(entry.expired_through, start), now_ms)
    for campaign, entry in known.items():
        if campaign in plan.entries:
            continue
        if campaign not in holding:
            if entry.written_ms < oldest:
                plan.forgets.append(campaign)
        elif entry.written_ms < now_ms - keep_ms // 2:
            plan.entries[campaign] = CampaignEntry(entry.expired_through, now_ms)
    return plan
