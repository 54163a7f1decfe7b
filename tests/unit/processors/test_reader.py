"""The stream reader's bookkeeping on the event loop's side (processors/reader.py), without a
broker: which records of a fetched batch it hands over after a seek, a pause or a resume; the
records in hand; and the engine choosing it (CRM_STREAM_READER). Against the broker:
tests/integration/test_reader.py."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import processors.reader as reader_module
from crmstream.errors import ConfigError
from crmstream.settings import Settings
from processors.positions import TopicPartition
from processors.reader import Reader, Readers, Record, _Batch

T0, T1 = TopicPartition("raw.a", 0), TopicPartition("raw.a", 1)


def _reader() -> tuple[Reader, Readers]:
    readers = Readers()
    reader = Reader(Settings.from_env({}), ["raw.a"], "t", size=10, within=0.01, readers=readers)
    readers.add(reader)
    return reader, readers


def _record(tp: TopicPartition, offset: int) -> Record:
    return Record(tp, offset, b"k", b"v", 1.5, None)


def _fetched(reader: Reader, *records: Record) -> None:
    """A batch as the thread would hand it over: read with the epochs of now."""
    epochs = {tp: reader._epochs.get(tp, 0) for tp in {r.tp for r in records}}
    assert reader._queue is not None
    reader._queue.put_nowait(_Batch(list(records), epochs))


def _offsets(records: list[Record]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def test_a_batch_fetched_before_a_seek_or_pause_loses_those_partitions_records() -> None:
    async def run() -> None:
        reader, readers = _reader()
        reader._queue = asyncio.Queue()
        readers.seek({T0: 0, T1: 0})
        readers.resume([T0, T1], lambda tp: None, placed_only=True)

        _fetched(reader, _record(T0, 0), _record(T1, 0), _record(T0, 1))
        assert _offsets(await reader.get()) == [(0, 0), (1, 0), (0, 1)]

        _fetched(reader, _record(T0, 2), _record(T1, 1))
        readers.seek({T0: 0})  # after the fetch: its records of T0 are from before the seek
        assert _offsets(await reader.get()) == [(1, 1)]

        _fetched(reader, _record(T0, 0), _record(T1, 2))
        readers.pause([T1])
        assert _offsets(await reader.get()) == [(0, 0)]
        assert readers.highwater(T1) is None  # paused: none

    asyncio.run(run())


def test_resume_starts_where_the_partition_was_or_where_it_is_told() -> None:
    reader, readers = _reader()
    readers.assign([T0, T1])
    readers.seek({T0: 40})
    readers.resume([T0, T1], lambda tp: 7, placed_only=False)
    # The thread is told: T0 from its seek, T1 (never sought) from the start it was given.
    assert sorted(reader._ops) == [("assign", T0, 40), ("assign", T1, 7)]
    reader._ops.clear()
    readers.resume([T0], lambda tp: 0, placed_only=False)  # already reading: nothing to do
    assert reader._ops == []
    readers.forget([T0])
    assert reader._ops == [("unassign", T0, -1)]
    reader._ops.clear()
    readers.resume([T0], lambda tp: None, placed_only=False)  # revoked: not resumed
    assert reader._ops == []
    readers.assign([T0])
    readers.resume([T0], lambda tp: None, placed_only=True)  # not placed yet: not resumed
    assert reader._ops == []
    readers.resume([T0], lambda tp: None, placed_only=False)  # no position, no committed offset
    assert reader._ops[-1][0:2] == ("assign", T0) and reader._ops[-1][2] < 0  # the beginning


def test_records_adapt_to_the_engine_message() -> None:
    record = _record(T1, 5)
    assert record.message is record
    assert (record.topic, record.partition, record.offset, record.tp) == ("raw.a", 1, 5, T1)
    assert record.timestamp == 1.5 and record.headers is None


def test_a_rebalance_waits_until_no_record_is_in_hand() -> None:
    async def run() -> None:
        _, readers = _reader()
        readers.take(3)
        waiting = asyncio.ensure_future(readers.wait_released(timeout=30))
        await asyncio.sleep(0)
        readers.done(2)
        await asyncio.sleep(0)
        assert not waiting.done()
        readers.done(1)
        await asyncio.wait_for(waiting, 5)
        assert readers.in_hand == 0

    asyncio.run(run())


def test_the_reader_setting(tmp_path: Path) -> None:
    from processors.faust_engine import FaustEngine

    assert Settings.from_env({}).stream_reader == "librdkafka"
    engine = FaustEngine(
        Settings.from_env({"CRM_DATA_DIR": str(tmp_path / "a"), "CRM_STREAM_READER": "faust"})
    )
    assert engine.readers is None
    engine = FaustEngine(Settings.from_env({"CRM_DATA_DIR": str(tmp_path / "b")}))
    assert engine.readers is not None
    with pytest.raises(ConfigError, match="CRM_STREAM_READER"):
        Settings.from_env({"CRM_STREAM_READER": "aiokafka"})


def test_what_may_be_sought_is_the_assignment_the_loop_handled() -> None:
    _, readers = _reader()
    readers.assign([T0, T1, TopicPartition("app-dedupe-changelog", 0)])
    assert readers.assigned == {T0, T1}  # the readers' partitions only
    readers.seek({T0: 3, T1: 4})
    readers.forget([T1])  # revoked
    assert readers.assigned == {T0} and readers.placed == {T0}
    readers.assign([T0, T1])  # a new assignment: placed again before it is read
    assert readers.placed == set()


def test_in_step_with_the_group_only_once_the_loop_handled_its_assignment() -> None:
    _, readers = _reader()
    changelog = TopicPartition("app-dedupe-changelog", 0)
    group = [T0, T1, changelog]
    assert not readers.in_step(group)  # assigned by the group, not handled yet
    readers.assign(group)
    assert readers.in_step(group)  # other topics' partitions do not count
    readers.forget([T0, T1])  # a revoke: the group client still lists them until it re-joins
    assert not readers.in_step(group)  # the worker's query API answers 503, not an empty list
    readers.assign([T1])
    assert not readers.in_step(group)
    assert readers.in_step([T1, changelog])


class _Message:
    def __init__(self, tp: TopicPartition, offset: int) -> None:
        self._tp, self._offset = tp, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._tp.topic

    def partition(self) -> int:
        return self._tp.partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1500)

    def headers(self) -> None:
        return None


class _Consumer:
    """librdkafka's consumer as the reader's thread uses it: what it was asked, and a queue of
    messages it hands out (poll: the first one; consume: up to ``n`` of the rest)."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        self.calls: list[tuple[str, float]] = []
        self.queue: list[_Message] = []
        self.lock = threading.Lock()
        self.polled = threading.Event()

    def poll(self, timeout: float) -> _Message | None:
        with self.lock:
            self.calls.append(("poll", timeout))
            if len(self.calls) >= 8:
                self.polled.set()
            return self.queue.pop(0) if self.queue else None

    def consume(self, n: int, timeout: float) -> list[_Message]:
        with self.lock:
            self.calls.append(("consume", timeout))
            taken, self.queue = self.queue[:n], self.queue[n:]
            return taken

    def incremental_assign(self, _tps: object) -> None: ...

    def incremental_unassign(self, _tps: object) -> None: ...

    def get_watermark_offsets(self, _tp: object, cached: bool) -> tuple[int, int]:
        return (0, 3)

    def close(self) -> None: ...


