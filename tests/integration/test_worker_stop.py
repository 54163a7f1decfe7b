"""A SIGTERM is a clean stop, on the real broker: mid-stream, the worker flushes and closes its
outputs after its agents stopped; at any moment of its start-up (from the interpreter's own
start on), it exits 0. In both cases the restarted worker's outputs are exact: nothing was
committed that Kafka had not acknowledged, nothing is lost or written twice.

``CRM_STOP_SEED=<seed>`` replays the start-up moments of one seed."""

from __future__ import annotations

import os
import random
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
    samples,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_VENDOR = 120
BASE_SEED = int(os.environ.get("CRM_STOP_SEED", "0")) or 20261207


def _worker_env(crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path) -> dict[str, str]:
    return crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
        # Small batches, several in flight: a stop lands among unacknowledged outputs.
        CRM_WORKER_BATCH_SIZE="25",
        CRM_WORKER_MAX_INFLIGHT="4",
        CRM_STATS_BATCH_SIZE="5",
    )


def _published(env: dict[str, str], seed: int) -> tuple[Settings, Feed]:
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    feed = Feed(settings)
    feed.publish_all(samples(seed, PER_VENDOR))
    return settings, feed


def _exact_after_a_restart(
    worker: WorkerProcess, settings: Settings, feed: Feed, story: list[str]
) -> None:
    worker.start()
    try:
        out = read_outputs(settings, feed.expected, timeout=180)
        problems = exactness_failures(out, feed.expected)
        assert not problems, "; ".join(problems) + "\n" + "\n".join(story) + worker.tail(20000)
        assert feed.expected.dead_letters, "the samples must hold malformed records"
    finally:
        code = worker.stop(timeout=60)
    assert code == 0, f"the last stop exited {code}\n{worker.tail()}"


@pytest.mark.slow(seconds=120)
def test_sigterm_mid_stream_closes_the_outputs_after_the_agents(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = _worker_env(crm_env_factory, tmp_path)
    settings, feed = _published(env, BASE_SEED)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    deadline = time.monotonic() + 120
    while sum(a.accounted for a in worker.accounts().values()) < 50:
        assert worker.alive(), worker.tail()
        assert time.monotonic() < deadline, "the worker processed nothing\n" + worker.tail()
        time.sleep(0.1)
    code = worker.stop(timeout=60)
    log = worker.tail(200_000)
    assert code == 0, f"SIGTERM mid-stream exited {code}\n{log[-6000:]}"
    closed = max(log.rfind("outputs flushed and closed"), log.rfind("outputs closed with"))
    assert closed >= 0, "the outputs were not closed\n" + log[-6000:]
    # After Faust stopped the agents and the consumer (its last commit), not before.
    stopped = log.rfind("Closing event loop")
    assert 0 <= stopped < closed, log[-6000:]
    _exact_after_a_restart(worker, settings, feed, ["SIGTERM mid-stream"])


@pytest.mark.slow(seconds=150)
def test_sigterm_at_any_moment_of_start_up_is_a_clean_stop(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Right after the process exists (the interpreter's own start: it died of the signal,
    -15), then at seeded random moments of the first 3 s (imports, topics, Faust's start,
    recovery)."""
    seed = BASE_SEED
    rng = random.Random(seed)
    moments = [0.0, *sorted(round(rng.uniform(0, 3), 2) for _ in range(5))]
    env = _worker_env(crm_env_factory, tmp_path)
    settings, feed = _published(env, seed)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    story: list[str] = [f"seed={seed} (replay with CRM_STOP_SEED={seed})"]
    for at in moments:
        worker.start()
        time.sleep(at)
        code = worker.stop(timeout=60)
        story.append(f"SIGTERM {at:.2f}s after the start: exit {code}")
        assert code == 0, "\n".join(story) + "\n" + worker.tail()
    _exact_after_a_restart(worker, settings, feed, story)
