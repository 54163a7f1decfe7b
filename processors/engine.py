"""The engine boundary: what the worker needs from a stream engine, and nothing more.

Faust supplies group assignment, table restore and agent scheduling; the worker replaces its
commits, fetch positions and table I/O, and can read the stream topics with librdkafka
(``CRM_STREAM_READER=librdkafka``, the default: :mod:`processors.reader`, one consumer per agent
handing it whole batches; Faust's consumer subscribes to them for the assignor but never fetches
them). So the worker's parts (placement,
the raw path, the stats path, state) depend on this small protocol, never on Faust:
:mod:`processors.faust_engine` implements it once over Faust, and the unit tests implement it
with a fake (``tests/unit/processors/fake_engine.py``). An import-linter contract keeps
``faust``, ``mode`` and ``aiokafka`` out of every other worker module.

What the protocol holds:

* **assignment** of stream partitions (table changelogs excluded), and whether the group is
  settled (joined, tables restored, not rebalancing): the readiness of the worker and of its
  query API;
* **positions**: the group's committed offset as the last seek found it, ``seek`` (fetch
  positions move, and nothing fetched before the seek is handed over after it; raises
  :class:`SeekError` when they cannot), the high watermark of the latest fetch;
* **records**: ``hold`` keeps a record in hand (a rebalance waits for it, after it has stopped
  the partitions' fetching) until ``release`` acknowledges it; a batch is in hand while its
  handler runs, too;
* **the on-assigned hook** (:class:`Positions`): after every seek the engine asks the worker to
  place its partitions, and it commits only what the worker calls committable;
* **table stores** (:class:`TableStore`): the local RocksDB partitions of a table, restored by
  the engine from the changelog the worker writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import rocksdict

from processors.positions import TP


class Message(Protocol):
    """One consumed record."""

    @property
    def tp(self) -> Any: ...

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch (the Kafka record timestamp)."""
        ...

    @property
    def headers(self) -> Any: ...


class Event(Protocol):
    """A record as an agent receives it (held or released through the engine)."""

    @property
    def message(self) -> Message: ...


Batch = Sequence[Event]
BatchHandler = Callable[[Batch], Awaitable[None]]


class SeekError(Exception):
    """The engine could not move the fetch positions (for example: a partition is no longer
    assigned). The worker decides whether that is fatal; it is never silently dropped."""


class TableStore(Protocol):
    """The local storage of one table: a RocksDB database per partition."""

    @property
    def changelog_topic(self) -> str: ...

    def db(self, partition: int) -> rocksdict.Rdict:
        """The partition's database (opened if needed)."""
        ...

    def open_partitions(self) -> Mapping[int, rocksdict.Rdict]:
        """The partitions open here (active or standby)."""
        ...

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        """The newest changelog offset the local partition holds (a restart restores only what
        came after it)."""
        ...


class Positions(Protocol):
    """The worker's side of the on-assigned hook (implemented by
    :class:`processors.positioning.Positioning`)."""

    async def on_positioned(self, *, after_rebalance: bool) -> None:
        """The consumer was sought to its committed offsets: place the stream partitions."""
        ...

    def committable(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``, or None to leave it."""
        ...


class Engine(Protocol):
    """What the worker's parts ask of the stream engine."""

    def assignment(self) -> set[TP]:
        """The stream partitions (not table changelogs) assigned to this worker."""
        ...

    def settled(self) -> tuple[bool, str]:
        """Whether the worker is in the group with its tables restored and no rebalance under
        way, and why not."""
        ...

    def rebalancing(self) -> bool: ...

    def committed(self, tp: TP) -> int | None:
        """The group's committed offset of ``tp`` as the last seek found it (None: none, or 0)."""
        ...

    async def seek(self, offsets: Mapping[TP, int]) -> None:
        """Move fetch positions; raises :class:`SeekError` when they cannot be moved."""
        ...

    def highwater(self, tp: TP) -> int | None:
        """The partition's high watermark as of the latest fetch; None when the engine has none
        (not fetched yet, or not assigned)."""
        ...

    def hold(self, events: Iterable[Event]) -> None:
        """Keep the records referenced (a rebalance waits for them) until :meth:`release`."""
        ...

    def release(self, events: Iterable[Event]) -> None:
        """Acknowledge held records."""
        ...

    def fatal(self, exc: BaseException, what: str) -> None:
        """Stop the worker at once (exit 70), committing nothing of what is in hand: a restart
        processes it again."""
        ...

    def set_positions(self, positions: Positions) -> None:
        """Install the on-assigned hook and the committable offsets."""
        ...
