"""The source runner: one loop that owns publish -> flush -> checkpoint for a pulling source.

A source is what Bytewax calls a source partition: :meth:`Source.next_batch` hands out records
with the positions they come from, :meth:`Source.snapshot` says where to resume once everything
handed out so far is in Kafka. The runner owns the rest, once for every connector:

* **publish -> flush -> checkpoint.** A snapshot is taken, and written to ``connect-offsets``,
  only after :meth:`RawPublisher.flush` returned, i.e. after Kafka acknowledged every record
  the snapshot covers. A flush that fails rewinds the source to its last checkpoint
  (:meth:`Source.rewind`), so the records are read and published again (at least once; the
  worker's dedupe absorbs the copies).
* **errors** by :mod:`.errors`: fatal stops the run, retriable backs off (:mod:`.backoff`),
  skippable becomes one dead letter with its reason and source position, written before the
  checkpoint that moves past it.
* **health**: ``/livez`` (the producer usable, the Kafka watch running) and ``/readyz`` (Kafka
  answers), through :class:`KafkaWatch`; the checkpoint-age gauge.
* **stop**: :meth:`stop` (SIGINT/SIGTERM via :mod:`.stop`) ends the run after the current
  batch; its flush is bounded, so only what Kafka acknowledged is checkpointed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.runtime.backoff import Backoff
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.deadletter import DeadLetters, Skipped
from connectors.runtime.errors import RetriableSourceError
from connectors.runtime.health import KafkaWatch, connector_health
from connectors.runtime.kafka import RawPublisher
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.metrics import Health

log = logging.getLogger(__name__)

KAFKA_BACKOFF = (0.4, 30.0)  # first and longest wait after Kafka did not acknowledge


@dataclass(frozen=True)
class SourceRecord:
    """One vendor record, unchanged: its raw-topic key, its bytes, where it was read (the
    ``source`` header) and its format (the ``format`` header)."""

    key: str | bytes | None
    value: bytes
    source: str
    fmt: str


@dataclass
class Batch:
    """What one :meth:`Source.next_batch` read: records to publish, pieces to dead-letter, and
    whether the source wants a checkpoint now (else the runner decides by count)."""

    records: Sequence[SourceRecord] = ()
    skipped: Sequence[Skipped] = ()
    checkpoint: bool = True


class Source(Protocol):
    """A pulling source (Kinesis shards, object-store files, the Airship stream)."""

    connector: str

    def open(self, checkpoints: dict[str, dict[str, Any]]) -> None:
        """Resume from the positions in ``connect-offsets`` (empty on a first start)."""

    def next_batch(self) -> Batch:
        """Read what is there now; an empty batch when nothing is. Raises a
        :class:`RetriableSourceError` or a :class:`FatalSourceError`."""
        ...

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The positions that moved since the last snapshot, covering every record handed
        out: called only once Kafka acknowledged them. ``{position key: checkpoint value}``."""
        ...

    def rewind(self) -> None:
        """Kafka did not acknowledge what was handed out since the last snapshot: read it
        again from there."""

    def caught_up(self) -> bool:
        """Everything there is has been read and checkpointed (``--once`` ends here)."""
        ...

    def pause(self, published: int) -> float:
        """How long to wait before the next batch, after one that read ``published`` records
        (a vendor's rate limit; its poll interval when nothing came)."""
        ...


