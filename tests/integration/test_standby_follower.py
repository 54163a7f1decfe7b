"""The standby follower (``processors.standby``) against the real broker, without a worker: a
changelog of two partitions (puts, overwrites, tombstones) applied to two RocksDB stores, each
store's persisted offset written with the data it covers, and a follower started again from that
offset applying only what came after it (through the table's upgrade, if any)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import rocksdict
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from crmstream.settings import Settings
from processors.standby import Followed, StandbyFollower

pytestmark = pytest.mark.integration

OFFSET_KEY = b"__faust\x00offset__"


def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, key, value in records:
        producer.produce(topic, value, key, partition=partition)
    assert producer.flush(30) == 0


def _records(rounds: range) -> list[tuple[int, bytes, bytes | None]]:
    """Per round, in each partition: 300 keys written, a third of them overwritten and a tenth
    deleted."""
    out: list[tuple[int, bytes, bytes | None]] = []
    for r in rounds:
        for partition in (0, 1):
            for i in range(300):
                out.append((partition, f"k{partition}-{i}".encode(), f"v{r}-{i}".encode()))
            for i in range(0, 300, 3):
                out.append((partition, f"k{partition}-{i}".encode(), f"w{r}-{i}".encode()))
            for i in range(0, 300, 10):
                out.append((partition, f"k{partition}-{i}".encode(), None))
    return out


def _expected(records: list[tuple[int, bytes, bytes | None]], partition: int) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for p, key, value in records:
        if p != partition:
            continue
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def _contents(db: rocksdict.Rdict) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if k != OFFSET_KEY}


def _follow_until(
    follower: StandbyFollower, ends: dict[tuple[str, int], int], timeout: float = 60
) -> None:
    follower.start()
    deadline = time.monotonic() + timeout
    try:
        while any(follower.applied.get(tp, -1) < end for tp, end in ends.items()):
            assert follower.failed is None, follower.failed
            assert time.monotonic() < deadline, f"applied {follower.applied}, expected {ends}"
            time.sleep(0.1)
    finally:
        follower.stop()
        follower.join(10)


def test_the_follower_applies_each_partition_with_its_offset_and_resumes_from_it(
    kafka_bootstrap: str, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    topic = f"standby-{uuid.uuid4().hex[:8]}-changelog"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    first = _records(range(2))
    _produce(kafka_bootstrap, topic, first)
    per_partition = len(first) // 2
    dbs = {
        p: rocksdict.Rdict(str(tmp_path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
        for p in (0, 1)
    }
    try:
        ends = {(topic, p): per_partition - 1 for p in (0, 1)}
        follower = StandbyFollower(
            settings, {(topic, p): Followed(None, dbs[p], None, OFFSET_KEY) for p in (0, 1)}
        )
        _follow_until(follower, ends)
        assert follower.records == len(first)
        for p in (0, 1):
            assert _contents(dbs[p]) == _expected(first, p)
            assert dbs[p][OFFSET_KEY] == str(per_partition - 1).encode()

        # More records; a new follower starts after each store's persisted offset and applies
        # only those, each through the upgrade.
        second = _records(range(2, 3))
        _produce(kafka_bootstrap, topic, second)

        def upgrade(key: bytes, value: bytes | None) -> tuple[bytes, bytes | None]:
            return key, None if value is None else value + b"+"

        starts = {p: int(dbs[p][OFFSET_KEY]) + 1 for p in (0, 1)}
        follower = StandbyFollower(
            settings, {(topic, p): Followed(starts[p], dbs[p], upgrade, OFFSET_KEY) for p in (0, 1)}
        )
        _follow_until(follower, {(topic, p): per_partition + len(second) // 2 - 1 for p in (0, 1)})
        assert follower.records == len(second)
        for p in (0, 1):
            expected = _expected(first, p)
            expected.update({k: v + b"+" for k, v in _expected(second, p).items()})
            for key in {k for q, k, v in second if q == p and v is None}:
                expected.pop(key, None)
            assert _contents(dbs[p]) == expected
            assert dbs[p][OFFSET_KEY] == str(per_partition + len(second) // 2 - 1).encode()
    finally:
        for db in dbs.values():
            db.close()
