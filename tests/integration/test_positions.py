"""Records the consumer drops on the way are read again (issue 11), shown with the fault itself:
a test-only ``sitecustomize`` (tests/integration/faults) makes the worker's consumer silently
drop a block of fetched records once, its fetch position already past them. Without the
position checks those records are never processed and the group commits past them."""

from __future__ import annotations

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
    samples,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULTS = Path(__file__).parent / "faults"


@pytest.mark.parametrize(
    ("where", "drop", "cause"),
    [
        # Mid-partition: the next record handed over shows the hole.
        ("middle", "raw.airship:0:20:119", "skipped"),
        # At the end: no later record comes, only the stall watchdog can see it.
        ("tail", "raw.pinpoint:1:10:100000", "stalled"),
        # On the stats agent's input.
        ("stats", "stats-updates:0:1:100000", "stalled"),
    ],
)
def test_records_dropped_by_the_consumer_are_read_again(
    where: str,
    drop: str,
    cause: str,
    crm_env_factory: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    env = crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
        CRM_STATS_BATCH_SIZE="5",
        CRM_TEST_DROP=drop,
        PYTHONPATH=str(FAULTS),
    )
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("CRM_")})
    create_topics(settings, extra=changelog_specs(settings))
    feed = Feed(settings)
    feed.publish_all(samples(31, 300))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        out = read_outputs(settings, feed.expected, timeout=120)
        assert not exactness_failures(out, feed.expected), worker.tail()
        log = worker.log.read_text()
        assert f"FAULT: dropping {drop}" in log
        assert worker.metric("crm_worker_rewinds_total") >= 1, log[-5000:]
        assert ("records from" in log) if cause == "skipped" else ("nothing processed" in log)
    finally:
        worker.stop()