@dataclass
class RunStats:
    """What one run did; the CLI logs it, the tests assert on it."""

    batches: int = 0
    records: int = 0  # acknowledged by Kafka
    checkpoints: int = 0
    dead_letters: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Runner:
    """Runs one :class:`Source` until :meth:`stop` (or, with ``once``, until it is caught up)."""

    def __init__(
        self,
        source: Source,
        publisher: RawPublisher,
        checkpoints: CheckpointStore,
        *,
        dead_letters: DeadLetters | None = None,
        checkpoint_every: int = 0,
        max_retries: int | None = None,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.checkpoint_every = checkpoint_every
        self.max_retries = max_retries
        """Retriable source errors in a row after which the run gives up and raises the last
        (a bounded run, ``--once``); None retries for ever."""
        self.stats = RunStats()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._kafka_backoff = Backoff(*KAFKA_BACKOFF, rng=rng or random.Random())
        self._source_backoff = Backoff(0.5, 60.0, rng=rng or random.Random())
        self._unflushed = 0
        self._last_checkpoint = time.monotonic()
        self._connector = source.connector
        self._m_records = metrics.CONNECTOR_RECORDS.labels(self._connector)
        self._m_age = metrics.CONNECTOR_CHECKPOINT_AGE.labels(self._connector)

    # --- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def health(self, **live: Any) -> tuple[KafkaWatch, Health]:
        """The Kafka watch (started) and the health it reports, for ``metrics.serve``."""
        watch = KafkaWatch(lambda: self.publisher).start()
        return watch, connector_health(watch, **live)

    def run(
        self, *, once: bool = False, positions: dict[str, dict[str, Any]] | None = None
    ) -> RunStats:
        """Run the source from ``positions`` (default: its checkpoints, read now)."""
        self.source.open(self.checkpoints.load() if positions is None else positions)
        while not self._stop.is_set():
            try:
                batch = self.source.next_batch()
            except RetriableSourceError as exc:
                self._error(exc.kind)
                delay = self._source_backoff.failed()
                if (
                    self.max_retries is not None
                    and self._source_backoff.failures >= self.max_retries
                ):
                    raise
                log.warning(
                    "%s; retrying in %.1fs", exc, delay, extra={"connector": self._connector}
                )
                self._sleep(delay)
                continue
            self._source_backoff.succeeded()
            self.stats.batches += 1
            published = self._publish(batch)
            due = batch.checkpoint or (
                self.checkpoint_every and self._unflushed >= self.checkpoint_every
            )
            if (due or batch.skipped or self._stop.is_set()) and not self._settle(batch.skipped):
                continue
            self._gauge()
            if once and self.source.caught_up():
                break
            wait = self.source.pause(published)
            if wait > 0 and not self._stop.is_set():
                self._sleep(wait)
        if self._unflushed:
            self._settle(())
        return self.stats

    # --- publish -> flush -> checkpoint -------------------------------------------------------
    def _publish(self, batch: Batch) -> int:
        for record in batch.records:
            self.publisher.publish(record.key, record.value, source=record.source, fmt=record.fmt)
        count = len(batch.records)
        self._unflushed += count
        return count

    def _settle(self, skipped: Sequence[Skipped]) -> bool:
        """Flush, dead-letter, checkpoint, in that order. False when Kafka did not acknowledge:
        the source is rewound and nothing is checkpointed."""
        try:
            self.publisher.flush()
            for item in skipped:
                self._dead_letter(item)
        except BrokerError as exc:
            self._error("kafka")
            delay = self._kafka_backoff.failed()
            log.error(
                "Kafka did not acknowledge: %s; reading again from the checkpoints in %.1fs",
                exc,
                delay,
                extra={"connector": self._connector},
            )
            self.publisher.renew_if_broken()
            self._unflushed = 0
            self.source.rewind()
            self._sleep(delay)
            return False
        self._kafka_backoff.succeeded()
        self.stats.records += self._unflushed  # acknowledged by Kafka
        self._m_records.inc(self._unflushed)
        self._unflushed = 0
        positions = self.source.snapshot()
        if positions:
            try:
                self.checkpoints.commit_many(positions)
            except BrokerError as exc:
                # The records are in Kafka; only the position is not: a restart reads them again.
                self._error("checkpoint")
                log.error("checkpoint failed: %s", exc, extra={"connector": self._connector})
            else:
                self.stats.checkpoints += len(positions)
                self._last_checkpoint = time.monotonic()
        return True

    def _dead_letter(self, item: Skipped) -> None:
        if self.dead_letters is None:
            raise TypeError(f"{self._connector} skipped part of its source: no dead letters")
        self.dead_letters.write(item, source_topic=self.publisher.topic)
        self.stats.dead_letters += 1
        self._error(item.kind)

    # --- accounting ---------------------------------------------------------------------------
    def _error(self, kind: str) -> None:
        metrics.CONNECTOR_ERRORS.labels(self._connector, kind).inc()
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1

    def _gauge(self) -> None:
        behind = not self.source.caught_up()
        age = time.monotonic() - self._last_checkpoint if behind else 0.0
        self._m_age.set(age)