def test_an_idle_reader_waits_for_a_first_record_then_fills_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each ``consume`` waits its whole ``within`` unless the batch fills: a reader calling it in
    a loop woke every ``within`` (100 times a second at the dev profile's 10 ms) with nothing
    to hand over. It waits in ``poll`` for the first record instead (IDLE_WAIT_S at a time),
    then gathers the batch with it within ``within``."""
    monkeypatch.setattr(reader_module, "Consumer", _Consumer)

    async def run() -> None:
        reader, readers = _reader()
        readers.assign([T0])
        readers.seek({T0: 0})
        readers.resume([T0], lambda tp: None, placed_only=True)
        reader.start()
        consumer = reader._consumer
        try:
            assert await asyncio.to_thread(consumer.polled.wait, 30)
            with consumer.lock:
                idle = list(consumer.calls)
                consumer.queue = [_Message(T0, 0), _Message(T0, 1), _Message(T0, 2)]
            assert idle and set(idle) == {("poll", reader_module.IDLE_WAIT_S)}
            got = await asyncio.wait_for(reader.get(), 30)
            assert _offsets(got) == [(0, 0), (0, 1), (0, 2)]
            assert readers.highwater(T0) == 3
            with consumer.lock:
                fills = [t for call, t in consumer.calls[len(idle) :] if call == "consume"]
            assert fills and all(0 < t <= reader.within for t in fills)
        finally:
            await reader.stop()

    asyncio.run(run())


def test_a_batch_is_filled_until_within_after_the_wait_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No later than a consume loop handed it over: a first record that came at once is
    gathered with what comes within ``within``; one that ended a longer wait goes with the rest
    of its fetch (FILL_FLOOR_S), not ``within`` later."""
    clock = [100.0]
    monkeypatch.setattr(reader_module.time, "monotonic", lambda: clock[0])

    class Waiting(_Consumer):
        waited = 0.0

        def poll(self, timeout: float) -> _Message | None:
            clock[0] += self.waited
            return super().poll(timeout)

    for waited, fill in ((0.0, 0.05), (0.03, 0.02), (0.05, reader_module.FILL_FLOOR_S)):
        consumer = Waiting()
        consumer.waited = waited
        consumer.queue = [_Message(T0, 0), _Message(T0, 1)]
        got = reader_module.Reader._fetch(consumer, 10, 0.05)
        assert [m.offset() for m in got] == [0, 1]
        assert consumer.calls[0] == ("poll", reader_module.IDLE_WAIT_S)
        assert consumer.calls[1][0] == "consume"
        assert consumer.calls[1][1] == pytest.approx(fill)
    assert reader_module.Reader._fetch(_Consumer(), 10, 0.05) == []


def test_a_long_within_is_waited_in_slices_and_ends_when_the_loop_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stats batch may gather a second of increments (CRM_STATS_BATCH_WITHIN=1s): the thread
    waits for them in slices of IDLE_WAIT_S, so a seek, pause or resume the loop asked for (a
    rebalance's placement waits for it) ends the batch at the next slice, not a second later."""
    clock = [100.0]
    monkeypatch.setattr(reader_module.time, "monotonic", lambda: clock[0])

    class Slow(_Consumer):
        def consume(self, n: int, timeout: float) -> list[_Message]:
            clock[0] += timeout  # nothing more came: the whole wait passes
            return super().consume(n, timeout)

    consumer = Slow()
    consumer.queue = [_Message(T0, 0)]
    got = reader_module.Reader._fetch(consumer, 10, 1.0)
    waits = [t for call, t in consumer.calls if call == "consume"]
    assert [m.offset() for m in got] == [0]
    assert len(waits) == 10 and all(t <= reader_module.IDLE_WAIT_S + 1e-9 for t in waits)
    assert sum(waits) == pytest.approx(1.0)

    asked = [False]
    consumer = Slow()
    consumer.queue = [_Message(T0, 0)]

    def asking() -> bool:
        asked[0] = len([c for c in consumer.calls if c[0] == "consume"]) >= 3
        return asked[0]

    got = reader_module.Reader._fetch(consumer, 10, 1.0, asking)
    assert [m.offset() for m in got] == [0]
    assert len([c for c in consumer.calls if c[0] == "consume"]) == 3

    consumer = Slow()  # a full batch goes at once
    consumer.queue = [_Message(T0, i) for i in range(12)]
    got = reader_module.Reader._fetch(consumer, 10, 1.0)
    assert [m.offset() for m in got] == list(range(10))
    assert len([c for c in consumer.calls if c[0] == "consume"]) == 1
