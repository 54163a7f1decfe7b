"""kill -9 at seeded random moments, on the real broker: nothing lost, nothing written twice,
every campaign-stats total exact (issue 11).

Raw records of all five vendors (duplicates, re-sent copies, malformed records) are published
while one worker is killed again and again: early in its start-up (during recovery), mid-stream,
with batches in flight, sometimes with its local state deleted. In the end:

* every canonical event id is on ``events`` exactly once;
* every malformed record has exactly one dead letter, at its raw position;
* the latest ``campaign-stats`` upsert of every (campaign, window) is the exact count;
* the query API's events per message id of every hourly window are exact (its kept ids, the
  overflow, the events without a message id);
* so are its events per variant id (its kept ids, the control group, the overflow, the events
  without a variant id) and their unique recipients.

The seed is printed with any failure; ``CRM_CRASH_SEED=<seed>`` replays it, and
``CRM_CRASH_SEEDS``, ``CRM_CRASH_ROUNDS``, ``CRM_CRASH_PER_VENDOR`` and
``CRM_CRASH_DELAY_MIN`` / ``_MAX`` (seconds) run a longer or larger soak locally.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmstream.broker import free_port
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.app import changelog_specs
from tests.integration.harness import (
    CONTROL,
    Feed,
    WorkerProcess,
    exactness_failures,
    message_failures,
    read_outputs,
    samples,
    variant_failures,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.crash]

BASE_SEED = int(os.environ.get("CRM_CRASH_SEED", "0")) or 20261202
SEEDS = [BASE_SEED + i for i in range(int(os.environ.get("CRM_CRASH_SEEDS", "2")))]
ROUNDS = int(os.environ.get("CRM_CRASH_ROUNDS", "4"))
PER_VENDOR = int(os.environ.get("CRM_CRASH_PER_VENDOR", "600"))
DELAY = (
    float(os.environ.get("CRM_CRASH_DELAY_MIN", "0.3")),
    float(os.environ.get("CRM_CRASH_DELAY_MAX", "7.0")),
)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_at_random_moments_loses_nothing_and_counts_everything_once(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    _kill_9_rounds(seed, crm_env_factory, tmp_path)


@pytest.mark.parametrize("seed", [s + 500 for s in SEEDS])
def test_kill_9_with_positions_far_behind_the_marks_writes_and_counts_nothing_twice(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Positions saved at most once an hour (CRM_POSITIONS_INTERVAL): a partition's position is
    saved with its first batch after each start and not again before the next kill, so every
    restart resumes far behind the dedupe marks and the outputs, and processes again records
    whose events, dead letters and stats increments are already written. None of them may be
    written or counted twice."""
    log = _kill_9_rounds(
        seed, crm_env_factory, tmp_path, after_placed=True, CRM_POSITIONS_INTERVAL="1h"
    )
    read_back = sum(int(n) for n in READ_BACK.findall(log))
    assert read_back > 0, (
        f"seed={seed}: no restart processed records whose outputs were written: the test "
        "did not put a position behind the outputs"
    )


