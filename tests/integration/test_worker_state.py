"""A worker whose table state is damaged (issue 13, "Bad input and faults"): a corrupt local
store is moved aside and its partitions restored from the changelog, exactly; dedupe state lost
from the changelog too stops the worker with a clear message, unless the operator accepts it."""

from __future__ import annotations

import glob
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from crmstream.broker import free_port
from crmstream.kafka import client_config
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.app import EXIT_STATE_LOST, changelog_specs
from tests.integration.harness import (
    Feed,
    WorkerProcess,
    exactness_failures,
    read_outputs,
    samples,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _setup(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> tuple[dict[str, str], Settings, Feed, dict]:
    env = crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    return env, settings, Feed(settings), samples(91, 200)


def test_a_corrupt_local_store_is_restored_from_the_changelog(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env, settings, feed, sets = _setup(crm_env_factory, tmp_path)
    feed.publish_all(sets, slice(0, 120))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    assert not exactness_failures(read_outputs(settings, feed.expected), feed.expected)
    assert worker.stop() == 0

    stores = glob.glob(f"{env['CRM_DATA_DIR']}/**/tables/dedupe-*.db", recursive=True)
    assert stores
    for store in stores:
        for manifest in glob.glob(f"{store}/MANIFEST-*"):
            Path(manifest).write_bytes(b"not a manifest" * 50)
    # Every record again (all duplicates now), and new ones.
    feed.publish_all(sets, slice(0, 200))
    worker.start()
    try:
        out = read_outputs(settings, feed.expected)
        assert not exactness_failures(out, feed.expected), worker.tail(20000)
        assert "does not open" in worker.log.read_text()
        assert glob.glob(f"{env['CRM_DATA_DIR']}/**/tables/dedupe-*.db.corrupt-*", recursive=True)
    finally:
        assert worker.stop() == 0, worker.tail()


@pytest.mark.slow(seconds=85)
def test_lost_dedupe_state_stops_the_worker_unless_the_operator_accepts_it(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env, settings, feed, sets = _setup(crm_env_factory, tmp_path)
    feed.publish_all(sets, slice(0, 100))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    assert not exactness_failures(read_outputs(settings, feed.expected), feed.expected)
    assert worker.stop() == 0

    # The local state and the dedupe changelog are gone; the group's offsets are not.
    shutil.rmtree(env["CRM_DATA_DIR"])
    changelog = settings.topic(f"{settings.app_id}-dedupe-changelog")
    admin = AdminClient(client_config(settings))
    admin.delete_topics([changelog])[changelog].result(30)
    worker.start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail(f"the worker went on without its dedupe state\n{worker.tail()}")
    assert code == EXIT_STATE_LOST, worker.tail()
    assert "CRM_ALLOW_STATE_RESET=true" in worker.log.read_text()

    # The operator accepts it: the worker goes on from the committed offsets.
    feed.publish_all(sets, slice(100, 200))
    accepting = WorkerProcess({**env, "CRM_ALLOW_STATE_RESET": "true"}, tmp_path / "accepting.log")
    accepting.start()
    try:
        out = read_outputs(settings, feed.expected)
        assert feed.expected.event_ids <= set(out.event_ids), accepting.tail()
        assert accepting.alive()
    finally:
        assert accepting.stop() == 0, accepting.tail()


def test_a_killed_worker_leaves_nothing_in_the_temp_dir(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """The RocksDB options template (ZSTD on the write-ahead log) is made in the worker's state
    directory, not the system temp dir (from which a kill -9 left it undeleted), and is made
    again at the next start."""
    env, settings, feed, sets = _setup(crm_env_factory, tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    feed.publish_all(sets, slice(0, 60))
    template = Path(env["CRM_DATA_DIR"]) / "rocksdb-options" / "store"
    worker = WorkerProcess(env, tmp_path / "worker.log")
    for _ in range(2):
        worker.start()
        assert not exactness_failures(read_outputs(settings, feed.expected), feed.expected)
        worker.kill()
        assert worker.proc is not None and worker.proc.returncode == -9
        assert sorted(p.name for p in temp.iterdir()) == []
        assert list(template.glob("OPTIONS-*")), "the template is in the state directory"
        feed.publish_all(sets, slice(60, 120))
