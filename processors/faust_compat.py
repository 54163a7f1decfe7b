"""Everything crm-stream does to Faust 0.15.3's internals, in one module: the patches below, the
private state it reads (``is_changelog_tp``, ``rocksdb_partition(s)``, ``committed_offset``) and
the check that the installed versions are the ones this was written for (``check_versions``).

1. **Seek, then resume.** After a rebalance, Faust restores the tables and then, in
   ``Recovery._resume_streams`` and ``Recovery.on_recovery_completed``, resumes the stream
   partitions *before* ``await consumer.perform_seek()``. While the seek runs, the fetcher hands
   prefetched records to the agents; the seek then moves the partitions back and the same
   records come again (seen on Tansu: 320 raw records read for 160 published; the family of
   faust-streaming #216 and #221, fixed upstream for other paths in #216/#217). A stream
   partition's resume is held here until the seek is done (changelog partitions are not held).

2. **Positions.** After every seek, the pipeline (:class:`Positioned`) places each stream
   partition itself: raw partitions at the position saved with their dedupe marks, stats
   partitions at their committed offset; and learns what an earlier run already wrote
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
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import faust
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer

from crmstream.errors import CrmStreamError
from crmstream.kafka import ssl_context
from crmstream.settings import Settings

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


class Positioned(Protocol):
    """What the patched consumer asks of the pipeline (``app.crm_positions``)."""

    async def on_positioned(self, consumer: Any, *, after_rebalance: bool) -> None:
        """The consumer was sought to its committed offsets: place the stream partitions."""
        ...

    def committable(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``, or None to leave it."""
        ...


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
            "the worker patches Faust's consumer (processors/faust_compat.py) and runs only on "
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
    """Whether the tables finished their first restore (Faust's ``Recovery.completed``)."""
    return bool(app.tables.recovery.completed.is_set())


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The group's committed offset of ``tp`` as the last seek found it (None when there is
    none, or it is 0: nothing processed)."""
    offset = consumer._committed_offset.get(tp)
    return int(offset) if offset else None


def _positioned(consumer: Any) -> Positioned | None:
    return getattr(consumer.app, "crm_positions", None)


def apply() -> None:
    """Install the patches once per process, after checking the versions they were written
    for."""
    if getattr(Consumer, _APPLIED, False):
        return
    check_versions()
    resume_partitions = Consumer.resume_partitions
    perform_seek = Consumer.perform_seek
    new_offset = Consumer._new_offset

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
        in_recovery = getattr(self, "_crm_held_resumes", None) is not None
        await perform_seek(self)
        positioned = _positioned(self)
        if positioned is not None:
            await positioned.on_positioned(self, after_rebalance=in_recovery)
        held = getattr(self, "_crm_held_resumes", None)
        if held:
            self._crm_held_resumes = set()
            resume_partitions(self, held)

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

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    fetch_records = AIOKafkaConsumerThread._fetch_records

    async def fetch_active_only(
        self: Any, consumer: Any, active_partitions: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if active_partitions is not None:
            active_partitions = frozenset(active_partitions)
            if not active_partitions:
                return {}
        return await fetch_records(self, consumer, active_partitions, *args, **kwargs)

    patches: dict[tuple[type, str], Any] = {
        (AIOKafkaConsumerThread, "_fetch_records"): fetch_active_only,
        (Consumer, "resume_partitions"): held_resume_partitions,
        (Consumer, "perform_seek"): seek_then_resume,
        (Consumer, "_new_offset"): position_offset,
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
