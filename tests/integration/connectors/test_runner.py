"""The source runner, once for every connector: a fake source against the real broker.

What it must hold whatever the source: a position is checkpointed only after Kafka acknowledged
every record it covers; a failed flush rewinds the source (the records are published again, the
checkpoint does not move); a skipped piece is dead-lettered before the checkpoint past it;
retriable source errors back off and go on, fatal ones stop the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.deadletter import DeadLetters, Skipped
from connectors.runtime.errors import FatalSourceError, RetriableSourceError
from connectors.runtime.kafka import RawPublisher
from connectors.runtime.runner import Batch, Runner, SourceRecord
from crmstream.errors import BrokerError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import create_topics
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

CONNECTOR = "fake"
VENDOR = "segment"  # any vendor: the runner publishes to its raw topic


class FakeSource:
    """``total`` records in batches of ``size``; its position is the next record's index."""

    connector = CONNECTOR

    def __init__(self, total: int, size: int, *, script: list[Any] | None = None) -> None:
        self.total = total
        self.size = size
        self.script = list(script or [])  # per next_batch: an exception to raise or None
        self.committed = 0
        self.read = 0
        self.opened: dict[str, Any] | None = None
        self.rewinds = 0
        self.skip_at: int | None = None

    def open(self, checkpoints: dict[str, dict[str, Any]]) -> None:
        self.opened = checkpoints
        self.committed = self.read = int(checkpoints.get("pos", {}).get("next", 0))

    def next_batch(self) -> Batch:
        if self.script:
            step = self.script.pop(0)
            if step is not None:
                raise step
        end = min(self.total, self.read + self.size)
        records = [
            SourceRecord(f"id-{i}", f"value-{i}".encode(), source=f"fake#{i}", fmt="json")
            for i in range(self.read, end)
        ]
        skipped: list[Skipped] = []
        if self.skip_at is not None and self.read <= self.skip_at < end:
            skipped.append(
                Skipped(
                    kind="corrupt",
                    reason="unreadable_object:corrupt",
                    detail="injected",
                    source_position=f"fake#{self.skip_at}",
                    raw_key=b"fake-object",
                )
            )
        self.read = end
        return Batch(records=records, skipped=skipped)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        if self.read == self.committed:
            return {}
        self.committed = self.read
        return {"pos": {"next": self.read}}

    def rewind(self) -> None:
        self.rewinds += 1
        self.read = self.committed

    def caught_up(self) -> bool:
        return self.committed >= self.total

    def pause(self, published: int) -> float:
        return 0.0


class FlushFails(RawPublisher):
    """A real publisher whose first ``failures`` flushes report acknowledgements lost."""

    failures = 1

    def flush(self, timeout: float = 60.0) -> None:
        super().flush(timeout)
        if self.failures:
            self.failures -= 1
            raise BrokerError("injected: acknowledgement lost")


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    settings = settings_factory()
    create_topics(settings)
    return settings


def _keys(settings: Settings, at_least: int) -> list[str]:
    records = read_topic(
        settings,
        settings.topic(f"raw.{VENDOR}"),
        until=lambda recs: len(recs) >= at_least,
        timeout=30,
    )
    return [r.key().decode() for r in records]


def _runner(settings: Settings, source: FakeSource, **kw: Any) -> Runner:
    publisher = kw.pop("publisher", None) or RawPublisher(settings, VENDOR)
    return Runner(
        source,
        publisher,
        CheckpointStore(settings, CONNECTOR),
        dead_letters=DeadLetters(settings, VENDOR),
        sleep=lambda _s: None,
        **kw,
    )


def test_publishes_then_checkpoints_and_a_restart_resumes(settings: Settings) -> None:
    stats = _runner(settings, FakeSource(25, 10)).run(once=True)
    assert (stats.records, stats.checkpoints) == (25, 3)
    assert sorted(_keys(settings, 25)) == sorted(f"id-{i}" for i in range(25))
    assert CheckpointStore(settings, CONNECTOR).load() == {"pos": {"next": 25}}

    again = FakeSource(30, 10)
    _runner(settings, again).run(once=True)
    assert again.opened == {"pos": {"next": 25}}
    assert sorted(_keys(settings, 30)) == sorted(f"id-{i}" for i in range(30))


def test_an_unacknowledged_batch_is_not_checkpointed_and_is_read_again(
    settings: Settings,
) -> None:
    source = FakeSource(20, 10)
    publisher = FlushFails(settings, VENDOR)
    stats = _runner(settings, source, publisher=publisher).run(once=True)
    assert stats.errors == {"kafka": 1}
    assert source.rewinds == 1
    assert stats.records == 20  # acknowledged ones
    keys = _keys(settings, 30)
    # The first batch went out, its flush "failed": published twice, checkpointed once.
    assert sorted(keys) == sorted(
        [*(f"id-{i}" for i in range(10)), *(f"id-{i}" for i in range(20))]
    )
    assert CheckpointStore(settings, CONNECTOR).load() == {"pos": {"next": 20}}


def test_checkpoint_every_groups_batches_under_one_flush(settings: Settings) -> None:
    class Lazy(FakeSource):
        def next_batch(self) -> Batch:
            batch = super().next_batch()
            return Batch(records=batch.records, checkpoint=self.read >= self.total)

    stats = _runner(settings, Lazy(30, 5), checkpoint_every=10).run(once=True)
    assert stats.records == 30
    assert stats.checkpoints == 3  # at 10, 20 and 30 records, not after every batch of 5


def test_retriable_errors_back_off_and_fatal_ones_stop(settings: Settings) -> None:
    waits: list[float] = []
    source = FakeSource(10, 10, script=[RetriableSourceError("throttled", kind="throttled")])
    runner = _runner(settings, source)
    runner._sleep = waits.append
    stats = runner.run(once=True)
    assert stats.errors == {"throttled": 1}
    assert stats.records == 10
    assert len(waits) == 1 and 0.25 <= waits[0] <= 0.5

    fatal = FakeSource(10, 10, script=[FatalSourceError("access denied")])
    with pytest.raises(FatalSourceError, match="access denied"):
        _runner(settings, fatal).run(once=True)


def test_a_skipped_piece_is_dead_lettered_before_the_checkpoint_past_it(
    settings: Settings,
) -> None:
    source = FakeSource(10, 10)
    source.skip_at = 7
    stats = _runner(settings, source).run(once=True)
    assert stats.dead_letters == 1
    assert stats.errors == {"corrupt": 1}
    topic = settings.topic("dead-letter")
    (record,) = read_topic(settings, topic, until=lambda recs: len(recs) >= 1, timeout=30)
    name, letter = AvroSerde(settings).decode(record.value(), topic)
    assert name.endswith("DeadLetter")
    assert letter["reason"] == "unreadable_object:corrupt"
    assert letter["source_position"] == "fake#7"
    assert letter["source_partition"] == -1
    assert CheckpointStore(settings, CONNECTOR).load() == {"pos": {"next": 10}}


def test_stop_ends_the_run_after_the_batch_with_everything_checkpointed(
    settings: Settings,
) -> None:
    class Stopper(FakeSource):
        runner: Runner

        def next_batch(self) -> Batch:
            if self.read >= 20:
                self.runner.stop()
            return super().next_batch()

    source = Stopper(100, 10)
    source.runner = runner = _runner(settings, source)
    stats = runner.run()
    assert stats.records == 30
    assert CheckpointStore(settings, CONNECTOR).load() == {"pos": {"next": 30}}
