"""kill -9 at seeded random moments while conversions are attributed, on the real broker: the
attributions are exactly those the rule gives, each under its one id, and the totals of
``GET /api/attribution`` are exact (issue 24).

Touches are raw Segment and Airship records (some of them the holdout's CONTROL), through the raw
path, which hands them to the attribution; once every one is in ``attribution-inputs`` (the rule
decides on arrival, so the expectation needs them first), the conversions are published, in
chunks, while the worker is killed again and again, sometimes with its local state deleted.
Some conversions repeat a name for the same campaign, some repeat a conversion id, some come
after the window or before any touch.

``CRM_CRASH_SEED=<seed>`` replays a seed; ``CRM_CRASH_SEEDS`` and ``CRM_CRASH_ROUNDS`` run more.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crmstream.broker import free_port
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.app import changelog_specs
from processors.attribution import windows_of
from tests.integration.attribution_harness import (
    D,
    H,
    Publisher,
    check_attributions,
    conversion_records,
    expected_of,
    get_attribution,
    history,
    publish_in_chunks,
    settled_totals,
    wait_for_touches,
)
from tests.integration.harness import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=150), pytest.mark.crash]

BASE_SEED = int(os.environ.get("CRM_CRASH_SEED", "0")) or 20261206
SEEDS = [BASE_SEED + i for i in range(int(os.environ.get("CRM_CRASH_SEEDS", "1")))]
ROUNDS = int(os.environ.get("CRM_CRASH_ROUNDS", "4"))


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_while_attributing_credits_every_conversion_exactly_once(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    rng = random.Random(seed)
    api = f"http://127.0.0.1:{free_port()}"
    env = crm_env_factory(
        CRM_ATTRIBUTION="true",
        CRM_API_PORT=api.rsplit(":", 1)[1],
        CRM_API_URL=api,
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_BATCH_SIZE="5",  # many small batches: more moments for a kill to land
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    out = Publisher(settings)
    t0 = (time.time_ns() // 1_000_000 - 8 * D) // H * H
    touches, raw, conversions = history(rng, t0)
    expected = expected_of(windows_of(*settings.attribution_windows()), touches)
    for topic in sorted({topic for topic, _, _ in raw}):
        out.publish(topic, [(key, value) for t, key, value in raw if t == topic])

    worker = WorkerProcess(env, tmp_path / "worker.log")
    story: list[str] = []

    def kill_after(delay: float, wipe: bool) -> None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if not worker.alive():
                pytest.fail(f"seed={seed}: the worker exited by itself\n{worker.tail()}")
            time.sleep(0.05)
        worker.kill()
        if wipe:
            shutil.rmtree(env["CRM_DATA_DIR"], ignore_errors=True)
        story.append(f"kill -9 after {delay:.2f}s" + (", state wiped" * wipe))
        worker.start()

    try:
        worker.start()
        kill_after(rng.uniform(2.0, 8.0), wipe=False)  # while the touches are fed
        wait_for_touches(settings, touches)
        for c in conversions:
            expected.add(c.user_id, c)
        publisher = threading.Thread(
            target=publish_in_chunks, args=(out, conversion_records(conversions), 20), daemon=True
        )
        publisher.start()
        for _ in range(ROUNDS):
            kill_after(rng.uniform(0.5, 6.0), wipe=rng.random() < 0.3)
        publisher.join(timeout=120)

        def context() -> str:
            return (
                f"seed={seed} (replay with CRM_CRASH_SEED={seed}): "
                + "; ".join(story)
                + f"\n{worker.tail(20000)}"
            )

        check_attributions(settings, expected, context)
        body = settled_totals(
            lambda: get_attribution(api, {"from": t0 - D, "to": t0 + 10 * D}), expected
        )
        assert body["campaigns"] == expected.rows(), (context(), body["campaigns"], expected.rows())
        assert body["unattributed"] == expected.unattributed(), (context(), body["unattributed"])
    finally:
        worker.stop()
