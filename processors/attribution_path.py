"""The attribution half of the worker: the raw path's hand-over, an agent, and the attribution
table (the rule is :mod:`processors.attribution`, pure).

The touches and the vendors' conversions come from the raw path (:class:`RawFeed`): it takes
them from the canonical events of its batch, where it produces them, and sends them to the
internal ``attribution-inputs`` topic with the batch's other outputs, acknowledged before its
positions advance. ``events`` is not read a second time (reading and decoding every canonical
event again cost a quarter more CPU per event). ``attribution-feed`` (:class:`FeedPath`) reads
the customer's ``conversions`` (:func:`processors.attribution.parse_conversion_json`); a record
that is not a conversion is a dead letter with its reason and position. Both send one record per
``attribution-inputs`` partition and batch, each user's items under the user
(:func:`processors.attribution.input_records`), on the user's partition (the Java client's
murmur2, as ``stats-updates``), so one worker holds a user's whole history.

``attribution`` (:class:`AttributionPath`) reads ``attribution-inputs`` and applies each user's
items to the user's state in the attribution table (:class:`AttributionTable`): attributions go to
``attributions`` (Avro, keyed by campaign), and the per-hour totals the API reads
(:func:`processors.state.keys.tally_key`) are updated in the same table.

**Through a crash** (kill -9 at any moment) both agents commit a position only once Kafka
acknowledged what the batch sent (:meth:`Positioning.durable`), so nothing is lost; what is
repeated is harmless:

* the raw path and the feed, replaying a batch, send its items again: a touch is held once per
  event id, and a conversion id processed before is ignored
  (:func:`processors.attribution.apply`, rule 4), however many touches arrived in between;
* the attribution agent writes a batch's user states and totals to RocksDB, in one write batch
  per partition, only after Kafka acknowledged the batch's attributions and changelog records
  (the stats path's pattern, :mod:`processors.stats`). A replay from the committed position
  starts from the state before the batch, from the state after it when the changelog restored
  it, or from part of it: a kill -9 during the seal can leave any prefix of the batch's
  changelog records (its user states without its totals, sent after them). Each conversion is
  decided once (a record at or below the offset a user's state applied is a replay), and
  counted once in the totals, whatever landed: what a record adds to a total (an attribution,
  a miss: :class:`processors.attribution.Contribution`) carries the record's input offset; a
  total keeps the highest offset it holds (:attr:`processors.attribution.Tally.offset`) and
  takes a contribution only above it; a user's state keeps its records' contributions of the
  batch that last wrote it, which a replayed record adds again (where the total lacks them).
  The changelog may hold a batch whose attributions never reached Kafka (killed between the two):
  the replay finds those conversions seen and sends their attributions again, as they were
  (:func:`processors.attribution.apply`, rule 4). So an attribution may be written to
  ``attributions`` more than once, always with the same ``attribution_id`` and content, never a
  different one, and never lost.

Expiry (:meth:`AttributionTable.expire`): the hourly totals older than
``CRM_ATTRIBUTION_RETENTION`` go by range delete, users idle (wall clock) for longer than the
longest window one by one; both locally, as the dedupe marks (a restore may bring some back
until the next expiry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from crmstream import metrics
from crmstream.errors import SerdeError
from crmstream.serde import AvroSerde
from processors.attribution import (
    Attribution,
    Contribution,
    Conversion,
    Item,
    Outcome,
    Tally,
    UserState,
    Windows,
    apply,
    bucket_of,
    confirm,
    contributions,
    conversion_from_fields,
    conversion_id_of,
    decode_record,
    from_event,
    input_records,
    parse_conversion_json,
)
from processors.campaigns import stats_partition
from processors.engine import Batch
from processors.normalize.common import RecordError
from processors.normalize.model import CanonicalEvent, RejectReason
from processors.outputs import DeadLetters, Outputs
from processors.positioning import Positioning
from processors.positions import TP
from processors.records import RawPosition, headers_dict
from processors.state import keys
from processors.state.keys import parse_tally_key, tally_key, user_key
from processors.state.table import Item as TableItem
from processors.state.table import WindowedTable

log = logging.getLogger("crmstream.worker")

STREAM = "attribution"
"""The positions' stream label of the attribution agents' topics."""

_AVRO_STARTS = (b"\xc3\x01", b"\x00")


def _position(message: Any) -> RawPosition:
    return RawPosition(
        message.topic,
        message.partition,
        message.offset,
        int(message.timestamp * 1000),
        headers_dict(message.headers),
    )


class RawFeed:
    """The attribution's part of the raw path: a raw batch's touches and vendor conversions,
    taken from the canonical events where the raw path produces them, sent to
    ``attribution-inputs`` with the batch's other outputs (one record per partition,
    :func:`processors.attribution.input_records`). The raw path acknowledges them before its
    positions advance, like its events and stats increments, so nothing is lost through a crash
    and ``events`` is not read a second time.

    It is handed the batch's first-seen events, whether written now or by an earlier run (read
    back after a restart, :attr:`processors.plan.RawPlan.counted`): a replay sends their items
    again, which the attribution table holds once (a touch per event id, a conversion per id:
    :func:`processors.attribution.apply`)."""

    def __init__(
        self, outputs: Outputs, *, inputs_topic: str, conversion_events: dict[str, str]
    ) -> None:
        self.outputs = outputs
        self.inputs_topic = inputs_topic
        self.conversion_events = conversion_events
        self._partitions = 0

    def send(self, events: Iterable[CanonicalEvent]) -> None:
        """Send the items of ``events`` (a raw batch's, in raw-offset order)."""
        found: list[tuple[str, Item]] = []
        touches = conversions = 0
        names = self.conversion_events
        for event in events:
            item = from_event(event, names)
            if item is not None:
                found.append(item)
                if isinstance(item[1], Conversion):
                    conversions += 1
                else:
                    touches += 1
        if not found:
            return
        if not self._partitions:
            self._partitions = self.outputs.partitions(self.inputs_topic)
        partitions = self._partitions
        for partition, value in input_records(
            found, lambda key: stats_partition(key, partitions)
        ).items():
            self.outputs.send(self.inputs_topic, b"%d" % partition, value, partition=partition)
        if touches:
            metrics.ATTRIBUTION_INPUTS.labels("touch", "events").inc(touches)
        if conversions:
            metrics.ATTRIBUTION_INPUTS.labels("conversion", "events").inc(conversions)


class FeedPath:
    """``conversions`` -> ``attribution-inputs``, keyed by user partition (the customer's own
    conversions; the vendors' come from the raw path, :class:`RawFeed`)."""

    def __init__(
        self,
        serde: AvroSerde,
        outputs: Outputs,
        positioning: Positioning,
        dead_letters: DeadLetters,
        *,
        conversions_topic: str,
        inputs_topic: str,
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.serde = serde
        self.outputs = outputs
        self.positioning = positioning
        self.dead_letters = dead_letters
        self.conversions_topic = conversions_topic
        self.inputs_topic = inputs_topic
        self.ready = ready
        self.busy = 0
        self._partitions = 0

    async def process(self, batch: Batch) -> None:
        self.busy += 1
        try:
            admitted = await self.positioning.admit(batch, STREAM)
            if not admitted:
                return
            await self.ready()
            if not self._partitions:
                self._partitions = self.outputs.partitions(self.inputs_topic)
            partitions = self._partitions
            now_ms = time.time_ns() // 1_000_000
            ends: dict[TP, int] = {}
            found: list[tuple[str, Item]] = []
            for event in admitted:
                message = event.message
                ends[message.tp] = message.offset + 1
                conversion = self._read(message, now_ms)
                if conversion is not None:
                    found.append((conversion.user_id, conversion))
            if found:
                metrics.ATTRIBUTION_INPUTS.labels("conversion", "conversions").inc(len(found))
            for partition, value in input_records(
                found, lambda key: stats_partition(key, partitions)
            ).items():
                self.outputs.send(self.inputs_topic, b"%d" % partition, value, partition=partition)
            await self.outputs.seal()
            self.positioning.durable(ends)
            # Acknowledged to the engine: Faust commits the committable offsets of the
            # partitions it holds acknowledgements for only (the readers' records never reach
            # it), so without this a start or a rebalance read the topic again from its first
            # offset (as the stats path did, processors/stats_path.py).
            self.positioning.acknowledge(admitted)
        finally:
            self.busy -= 1

    def _read(self, message: Any, now_ms: int) -> Conversion | None:
        value = message.value or b""
        default_id = conversion_id_of(message.partition, message.offset)
        try:
            return self._conversion(value, default_id)
        except RecordError as exc:
            self._dead(message, exc.reason, exc.detail, now_ms)
            return None

    def _conversion(self, value: bytes, default_id: str) -> Conversion:
        if value.startswith(_AVRO_STARTS):
            try:
                name, record = self.serde.decode(value, self.conversions_topic)
            except SerdeError as exc:
                raise RecordError(
                    RejectReason.INVALID_JSON, f"neither JSON nor Avro: {exc}"
                ) from None
            if name != "Conversion":
                raise RecordError(RejectReason.INVALID_CONVERSION, f"an Avro {name}")
            return conversion_from_fields(
                {k: v for k, v in record.items() if v is not None or k == "user_id"}, default_id
            )
        return parse_conversion_json(value, default_id)

    def _dead(self, message: Any, reason: RejectReason, detail: str, now_ms: int) -> None:
        self.dead_letters.send(
            message.value or b"",
            message.key,
            None,
            reason.value,
            detail[:1000],
            _position(message),
            now_ms,
        )


class AttributionTable:
    """The attribution table of one worker: user states and hourly totals, by user partition."""

    def __init__(
        self,
        table: WindowedTable,
        windows: Windows,
        serde: AvroSerde,
        attributions_topic: str,
    ) -> None:
        self.table = table
        self.windows = windows
        self.serde = serde
        self.attributions_topic = attributions_topic
        self.lock = asyncio.Lock()

    async def apply(
        self,
        parsed: Iterable[tuple[int, str, list[Item], int]],
        outputs: Outputs,
        now_ms: int,
    ) -> Outcome:
        """Apply a batch's (partition, user, items, input offset), in order; send the
        attributions and the changelog records, and write the table once Kafka acknowledged
        them. A user's record at or below the offset its state last applied is a replay."""
        outcome = Outcome()
        by_partition: dict[int, list[tuple[str, list[Item], int]]] = {}
        for partition, user, items, offset in parsed:
            by_partition.setdefault(partition, []).append((user, items, offset))
        async with self.lock:
            writes: list[tuple[int, list[TableItem]]] = []
            crediting: list[tuple[int, dict[str, UserState]]] = []
            for partition, entries in sorted(by_partition.items()):
                changed, credited = self._apply_partition(
                    partition, entries, outputs, now_ms, outcome
                )
                self.table.send_changelog(partition, changed, outputs)
                writes.append((partition, changed))
                crediting.append((partition, credited))
            offsets = await outputs.seal()
            for partition, changed in writes:
                self.table.write(partition, changed)
            self.table.set_persisted_offsets(offsets)
            # Kafka acknowledged the attributions: a replay need not send them again. Written
            # here, and to the changelog with this task's next batch (until it lands, a restore
            # from the changelog sends them once more: harmless).
            for partition, credited in crediting:
                confirmed = [
                    (user_key(user), state.encode())
                    for user, state in credited.items()
                    if confirm(state)
                ]
                self.table.write(partition, confirmed)
                self.table.send_changelog(partition, confirmed, outputs)
        for name, n in (
            ("attributed", outcome.attributed),
            ("unattributed", outcome.unattributed),
            ("repeat", outcome.repeats),
            ("replayed", outcome.replayed),
        ):
            if n:
                metrics.ATTRIBUTION_CONVERSIONS.labels(name).inc(n)
        if outcome.touches_dropped:
            metrics.ATTRIBUTION_TOUCHES_DROPPED.inc(outcome.touches_dropped)
        return outcome

    def _apply_partition(
        self,
        partition: int,
        entries: list[tuple[str, list[Item], int]],
        outputs: Outputs,
        now_ms: int,
        outcome: Outcome,
    ) -> tuple[list[TableItem], dict[str, UserState]]:
        """The partition's changed keys, and the users whose state holds an attribution not
        yet acknowledged."""
        users = list(dict.fromkeys(user for user, _, _ in entries))
        stored = self.table.get_many(partition, [user_key(u) for u in users])
        states = {u: UserState.decode(v) for u, v in zip(users, stored, strict=True)}
        made: list[Attribution] = []
        added: list[Contribution] = []
        outcome.resend.clear()
        outcome.misses.clear()
        fresh: set[str] = set()
        trimmed: set[str] = set()
        for user, items, offset in entries:
            state = states[user]
            if user not in trimmed:
                # The user's records below its first one here were processed by batches Kafka
                # acknowledged (totals included): their contributions need not be kept.
                trimmed.add(user)
                if state.kept:
                    state.kept = [c for c in state.kept if c.offset >= offset]
            if offset <= state.offset:
                # A replay: decided before, its contributions kept; added below to the totals
                # that do not hold them (the changelog can hold a batch's user states without
                # its totals, when a crash cut the batch short).
                apply(state, items, self.windows, outcome, fresh, replay=True)
                added += [c for c in state.kept if c.offset == offset]
                continue
            missed = len(outcome.misses)
            now = apply(state, items, self.windows, outcome, fresh)
            state.offset = offset
            if now or len(outcome.misses) > missed:
                mine = contributions(offset, now, outcome.misses[missed:])
                state.kept += mine
                added += mine
                made += now
        totals = {tally_key(*c.total): c for c in added}
        held = self.table.get_many(partition, list(totals))
        tallies = {key: Tally.decode(value) for key, value in zip(totals, held, strict=True)}
        before = {key: tally.offset for key, tally in tallies.items()}
        changed: set[bytes] = set()
        for c in added:
            key = tally_key(*c.total)
            if tallies[key].count(c, before[key]):
                changed.add(key)
        for a in [*made, *outcome.resend]:
            outputs.send(
                self.attributions_topic,
                a.touch.campaign.encode(),
                self.serde.encode("Attribution", a.record(now_ms), self.attributions_topic),
            )
        out: list[TableItem] = []
        for user in users:
            state = states[user]
            state.updated_ms = now_ms
            out.append((user_key(user), state.encode()))
        out += [(key, tallies[key].encode()) for key in tallies if key in changed]
        credited = {a.conversion.user_id: states[a.conversion.user_id] for a in made}
        credited.update(
            {a.conversion.user_id: states[a.conversion.user_id] for a in outcome.resend}
        )
        return out, credited

    # -- expiry --------------------------------------------------------------------------

    async def expire(self, partitions: Iterable[int], now_ms: int) -> int:
        """Delete the hourly totals older than the retention (every local partition) and the
        users idle for longer than the longest window (in ``partitions``). Local deletes, as
        the dedupe marks. Returns how many users went."""
        idle_before = now_ms - self.windows.longest_ms
        gone = 0
        async with self.lock:
            self.table.expire(now_ms)
            open_here = set(self.table.partitions())
            for partition in sorted(set(partitions) & open_here):
                stale: list[TableItem] = []
                for key, value in self.table.scan(partition, keys.USERS):
                    if UserState.decode(value).updated_ms < idle_before:
                        stale.append((key, None))
                gone += self.table.write(partition, stale)
        if gone:
            metrics.ATTRIBUTION_EXPIRED.labels("user").inc(gone)
        return gone

    # -- reading, for the API ------------------------------------------------------------

    def tallies(
        self, partitions: Iterable[int], from_ms: int, to_ms: int, name: str | None
    ) -> list[tuple[str, str, Tally]]:
        """(campaign key, conversion name, tally) of every hour starting in
        ``[from_ms, to_ms)`` (``from`` rounded down to its hour) in ``partitions``."""
        out: list[tuple[str, str, Tally]] = []
        hours = keys.window_range(bucket_of(from_ms), to_ms)
        for partition in partitions:
            for key, value in self.table.scan(partition, hours):
                if key not in hours:
                    # Seen from the API of a live worker: the scan went past its upper bound
                    # (into the users); the range itself decides.
                    break
                _, campaign, found = parse_tally_key(key)
                if name is None or found == name:
                    out.append((campaign, found, Tally.decode(value)))
        return out


class AttributionPath:
    """The ``attribution-inputs`` batch handler and the attribution expiry."""

    def __init__(
        self,
        table: AttributionTable,
        outputs: Outputs,
        positioning: Positioning,
        dead_letters: DeadLetters,
        *,
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.table = table
        self.outputs = outputs
        self.positioning = positioning
        self.dead_letters = dead_letters
        self.ready = ready
        self.busy = 0

    async def process(self, batch: Batch) -> None:
        self.busy += 1
        try:
            admitted = await self.positioning.admit(batch, STREAM)
            if not admitted:
                return
            await self.ready()
            now_ms = time.time_ns() // 1_000_000
            ends: dict[TP, int] = {}
            parsed: list[tuple[int, str, list[Item], int]] = []
            for event in admitted:
                message = event.message
                ends[message.tp] = message.offset + 1
                try:
                    users = decode_record(message.key, message.value or b"")
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    self.dead_letters.send(
                        message.value or b"",
                        message.key,
                        None,
                        RejectReason.INVALID_ATTRIBUTION_INPUT.value,
                        f"not an attribution-inputs record: {exc!r}"[:1000],
                        _position(message),
                        now_ms,
                    )
                    continue
                parsed += [
                    (message.partition, user, items, message.offset) for user, items in users
                ]
            await self.table.apply(parsed, self.outputs, now_ms)
            self.positioning.durable(ends)
            # Acknowledged to the engine: Faust commits the committable offsets of the
            # partitions it holds acknowledgements for only (the readers' records never reach
            # it), so without this a start or a rebalance read the topic again from its first
            # offset (as the stats path did, processors/stats_path.py).
            self.positioning.acknowledge(admitted)
        finally:
            self.busy -= 1
