"""processors/faust_engine.py against the real Faust objects it patches and reads (no broker):
if an upgrade renames or reshapes what it touches, these fail before a worker does."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
import rocksdict
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from crmstream.errors import CrmStreamError
from crmstream.settings import Settings
from processors import faust_engine
from processors.state import keys


class _Positions:
    def __init__(self, offset: int | None) -> None:
        self.offset = offset

    async def on_positioned(self, *, after_rebalance: bool) -> None:
        return None

    def committable(self, tp: Any) -> int | None:
        return self.offset


@pytest.fixture
def app(tmp_path: Path) -> faust.App:
    faust_engine.apply()
    return faust.App(
        "compat-test",
        broker="kafka://127.0.0.1:1",
        datadir=str(tmp_path),
        store="rocksdb://",
        web_enabled=False,
    )


def test_the_patches_replace_the_methods_they_were_written_for() -> None:
    faust_engine.apply()
    assert Consumer._new_offset.__name__ == "position_offset"
    assert Consumer.perform_seek.__name__ == "seek_then_resume"
    assert Consumer.resume_partitions.__name__ == "held_resume_partitions"
    assert AIOKafkaConsumerThread._fetch_records.__name__ == "fetch_active_only"
    assert Recovery._resume_streams.__wrapped__.__qualname__ == "Recovery._resume_streams"
    assert Recovery.on_recovery_completed.__wrapped__.__qualname__.startswith("Recovery.")
    assert RocksDBStore.apply_changelog_batch.__name__ == "_apply_changelog_batch"
    assert Recovery._build_offsets.__name__ == faust_engine.FAST_RESTORE_STEP
    assert Recovery._wait.__name__ == "wait_without_limit_for_the_fast_restore"
    assert RocksDBStore._open_for_partition.__name__ == "_open_for_partition"
    assert Recovery.add_standby.__name__ == "add_standby_to_follow"
    assert TableManager.on_rebalance.__name__ == "stop_following_then_rebalance"
    assert TableManager.on_rebalance_start.__name__ == "stop_following_on_rebalance_start"
    assert TableManager.on_actives_ready.__name__ == "follow_once_actives_ready"
    assert TableManager.on_stop.__name__ == "stop_following_then_stop"


@pytest.mark.parametrize("follow", [True, False])
def test_standbys_go_to_the_follower_not_to_faust_recovery(
    app: faust.App, tmp_path: Path, follow: bool
) -> None:
    app.crm_settings = Settings.from_env(  # type: ignore[attr-defined]
        {"CRM_DATA_DIR": str(tmp_path), "CRM_STANDBY_FOLLOWER": str(follow).lower()}
    )
    table = app.Table("marks", partitions=2, key_type=bytes, value_type=bytes)
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    recovery = app.tables.recovery
    recovery.add_standby(table, tp)
    standbys = faust_engine._standbys(app.tables).tables
    if follow:
        # Faust's consumer never reads it (nothing resumes it); the follower will.
        assert recovery.standby_tps == set() and not recovery.standbys_for_table
        assert standbys == {tp: table}
    else:
        assert recovery.standby_tps == {tp} and standbys == {}


def test_commits_come_from_the_positions_and_faust_bookkeeping_is_cleared(
    app: faust.App,
) -> None:
    consumer = app.consumer
    tp = TP("crm.raw.airship", 3)
    consumer._acked[tp] = [10, 11, 14]
    consumer._acked_index[tp] = {10, 11, 14}
    app.crm_positions = _Positions(12)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) == 12  # not 12 by Faust's count (10, 11), nor 15 past a gap
    assert consumer._acked[tp] == [] and consumer._acked_index[tp] == set()
    app.crm_positions = _Positions(None)  # type: ignore[attr-defined]
    assert consumer._new_offset(tp) is None


def test_committed_offsets_are_read_from_faust_state(app: faust.App) -> None:
    consumer = app.consumer
    tp = TP("crm.raw.airship", 3)
    assert faust_engine.committed_offset(consumer, tp) is None
    consumer._committed_offset[tp] = 0
    assert faust_engine.committed_offset(consumer, tp) is None  # 0: nothing processed
    consumer._committed_offset[tp] = 7
    assert faust_engine.committed_offset(consumer, tp) == 7


def test_rocksdb_partitions_are_reached_through_the_table(app: faust.App) -> None:
    table = app.Table("t", partitions=2, key_type=bytes, value_type=bytes)
    db = faust_engine.rocksdb_partition(table, 1)
    db[b"k"] = b"v"
    assert faust_engine.rocksdb_partition(table, 1)[b"k"] == b"v"
    assert set(faust_engine.rocksdb_partitions(table)) == {1}


def test_every_partition_shares_one_memory_budget_from_the_setting(
    app: faust.App, tmp_path: Path
) -> None:
    app.crm_settings = Settings.from_env(  # type: ignore[attr-defined]
        {"CRM_DATA_DIR": str(tmp_path), "CRM_ROCKSDB_MEMORY_MB": "24"}
    )
    cache, write_buffers = faust_engine.rocksdb_memory(24 * 2**20)
    assert write_buffers.enabled() and write_buffers.get_buffer_size() == 12 * 2**20
    before = write_buffers.get_usage()
    a = app.Table("a", partitions=2, key_type=bytes, value_type=bytes)
    b = app.Table("b", partitions=2, key_type=bytes, value_type=bytes)
    for table, partition in ((a, 0), (a, 1), (b, 1)):
        db = faust_engine.rocksdb_partition(table, partition)
        for i in range(2000):
            db[b"k%d" % i] = b"v" * 100
    # The memtables of all three partitions are counted by the one manager the setting sized.
    assert write_buffers.get_usage() > before
    assert faust_engine.rocksdb_memory(24 * 2**20) == (cache, write_buffers)


def _applied_options(store: Path) -> dict[str, str]:
    """The options RocksDB itself applied to ``store``: its newest OPTIONS file."""
    newest = max(store.glob("OPTIONS-*"), key=lambda f: int(f.name.split("-")[1]))
    options: dict[str, str] = {}
    for line in newest.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name not in options:  # [DBOptions] first, then the default column family
            options[name] = value
    return options


def test_table_partitions_compress_with_zstd_and_bound_their_info_logs(tmp_path: Path) -> None:
    store = tmp_path / "t-0.db"
    for i in range(5):  # every opening rolls the info log over
        db = rocksdict.Rdict(
            str(store), options=faust_engine.rocksdb_options(None, tmp_path / "options")
        )
        db[b"k%d" % i] = b"v" * 100
        db.close()
    applied = _applied_options(store)
    assert applied["compression"] == "kZSTD"
    assert applied["bottommost_compression"] == "kZSTD"
    assert applied["wal_compression"] == "kZSTD"
    assert applied["max_log_file_size"] == str(faust_engine.ROCKSDB_INFO_LOG_BYTES)
    assert applied["keep_log_file_num"] == str(faust_engine.ROCKSDB_INFO_LOGS_KEPT)
    assert applied["write_buffer_size"] == str(faust_engine.ROCKSDB_WRITE_BUFFER_BYTES)
    info_logs = sorted(f.name for f in store.iterdir() if f.name.startswith("LOG"))
    assert len(info_logs) == faust_engine.ROCKSDB_INFO_LOGS_KEPT and "LOG" in info_logs
    # Raw keys and values, as every other reader of the stores opens them.
    db = rocksdict.Rdict(
        str(store),
        options=rocksdict.Options(raw_mode=True),
        access_type=rocksdict.AccessType.read_only(),
    )
    assert list(db.items()) == [(b"k%d" % i, b"v" * 100) for i in range(5)]
    db.close()


_KILLED_WRITER = """
import os, sys, rocksdict
from processors import faust_engine
from pathlib import Path
db = rocksdict.Rdict(sys.argv[1], options=faust_engine.rocksdb_options(None, Path(sys.argv[2])))
for batch in range(200):
    writes = rocksdict.WriteBatch(raw_mode=True)
    for i in range(50):
        writes.put(b"%05d:%02d" % (batch, i), b'{"n":%d,"t":{"OPEN":1}}' % batch)
    db.write(writes)
