"""The engine boundary implemented over Faust: the only worker module that imports ``faust``,
``mode`` or ``aiokafka`` (an import-linter contract in pyproject.toml).

:class:`FaustEngine` is :class:`processors.engine.Engine` over a Faust app, and builds what the
composition root (:mod:`processors.app`) asks for: stream agents, timers, tables
(:class:`FaustTableStore`), the group routing of the query API (:class:`FaustRouting`) and the
Faust worker that runs it all. Everything else crm-stream does to Faust 0.15.3's internals is
here too: the patches below, the private state it reads (``is_changelog_tp``,
``rocksdb_partition(s)``, ``committed_offset``) and the check that the installed versions are
the ones this was written for (``check_versions``).

1. **Seek, then resume.** After a rebalance, Faust restores the tables and then, in
   ``Recovery._resume_streams`` and ``Recovery.on_recovery_completed``, resumes the stream
   partitions *before* ``await consumer.perform_seek()``. While the seek runs, the fetcher hands
   prefetched records to the agents; the seek then moves the partitions back and the same
   records come again (seen on Tansu: 320 raw records read for 160 published; the family of
   faust-streaming #216 and #221, fixed upstream for other paths in #216/#217). A stream
   partition's resume is held here until the seek is done (changelog partitions are not held).
   Only that seek, the recovery's own (told by its task's context), places the partitions and
   releases the resumes: Faust's fetcher also seeks when a fetch returns while the flow is
   stopped, and its seek can end while a recovery (even the next generation's) is under way.
   And a placement that ends after a revoke or the next assignment (a slow read-back) resumes
   nothing: the next recovery places the partitions again, then resumes them.

2. **Positions.** After every seek, the worker (:class:`processors.engine.Positions`) places
   each stream partition itself: raw partitions at the position saved with their dedupe marks,
   stats partitions at their committed offset; and learns what an earlier run already wrote
   (:mod:`processors.probe`).

3. **An empty set of active partitions fetches nothing.** Faust hands its *live* set of active
   partitions to the consumer thread, and aiokafka's ``Fetcher.fetched_records(partitions)``
   reads an empty set as "every partition" (``if partitions and tp not in partitions``). When
   Faust paused every partition (the end of recovery, the seek above) while a fetch was waiting,
   aiokafka handed over the records of all partitions, moving their fetch positions past them,
   and Faust dropped them as paused. robinhood/faust#69 fixed exactly this in 2018 (a snapshot
   and a lock); the thread-based consumer of faust-streaming brought it back. It is what lost
   blocks of raw records after kill -9 restarts (issue 11; reproduced and traced with the
   worker's debug log: the partitions sought before the drain each lost one block). Here the
   thread takes a snapshot of the set, and an empty one fetches nothing.
   :mod:`processors.positions` still notices any other way a record goes missing.

4. **Commits.** Faust computes the offset to commit from the offsets its agents acknowledged,
   and counts any hole between two offsets it handed over as a gap to fill (it assumes compacted
   topics or transaction markers). Records that Faust fetched and then dropped (flow control
   stopping mid-fetch, a paused partition, a delivery cut short) leave exactly such a hole, and
   were committed past: lost for good (faust-streaming #312, and #606, open: gaps are filled
   past offsets never acknowledged) (issue 11: contiguous blocks of a raw partition, with the
   group's offset beyond them). Here the offset committed for a stream partition is the
   pipeline's durable position (:mod:`processors.positions`), and nothing else.

5. **Where a restore ends.** Faust restores a changelog partition up to the end ListOffsets
   reports. Tansu reports the base offset of the partition's newest record batch + 1, not the
   offset after its last record, and a restore read up to there missed the rest of that batch:
   the dev profile produced changelogs one record per batch (``CRM_CHANGELOG_MAX_BATCH_BYTES=1``),
   and a restore then read them a record per batch, 5,000 keys/s (issue 23). With
   ``CRM_CHANGELOG_END_FROM_FETCH`` each end is taken from the high watermark of a fetch at that
   offset as well (the larger of the two; Tansu reports that one right), and changelogs are
   batched like on Kafka.

6. **Fast restore.** Faust's recovery hands every changelog record through its consumer,
   conductor, an event, a queue and per-record bookkeeping: ~90 us of CPU per record (issue 23,
   profiled). With ``CRM_FAST_RESTORE`` (default), once Faust knows where each active table
   partition stands (its persisted offset) and where its changelog ends, the partitions behind
   are read here first (:func:`restore_changelogs`: librdkafka, a RocksDB write batch per
   :data:`RESTORE_BATCH` records with the persisted offset in the same batch, so a kill -9
   leaves the offset with the data it covers); Faust then finds them up to date and reads only
   what came after. Faust gives each recovery step ``broker_request_timeout`` (90 s) and goes
   on without it after that (seen at 10M keys: the worker stalled); that step waits as long as
   the restore takes. A rebalance meanwhile stops the reader before its next write and waits
   for it.

7. **Table storage.** Every table partition opens with the RocksDB options of
   :func:`rocksdb_options` (Faust's own: no compression set, 3-bit bloom filters, a 2 GB block
   cache and 64 MB write buffers per partition), the block cache and the memtables of all of them
   within one budget (``CRM_ROCKSDB_MEMORY_MB``). A table built with an ``upgrade`` (the dedupe
   table: :func:`processors.state.keys.upgrade_mark`) rewrites every record it restores from its
   changelog through it, and a local store on opening (records an earlier version wrote, in
   write batches): the state of an earlier layout is read in the current one.

8. **The stream topics read by librdkafka** (``CRM_STREAM_READER=librdkafka``, the default;
   issue 21).
   Faust's per-record path (aiokafka's fetcher, a message and an event per record, the
   conductor, a queue, the stream, the acks) cost ~110 us of CPU per record; a
   :class:`processors.reader.Reader` (one librdkafka consumer per agent, no group) reads a
   batch for a few. Faust keeps what it is needed for: the group
   and its assignor (the stream topics stay subscribed, so stream partitions and table
   changelogs are co-partitioned as before),
   table restore (changelogs are fetched by Faust as before; standbys: 9. below), commits (4. above)
   and agent supervision. The patches around it:

   * aiokafka pauses the readers' partitions as soon as they are assigned (its fetcher would
     prefetch them), and ``_fetch_records`` leaves them out: Faust never fetches them; nor the
     leader topic's partition, to which nothing is written (its assignment elects the leader):
     fetched, it was a held fetch request every ``CRM_CONSUMER_FETCH_MAX_WAIT`` for nothing;
   * their resume, held until the worker has placed them (1. and 2.), goes to the readers, at the
     placed offsets (a partition is fetched by nothing before that), and only for partitions
     the event loop has assigned and the worker placed since: Faust's recovery computes the
     resume from the group client's assignment, which can already be the next rebalance's (a
     revoked partition was read again from its committed offset, and dead letters written
     twice); Faust's ``pause_partitions`` pauses them in the readers too, and a revoke drops
     their positions;
   * ``wait_empty`` (a rebalance, after pausing everything, and the stop) first waits until the
     agents hold none of the readers' records (handed to a handler and not yet released),
     committing meanwhile as Faust does, and until the readers stopped fetching;
   * the livelock check skips them (aiokafka has no high watermark for them).

   Each agent stays a Faust agent (supervised, started and stopped with the others, its
   ``stopping`` run when it stops) whose body takes the reader's batches instead of iterating
   its stream; a Faust channel in between would bring back an event per batch and a queue for
   nothing. ``CRM_STREAM_READER=faust`` leaves the reading to Faust (these patches then do
   nothing).

9. **Standby partitions** (``CRM_STANDBY_FOLLOWER``, default on; issue 21). Faust applies a
   standby's changelog records one by one on the event loop (~90 us of CPU each), which with two
   workers on two cores took the half-rate p50 from 0.15 s to 2.2 s. Here ``Recovery.add_standby``
   keeps them from Faust, and a :class:`processors.standby.StandbyFollower` (librdkafka, its own
   thread) follows them from each store's persisted offset + 1, a RocksDB write batch per
   partition per poll with the persisted offset in it. A rebalance stops it (and waits for it)
   before the stores are reassigned, so a standby that becomes active is restored from that
   offset by the fast restore (6.).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from time import monotonic as _monotonic
from typing import Any, NamedTuple, Protocol, cast

import faust
import rocksdict
from aiokafka.errors import IllegalStateError
from faust.exceptions import ConsumerNotStarted
from faust.sensors import Monitor
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP as FaustTP
from mode import Service

from crmstream.errors import CrmStreamError
from crmstream.kafka import ssl_context
from crmstream.settings import Settings
from crmstream.stopping import watch_stop_signals
from processors.campaigns import stats_partition
from processors.engine import BatchHandler, Event, Positions, SeekError
from processors.positions import TP
from processors.reader import Reader, ReaderError, Readers
from processors.standby import Followed, StandbyFollower, stage

log = logging.getLogger("crmstream.worker")

EXIT_BUG = 70  # EX_SOFTWARE: an unexpected error stopped the worker

_APPLIED = "_crmstream_seek_before_resume"


_RECOVERY_STEP: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "crmstream_recovery_step", default=None
)
"""The recovery step that resumes the stream partitions, in its task and the tasks it starts
(its ``perform_seek`` among them): the one seek that places the partitions after a rebalance is
made there, once. Faust's fetcher calls ``perform_seek`` too (a fetch returned while the flow was
stopped), at any time of a rebalance; its task is started by a recovery step too (the first one's
``_fetcher.maybe_start``), after that step's seek. So a seek is the step's own only in the step
the consumer is in (``_crm_recovery_step``) and only the first one there (see 1.)."""


def _hold_resumes(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(self: Recovery, *args: Any, **kwargs: Any) -> Any:
        consumer: Any = self.app.consumer
        consumer._crm_held_resumes = set()
        step = object()
        consumer._crm_recovery_step = step
        in_step = _RECOVERY_STEP.set(step)
        rebalances = _rebalances(consumer)
        try:
            return await method(self, *args, **kwargs)
        finally:
            _RECOVERY_STEP.reset(in_step)
            if getattr(consumer, "_crm_recovery_step", None) is step:
                consumer._crm_recovery_step = None
            held = consumer._crm_held_resumes
            consumer._crm_held_resumes = None
            if held and _rebalances(consumer) != rebalances:
                # A revoke or the next assignment came meanwhile: the next recovery places
                # and resumes the partitions.
                held = set()
            if held:
                # No seek ran (or it failed): resume as Faust would have.
                Consumer.resume_partitions(consumer, held)

    return wrapper


# --- versions --------------------------------------------------------------------------------

# What this module was written and tested against (pyproject.toml pins the same).
VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


def check_versions() -> None:
    """Refuse to run on library versions these patches were not written for: a patch applied
    to other code could fail silently, the worst way for a pipeline to fail."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for package, expected in VERSIONS.items():
        try:
            found = version(package)
        except PackageNotFoundError:
            found = "not installed"
        if found != expected:
            wrong.append(f"{package} {found} (needs {expected})")
    if wrong:
        raise CrmStreamError(
            "the worker patches Faust's consumer (processors/faust_engine.py) and runs only on "
            "the versions it was written for: " + ", ".join(wrong)
        )


