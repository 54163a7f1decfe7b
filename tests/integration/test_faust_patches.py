"""The aiokafka behaviour behind the lost raw records of issue 11, and the patch that stops it,
against the real broker (no Faust worker needed).

If the first test starts failing, aiokafka has stopped reading an empty partition set as "every
partition", and the ``_fetch_records`` patch in processors/faust_engine.py can go.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from processors import faust_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def two_partitions(kafka_bootstrap: str) -> str:
    """A topic of two partitions with 100 records in each."""
    import uuid

    topic = f"patches-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(200):
        producer.produce(topic, b"x", partition=i % 2)
    assert producer.flush(30) == 0
    return topic


async def _buffered_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    await asyncio.sleep(1.0)  # the fetcher buffers both partitions
    return consumer


def test_aiokafka_reads_an_empty_partition_set_as_every_partition(
    kafka_bootstrap: str, two_partitions: str
) -> None:
    async def run() -> tuple[dict[int, int], int]:
        consumer = await _buffered_consumer(kafka_bootstrap, two_partitions)
        try:
            active: set[Any] = set()  # Faust's live set, every partition paused
            records = await consumer._fetcher.fetched_records(active, timeout=1, max_records=None)
            position = await consumer.position(TopicPartition(two_partitions, 1))
            return {tp.partition: len(v) for tp, v in records.items()}, position
        finally:
            await consumer.stop()

    handed, position = asyncio.run(run())
    # Paused partitions' records handed over anyway, and their fetch position moved past them.
    assert handed.get(1, 0) > 0
    assert position == handed[1]


def test_the_patched_fetch_takes_nothing_while_no_partition_is_active(
    kafka_bootstrap: str, two_partitions: str
) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_engine.apply()
    # The Faust path: an app without the librdkafka readers (CRM_STREAM_READER=faust).
    thread: Any = SimpleNamespace(consumer=SimpleNamespace(flow_active=True, app=SimpleNamespace()))

    async def run() -> tuple[dict[Any, Any], dict[int, int], int]:
        consumer = await _buffered_consumer(kafka_bootstrap, two_partitions)
        try:
            fetch = AIOKafkaConsumerThread._fetch_records
            none = await fetch(thread, consumer, set(), timeout=1, max_records=None)
            position = await consumer.position(TopicPartition(two_partitions, 1))
            only_0 = await fetch(
                thread, consumer, {TopicPartition(two_partitions, 0)}, timeout=1, max_records=None
            )
            return none, {tp.partition: len(v) for tp, v in only_0.items()}, position
        finally:
            await consumer.stop()

    none, only_0, position = asyncio.run(run())
    assert none == {}
    assert position == 0  # nothing was taken from the paused partition
    assert set(only_0) == {0} and only_0[0] > 0