os.kill(os.getpid(), 9)
"""


def test_writes_in_the_compressed_write_ahead_log_survive_a_kill_9(tmp_path: Path) -> None:
    """Nothing flushed: every write is only in the (compressed) write-ahead log when the process
    is killed, and all of it is read back."""
    store = tmp_path / "t-0.db"
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(store), str(tmp_path / "options")],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr.decode()
    assert not list(store.glob("*.sst"))
    db = rocksdict.Rdict(
        str(store), options=faust_engine.rocksdb_options(None, tmp_path / "options")
    )
    items = list(db.items())
    db.close()
    assert len(items) == 200 * 50
    assert items[-1] == (b"00199:49", b'{"n":199,"t":{"OPEN":1}}')


def test_other_library_versions_stop_the_worker_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faust_engine.check_versions()  # the pinned ones: fine
    monkeypatch.setitem(faust_engine.VERSIONS, "faust-streaming", "0.99.0")
    with pytest.raises(CrmStreamError, match=r"faust-streaming 0\.15\.3 \(needs 0\.99\.0\)"):
        faust_engine.check_versions()


def test_recovery_completion_is_read_from_faust(app: faust.App) -> None:
    assert faust_engine.recovered(app) is False
    app.tables.recovery.completed.set()
    assert faust_engine.recovered(app) is True


def test_recovered_from_another_thread_builds_nothing_faust_builds_lazily(
    tmp_path: Path,
) -> None:
    """/readyz runs on the metrics thread: had ``recovered`` built the table manager's recovery
    there, the manager's loop would be that thread's loop and the worker would never subscribe."""
    faust_engine.apply()
    app = faust.App("compat-lazy", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    answers: list[bool] = []
    thread = threading.Thread(target=lambda: answers.append(faust_engine.recovered(app)))
    thread.start()
    thread.join()
    assert answers == [False]
    assert "tables" not in app.__dict__  # not built by the probe
    app.Table("t", default=int)  # the worker declares its tables: now the manager exists
    thread = threading.Thread(target=lambda: answers.append(faust_engine.recovered(app)))
    thread.start()
    thread.join()
    assert answers == [False, False]
    assert app.tables._recovery is None
    assert app.tables._loop is None  # still late-bound: the worker's loop will be the one
    app.tables.recovery.completed.set()
    assert faust_engine.recovered(app) is True


# -- the engine boundary (issue 20 item 6: what the engine swallows, and what it does not) ----


def _engine(tmp_path: Path) -> Any:
    from crmstream.settings import Settings
    from processors.faust_engine import FaustEngine

    return FaustEngine(Settings.from_env({"CRM_DATA_DIR": str(tmp_path)}))


def test_highwater_is_none_only_for_a_partition_not_assigned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(tmp_path)
    consumer = engine.app.consumer
    tp = TP("crm.raw.airship", 0)

    def not_assigned(tp: Any) -> int:
        raise AssertionError("Partition is not assigned")  # what aiokafka raises

    monkeypatch.setattr(consumer, "highwater", not_assigned)
    assert engine.highwater(tp) is None
    monkeypatch.setattr(consumer, "highwater", lambda tp: 42)
    assert engine.highwater(tp) == 42

    def broken(tp: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(consumer, "highwater", broken)
    with pytest.raises(RuntimeError):  # stall detection is not silently off
        engine.highwater(tp)


def test_a_seek_that_cannot_be_done_is_a_seek_error_and_nothing_else_is_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from aiokafka.errors import IllegalStateError

    from processors.engine import SeekError

    engine = _engine(tmp_path)
    consumer = engine.app.consumer
    tp = TP("crm.raw.airship", 0)

    async def not_assigned(offsets: Any) -> None:
        raise IllegalStateError("partition is not assigned")

    monkeypatch.setattr(consumer, "seek_wait", not_assigned)
    with pytest.raises(SeekError):
        asyncio.run(engine.seek({tp: 3}))

    async def timed_out(offsets: Any) -> None:
        raise TimeoutError

    monkeypatch.setattr(consumer, "seek_wait", timed_out)
    with pytest.raises(TimeoutError):
        asyncio.run(engine.seek({tp: 3}))


class _Message:
    def __init__(self, partition: int, offset: int, key: bytes, value: bytes | None) -> None:
        self.tp = TP("compat-test-dedupe-changelog", partition)
        self.partition, self.offset, self.key, self.value = partition, offset, key, value


class _Event:
    def __init__(self, *args: Any) -> None:
        self.message = _Message(*args)


def test_a_worker_upgraded_over_state_and_changelogs_of_the_earlier_layout_finds_every_mark(
    app: faust.App, tmp_path: Path
) -> None:
    """Marks written by a version before issue 23 (``<13 digits>:<event id>`` = ``b"@<raw
    offset>"``), in the local store and in the changelog, are found under the keys this version
    looks up (:func:`processors.plan.candidate`), with the values it compares its own with."""
    start = 1_764_000_000_000
    old = {keys.window_key(start, b"seg:%d" % i): b"@%d" % i for i in range(25_000)}
    table = app.Table("dedupe", partitions=2, key_type=bytes, value_type=bytes)
    table.crm_upgrade = faust_engine.Upgrade(*keys.WINDOWS, keys.upgrade_mark)  # type: ignore[attr-defined]
    store: Any = table.data
    # Partition 0: a local store the earlier version wrote (more than one upgrade batch), next
    # to reserved keys, which stay.
    local = rocksdict.Rdict(str(store.partition_path(0)), options=rocksdict.Options(raw_mode=True))
    for key, value in old.items():
        local[key] = value
    local[keys.position_key("crm.raw.segment")] = b"{}"
    local.close()
    db = faust_engine.rocksdb_partition(table, 0)
    # Partition 1: a lost disk, restored from a changelog the earlier version wrote, then this
    # one (a tombstone of an old mark deletes its new key).
    records = [(1, n, k, v) for n, (k, v) in enumerate(old.items())]
    deleted = keys.window_key(start, b"seg:3")
    records.append((1, len(records), deleted, None))
    store.apply_changelog_batch([_Event(*r) for r in records], None, None)
    restored = faust_engine.rocksdb_partition(table, 1)
    for partition_db in (db, restored):
        found = dict(partition_db.items())
        assert not [k for k in found if k in keys.WINDOWS]
        for i in (0, 1, 49, 24_999):
            key = keys.mark_key(start, keys.id_digest(b"seg:%d" % i))
            assert found[key] == keys.mark_value(i)
    assert keys.mark_key(start, keys.id_digest(b"seg:3")) not in dict(restored.items())
    assert len([k for k in dict(db.items()) if k in keys.MARKS]) == len(old)
    assert db[keys.position_key("crm.raw.segment")] == b"{}"
    assert store.persisted_offset(TP("compat-test-dedupe-changelog", 1)) == len(old)


class _Placements:
    """The worker's placement as the patched consumer sees it: each call noted; one after a
    rebalance waits for ``read_back`` (the broker's answer, in a thread in the worker) and then
    seeks the partitions, as :meth:`processors.positioning.Positioning.on_positioned` does."""

    def __init__(self, readers: Any, offsets: dict[Any, int]) -> None:
        self.readers = readers
        self.offsets = offsets
        self.calls: list[bool] = []
        self.read_back = asyncio.Event()

    async def on_positioned(self, *, after_rebalance: bool) -> None:
        self.calls.append(after_rebalance)
        if after_rebalance:
            await self.read_back.wait()
            self.readers.seek(self.offsets)

    def committable(self, tp: Any) -> int | None:
        return None


def _recovery_rig(app: faust.App, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    """One reader of raw.airship/3, the placements recorded (read back into offset 5), and a
    recovery step that resumes the partition and seeks as ``Recovery.on_recovery_completed``
    does: (readers, reader, tp, placements, consumer, recovery, recovery_step)."""
    from processors.reader import Reader, Readers

    readers = Readers()
    reader = Reader(
        Settings.from_env({}), ["crm.raw.airship"], "raw", size=10, within=0.01, readers=readers
    )
    readers.add(reader)
    app.crm_readers = readers  # type: ignore[attr-defined]
    tp = TP("crm.raw.airship", 3)
    placements = _Placements(readers, {tp: 5})
    app.crm_positions = placements  # type: ignore[attr-defined]
    consumer = app.consumer

    async def seek_to_committed() -> dict[Any, int]:
        return {}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)

    class _Recovery:
        pass

    recovery = _Recovery()
    recovery.app = app  # type: ignore[attr-defined]

    async def recovery_step(self: Any) -> None:  # as Recovery.on_recovery_completed does
        consumer.resume_partitions({tp})
        await consumer.perform_seek()

    return readers, reader, tp, placements, consumer, recovery, recovery_step


def test_a_seek_of_faust_s_fetcher_during_a_recovery_neither_places_nor_resumes_the_partitions(
    app: faust.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's fetcher seeks to the committed offsets when a fetch returns while the flow is
    stopped (a rebalance began). Taken for the recovery's own seek, it placed every partition a
    second time while the recovery placed them, and resumed them: the agents processed records
    under one placement that the other then placed again, and the outputs written after its
    read-back were written twice (dead letters: nothing else holds them off)."""
    from processors.positions import TopicPartition

    readers, reader, tp, placements, consumer, recovery, recovery_step = _recovery_rig(
        app, monkeypatch
    )

    async def run() -> None:
        hold = faust_engine._hold_resumes
        flow_stopped = asyncio.Event()

        async def fetcher_service() -> None:
            await flow_stopped.wait()
            await consumer.perform_seek()  # a fetch returned while the flow was stopped

        fetcher: asyncio.Future[None] | None = None

        async def first_step(self: Any) -> None:
            nonlocal fetcher
            await recovery_step(self)
            # Faust's recovery starts the fetcher at the end of its step (_fetcher.maybe_start):
            # its task is the step's child.
            fetcher = asyncio.ensure_future(fetcher_service())

        readers.assign([tp])
        placements.read_back.set()
        await asyncio.wait_for(hold(first_step)(recovery), 5)
        assert placements.calls == [True]
        assert reader._active == {TopicPartition("crm.raw.airship", 3)}

        # The next generation: revoked, assigned again, its recovery waits for its read-back.
        readers.forget([tp])
        readers.assign([tp])
        placements.read_back.clear()
        step = asyncio.ensure_future(hold(recovery_step)(recovery))
        for _ in range(3):
            await asyncio.sleep(0)
        assert placements.calls == [True, True]
        flow_stopped.set()  # Faust's fetcher seeks meanwhile
        for _ in range(3):
            await asyncio.sleep(0)
        # Nothing placed again, nothing resumed before the recovery placed it.
        assert placements.calls == [True, True]
        assert reader._active == set()
        placements.read_back.set()
        assert fetcher is not None
        await asyncio.wait_for(asyncio.gather(step, fetcher), 5)
        assert placements.calls == [True, True]
        assert reader._active == {TopicPartition("crm.raw.airship", 3)}
        assert reader._positions[TopicPartition("crm.raw.airship", 3)] == 5

    asyncio.run(run())


def test_a_placement_that_ends_after_the_next_assignment_resumes_nothing(
    app: faust.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery's placement can end late (its read-back waits for a loaded broker): after a
    revoke and the next assignment of the same partitions, before the next recovery places
    them. Its seek then succeeds; resumed, the partitions were processed from that placement
    until the next one placed them again (the outputs written meanwhile, twice)."""
    readers, reader, tp, placements, _consumer, recovery, recovery_step = _recovery_rig(
        app, monkeypatch
    )

    async def run() -> None:
        readers.assign([tp])
        step = asyncio.ensure_future(faust_engine._hold_resumes(recovery_step)(recovery))
        for _ in range(3):
            await asyncio.sleep(0)
        assert placements.calls == [True]
        readers.forget([tp])  # the next rebalance: revoked, and assigned again
        readers.assign([tp])
        placements.read_back.set()
        await asyncio.wait_for(step, 5)
        assert reader._active == set()  # the next recovery places it, then resumes it

    asyncio.run(run())


def test_the_leader_topic_is_paused_in_aiokafka_at_every_assignment(app: faust.App) -> None:
    """Nothing is written to the leader topic, and its assignment alone elects the leader: the
    fetcher holding a fetch on it every CRM_CONSUMER_FETCH_MAX_WAIT was a broker's CPU for
    nothing (issue 21)."""
    paused: list[Any] = []
    handed: list[Any] = []

    async def assigned_in_faust(loop: Any, assigned: Any, generation_id: int) -> None:
        handed.append(assigned)

    consumer = SimpleNamespace(app=app, threadsafe_partitions_assigned=assigned_in_faust)
    thread: Any = SimpleNamespace(
        consumer=consumer,
        thread_loop=None,
        _ensure_consumer=lambda: SimpleNamespace(pause=lambda *tps: paused.extend(tps)),
    )
    leader = TP(app._leader_assignor._leader_topic_name, 0)
    assigned = {leader, TP("crm.events", 0)}
    asyncio.run(AIOKafkaConsumerThread.on_partitions_assigned(thread, assigned, 3))
    assert [(tp.topic, tp.partition) for tp in paused] == [(leader.topic, 0)]
    assert handed == [assigned]
    # Never fetched, so no fetch time nor highwater: Faust's stall check leaves it alone (else
    # it logged "no fetch request sent" errors; the fake consumer has no fetcher to look into).
    AIOKafkaConsumerThread.verify_event_path(thread, 0.0, leader)


def test_the_agents_stopping_hooks_run_before_the_tables_stores_close(
    app: faust.App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM while a raw batch was in flight: Faust stops its tables before its agents, so
    the batch's dedupe marks (and the stop's pending positions) were written to a closed store,
    reopened behind Faust's back or failing on its lock (exit 70). The hooks now run first."""
    app.crm_settings = Settings.from_env({"CRM_DATA_DIR": str(tmp_path)})  # type: ignore[attr-defined]
    table = app.Table("marks", partitions=2, key_type=bytes, value_type=bytes)
    store = table.data
    store._db_for_partition(1)  # open, as a worker's first batch does
    order: list[str] = []

    async def table_stop() -> None:
        order.append("tables close")
        await store.stop()  # Faust's: drops the partitions' handles

    monkeypatch.setattr(table, "stop", table_stop)

    async def stopping() -> None:
        await asyncio.sleep(0)
        order.append("batch writes" if 1 in store._dbs else "batch writes to a closed store")
        store._db_for_partition(1)[b"k"] = b"v"

    hook = faust_engine.once(stopping)
    app.crm_stopping = [hook]  # type: ignore[attr-defined]

    async def stop() -> None:
        await app.tables.on_stop()
        await hook()  # the agent's own call as it ends: not a second run

    asyncio.run(stop())
    assert order == ["batch writes", "tables close"]


def test_once_runs_a_hook_a_single_time_and_every_caller_waits_for_it() -> None:
    runs: list[int] = []
    gate = asyncio.Event()

    async def hook() -> None:
        runs.append(1)
        await gate.wait()

    async def main() -> list[bool]:
        wrapped = faust_engine.once(hook)
        first = asyncio.ensure_future(wrapped())
        second = asyncio.ensure_future(wrapped())
        await asyncio.sleep(0.01)
        pending = [first.done(), second.done()]
        gate.set()
        await asyncio.gather(first, second)
        await wrapped()
        return pending

    assert asyncio.run(main()) == [False, False]
    assert runs == [1]