# --- private state, read here only ------------------------------------------------------------


def is_changelog_tp(consumer: Any, tp: Any) -> bool:
    return bool(consumer._is_changelog_tp(tp))


def rocksdb_partition(table: Any, partition: int) -> Any:
    """The ``rocksdict.Rdict`` of one partition of a Faust RocksDB table (opened if needed)."""
    return table.data._db_for_partition(partition)


def rocksdb_partitions(table: Any) -> dict[int, Any]:
    """The open ``rocksdict.Rdict`` handles of a Faust RocksDB table, by partition."""
    return dict(getattr(table.data, "_dbs", {}))


def recovered(app: Any) -> bool:
    """Whether the tables finished their first restore (Faust's ``Recovery.completed``).

    Safe from any thread (the metrics server's /readyz calls it): it only reads what Faust has
    already built. ``app.tables`` and ``TableManager.recovery`` are built lazily and bind their
    service to the event loop of the thread that first touches them; built from the metrics
    thread, the table manager waited on that thread's loop, which never runs, and the worker hung
    for good after "Recovery: Starting..." (seen when /readyz came early on a slow start)."""
    tables = app.__dict__.get("tables")  # mode's cached_property keeps its value there
    recovery = getattr(tables, "_recovery", None)
    return bool(recovery is not None and recovery.completed.is_set())


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The group's committed offset of ``tp`` as the last seek found it (None when there is
    none, or it is 0: nothing processed)."""
    offset = consumer._committed_offset.get(tp)
    return int(offset) if offset else None


def _positioned(consumer: Any) -> Positions | None:
    return getattr(consumer.app, "crm_positions", None)


def _readers(consumer: Any) -> Readers | None:
    """The worker's librdkafka readers of the stream topics, or None (``CRM_STREAM_READER=faust``:
    Faust reads them)."""
    return getattr(consumer.app, "crm_readers", None)


def _rebalances(consumer: Any) -> int | None:
    """The revokes and assignments the readers have handled (None without readers)."""
    readers = _readers(consumer)
    return None if readers is None else readers.rebalances


def _resume(consumer: Any, resume_partitions: Callable[..., None], tps: Iterable[Any]) -> None:
    """Resume ``tps``: the stream partitions in the readers (from where the worker placed them),
    the rest in Faust's consumer."""
    readers = _readers(consumer)
    if readers is None:
        resume_partitions(consumer, tps)
        return
    tps = list(tps)
    read = [tp for tp in tps if readers.handles(tp)]
    if read:
        readers.resume(
            read,
            lambda tp: committed_offset(consumer, tp),
            placed_only=_positioned(consumer) is not None,
        )
    rest = [tp for tp in tps if not readers.handles(tp)]
    if rest:
        resume_partitions(consumer, rest)


