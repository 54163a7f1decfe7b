"""A worker that lost its disk, larger than the crash test's wipes (issue 23): its dedupe marks come
back from the changelogs (batched, the restore reading each changelog to its last record), and
every guarantee holds, on the real broker.

Seeded records of all five vendors go through one worker; it is killed (-9), its data dir is
deleted, a new worker restores, then the rest of the records arrive with byte-for-byte copies
of a third of the first ones. In the end every canonical event id is on ``events`` exactly once,
every malformed record has one dead letter, and every ``campaign-stats`` total is exact: the
copies met the marks the new worker restored.

``CRM_RESTORE_SEED`` replays a seed; ``CRM_RESTORE_PER_VENDOR`` runs it larger.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crmstream.broker import free_port
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.app import changelog_specs
from tests.integration.harness import (
    Feed,
    WorkerProcess,
    exactness_failures,
    read_outputs,
    require_alive,
    samples,
    wait_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.crash]

SEED = int(os.environ.get("CRM_RESTORE_SEED", "0")) or 20261206
PER_VENDOR = int(os.environ.get("CRM_RESTORE_PER_VENDOR", "1600"))


def test_a_worker_that_lost_its_disk_restores_every_mark_and_stays_exact(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    port = free_port()
    env = crm_env_factory(
        CRM_METRICS_PORT=str(port),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
        CRM_PARTITIONS="3",
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    sets = samples(SEED, PER_VENDOR)
    feed = Feed(settings)
    half = PER_VENDOR // 2
    feed.publish_all(sets, slice(0, half))
    first_ids = len(feed.expected.event_ids)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    readyz = f"http://127.0.0.1:{port}/readyz"
    try:
        worker.start()
        out = read_outputs(settings, feed.expected, timeout=300)
        assert not exactness_failures(out, feed.expected), worker.tail()
        # The marks go to the changelog once the outputs are acknowledged: let them land, so
        # that what the new worker knows comes from the restore.
        time.sleep(5)
        worker.kill()
        shutil.rmtree(env["CRM_DATA_DIR"])
        worker.start()
        wait_status(readyz, 200, timeout=300)
        require_alive(worker, "after the restore")
        # Restored by the worker's own changelog reader (CRM_FAST_RESTORE), not record by record.
        assert "fast restore:" in worker.tail(200_000).rsplit("===== start", 1)[-1], worker.tail()
        # Copies of a third of the first records (their events must not come again), then the
        # rest.
        for vendor, sample in sets.items():
            feed.publish(vendor, sample.records[: half // 3])
        feed.publish_all(sets, slice(half, None))
        out = read_outputs(settings, feed.expected, timeout=300)
        problems = exactness_failures(out, feed.expected)
        assert not problems, f"seed={SEED}: " + "; ".join(problems) + "\n" + worker.tail(20000)
        assert first_ids > 2500 and len(feed.expected.event_ids) > 2 * 2500 - 500
        assert feed.expected.dead_letters, "the samples must hold malformed records"
    finally:
        worker.stop()
