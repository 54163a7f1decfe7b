"""The standby follower (``processors.standby``) against the real broker, without a worker: a
changelog of two partitions (puts, overwrites, tombstones) applied to two RocksDB stores, each
store's persisted offset written with the data it covers, and a follower started again from that
offset applying only what came after it (through the table's upgrade, if any); and a standby's
stats tables, followed so, refusing after a takeover what the active refused."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import rocksdict
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from crmstream import metrics
from crmstream.settings import Settings
from processors.records import stats_updates_value
from processors.standby import Followed, StandbyFollower
from processors.state.keys import KeyRange, campaign_entry_key
from tests.unit.processors.fake_engine import FakeEvent, FakeMessage, Parts

pytestmark = pytest.mark.integration

OFFSET_KEY = b"__faust\x00offset__"
T0 = 1_780_000_000_000 - 1_780_000_000_000 % 3_600_000  # an hour's start


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


def test_a_standby_that_takes_over_refuses_a_late_event_for_a_window_the_active_expired(
    kafka_bootstrap: str, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """The active worker counts two campaigns and expires one's 1m window (the campaign's entry
    is written then, with its first expiry). A standby follows the stats changelogs from the
    real broker; once it takes over, a late event for the expired window is refused there
    (``crm_worker_stats_late_total``), and a new campaign's windows are counted."""
    retention = {"CRM_STATS_RETENTION": "1m=10m,1h=2h"}
    active = Parts(tmp_path / "active", retention)
    active.positioning.tracker.start(active.stats_tp(), 0)
    a = "SEGMENT|app|a"

    def increment(parts: Parts, offset: int, campaign: str, occurred_ms: int) -> FakeEvent:
        value = stats_updates_value(
            {campaign: {"raw.segment/0": [[offset, occurred_ms, "OPEN", "EMAIL"]]}}, None, None
        )
        return FakeEvent(FakeMessage(parts.stats_topic, 0, offset, b"0", value))

    async def on_the_active() -> None:
        active.stats_path.clock = lambda: T0
        await active.stats_path.process([increment(active, 0, a, T0 + 5_000)])
        await active.stats_path.process([increment(active, 1, "SEGMENT|app|b", T0 + 65_000)])
        assert await active.stats.expire(active.outputs, [0], T0 + 11 * 60_000) == 2

    asyncio.run(on_the_active())
    entry = campaign_entry_key(a)
    assert any(k == entry for _, _, k, _ in active.outputs.changelog)

    # Each stats changelog on the broker, as the active's producer sent it; followed into the
    # standby's stores (where its tables open them).
    suffix = uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = {name: f"{name}-{suffix}" for name in active.stats_tables}
    for topic in topics.values():
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    ends: dict[tuple[str, int], int] = {}
    for name, table in active.stats_tables.items():
        records = [
            (p, k, v) for t, p, k, v in active.outputs.changelog if t == table.changelog_topic
        ]
        _produce(kafka_bootstrap, topics[name], records)
        ends[(topics[name], 0)] = sum(1 for p, _, _ in records if p == 0) - 1
    standby_root = tmp_path / "standby"
    dbs = {}
    for name, table in active.stats_tables.items():
        path = standby_root / table.store.root.name / "p0"  # type: ignore[attr-defined]
        path.parent.mkdir(parents=True)
        dbs[name] = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        follower = StandbyFollower(
            settings_factory(),
            {(topics[n], 0): Followed(None, db, None, OFFSET_KEY) for n, db in dbs.items()},
        )
        _follow_until(follower, ends)
        for name, db in dbs.items():
            assert {k: v for k, v in _contents(db).items()} == dict(
                active.stats_tables[name].scan(0, KeyRange(b"0", b"__crm0"))
            )
            assert (entry in _contents(db)) == (name == "1m")
    finally:
        for db in dbs.values():
            db.close()

    # The takeover: the standby's tables open the stores the follower wrote.
    standby = Parts(standby_root, retention)
    standby.positioning.tracker.start(standby.stats_tp(), 2)
    standby.stats_path.clock = lambda: T0 + 12 * 60_000
    late = metrics.STATS_LATE._value.get()

    async def on_the_standby() -> None:
        await standby.stats_path.process([increment(standby, 2, a, T0 + 6_000)])
        await standby.stats_path.process([increment(standby, 3, "SEGMENT|app|c", T0 + 7_000)])

    asyncio.run(on_the_standby())
    assert metrics.STATS_LATE._value.get() == late + 1  # a's 1m window; its 1h one is held
    assert sorted(
        k for k, _ in standby.outputs.topics(standby.settings.topic("campaign-stats"))
    ) == [
        f"SEGMENT|app|a|1h|{T0}".encode(),
        f"SEGMENT|app|c|1h|{T0}".encode(),
        f"SEGMENT|app|c|1m|{T0}".encode(),
    ]
