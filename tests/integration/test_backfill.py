"""A backfill (issue 13 item 2): a feed whose events are months old gets exact campaign stats.

Stats windows are kept ``CRM_STATS_RETENTION`` (by default three days for 1m windows, 90 days for
1h ones) after their *last update*,
not after their start (processors/stats.py), so connecting a bucket that holds last month's
events counts all of them. The sample events lie in January 2026 (each vendor's sample around
its own day of that month; several seeds spread them over the 30 days), far older than the
retention, and the worker runs with the production default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

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

DAY_MS = 86_400_000


@pytest.mark.slow(seconds=60)
def test_a_30_day_backfill_gets_exact_hourly_totals(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = crm_env_factory(CRM_PARTITIONS="4")
    assert "CRM_STATS_RETENTION" not in env  # the production default
    settings = Settings.from_env(env)
    assert settings.stats_retention_seconds() == {"1m": 3 * 86400, "1h": 90 * 86400}
    create_topics(settings, extra=changelog_specs(settings))
    feed = Feed(settings)
    for seed in range(7):
        feed.publish_all(samples(20261100 + seed, 60))

    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        out = read_outputs(settings, feed.expected, timeout=240)
        assert not exactness_failures(out, feed.expected), worker.tail(20000)
    finally:
        assert worker.stop() == 0, worker.tail()

    # Keys are campaign|window|start (processors.records.stats_upsert_key).
    starts = sorted(
        int(key.rsplit(b"|", 1)[1])
        for key in feed.expected.stats
        if key.rsplit(b"|", 2)[1] == b"1h"
    )
    days = {start // DAY_MS for start in starts}
    assert len(days) >= 15, sorted(days)  # spread over the month
    assert (starts[-1] - starts[0]) >= 20 * DAY_MS
    # Every window is far older than the retention: an event-time expiry would count none.
    assert time.time() * 1000 - starts[-1] > 10 * settings.stats_retention_seconds()["1m"] * 1000
