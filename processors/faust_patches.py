"""A fix for a race in Faust's recovery (faust-streaming 0.15.3): seek, then resume.

After a rebalance, Faust restores the tables and then, in ``Recovery._resume_streams`` and
``Recovery.on_recovery_completed``, does two things in this order:

1. ``consumer.resume_partitions(stream partitions)``;
2. ``await consumer.perform_seek()``: one OffsetFetch per partition, one after another.

While 2 runs, the fetcher already hands the stream's prefetched records to the agents. Those
records start at the committed offsets, so the agents process them. When the seek finishes it
moves every partition back to its committed offset, and resets Faust's read and committed offset
bookkeeping. The same records are then fetched and processed a second time.

With the worker's debug log on Tansu, a restart showed every replayed raw record counted twice:
320 read for 160 published per vendor. The same window also left Faust's read offsets and gaps
inconsistent with what had been acked. That is the likeliest cause of the partial-read stalls seen
after a restart.

The fix keeps Faust's code and changes only the order. While either method runs, a stream
partition's resume is held back until ``perform_seek`` has finished (changelog partitions are not
held). No stream record is handed
out before its partition has been positioned. A stream partition with no committed offset is
positioned at its start (see :func:`_rewind_uncommitted`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer

_APPLIED = "_crmstream_seek_before_resume"


def _hold_resumes(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(self: Recovery, *args: Any, **kwargs: Any) -> Any:
        consumer: Any = self.app.consumer
        consumer._crm_held_resumes = set()
        try:
            return await method(self, *args, **kwargs)
        finally:
            held = consumer._crm_held_resumes
            consumer._crm_held_resumes = None
            if held:
                # No seek ran (or it failed): resume as Faust would have.
                Consumer.resume_partitions(consumer, held)

    return wrapper


async def _rewind_uncommitted(consumer: Any) -> None:
    """Seek stream partitions that have no committed offset back to the start.

    Faust's seek moves a partition only to its committed offset. A partition with none keeps the
    fetch position it had, and records prefetched during recovery may already be past it without
    ever reaching an agent (most likely skipped while flow control was off). A worker killed
    before its first commit and then restarted read its raw partitions up to the end that way
    and processed nothing; seen on Tansu under CPU load. With
    ``consumer_auto_offset_reset=earliest`` (Faust's default), a partition with no committed
    offset starts at the beginning, so seeking there is what a fresh start does anyway. Records
    that were already processed are read again (at-least-once) and dropped as duplicates.
    """
    if consumer.app.conf.consumer_auto_offset_reset != "earliest":
        return
    for tp in consumer.assignment():
        if not consumer._is_changelog_tp(tp) and consumer._read_offset.get(tp) is None:
            await consumer.seek(tp, 0)


def apply() -> None:
    """Install the fix once per process."""
    if getattr(Consumer, _APPLIED, False):
        return
    resume_partitions = Consumer.resume_partitions
    perform_seek = Consumer.perform_seek

    def held_resume_partitions(self: Any, tps: Iterable[Any]) -> None:
        held = getattr(self, "_crm_held_resumes", None)
        if held is None:
            resume_partitions(self, tps)
            return
        # Only stream partitions wait for the seek; table changelogs resume as usual.
        tps = list(tps)
        held.update(tp for tp in tps if not self._is_changelog_tp(tp))
        changelogs = [tp for tp in tps if self._is_changelog_tp(tp)]
        if changelogs:
            resume_partitions(self, changelogs)

    async def seek_then_resume(self: Any) -> None:
        await perform_seek(self)
        await _rewind_uncommitted(self)
        held = getattr(self, "_crm_held_resumes", None)
        if held:
            self._crm_held_resumes = set()
            resume_partitions(self, held)

    patches: dict[tuple[type, str], Any] = {
        (Consumer, "resume_partitions"): held_resume_partitions,
        (Consumer, "perform_seek"): seek_then_resume,
        (Recovery, "_resume_streams"): _hold_resumes(Recovery._resume_streams),
        (Recovery, "on_recovery_completed"): _hold_resumes(Recovery.on_recovery_completed),
    }
    for (cls, name), replacement in patches.items():
        setattr(cls, name, replacement)
    setattr(Consumer, _APPLIED, True)


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
