"""Two workers attributing conversions, one of them killed (kill -9) at seeded random moments,
on the real broker: the attributions are exactly those the rule gives, each under its one id,
and ``GET /api/attribution`` answers exact totals from either worker (issue 24).

As ``test_attribution_crash.py`` for one worker, and ``test_scale_out.py`` for the stats: the
users' partitions move between the two workers at every kill and restart, so a user's state and
the hourly totals are restored from the attribution table's changelog on the other worker, and
back. The first kill lands while the raw path hands the touches over (raw Segment and Airship
records), the others while the conversions are attributed; some kills delete the victim's local
state.

``CRM_SCALE_SEED=<seed>`` replays a seed; ``CRM_SCALE_SEEDS`` runs more.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crmstream.broker import free_port
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.app import changelog_specs
from processors.attribution import windows_of
from tests.integration.attribution_harness import (
    Expected,
    Publisher,
    conversion_json,
    settled_totals,
)
from tests.integration.harness import WorkerProcess
from tests.integration.test_attribution_crash import D, H, _get, _id, _touches_in, history
from tests.kafka_helpers import read_topic

# Two workers restarted five times, each restart a rebalance and a table restore: on a loaded
# two-core machine this outlasts the default 300 s timeout.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(seconds=180),
    pytest.mark.crash,
    pytest.mark.timeout(900),
]

BASE_SEED = int(os.environ.get("CRM_SCALE_SEED", "0")) or 20261207
SEEDS = [BASE_SEED + i for i in range(int(os.environ.get("CRM_SCALE_SEEDS", "1")))]
ROUNDS = 4
PARTITIONS = 4


@pytest.mark.parametrize("seed", SEEDS)
def test_two_workers_one_killed_at_random_moments_credit_every_conversion_exactly_once(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    rng = random.Random(seed)
    base = crm_env_factory(
        CRM_ATTRIBUTION="true",
        CRM_PARTITIONS=str(PARTITIONS),
        CRM_WORKER_BATCH_SIZE="25",
        CRM_STATS_BATCH_SIZE="5",  # many small batches: more moments for a kill to land
    )
    ports = [free_port(), free_port()]
    envs = [
        {
            **base,
            "CRM_API_PORT": str(port),
            "CRM_API_URL": f"http://127.0.0.1:{port}",
            "CRM_METRICS_PORT": str(free_port()),
            "CRM_DATA_DIR": str(tmp_path / f"state-{i}"),
        }
        for i, port in enumerate(ports)
    ]
    settings = Settings.from_env(envs[0])
    create_topics(settings, extra=changelog_specs(settings))
    serde = AvroSerde(settings)
    out = Publisher(settings)
    t0 = (time.time_ns() // 1_000_000 - 8 * D) // H * H
    touches, raw, conversions = history(rng, t0)
    expected = Expected(windows_of(*settings.attribution_windows()))
    for user, items in touches.items():
        for t in items:
            expected.add(user, t)
    touch_ids = {t.event_id for items in touches.values() for t in items}
    workers = [WorkerProcess(env, tmp_path / f"worker-{i}.log") for i, env in enumerate(envs)]
    story: list[str] = []

    def kill_one(delay: float) -> None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            for i, w in enumerate(workers):
                if not w.alive():
                    pytest.fail(f"seed={seed}: worker {i} exited by itself\n{w.tail()}")
            time.sleep(0.05)
        victim = rng.choice([0, 1])
        wipe = rng.random() < 0.3
        workers[victim].kill()
        if wipe:
            shutil.rmtree(envs[victim]["CRM_DATA_DIR"], ignore_errors=True)
        pause = rng.uniform(0.5, 4.0)
        story.append(
            f"kill -9 worker {victim} after {delay:.2f}s"
            + (", state wiped" * wipe)
            + f", back after {pause:.1f}s"
        )
        time.sleep(pause)
        workers[victim].start()

    def publish_in_chunks(records: list[tuple[str, bytes | None, bytes]], step: int) -> None:
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            for topic in sorted({topic for topic, _, _ in chunk}):
                out.publish(topic, [(k, v) for t, k, v in chunk if t == topic])
            time.sleep(0.3)

    try:
        for worker in workers:
            worker.start()
        feeding = threading.Thread(
            target=publish_in_chunks, args=([(t, k, v) for t, k, v in raw], 25), daemon=True
        )
        feeding.start()
        kill_one(rng.uniform(2.0, 8.0))  # while the raw path hands the touches over
        feeding.join(timeout=120)
        read_topic(
            settings,
            settings.topic("attribution-inputs"),
            until=lambda got: _touches_in(got) >= touch_ids,
            timeout=240,
        )
        for c in conversions:
            expected.add(c.user_id, c)
        publisher = threading.Thread(
            target=publish_in_chunks,
            args=(
                [
                    ("conversions", c.user_id.encode(), conversion_json(c, with_id=True))
                    for c in conversions
                ],
                20,
            ),
            daemon=True,
        )
        publisher.start()
        for _ in range(ROUNDS):
            kill_one(rng.uniform(0.5, 6.0))
        publisher.join(timeout=120)

        want = expected.attributions()
        topic = settings.topic("attributions")
        got = read_topic(
            settings,
            topic,
            until=lambda msgs: len({_id(serde, topic, m) for m in msgs}) >= len(want),
            timeout=240,
        )
        seen: dict[str, dict[str, Any]] = {}
        for msg in got:
            _, record = serde.decode(msg.value(), topic)
            record["processed_at"] = 0
            aid = record["attribution_id"]
            # Written again after a crash: the same attribution, never another one.
            assert seen.setdefault(aid, record) == record, (seed, record, seen[aid])
        context = (
            f"seed={seed} (replay with CRM_SCALE_SEED={seed}): "
            + "; ".join(story)
            + f"; {len(got)} records read\n"
            + "\n".join(f"--- worker {i} ---\n{w.tail(10000)}" for i, w in enumerate(workers))
        )
        assert set(seen) == set(want), (
            context,
            sorted(set(want) - set(seen))[:5],
            sorted(set(seen) - set(want))[:5],
        )
        for aid, a in want.items():
            assert seen[aid] == a.record(0), (context, seen[aid], a.record(0))
        assert len(want) > 50 and any(a.control for a in want.values())
        assert any(r["outside_window"] for r in expected.unattributed())
        assert any(r["no_exposure"] for r in expected.unattributed())

        # Each worker holds some of the users: either answers the sums of both.
        for port in ports:
            body = settled_totals(
                lambda p=port: _get(f"http://127.0.0.1:{p}", {"from": t0 - D, "to": t0 + 10 * D}),
                expected,
            )
            assert body["campaigns"] == expected.rows(), (context, port, body["campaigns"])
            assert body["unattributed"] == expected.unattributed(), (context, port, body)
            assert body["conversions"] == sum(r["conversions"] for r in expected.rows())
    finally:
        for worker in workers:
            worker.stop()
