"""The librdkafka reader of the stream topics (processors/reader.py) against the real broker:
what it hands over after a seek, a pause and a resume, exactly; its high watermark; and the
records in hand a rebalance waits for."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from crmstream.settings import Settings
from processors.positions import TopicPartition
from processors.reader import Reader, Readers, Record

pytestmark = pytest.mark.integration

PER_PARTITION = 100


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    """Two partitions of PER_PARTITION records each (value: b"<partition>/<offset>")."""
    name = f"reader-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for p in range(2):
        for i in range(PER_PARTITION):
            producer.produce(name, b"%d/%d" % (p, i), key=b"k", partition=p, headers=[("h", b"v")])
    assert producer.flush(30) == 0
    return name


async def _take(reader: Reader, want: int, timeout: float = 30.0) -> list[Record]:
    got: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < want:
        left = deadline - loop.time()
        assert left > 0, f"{len(got)} of {want} records"
        try:
            got.extend(await asyncio.wait_for(reader.get(), left))
        except TimeoutError:
            continue
    return got


async def _quiet(reader: Reader, seconds: float) -> list[Record]:
    """What the reader hands over in ``seconds`` (nothing is expected)."""
    got: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            got.extend(await asyncio.wait_for(reader.get(), left))
        except TimeoutError:
            break
    return got


def _offsets(records: list[Record], partition: int) -> list[int]:
    return [r.offset for r in records if r.partition == partition]


def test_seek_pause_resume_hand_over_exactly(
    topic: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def run() -> None:
        readers = Readers()
        reader = Reader(settings, [topic], "test", size=7, within=0.05, readers=readers)
        readers.add(reader)
        readers.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        reader.start()
        try:
            # Placed while paused: nothing handed over before the resume.
            readers.seek({p0: 10, p1: 50})
            assert await _quiet(reader, 1.0) == []
            readers.resume([p0, p1], lambda tp: None, placed_only=False)
            got = await _take(reader, 90 + 50)
            assert _offsets(got, 0) == list(range(10, 100))
            assert _offsets(got, 1) == list(range(50, 100))
            first = got[0]
            assert first.key == b"k" and first.value == b"%d/%d" % (first.partition, first.offset)
            assert first.headers == [("h", b"v")] and first.timestamp > 1e9
            assert first.message is first and first.tp == (topic, first.partition)
            assert readers.highwater(p0) == PER_PARTITION
            assert readers.highwater(p1) == PER_PARTITION

            # A seek back while fetching: from there on, nothing from before it.
            readers.seek({p0: 5})
            got = await _take(reader, 95)
            assert _offsets(got, 0) == list(range(5, 100))
            assert _offsets(got, 1) == []

            # Paused: nothing more; resumed without a seek: from where it was.
            readers.seek({p1: 0})
            readers.pause([p1])
            await readers.applied()
            assert readers.highwater(p1) is None
            assert await _quiet(reader, 1.0) == []
            readers.resume([p1], lambda tp: 99, placed_only=False)
            got = await _take(reader, 100)
            assert _offsets(got, 1) == list(range(100))

            # Revoked: not resumed. Assigned again: from the start it is given (not placed).
            readers.forget([p1])
            readers.resume([p1], lambda tp: 0, placed_only=False)
            assert await _quiet(reader, 1.0) == []
            readers.assign([p0, p1])
            readers.resume([p1], lambda tp: 97, placed_only=True)  # not placed yet
            assert await _quiet(reader, 1.0) == []
            readers.resume([p1], lambda tp: 97, placed_only=False)
            got = await _take(reader, 3)
            assert _offsets(got, 1) == [97, 98, 99]
            assert await _quiet(reader, 1.0) == []
        finally:
            await reader.stop()

    asyncio.run(run())


def test_a_rebalance_waits_for_the_records_in_hand(
    topic: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    p0 = TopicPartition(topic, 0)

    async def run() -> None:
        readers = Readers()
        reader = Reader(settings, [topic], "test", size=500, within=0.05, readers=readers)
        readers.add(reader)
        readers.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        reader.start()
        try:
            readers.seek({p0: 0})
            readers.resume([p0], lambda tp: None, placed_only=False)
            got = await _take(reader, PER_PARTITION)
            readers.take(len(got))  # held by the worker
            readers.pause([p0])
            waiting = asyncio.ensure_future(readers.wait_released(timeout=30))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            readers.done(len(got) - 1)
            await asyncio.sleep(0.5)
            assert not waiting.done()
            readers.done(1)
            await asyncio.wait_for(waiting, 5)
            assert readers.in_hand == 0
        finally:
            await reader.stop()

    asyncio.run(run())
