"""The outputs' readiness while the worker closes them, and their delivery-report threads (no
broker needed: nothing is sent)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from confluent_kafka import Producer

import processors.outputs as outputs_module
from crmstream.settings import Settings
from processors.outputs import POLL_WAIT_S, ConfluentOutputs


def test_a_readiness_probe_racing_the_close_answers_not_ready(tmp_path: Path) -> None:
    """/readyz runs on the metrics thread: a probe that reaches the producer just after the
    close did answers "not ready" instead of raising."""
    settings = Settings.from_env(
        {"CRM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CRM_DATA_DIR": str(tmp_path)}
    )
    outputs = ConfluentOutputs(settings)
    outputs._producer.close()  # the close reached the producer, the probe did not see it yet
    assert outputs.reachable(timeout=0.1) == (
        False,
        "the outputs are closed (the worker is stopping)",
    )
    outputs._changelog_producer.close()


def test_each_producer_has_its_own_delivery_report_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs producer and the changelog producer are each polled by a thread of their
    own, waiting in their own poll: one thread taking turns between them woke every 25 ms with
    nothing to do, and held one producer's delivery reports while it waited on the other's."""
    polls: list[tuple[str, int, float]] = []
    seen = threading.Event()

    class Recording(Producer):  # type: ignore[misc]
        def poll(self, timeout: float = -1) -> int:
            polls.append((threading.current_thread().name, id(self), timeout))
            if len({(name, producer) for name, producer, _ in polls}) >= 2:
                seen.set()
            return int(super().poll(min(timeout, 0.01)))

    monkeypatch.setattr(outputs_module, "Producer", Recording)
    settings = Settings.from_env(
        {"CRM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CRM_DATA_DIR": str(tmp_path)}
    )
    outputs = ConfluentOutputs(settings)
    asyncio.run(outputs.start())
    assert seen.wait(30)
    assert outputs.alive() == (True, "producing")
    outputs.close(timeout=0.1)
    by_thread: dict[str, set[int]] = {}
    for name, producer, timeout in polls:
        if name.endswith("-poll"):
            by_thread.setdefault(name, set()).add(producer)
            assert timeout == POLL_WAIT_S
    assert by_thread == {
        "outputs-poll": {id(outputs._producer)},
        "changelog-poll": {id(outputs._changelog_producer)},
    }