def apply() -> None:
    """Install the patches once per process, after checking the versions they were written
    for."""
    if getattr(Consumer, _APPLIED, False):
        return
    check_versions()
    resume_partitions = Consumer.resume_partitions
    pause_partitions = Consumer.pause_partitions
    perform_seek = Consumer.perform_seek
    new_offset = Consumer._new_offset
    wait_empty = Consumer.wait_empty
    partitions_revoked = Consumer.on_partitions_revoked

    def held_resume_partitions(self: Any, tps: Iterable[Any]) -> None:
        held = getattr(self, "_crm_held_resumes", None)
        if held is None:
            _resume(self, resume_partitions, tps)
            return
        # Only stream partitions wait for the seek; table changelogs resume as usual.
        tps = list(tps)
        held.update(tp for tp in tps if not self._is_changelog_tp(tp))
        changelogs = [tp for tp in tps if self._is_changelog_tp(tp)]
        if changelogs:
            resume_partitions(self, changelogs)

    def pause_in_readers_too(self: Any, tps: Iterable[Any]) -> None:
        tps = list(tps)
        pause_partitions(self, tps)
        readers = _readers(self)
        if readers is not None:
            readers.pause(tps)

    partitions_assigned_here = Consumer.on_partitions_assigned

    async def assigned_in_readers_first(self: Any, assigned: Any, generation_id: int = 0) -> None:
        readers = _readers(self)
        if readers is not None:
            readers.assign(assigned)
        await partitions_assigned_here(self, assigned, generation_id)

    async def revoked_in_readers_first(self: Any, revoked: Any) -> None:
        readers = _readers(self)
        if readers is not None:
            readers.forget(revoked)
        await partitions_revoked(self, revoked)

    async def wait_for_the_readers_records(self: Any) -> None:
        # A rebalance (or the stop) waits for the records the agents have in hand, as Faust
        # waits for its unacknowledged messages; the readers have stopped fetching meanwhile.
        readers = _readers(self)
        if readers is not None:
            while not self.should_stop and readers.in_hand > 0:
                await self.commit()
                await readers.wait_released(timeout=1.0)
            await readers.applied()
        await wait_empty(self)

    async def seek_then_resume(self: Any) -> None:
        # Whose seek this is comes from the caller's task, not from the consumer's state: the
        # fetcher's seek, begun when a revoke stopped the flow mid-fetch, can still be waiting
        # for the committed offsets when the next generation's recovery holds its resumes.
        # Taken for the recovery's, it placed every partition a second time while the agents
        # were already processing them (resumed by the first placement): the outputs written
        # after the second one's read-back were written again (dead letters twice).
        step = _RECOVERY_STEP.get()
        in_recovery = step is not None and getattr(self, "_crm_recovery_step", None) is step
        if in_recovery:
            self._crm_recovery_step = None  # the step's one seek: any other is not its own
        held = getattr(self, "_crm_held_resumes", None)
        rebalances = _rebalances(self)
        await perform_seek(self)
        positioned = _positioned(self)
        if not in_recovery:
            # Faust's seek moved its consumer's partitions back to their committed offsets:
            # the stream partitions go back to their positions. Not the readers': Faust's
            # consumer never fetches them, nor moves them, and its seek can end after the next
            # assignment, when the tracker's positions are still the previous generation's.
            if positioned is not None and _readers(self) is None:
                await positioned.on_positioned(after_rebalance=False)
            return
        if positioned is not None:
            await positioned.on_positioned(after_rebalance=True)
        if held is None or held is not getattr(self, "_crm_held_resumes", None):
            return  # the step is over: it resumed what it held, or the next one holds them
        if held and _rebalances(self) != rebalances:
            # The placement ended after a revoke (its seeks failed: no longer assigned) or
            # after the next assignment (they succeeded, at this generation's positions):
            # resumed, the partitions would be processed until the next recovery placed them
            # again. That recovery resumes them.
            held.clear()
        if held:
            self._crm_held_resumes = set()
            _resume(self, resume_partitions, held)

    def position_offset(self: Any, tp: Any) -> int | None:
        positioned = _positioned(self)
        if positioned is None or self._is_changelog_tp(tp):
            return new_offset(self, tp)
        offset = positioned.committable(tp)
        # Faust's own bookkeeping of acknowledged offsets is not used; keep it from growing.
        acked = self._acked[tp]
        if acked:
            self._acked_index[tp].difference_update(acked)
            acked.clear()
        self._gap.pop(tp, None)
        return offset

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ensure_aiokafka_TP

    fetch_records = AIOKafkaConsumerThread._fetch_records

    async def fetch_active_only(
        self: Any, consumer: Any, active_partitions: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if active_partitions is not None:
            active_partitions = frozenset(active_partitions)
            readers = _readers(self.consumer)
            if readers is not None:  # the readers' partitions are never fetched here
                active_partitions = frozenset(
                    tp for tp in active_partitions if not readers.handles(tp)
                )
            if not active_partitions:
                return {}
        return await fetch_records(self, consumer, active_partitions, *args, **kwargs)

    partitions_assigned = AIOKafkaConsumerThread.on_partitions_assigned

    def never_fetched_here(self: Any, tp: Any) -> bool:
        """A partition Faust's aiokafka consumer never fetches: the readers' (they fetch it)
        and the leader topic's (<app>-__assignor-__leader): its assignment alone elects the
        leader (``is_leader`` asks the assignment) and nothing is ever written to it, yet
        fetched it cost a held fetch request per CRM_CONSUMER_FETCH_MAX_WAIT (~14/s at 50 ms,
        each a share of the broker's CPU; bench/README.md, issue 21)."""
        readers = _readers(self.consumer)
        if readers is not None and readers.handles(tp):
            return True
        app = self.consumer.app
        return not app.conf.topic_disable_leader and (
            tp.topic == app._leader_assignor._leader_topic_name
        )

    async def pause_the_readers_partitions(
        self: Any, assigned: Any, generation_id: int = 0
    ) -> None:
        # aiokafka's fetcher prefetches every assigned partition that is not paused in it
        # (Faust's own pause and resume never reach it): these stay paused all generation.
        never = [tp for tp in assigned if never_fetched_here(self, tp)]
        if never:
            self._ensure_consumer().pause(*(ensure_aiokafka_TP(tp) for tp in never))
        await partitions_assigned(self, assigned, generation_id)

    verify_event_path = AIOKafkaConsumerThread.verify_event_path

    def verify_unless_read(self: Any, now: float, tp: Any) -> None:
        if never_fetched_here(self, tp):
            return None  # no fetch, no highwater to compare with
        return cast(None, verify_event_path(self, now, tp))

    build_highwaters = Recovery._build_highwaters

    async def highwaters_to_the_last_record(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await build_highwaters(self, consumer, tps, destination, title)
        settings = getattr(self.app, "crm_settings", None)
        if settings is None or not settings.changelog_end_from_fetch:
            return
        listed = {tp: int(v) + 1 for tp, v in destination.items() if v is not None and v >= 0}
        if not listed:
            return
        ends = await asyncio.get_running_loop().run_in_executor(
            None, fetched_ends, settings, listed
        )
        for tp, end in ends.items():
            if end > listed[tp]:
                log.info(
                    "changelog %s/%d ends at %d (ListOffsets: %d)",
                    tp.topic,
                    tp.partition,
                    end,
                    listed[tp],
                )
                destination[tp] = end - 1

    build_offsets = Recovery._build_offsets

    async def offsets_then_fast_restore(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await build_offsets(self, consumer, tps, destination, title)
        settings = getattr(self.app, "crm_settings", None)
        if title != "active" or settings is None or not settings.fast_restore:
            return
        todo: dict[Any, Behind] = {}
        for tp in tps:
            end = self.active_highwaters.get(tp)
            applied = destination.get(tp)
            applied = -1 if applied is None else int(applied)
            if end is not None and end >= 0 and end > applied:
                store = self.tp_to_table[tp].data
                todo[tp] = Behind(
                    applied + 1,
                    int(end),
                    store._db_for_partition(tp.partition),
                    _record(store),
                    store.offset_key,
                )
        if not todo:
            return
        started = time.monotonic()
        stop = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            None, restore_changelogs, settings, todo, stop
        )
        try:
            done = await asyncio.shield(future)
        except asyncio.CancelledError:
            # Another rebalance: the reader stops before its next write, and is waited for, so
            # that nothing writes to these stores behind the next recovery's back.
            stop.set()
            await asyncio.wait([future])
            raise
        records = sum(done[tp] - todo[tp].start + 1 for tp in done)
        seconds = time.monotonic() - started
        log.warning(
            "fast restore: %d changelog records of %d partitions in %.1f s (%.0f/s)",
            records,
            len(done),
            seconds,
            records / max(seconds, 1e-3),
        )
        for tp, last in done.items():
            destination[tp] = last

    wait = Recovery._wait

    async def wait_without_limit_for_the_fast_restore(
        self: Any, coro: Any, timeout: Any = None
    ) -> None:
        # Faust gives each recovery step broker_request_timeout and then goes on without it;
        # a fast restore of millions of records takes longer (it stops by itself when nothing
        # arrives for RESTORE_STALL_S).
        if getattr(getattr(coro, "cr_code", None), "co_name", "") == FAST_RESTORE_STEP:
            timeout = None
        await wait(self, coro, timeout=timeout)

    patches: dict[tuple[type, str], Any] = {
        (Recovery, "_wait"): wait_without_limit_for_the_fast_restore,
        (Recovery, "_build_highwaters"): highwaters_to_the_last_record,
        (Recovery, "_build_offsets"): offsets_then_fast_restore,
        (RocksDBStore, "apply_changelog_batch"): _apply_changelog_batch,
        (RocksDBStore, "_open_for_partition"): _open_for_partition,
        (AIOKafkaConsumerThread, "_fetch_records"): fetch_active_only,
        (AIOKafkaConsumerThread, "on_partitions_assigned"): pause_the_readers_partitions,
        (AIOKafkaConsumerThread, "verify_event_path"): verify_unless_read,
        (Consumer, "resume_partitions"): held_resume_partitions,
        (Consumer, "pause_partitions"): pause_in_readers_too,
        (Consumer, "on_partitions_revoked"): revoked_in_readers_first,
        (Consumer, "on_partitions_assigned"): assigned_in_readers_first,
        (Consumer, "wait_empty"): wait_for_the_readers_records,
        (Consumer, "perform_seek"): seek_then_resume,
        (Consumer, "_new_offset"): position_offset,
        (Recovery, "_resume_streams"): _hold_resumes(Recovery._resume_streams),
        (Recovery, "on_recovery_completed"): _hold_resumes(Recovery.on_recovery_completed),
    }
    patches.update(standby_patches())
    for (cls, name), replacement in patches.items():
        setattr(cls, name, replacement)
    setattr(Consumer, _APPLIED, True)


def fetched_ends(settings: Settings, listed: Mapping[Any, int]) -> dict[Any, int]:
    """The high watermark a fetch reports for each partition, fetched from its last listed
    record (``listed``: partition -> the end ListOffsets reports)."""
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import TopicPartition

    from crmstream.kafka import consumer_config

    consumer = KafkaConsumer(
        consumer_config(
            settings,
            group_id=f"{settings.app_id}-restore-end",
            **{
                "enable.partition.eof": True,
            },
        )
    )
    ends: dict[Any, int] = {}
    try:
        by_key = {(tp.topic, tp.partition): tp for tp in listed}
        consumer.assign([TopicPartition(t, p, listed[tp] - 1) for (t, p), tp in by_key.items()])
        waiting = set(by_key)
        deadline = time.monotonic() + 30
        while waiting and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            # A record or the end of the partition (an EOF event): a fetch answered for it.
            key = (str(message.topic()), int(message.partition() or 0))
            if key in waiting:
                waiting.discard(key)
                tp = by_key[key]
                _low, high = consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
                ends[tp] = max(listed[tp], int(high))
        if waiting:
            raise CrmStreamError(
                "no fetch answered for the changelog partitions "
                + ", ".join(f"{t}/{p}" for t, p in sorted(waiting))
                + " in 30 s (CRM_CHANGELOG_END_FROM_FETCH)"
            )
    finally:
        consumer.close()
    return ends


class Behind(NamedTuple):
    """A table partition behind its changelog: the offsets ``start..end`` (inclusive) to apply
    to ``db``, each record through ``upgrade`` (if any); ``offset_key``: where Faust keeps the
    partition's persisted offset."""

    start: int
    end: int
    db: Any
    upgrade: Callable[[bytes, bytes | None], tuple[bytes, bytes | None]] | None
    offset_key: bytes


RESTORE_BATCH = 20_000
"""Changelog records per RocksDB write batch in a fast restore."""

FAST_RESTORE_STEP = "offsets_then_fast_restore"
"""The recovery step that runs the fast restore (Faust's ``_build_offsets``, patched)."""

RESTORE_STALL_S = 60.0
"""A fast restore that receives nothing for this long stops the worker."""


def restore_changelogs(
    settings: Settings, behind: Mapping[Any, Behind], stop: threading.Event
) -> dict[Any, int]:
    """Apply each partition's changelog records ``start..end`` to its store, in offset order, a
    write batch per :data:`RESTORE_BATCH` records carrying the persisted offset of its last
    record. Returns the last offset applied per partition (``end``; less, or left out, when
    ``stop`` was set: nothing more is written after that)."""
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import KafkaError, TopicPartition

    from crmstream.kafka import consumer_config

    consumer = KafkaConsumer(
        consumer_config(
            settings,
            group_id=f"{settings.app_id}-fast-restore",
            **{
                "enable.partition.eof": False,
                "fetch.wait.max.ms": max(1, int(settings.consumer_fetch_max_wait_s * 1000)),
                "max.partition.fetch.bytes": 8 * 2**20,
                "queued.max.messages.kbytes": 256 * 1024,
            },
        )
    )
    by_key = {(tp.topic, tp.partition): tp for tp in behind}
    batches: dict[Any, Any] = {}
    counts: dict[Any, int] = {}
    last: dict[Any, int] = {}
    done: dict[Any, int] = {}

    def write(tp: Any) -> None:
        batch = batches.pop(tp, None)
        if batch is not None and not stop.is_set():
            batch.put(behind[tp].offset_key, str(last[tp]).encode())
            behind[tp].db.write(batch)
            counts[tp] = 0

    try:
        consumer.assign([TopicPartition(t, p, behind[tp].start) for (t, p), tp in by_key.items()])
        heard = time.monotonic()
        while len(done) < len(behind) and not stop.is_set():
            messages = consumer.consume(10_000, 0.5)
            if not messages:
                if time.monotonic() - heard > RESTORE_STALL_S:
                    waiting = [f"{tp.topic}/{tp.partition}" for tp in behind if tp not in done]
                    raise CrmStreamError(
                        f"restoring {', '.join(waiting)}: nothing received for "
                        f"{RESTORE_STALL_S:.0f} s"
                    )
                continue
            heard = time.monotonic()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise CrmStreamError(f"restoring a changelog: {error.str()}")
                tp = by_key[(str(message.topic()), int(message.partition() or 0))]
                offset = int(message.offset() or 0)
                spec = behind[tp]
                if tp in done:
                    continue
                if offset > spec.end:  # the end itself is gone (compacted): done before it
                    write(tp)
                    done[tp] = last.get(tp, spec.start - 1)
                    consumer.pause([TopicPartition(tp.topic, tp.partition)])
                    continue
                stage(batches, tp, message.key() or b"", message.value(), spec.upgrade)
                last[tp] = offset
                counts[tp] = counts.get(tp, 0) + 1
                if offset >= spec.end:
                    write(tp)
                    done[tp] = offset
                    consumer.pause([TopicPartition(tp.topic, tp.partition)])
                elif counts[tp] >= RESTORE_BATCH:
                    write(tp)
        for tp, offset in last.items():  # stopped: what was written (offsets with it)
            if tp not in batches:
                done.setdefault(tp, offset)
    finally:
        consumer.close()
    return done


# --- standby partitions (the module's docstring, 9.) ----------------------------------------


class _Standbys:
    """What the patched table manager keeps about its standby partitions: the standbys of the
    current generation (changelog partition -> table), and their follower."""

    def __init__(self) -> None:
        self.tables: dict[Any, Any] = {}
        self.generation: int | None = None
        self.follower: StandbyFollower | None = None

    async def stop(self) -> None:
        follower, self.follower = self.follower, None
        if follower is not None:
            follower.stop()
            await asyncio.get_running_loop().run_in_executor(None, follower.join)


def _standbys(manager: Any) -> _Standbys:
    state = manager.__dict__.get("_crm_standbys")
    if state is None:
        state = manager.__dict__["_crm_standbys"] = _Standbys()
    return cast(_Standbys, state)


def _follows_standbys(app: Any) -> bool:
    settings = getattr(app, "crm_settings", None)
    return bool(settings is not None and settings.standby_follower)


def follow_standbys(settings: Settings, tables: Mapping[Any, Any]) -> StandbyFollower:
    """Start following the standby changelog partitions ``tables`` (partition -> Faust table),
    each from the offset after the one persisted in its store."""
    partitions: dict[tuple[str, int], Followed] = {}
    for tp, table in tables.items():
        store = table.data
        persisted = store.persisted_offset(tp)  # opens the partition's store on this thread
        partitions[(tp.topic, tp.partition)] = Followed(
            None if persisted is None else int(persisted) + 1,
            store._db_for_partition(tp.partition),
            _record(store),
            store.offset_key,
        )
    follower = StandbyFollower(settings, partitions)
    follower.start()
    log.info(
        "standby follower: %s",
        ", ".join(
            f"{t}/{p}@{'start' if f.start is None else f.start}"
            for (t, p), f in sorted(partitions.items())
        ),
    )
    return follower


def standby_patches() -> dict[tuple[type, str], Any]:
    """The patches of the standby follower (the module's docstring, 9.)."""
    add_standby = Recovery.add_standby
    on_rebalance_start = TableManager.on_rebalance_start
    on_rebalance = TableManager.on_rebalance
    on_actives_ready = TableManager.on_actives_ready
    on_stop = TableManager.on_stop

    def add_standby_to_follow(self: Any, table: Any, tp: Any) -> None:
        if not _follows_standbys(self.app):
            add_standby(self, table, tp)
            return
        _standbys(self.tables).tables[tp] = table

    def stop_following_on_rebalance_start(self: Any) -> None:
        follower = _standbys(self).follower
        if follower is not None:
            follower.stop()  # writes nothing more; waited for in on_rebalance
        on_rebalance_start(self)

    async def stop_following_then_rebalance(
        self: Any, assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
    ) -> None:
        state = _standbys(self)
        state.generation = None
        state.tables = {}
        await state.stop()
        await on_rebalance(self, assigned, revoked, newly_assigned, generation_id)
        state.generation = generation_id

    def follow_once_actives_ready(self: Any) -> None:
        on_actives_ready(self)
        state = _standbys(self)
        if (
            state.follower is None
            and state.tables
            and state.generation == self.app.consumer_generation_id
        ):
            state.follower = follow_standbys(self.app.crm_settings, state.tables)

    async def stop_following_then_stop(self: Any) -> None:
        await _standbys(self).stop()
        # The agents' batches in flight still write dedupe marks, positions and windows to the
        # tables: they finish before the stores close (Faust stops its agents only after its
        # tables, and a write then reopened a closed store, or failed on its lock: exit 70).
        for finish in getattr(self.app, "crm_stopping", ()):
            await finish()
        await on_stop(self)

    return {
        (Recovery, "add_standby"): add_standby_to_follow,
        (TableManager, "on_rebalance_start"): stop_following_on_rebalance_start,
        (TableManager, "on_rebalance"): stop_following_then_rebalance,
        (TableManager, "on_actives_ready"): follow_once_actives_ready,
        (TableManager, "on_stop"): stop_following_then_stop,
    }


# --- table storage ----------------------------------------------------------------------------


class Upgrade(NamedTuple):
    """What a table's records of an earlier layout become: ``record`` maps a record (key, value;
    None: a tombstone) to the current layout, and returns a record already in it unchanged
    (:func:`processors.state.keys.upgrade_mark`); the earlier layout's records are all in
    ``[lower, upper)``, which is all that is scanned when a local store opens."""

    lower: bytes
    upper: bytes
    record: Callable[[bytes, bytes | None], tuple[bytes, bytes | None]]


ROCKSDB_WRITE_BUFFER_BYTES = 8 * 2**20
"""Memtable size per table partition. Faust's 64 MB (x3) kept a million marks unflushed, in the
write-ahead log (uncompressed, a header per write batch) rather than in compressed, prefix-encoded
SST files; 8 MB flushes them while they are still few."""

ROCKSDB_MEMORY_BYTES = 128 * 2**20
"""What all table partitions of a process may hold in memory (``CRM_ROCKSDB_MEMORY_MB``'s
default): half of it one block cache, half the memtables (a write buffer manager), both shared by
every partition, active and standby. Before, each partition had up to two 8 MB memtables of its
own next to a 256 MB cache (Faust: 2 GB of cache and 3 x 64 MB per partition), and the memory grew
with the partitions a worker holds: 4 partitions x 3 tables, twice that with standbys."""

ROCKSDB_INFO_LOG_BYTES = 1 * 2**20
"""Size at which a partition's RocksDB info log (``LOG``) rolls over. RocksDB's default (0) lets
it grow for as long as the store is open (a statistics dump every 10 minutes, ~1.6 KB each here:
~20 MB per partition in 90 days)."""

ROCKSDB_INFO_LOGS_KEPT = 3
"""Info logs a partition keeps (``LOG`` and the newest ``LOG.old.*``). RocksDB's default, 1000,
kept one more for every opening of the store (~40 KB each: every start, every rebalance that
moves the partition here again), per partition and table."""

_memory: tuple[int, Any, Any] | None = None


def rocksdb_memory(budget: int) -> tuple[Any, Any]:
    """The block cache and the write buffer manager every table partition of the process shares
    (made once, of ``budget`` bytes in all)."""
    global _memory
    if _memory is None or _memory[0] != budget:
        _memory = (
            budget,
            rocksdict.Cache(budget // 2),
            # No stall: past the limit, RocksDB flushes the memtable being written to.
            rocksdict.WriteBufferManager(budget // 2, False),
        )
    return _memory[1], _memory[2]


_WAL_COMPRESSION_LINE = ("wal_compression=kNoCompression", "wal_compression=kZSTD")
OPTIONS_TEMPLATE_DIR = "rocksdb-options"
"""Where, in the worker's state directory (``CRM_DATA_DIR``, next to Faust's ``faust/``), the
options template of :func:`_options_with_wal_compression` is written: made again by every
process's first table opening, so nothing of it is ever left elsewhere (it was in the system
temp dir, removed at exit: a kill -9 left it there)."""
_options_templates: dict[str, str] = {}
_options_template_lock = threading.Lock()


def _options_with_wal_compression(template_dir: Path) -> rocksdict.Options:
    """``rocksdict.Options(raw_mode=True)`` with ``wal_compression=kZSTD``. rocksdict (0.3) has
    no setter for it, so RocksDB reads it from an options file: the one RocksDB wrote for a
    throwaway store (in ``template_dir``, emptied and made again once per process) opened with
    ``rocksdict.Options(raw_mode=True)``, that line changed (every other option is then that
    store's, and :func:`rocksdb_options` sets its own on top). The write-ahead log keeps every
    write batch's stats windows, uncompressed without it: most of a busy store's bytes between
    two memtable flushes. Recovery reads it as before (the compression is per log record;
    tests/integration/test_crash.py kills workers mid-write)."""
    key = str(template_dir)
    with _options_template_lock:  # partitions open on the event loop and the follower thread
        store = _options_templates.get(key)
        if store is None or not os.path.isdir(store):
            store = str(template_dir / "store")
            shutil.rmtree(store, ignore_errors=True)  # an earlier run's, maybe half made
            template_dir.mkdir(parents=True, exist_ok=True)
            rocksdict.Rdict(store, options=rocksdict.Options(raw_mode=True)).close()
            written = [f for f in os.listdir(store) if f.startswith("OPTIONS-")]
            path = os.path.join(store, max(written, key=lambda f: int(f.split("-")[1])))
            with open(path, encoding="utf-8") as f:
                text = f.read()
            default, wanted = _WAL_COMPRESSION_LINE
            if text.count(default) != 1:
                raise CrmStreamError(
                    f"RocksDB's options file has no single '{default}' line: this rocksdict's "
                    "RocksDB writes its options differently (processors/faust_engine.py)"
                )
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(default, wanted))
            _options_templates[key] = store
        options, _ = rocksdict.Options.load_latest(store)
    return cast(rocksdict.Options, options)


def rocksdb_options(
    max_open_files: int | None, template_dir: Path, memory: int = ROCKSDB_MEMORY_BYTES
) -> rocksdict.Options:
    """The options every table partition opens with (measured in bench/README.md, "state MB per
    million keys"): ZSTD on every level (the stats windows' JSON takes a third less room than
    with LZ4, the dedupe marks a fifth less) and on the write-ahead log
    (:func:`_options_with_wal_compression`); info logs rolled at
    :data:`ROCKSDB_INFO_LOG_BYTES`, :data:`ROCKSDB_INFO_LOGS_KEPT` of them kept; 16 KB blocks (a
    mark is ~30 bytes: fewer index entries); full 10-bit bloom filters (a lookup of an unseen id,
    the common case, rarely reads a block), whole-key as the keys are looked up whole; small
    write buffers (:data:`ROCKSDB_WRITE_BUFFER_BYTES`); the block cache and the memtables within
    ``memory`` bytes for the whole process (:func:`rocksdb_memory`)."""
    cache, write_buffers = rocksdb_memory(memory)
    options = _options_with_wal_compression(template_dir)
    options.create_if_missing(True)
    if max_open_files is not None:
        options.set_max_open_files(max_open_files)
    options.set_write_buffer_size(ROCKSDB_WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    options.set_write_buffer_manager(write_buffers)
    options.set_target_file_size_base(32 * 2**20)
    options.set_max_bytes_for_level_base(64 * 2**20)
    options.set_level_compaction_dynamic_level_bytes(True)
    options.set_compression_type(rocksdict.DBCompressionType.zstd())
    options.set_bottommost_compression_type(rocksdict.DBCompressionType.zstd())
    options.set_max_log_file_size(ROCKSDB_INFO_LOG_BYTES)
    options.set_keep_log_file_num(ROCKSDB_INFO_LOGS_KEPT)
    table = rocksdict.BlockBasedOptions()
    table.set_block_size(16 * 1024)
    table.set_bloom_filter(10, False)
    table.set_format_version(5)
    table.set_block_cache(cache)
    table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
    options.set_block_based_table_factory(table)
    return options


UPGRADE_BATCH = 10_000
"""Records per write batch when a local store is upgraded on opening."""


def _upgrade_of(store: Any) -> Upgrade | None:
    return cast(Upgrade | None, getattr(store.table, "crm_upgrade", None))


def _record(store: Any) -> Callable[[bytes, bytes | None], tuple[bytes, bytes | None]] | None:
    upgrade = _upgrade_of(store)
    return None if upgrade is None else upgrade.record


def _template_dir(app: Any) -> Path:
    """The options template's directory: in the worker's state directory (an app built without
    the worker's settings: in its own data directory)."""
    settings = getattr(app, "crm_settings", None)
    root = Path(app.conf.datadir) if settings is None else settings.data_path
    return root / OPTIONS_TEMPLATE_DIR


def _memory_budget(app: Any) -> int:
    settings = getattr(app, "crm_settings", None)
    return ROCKSDB_MEMORY_BYTES if settings is None else settings.rocksdb_memory_mb * 2**20


def _open_for_partition(self: Any, partition: int) -> Any:
    """Faust's ``Store._open_for_partition`` with :func:`rocksdb_options`; a table with an
    upgrade rewrites the records of an earlier layout it holds (idempotent: a crash halfway
    leaves each record in one layout or the other, and the next opening goes on)."""
    path = self.partition_path(partition)
    read_only = bool(self.read_only) and os.path.isfile(path)
    access = rocksdict.AccessType.read_only() if read_only else rocksdict.AccessType.read_write()
    db = rocksdict.Rdict(
        str(path),
        options=rocksdb_options(
            self.rocksdb_options.max_open_files, _template_dir(self.app), _memory_budget(self.app)
        ),
        access_type=access,
    )
    db.set_read_options(rocksdict.ReadOptions())
    upgrade = _upgrade_of(self)
    if upgrade is not None and not read_only:
        upgraded = upgrade_store(db, upgrade)
        if upgraded:
            log.info(
                "table %s partition %d: %d records upgraded", self.table_name, partition, upgraded
            )
    return db


def upgrade_store(db: rocksdict.Rdict, upgrade: Upgrade) -> int:
    """Rewrite every record of ``db`` in ``[upgrade.lower, upgrade.upper)`` that
    ``upgrade.record`` changes (the old record deleted, the new one written, in one write batch
    per :data:`UPGRADE_BATCH` records). Returns how many."""
    done = 0
    start = upgrade.lower
    while True:
        batch = rocksdict.WriteBatch(raw_mode=True)
        n = 0
        bound = rocksdict.ReadOptions()
        bound.set_iterate_upper_bound(upgrade.upper)
        items = cast(Iterable[tuple[bytes, bytes]], db.items(from_key=start, read_opt=bound))
        for key, value in items:
            start = key
            new_key, new_value = upgrade.record(key, value)
            if new_key == key and new_value == value:
                continue
            batch.delete(key)
            if new_value is not None:
                batch.put(new_key, new_value)
            n += 1
            if n >= UPGRADE_BATCH:
                break
        if not n:
            return done
        db.write(batch)
        done += n


def _apply_changelog_batch(
    self: Any, batch: Iterable[Any], to_key: Any = None, to_value: Any = None
) -> None:
    """Faust's ``Store.apply_changelog_batch``: a write batch per partition, the highest offset
    per changelog partition persisted after; each record through the table's upgrade, if any."""
    upgrade = _record(self)
    batches: dict[int, rocksdict.WriteBatch] = {}
    offsets: dict[Any, int] = {}
    for event in batch:
        message = event.message
        tp, offset = message.tp, message.offset
        if offset > offsets.get(tp, -1):
            offsets[tp] = offset
        key, value = message.key, message.value
        if upgrade is not None:
            key, value = upgrade(key, value)
        wb = batches.get(message.partition)
        if wb is None:
            wb = batches[message.partition] = rocksdict.WriteBatch(raw_mode=True)
        if value is None:
            wb.delete(key)
        else:
            wb.put(key, value)
    for partition, wb in batches.items():
        self._db_for_partition(partition).write(wb)
    for tp, offset in offsets.items():
        self.set_persisted_offset(tp, offset)


# Faust 0.15.3 builds its worker consumer with ``fetch_max_wait_ms=1500`` and no setting for it.
FAUST_FETCH_MAX_WAIT_S = 1.5


def set_fetch_max_wait(seconds: float) -> None:
    """Make the worker consumer's fetch wait ``seconds`` (``CRM_CONSUMER_FETCH_MAX_WAIT``) at
    most on the broker for new records, instead of Faust's fixed 1.5 s.

    A real Kafka answers a fetch as soon as a record arrives, so this is only a ceiling there.
    Tansu measured like a broker that holds the fetch for the whole wait (one produce -> consume
    hop: p50 221 ms with a 500 ms wait, 79 ms with 50 ms), so the dev profile shortens it.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = getattr(
        AIOKafkaConsumerThread,
        "_crm_original_create",
        AIOKafkaConsumerThread._create_worker_consumer,
    )
    if seconds == FAUST_FETCH_MAX_WAIT_S:
        AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
        return
    wait_ms = max(1, int(seconds * 1000))

    @functools.wraps(create)
    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    AIOKafkaConsumerThread._crm_original_create = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """Faust (aiokafka) broker settings equivalent to :func:`client_config`."""
    kwargs: dict[str, Any] = {
        "broker": ",".join(f"kafka://{hp.strip()}" for hp in settings.bootstrap_servers.split(",")),
        "broker_session_timeout": settings.consumer_session_timeout_s,
        "broker_heartbeat_interval": settings.consumer_heartbeat_interval_s,
        "broker_rebalance_timeout": settings.consumer_rebalance_timeout_s,
        "producer_max_batch_size": settings.changelog_max_batch_bytes,
    }
    context = ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        kwargs["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get(),
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        kwargs["broker_credentials"] = faust.SSLCredentials(context)
    return kwargs


# --- the engine -------------------------------------------------------------------------------


class LeanMonitor(Monitor):
    """Faust's main sensor without its per-record bookkeeping.

    Faust calls its monitor four times per record (message in, stream event in and out, message
    out); the default one updates counters, a dict and a deque each time and reads the clock,
    statistics only Faust's web views and metric exporters read (both off here; the worker's
    own metrics are in :mod:`crmstream.metrics`). Kept: the stream's inbound time per partition,
    which Faust's consumer reads to warn about a stalled stream."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = _monotonic()

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None


def die(exc: BaseException, what: str) -> None:
    """Stop the process without committing the batch in hand.

    Faust acks the events of a batch when the batch's generator is closed, even by an error, and
    then commits them on shutdown. Exiting at once keeps them uncommitted, so the batch is
    processed again after a restart instead of being skipped.
    """
    log.critical("worker stopped: %s: %r", what, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_BUG)


def once(hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``hook`` run at most once: a later call waits for the first one's end. The stop runs an
    agent's ``stopping`` before the tables close, and the agent runs it again as it ends."""
    task: asyncio.Future[None] | None = None

    async def run() -> None:
        nonlocal task
        if task is None:
            task = asyncio.ensure_future(hook())
        await asyncio.shield(task)

    return run


class FaustTableStore:
    """:class:`processors.engine.TableStore` of a Faust RocksDB table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def db(self, partition: int) -> rocksdict.Rdict:
        return rocksdb_partition(self.table, partition)

    def open_partitions(self) -> Mapping[int, rocksdict.Rdict]:
        return rocksdb_partitions(self.table)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.table.data.set_persisted_offset(FaustTP(self.changelog_topic, partition), offset)


class Startable(Protocol):
    """A service the worker runs next to its agents (the query API)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Worker(faust.Worker):
    """faust.Worker with a deadline on stopping (issue 22 item 1): the watchdog of
    ``crmstream.stopping`` chained after the signal handlers Faust installs (they still run the
    clean stop)."""

    crm_settings: Settings

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        watch_stop_signals(self.crm_settings)


class _Service(Service):
    """A :class:`Startable` as a mode service, started and stopped with the Faust worker."""

    def __init__(self, service: Startable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    async def on_start(self) -> None:
        await self.service.start()

    async def on_stop(self) -> None:
        await self.service.stop()


class FaustEngine:
    """:class:`processors.engine.Engine` over one Faust app, which this builds: raw bytes in and
    out, Faust's table storage in RocksDB, Faust's web server off."""

    def __init__(self, settings: Settings) -> None:
        apply()
        set_fetch_max_wait(settings.consumer_fetch_max_wait_s)
        self.settings = settings
        self.app = app = faust.App(
            # Under the topic prefix, so that Faust's own topics (table changelogs, the assignor's
            # leader topic) are named <prefix><app id>-... like everything else.
            settings.topic(settings.app_id),
            store="rocksdb://",
            datadir=str(settings.data_path / "faust"),
            topic_partitions=settings.partitions,
            topic_replication_factor=max(1, settings.replication_factor),
            web_enabled=False,
            Monitor=LeanMonitor,
            key_serializer="raw",
            value_serializer="raw",
            table_cleanup_interval=60.0,
            table_standby_replicas=settings.table_standby_replicas,
            # The query API's URL, advertised to the group by Faust's assignor: how the other
            # workers find the owner of a campaign's stats (FaustRouting).
            canonical_url=settings.advertised_api_url,
            **faust_broker_kwargs(settings),
        )
        app.crm_settings = settings  # type: ignore[attr-defined]  # read by the patches
        # The stream topics' readers (CRM_STREAM_READER=librdkafka), read by the patches too.
        self.readers = Readers() if settings.stream_reader == "librdkafka" else None
        app.crm_readers = self.readers  # type: ignore[attr-defined]
        # The agents' ``stopping`` hooks, run before the tables close (standby_patches).
        self.stopping: list[Callable[[], Awaitable[None]]] = []
        app.crm_stopping = self.stopping  # type: ignore[attr-defined]

    # -- building ------------------------------------------------------------------------

    def table(self, name: str, *, upgrade: Upgrade | None = None) -> FaustTableStore:
        """A Faust table of raw bytes, partitioned like the stream that writes it. ``upgrade``:
        what a record of an earlier layout becomes (see the module's docstring, 5.)."""
        table = self.app.Table(
            name,
            partitions=self.settings.partitions,
            key_type=bytes,
            value_type=bytes,
            schema=faust.Schema(key_serializer="raw", value_serializer="raw"),
        )
        table.crm_upgrade = upgrade  # type: ignore[attr-defined]
        return FaustTableStore(table)

    def agent(
        self,
        topics: Sequence[str],
        name: str,
        handler: BatchHandler,
        *,
        size: int,
        within: float,
        what: str,
        stopping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run ``handler`` on every batch of up to ``size`` records of ``topics`` (waiting
        ``within`` at most to fill one). An error stops the worker before Faust can ack the
        batch (:func:`die`). ``stopping`` runs when the agent stops."""
        topic = self.app.topic(
            *topics,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.partitions,
        )
        if stopping is not None:
            stopping = once(stopping)
            self.stopping.append(stopping)
        if self.readers is not None:
            self._reading_agent(
                self.readers, topic, topics, name, handler, size, within, what, stopping
            )
            return

        async def run(stream: Any) -> None:
            try:
                async for batch in stream.take_events(size, within=within):
                    try:
                        await handler(batch)
                    except Exception as exc:
                        die(exc, what)
            finally:
                if stopping is not None:
                    await stopping()

        self.app.agent(topic, name=name)(run)

    def _reading_agent(
        self,
        readers: Readers,
        topic: Any,
        topics: Sequence[str],
        name: str,
        handler: BatchHandler,
        size: int,
        within: float,
        what: str,
        stopping: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """The agent fed by a :class:`~processors.reader.Reader`: a Faust agent (supervised,
        started and stopped with the others) whose body takes the reader's batches, not its
        stream's events. The topic is still given to Faust's conductor, so that the consumer
        subscribes to it and the assignor assigns its partitions; the patches keep Faust's
        consumer from fetching them."""
        reader = Reader(self.settings, topics, name, size=size, within=within, readers=readers)
        readers.add(reader)
        self.app.topics.add(topic.clone(is_iterator=True))

        async def run(stream: Any) -> None:
            reader.start()
            try:
                while True:
                    batch = await reader.get()
                    if not batch:
                        continue
                    n = len(batch)
                    readers.take(n)
                    try:
                        await handler(batch)
                    except Exception as exc:
                        die(exc, what)
                    finally:
                        readers.done(n)
            except ReaderError as exc:
                die(exc, what)
            finally:
                try:
                    if stopping is not None:
                        await stopping()
                finally:
                    await reader.stop()

        run.__name__ = run.__qualname__ = name
        self.app.agent(topic, name=name)(run)

    def timer(self, interval: float, name: str, tick: Callable[[], Awaitable[None]]) -> None:
        """Run ``tick`` every ``interval`` seconds. A seek it cannot do stops the worker (exit
        70), as in an agent: the partition would otherwise be read from the wrong place."""

        async def run() -> None:
            try:
                await tick()
            except SeekError as exc:
                die(exc, f"timer {name}")

        run.__name__ = run.__qualname__ = name
        self.app.timer(interval=interval, name=name)(run)

    def routing(
        self, changelog_topic: str, stats_updates_topic: str, partitions: Callable[[], int]
    ) -> FaustRouting:
        return FaustRouting(self, changelog_topic, stats_updates_topic, partitions)

    def run(self, services: Sequence[Startable]) -> None:
        """Run the Faust worker (and ``services`` with it) until signalled."""
        worker = _Worker(
            self.app,
            *(_Service(s, loop=self.app.loop) for s in services),
            loglevel=self.settings.log_level.lower(),
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,
        )
        worker.crm_settings = self.settings
        worker.execute_from_commandline()

    # -- Engine --------------------------------------------------------------------------

    def assignment(self) -> set[TP]:
        readers = self.readers
        if readers is not None:
            # As the event loop handled the rebalances (the group client's own can already be
            # the next one's: a seek checked against it failed while placing the partitions).
            return set(readers.assigned)
        consumer = self.app.consumer
        return {tp for tp in consumer.assignment() if not is_changelog_tp(consumer, tp)}

    def settled(self) -> tuple[bool, str]:
        app = self.app
        if not recovered(app):
            return False, "joining the group / restoring tables"
        if app.rebalancing or app.in_recovery:
            return False, "rebalancing"
        readers = self.readers
        if readers is not None and not readers.in_step(self._group_assignment()):
            # Between a revoke and the next assignment the readers hold none of the partitions
            # the group client still lists, and a recovery finishing late can clear Faust's
            # rebalancing flag meanwhile: the query API answered a whole campaign list empty.
            return False, "rebalancing"
        return True, "in the group"

    def _group_assignment(self) -> set[TP]:
        consumer = self.app.consumer
        try:
            assigned = consumer.assignment()
        except (AssertionError, IllegalStateError, ConsumerNotStarted, RuntimeError):
            # Not started, or read while the consumer thread changed it (/readyz reads it from
            # the metrics thread): not in step for now.
            return set()
        return {tp for tp in assigned if not is_changelog_tp(consumer, tp)}

    def rebalancing(self) -> bool:
        return bool(self.app.rebalancing)

    def committed(self, tp: TP) -> int | None:
        return committed_offset(self.app.consumer, tp)

    async def seek(self, offsets: Mapping[TP, int]) -> None:
        """Through Faust's ``seek_wait``, which seeks on the consumer's own thread: ``seek`` does
        it from the event loop's thread while the consumer thread reads the fetcher's records,
        and aiokafka then failed with a ``KeyError`` on a partition it was serving."""
        readers = self.readers
        if readers is not None and all(readers.handles(tp) for tp in offsets):
            assigned = readers.assigned
            missing = [tp for tp in offsets if tp not in assigned]
            if missing:
                raise SeekError(
                    f"seeking {_names(offsets)}: not assigned: {_names({tp: 0 for tp in missing})}"
                )
            readers.seek(offsets)
            return
        try:
            await self.app.consumer.seek_wait(cast(Any, dict(offsets)))
        except (IllegalStateError, AssertionError, ConsumerNotStarted) as exc:
            # aiokafka: a partition not assigned (any more); Faust: no consumer yet.
            raise SeekError(f"seeking {_names(offsets)}: {exc!r}") from exc

    def highwater(self, tp: TP) -> int | None:
        readers = self.readers
        if readers is not None and readers.handles(tp):
            return readers.highwater(tp)
        try:
            highwater = self.app.consumer.highwater(cast(Any, tp))
        except (AssertionError, IllegalStateError, ConsumerNotStarted):
            # aiokafka asserts the partition is assigned; Faust has no consumer before start.
            return None
        return None if highwater is None else int(highwater)

    def hold(self, events: Iterable[Event]) -> None:
        readers = self.readers
        if readers is not None:
            readers.take(len(_sequence(events)))
            return
        for event in events:
            event.message.incref()  # type: ignore[attr-defined]

    def release(self, events: Iterable[Event]) -> None:
        readers = self.readers
        if readers is not None:
            events = _sequence(events)
            # Faust commits the partitions it holds acknowledgements for: these.
            acked = cast(Any, self.app.consumer)._acked
            for tp in {event.message.tp for event in events}:
                acked[FaustTP(tp.topic, tp.partition)]
            readers.done(len(events))
            return
        on_message_out = self.app.sensors.on_message_out
        for event in events:
            if event.ack():  # type: ignore[attr-defined]
                message: Any = event.message
                on_message_out(message.tp, message.offset, message)

    def fatal(self, exc: BaseException, what: str) -> None:
        die(exc, what)

    def set_positions(self, positions: Positions) -> None:
        self.app.crm_positions = _Hook(positions)  # type: ignore[attr-defined]


class _Hook:
    """What the patched consumer calls (``app.crm_positions``): the worker's
    :class:`~processors.engine.Positions`, where a seek that fails while placing the partitions
    stops the worker (exit 70) instead of leaving Faust's recovery in an unknown state."""

    def __init__(self, positions: Positions) -> None:
        self.positions = positions

    async def on_positioned(self, *, after_rebalance: bool) -> None:
        try:
            await self.positions.on_positioned(after_rebalance=after_rebalance)
        except SeekError as exc:
            die(exc, "placing the partitions")

    def committable(self, tp: Any) -> int | None:
        return self.positions.committable(tp)


def _sequence(events: Iterable[Event]) -> Sequence[Event]:
    return events if isinstance(events, Sequence) else list(events)


def _names(offsets: Mapping[Any, int]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in offsets.items())


class FaustRouting:
    """:class:`processors.stats_api.Routing` from a Faust app's assignor and consumer.

    Every worker advertises its API URL (``CRM_API_URL``) as Faust's ``canonical_url``. Faust's
    partition assignor sends it with each member's metadata, and after every rebalance each
    worker knows, per table changelog partition, the URL of the worker it is assigned to as
    active (``assignor.table_metadata``). The stats tables are partitioned like
    ``stats-updates``, so the owner of a campaign's stats partition is the worker whose URL lists
    that partition of a stats table's changelog topic.
    """

    def __init__(
        self,
        engine: FaustEngine,
        changelog_topic: str,
        stats_updates_topic: str,
        partitions: Callable[[], int],
    ) -> None:
        self.engine = engine
        self._self_url = engine.settings.advertised_api_url
        self.changelog_topic = changelog_topic
        self.stats_updates_topic = stats_updates_topic
        self.partitions = partitions  # the stats-updates topic's, as the raw side sends to it

    @property
    def self_url(self) -> str:
        return self._self_url

    def partition_of(self, key: str) -> int:
        return stats_partition(key.encode(), self.partitions())

    def _distribution(self) -> dict[str, list[int]]:
        metadata = self.engine.app.assignor.table_metadata(self.changelog_topic)
        return {
            str(url).rstrip("/"): list(topics.get(self.changelog_topic, ()))
            for url, topics in metadata.items()
        }

    def owner(self, partition: int) -> str | None:
        for url, partitions in self._distribution().items():
            if partition in partitions:
                return url
        return None

    def peers(self) -> list[str]:
        urls = set(self._distribution())
        urls.add(self.self_url)
        return sorted(urls)

    def local(self) -> set[int] | None:
        if not self.engine.settled()[0]:
            return None
        return {
            tp.partition for tp in self.engine.assignment() if tp.topic == self.stats_updates_topic
        }
