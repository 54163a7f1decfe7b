"""The worker's output producer on a real broker: each agent (asyncio task) waits for, and gets
the changelog offsets of, its own records only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crmstream.settings import Settings
from crmstream.topics import TopicSpec, create_topics
from processors.outputs import ConfluentOutputs
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def test_each_task_acks_its_own_batch(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(CRM_PARTITIONS="2")
    create_topics(
        settings,
        extra=[TopicSpec("out", "test output"), TopicSpec("log-a", "a"), TopicSpec("log-b", "b")],
    )
    out, log_a, log_b = (settings.topic(t) for t in ("out", "log-a", "log-b"))
    outputs = ConfluentOutputs(settings)

    async def agent(changelog: str, n: int) -> list[dict[tuple[str, int], int]]:
        reports = []
        for round_ in range(3):
            for i in range(n):
                outputs.send(out, f"{changelog}-{round_}-{i}".encode(), b"v")
                outputs.send_changelog(changelog, i % 2, f"k{i}".encode(), b"1")
                if i % 7 == 0:
                    await asyncio.sleep(0)  # let the other agent interleave its sends
            reports.append(await outputs.seal())
        # Nothing sent since: an empty acknowledgement.
        reports.append(await outputs.seal())
        return reports

    async def main() -> tuple[list, list]:
        await outputs.start()
        a, b = await asyncio.gather(agent(log_a, 40), agent(log_b, 25))
        return a, b

    try:
        reports_a, reports_b = asyncio.run(main())
    finally:
        outputs.close()

    # Each round reports the offsets of the task's own records only: its own changelog (both
    # partitions, growing) and the output partitions it wrote to, never the other task's log.
    for reports, topic in ((reports_a, log_a), (reports_b, log_b)):
        for r in reports[:3]:
            assert {tp for tp in r if tp[0] != out} == {(topic, 0), (topic, 1)}
            assert {tp for tp in r if tp[0] == out} <= {(out, 0), (out, 1)}
        assert reports[3] == {}
        for p in (0, 1):
            offsets = [r[(topic, p)] for r in reports[:3]]
            assert offsets == sorted(offsets) and len(set(offsets)) == 3
    records = read_topic(settings, out, until=lambda r: len(r) >= 3 * (40 + 25))
    assert len(records) == 3 * (40 + 25)


def test_a_sealed_batch_is_awaited_while_the_next_is_sent(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(CRM_PARTITIONS="1")
    create_topics(settings, extra=[TopicSpec("out", "test output"), TopicSpec("log", "log")])
    out, log = settings.topic("out"), settings.topic("log")
    outputs = ConfluentOutputs(settings)

    async def main() -> list[dict[tuple[str, int], int]]:
        await outputs.start()
        sealed = []
        for round_ in range(3):
            for i in range(20):
                outputs.send(out, f"{round_}-{i}".encode(), b"v")
            outputs.send_changelog(log, 0, f"k{round_}".encode(), b"1")
            sealed.append(outputs.seal())
        return [await s for s in sealed]

    try:
        reports = asyncio.run(main())
    finally:
        outputs.close()

    # Each sealed batch reports its own changelog record: three batches, three offsets.
    offsets = [r[(log, 0)] for r in reports]
    assert len(set(offsets)) == 3 and offsets == sorted(offsets)
    assert len(read_topic(settings, out, until=lambda r: len(r) >= 60)) == 60


def _librdkafka_threads() -> int:
    """This process's librdkafka threads (``rdk:main``, ``rdk:broker...``)."""
    names = (p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm"))
    return sum(1 for name in names if name.startswith("rdk:"))


def test_close_delivers_what_nobody_awaits_and_ends_the_producers_threads(
    settings_factory: Callable[..., Settings],
) -> None:
    """The worker's last step (processors.app.Worker.run): its agents stopped, its event loop
    closed, records whose acknowledgement nobody awaits any more still reach Kafka, and the
    producers' librdkafka threads end."""
    settings = settings_factory(CRM_PARTITIONS="1")
    create_topics(settings, extra=[TopicSpec("out", "test output"), TopicSpec("log", "log")])
    out, log = settings.topic("out"), settings.topic("log")
    before = _librdkafka_threads()
    outputs = ConfluentOutputs(settings)

    waiting: list[asyncio.Future[Any]] = []

    async def cut_short() -> None:
        # An agent stopped mid-batch: its records sent and sealed, the acknowledgement never
        # awaited (asyncio.run cancels the wait). The poll thread is not started, so every
        # delivery report comes after the loop closed, in close()'s flush.
        for i in range(200):
            outputs.send(out, f"k{i}".encode(), b"v")
        outputs.send_changelog(log, 0, b"k", b"1")
        waiting.append(asyncio.ensure_future(outputs.seal()))

    asyncio.run(cut_short())
    assert waiting[0].cancelled()
    assert _librdkafka_threads() > before
    assert outputs.close() == 0
    assert _librdkafka_threads() == before
    assert outputs.reachable()[0] is False
    assert outputs.close() == 0  # a second close does nothing
    assert len(read_topic(settings, out, until=lambda r: len(r) >= 200)) == 200
    assert len(read_topic(settings, log, until=lambda r: len(r) >= 1)) == 1
