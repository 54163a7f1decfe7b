"""Several workers in one group, on the real broker (issue 13): partitions split between them,
and kill -9, SIGTERM (a rolling restart), scaling up and down while records flow lose nothing,
let no duplicate through and keep every campaign-stats total exact.

Like tests/integration/test_crash.py, expected outputs are computed independently
(tests/integration/harness.py), the timing is seeded, and a failure prints the seed
(``CRM_SCALE_SEED=<seed>`` replays it; ``CRM_SCALE_SEEDS`` / ``CRM_SCALE_PER_VENDOR`` soak).
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
from tests.integration.harness import (
    Feed,
    Position,
    WorkerProcess,
    exactness_failures,
    read_outputs,
    samples,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.crash]

BASE_SEED = int(os.environ.get("CRM_SCALE_SEED", "0")) or 20261203
SEEDS = [BASE_SEED + i for i in range(int(os.environ.get("CRM_SCALE_SEEDS", "1")))]
PER_VENDOR = int(os.environ.get("CRM_SCALE_PER_VENDOR", "600"))
PARTITIONS = 4


class Group:
    """Worker processes sharing one app id (one consumer group), each with its own data dir
    and metrics port, as the Helm StatefulSet runs them."""

    def __init__(self, base_env: dict[str, str], root: Path) -> None:
        self.base_env = base_env
        self.root = root
        self.workers: dict[int, WorkerProcess] = {}

    def env(self, index: int) -> dict[str, str]:
        env = dict(self.base_env)
        env["CRM_DATA_DIR"] = str(self.root / f"worker-{index}")
        env["CRM_METRICS_PORT"] = str(free_port())
        return env

    def start(self, index: int) -> None:
        worker = WorkerProcess(self.env(index), self.root / f"worker-{index}.log")
        worker.start()
        self.workers[index] = worker

    def kill(self, index: int, *, wipe: bool = False) -> None:
        self.workers[index].kill()
        if wipe:
            shutil.rmtree(self.root / f"worker-{index}", ignore_errors=True)

    def stop(self, index: int) -> int | None:
        return self.workers[index].stop(timeout=60)

    def alive(self) -> list[int]:
        return [i for i, w in self.workers.items() if w.alive()]

    def logs(self, chars: int = 6000) -> str:
        return "\n".join(f"--- worker {i} ---\n{w.tail(chars)}" for i, w in self.workers.items())

    def stop_all(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=60)


def _setup(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path, seed: int, **extra_env: str
) -> tuple[Settings, Feed, dict, Group]:
    env = crm_env_factory(
        CRM_PARTITIONS=str(PARTITIONS),
        CRM_STATS_RETENTION="3650d",
        CRM_WORKER_BATCH_SIZE="25",
        CRM_WORKER_MAX_INFLIGHT="4",
        CRM_STATS_BATCH_SIZE="5",
        **extra_env,
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    return settings, Feed(settings), samples(seed, PER_VENDOR), Group(env, tmp_path)


def _publish_in_background(feed: Feed, sets: dict, start: int, seconds: float) -> threading.Thread:
    step = max(20, (PER_VENDOR - start) // max(1, int(seconds / 0.3)))

    def run() -> None:
        for first in range(start, PER_VENDOR, step):
            feed.publish_all(sets, slice(first, first + step))
            time.sleep(0.3)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _check(settings: Settings, feed: Feed, group: Group, seed: int, story: list[str]) -> None:
    out = read_outputs(settings, feed.expected, timeout=240)
    problems = exactness_failures(out, feed.expected)
    assert not problems, (
        f"seed={seed}: "
        + "; ".join(problems)
        + "\n"
        + "\n".join(story)
        + "\n"
        + _repeated_dead_letters(group, out.dead_letters)
        + group.logs()
    )
    assert len(feed.expected.event_ids) > 1000 and feed.expected.dead_letters


def _repeated_dead_letters(group: Group, dead_letters: list[Position]) -> str:
    """Every worker's log lines about the raw partitions of the dead letters written twice.

    A second dead letter for one raw record means that record was processed twice and its first
    dead letter was not known the second time: look for its ``dead letter ... at <position>``
    lines (which worker, when; ``already written by an earlier run`` when the read-back found
    it), the partition's placements (``<partition> at <offset> (saved|new, committed ...); <n>
    read back``: placed at or below the offset, with the first dead letter not read back), and
    seeks of the partition between the two (``reading from <offset> again``: a stall check or
    a gap; ``moved while its stall was being checked``). The whole logs stay under the test's
    tmp_path (``--basetemp=DIR`` keeps them).
    """
    repeated = sorted({p for p in dead_letters if dead_letters.count(p) > 1})
    if not repeated:
        return ""
    partitions = {f"{topic}/{partition}" for topic, partition, _ in repeated}
    lines = [f"dead letters written twice: {repeated}; logs in {group.root}"]
    for index, worker in group.workers.items():
        for line in worker.tail(10_000_000).splitlines():
            if any(f"{p}/" in line or f"{p} " in line or f"{p}:" in line for p in partitions):
                lines.append(f"worker {index}: {line}")
    return "\n".join(lines) + "\n"


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("seed", SEEDS)
def test_two_workers_killed_and_restarted_at_random_moments(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Two workers; at seeded moments one of them gets kill -9 (sometimes losing its local
    state) or SIGTERM, and comes back a few seconds later, as Kubernetes restarts a pod."""
    rng = random.Random(seed)
    settings, feed, sets, group = _setup(crm_env_factory, tmp_path, seed)
    feed.publish_all(sets, slice(0, PER_VENDOR // 3))
    story: list[str] = []
    try:
        group.start(0)
        group.start(1)
        publisher = _publish_in_background(feed, sets, PER_VENDOR // 3, 20)
        for round_ in range(4):
            time.sleep(rng.uniform(1.0, 6.0))
            victim = rng.choice([0, 1])
            how = rng.choice(["kill", "kill", "term"])
            wipe = how == "kill" and rng.random() < 0.3
            if how == "kill":
                group.kill(victim, wipe=wipe)
            else:
                code = group.stop(victim)
                assert code == 0, f"seed={seed}: SIGTERM exit {code}\n{group.logs()}"
            pause = rng.uniform(0.5, 4.0)
            story.append(
                f"round {round_}: {how} worker {victim}"
                + (", state wiped" * wipe)
                + f", back after {pause:.1f}s"
            )
            time.sleep(pause)
            group.start(victim)
            assert len(group.alive()) == 2, f"seed={seed}: a worker exited\n{group.logs()}"
        publisher.join(timeout=180)
        _check(settings, feed, group, seed, story)
    finally:
        group.stop_all()


@pytest.mark.parametrize("seed", SEEDS)
def test_scaling_from_one_to_three_workers_and_back_while_records_flow(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """1 worker, then 3 (each join is a rebalance while batches are in flight), then back to 1
    by SIGTERM, as `kubectl scale` does; records keep arriving throughout."""
    _scale_one_three_one(seed, crm_env_factory, tmp_path)


@pytest.mark.parametrize("seed", [s + 900 for s in SEEDS])
def test_scaling_while_stats_windows_are_in_memory(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """The same with stats windows written 5 s after they became dirty
    (CRM_STATS_FLUSH_INTERVAL, issue 21): every rebalance finds windows only in memory (each
    worker drops them and its partitions are counted again from their committed offsets), and
    each SIGTERM writes its own before the worker leaves."""
    _scale_one_three_one(seed, crm_env_factory, tmp_path, CRM_STATS_FLUSH_INTERVAL="5s")


def _scale_one_three_one(
    seed: int, crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path, **extra_env: str
) -> None:
    rng = random.Random(seed)
    settings, feed, sets, group = _setup(crm_env_factory, tmp_path, seed, **extra_env)
    feed.publish_all(sets, slice(0, PER_VENDOR // 4))
    story: list[str] = []
    try:
        group.start(0)
        publisher = _publish_in_background(feed, sets, PER_VENDOR // 4, 25)
        for index in (1, 2):
            time.sleep(rng.uniform(1.5, 5.0))
            group.start(index)
            story.append(f"worker {index} joined")
        time.sleep(rng.uniform(4.0, 8.0))
        for index in (2, 1):
            code = group.stop(index)
            story.append(f"worker {index} stopped (SIGTERM), exit {code}")
            assert code == 0, f"seed={seed}\n" + "\n".join(story) + group.logs()
            time.sleep(rng.uniform(1.0, 4.0))
        assert group.alive() == [0], f"seed={seed}\n{group.logs()}"
        publisher.join(timeout=180)
        _check(settings, feed, group, seed, story)
    finally:
        group.stop_all()