@pytest.mark.parametrize("seed", [s + 900 for s in SEEDS])
def test_kill_9_while_stats_windows_are_in_memory_loses_nothing_and_counts_everything_once(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Stats windows written 5 s after they became dirty (CRM_STATS_FLUSH_INTERVAL, issue 21),
    each kill 0.3-7 s after the worker placed its partitions: it lands while windows hold
    increments that are only in memory, mostly after a commit (every 2.8 s) made later batches'
    positions committable. Those were committed only up to the oldest batch not written, so the
    restart counts them again: exact totals and uniques, as above. (With each batch's end made
    committable at once, this test lost increments: bench/README.md, "Write-behind".)"""
    _kill_9_rounds(
        seed, crm_env_factory, tmp_path, after_placed=True, CRM_STATS_FLUSH_INTERVAL="5s"
    )


READ_BACK = re.compile(r"(\d+) raw records already had their outputs written")
PLACED = re.compile(r"positioned \d+ raw and \d+ stats partitions")


def _kill_9_rounds(
    seed: int,
    crm_env_factory: Callable[..., dict[str, str]],
    tmp_path: Path,
    *,
    after_placed: bool = False,
    **extra_env: str,
) -> str:
    """The rounds of kills and the exactness checks; returns the worker's log.
    ``after_placed``: each kill's delay counts from the moment the worker placed its
    partitions (it is then processing), not from its start."""
    rng = random.Random(seed)
    api = f"http://127.0.0.1:{free_port()}"
    env = crm_env_factory(
        CRM_API_PORT=api.rsplit(":", 1)[1],
        CRM_API_URL=api,
        CRM_STATS_MAX_MESSAGES="2",  # fewer than some windows' message ids: an overflow
        CRM_STATS_MAX_VARIANTS="2",  # and variant ids
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
        # Small batches and several in flight: more moments at which a kill lands between an
        # output, its acknowledgement, the dedupe marks and the commit.
        CRM_WORKER_BATCH_SIZE="25",
        CRM_WORKER_MAX_INFLIGHT="4",
        CRM_STATS_BATCH_SIZE="5",
        **extra_env,
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    sets = samples(seed, PER_VENDOR)
    feed = Feed(settings)
    # A third is waiting when the worker starts; the rest arrives while it is being killed.
    third = PER_VENDOR // 3
    feed.publish_all(sets, slice(0, third))

    def publish_rest() -> None:
        step = max(50, PER_VENDOR // 40)
        for start in range(third, PER_VENDOR, step):
            feed.publish_all(sets, slice(start, start + step))
            time.sleep(0.3)

    worker = WorkerProcess(env, tmp_path / "worker.log")
    publisher = threading.Thread(target=publish_rest, daemon=True)
    story: list[str] = []
    try:
        worker.start()
        publisher.start()
        for round_ in range(ROUNDS):
            # From the middle of start-up (group join, table recovery) to well into processing.
            delay = rng.uniform(*DELAY)
            if after_placed:
                _wait_placed(worker, seed)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if not worker.alive():
                    pytest.fail(f"seed={seed}: the worker exited by itself\n{worker.tail()}")
                time.sleep(0.05)
            worker.kill()
            wipe = rng.random() < 0.3
            if wipe:
                shutil.rmtree(env["CRM_DATA_DIR"], ignore_errors=True)
            story.append(f"round {round_}: kill -9 after {delay:.2f}s" + (", state wiped" * wipe))
            worker.start()
        publisher.join(timeout=120)
        out = read_outputs(settings, feed.expected, timeout=180)
        problems = exactness_failures(out, feed.expected)
        if problems:
            worker.dump_stacks()
        assert not problems, (
            f"seed={seed} (replay with CRM_CRASH_SEED={seed} CRM_CRASH_SEEDS=1): "
            + "; ".join(problems)
            + "\n"
            + "\n".join(story)
            + f"\n{worker.tail(20000)}"
        )
        wrong = message_failures(
            lambda path, params: _get(api, path, params), feed.expected, "1h", 2
        )
        assert not wrong, f"seed={seed}: " + "; ".join(wrong[:5]) + "\n" + "\n".join(story)
        assert any(
            len({m for m, _ in +counted if m is not None}) > 2
            for key, counted in feed.expected.messages.items()
            if b"|1h|" in key
        ), "the samples must have windows with more message ids than kept"
        wrong = variant_failures(
            lambda path, params: _get(api, path, params), feed.expected, "1h", 2
        )
        assert not wrong, f"seed={seed}: " + "; ".join(wrong[:5]) + "\n" + "\n".join(story)
        hourly = [c for key, c in feed.expected.variants.items() if b"|1h|" in key]
        assert any(
            len({v for v, _ in +counted if v not in (None, CONTROL)}) > 2 for counted in hourly
        ), "the samples must have windows with more variant ids than kept"
        assert any(CONTROL in {v for v, _ in +counted} for counted in hourly), (
            "the samples must have a control group"
        )
        assert feed.expected.dead_letters, "the samples must hold malformed records"
        assert len(feed.expected.event_ids) > 1000
    finally:
        worker.stop()
    return worker.log.read_text(errors="replace")


def _wait_placed(worker: WorkerProcess, seed: int) -> None:
    """Until the worker's log shows that its latest start placed the partitions."""
    deadline = time.monotonic() + 120
    while not PLACED.search(worker.log.read_text(errors="replace").rsplit("===== start", 1)[-1]):
        if not worker.alive():
            pytest.fail(f"seed={seed}: the worker exited by itself\n{worker.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"seed={seed}: the partitions were not placed in 120s\n{worker.tail()}")
        time.sleep(0.1)


def _get(base: str, path: str, params: dict[str, Any]) -> Any:
    """The API's 200 answer, waiting out 503s and a refused connection (the worker settling,
    or still starting, after its last restart: on a loaded machine a start took up to 8 s)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            response = httpx.get(base + path, params=params, timeout=30)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code == 200, response.text
    return response.json()
