"""The stop every connector process shares (issue 22 item 7): Kafka waits bounded after a stop;
the process-level drills are in tests/integration/connectors/test_outage.py."""

from __future__ import annotations

import time

import pytest

from connectors.runtime.kafka import bounded_flush
from connectors.runtime.stop import FINAL_FLUSH_S, Stopping


def test_bound_is_the_callers_timeout_until_a_stop_is_asked() -> None:
    stopping = Stopping()
    assert stopping.bound(60.0) == 60.0
    stopping.set()
    assert FINAL_FLUSH_S - 0.5 < stopping.bound(60.0) <= FINAL_FLUSH_S
    assert stopping.bound(1.0) == 1.0


def test_callbacks_run_once_and_at_once_when_already_stopped() -> None:
    stopping = Stopping()
    calls: list[str] = []
    stopping.on_stop(lambda: calls.append("early"))
    stopping.set()
    stopping.set()
    stopping.on_stop(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert stopping.is_set()


class _NeverAcked:
    """A producer whose records Kafka never acknowledges (a paused broker)."""

    def __init__(self) -> None:
        self.waited = 0.0

    def flush(self, timeout: float) -> int:
        time.sleep(timeout)
        self.waited += timeout
        return 3


def test_flush_ends_within_the_final_flush_bound_after_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import connectors.runtime.kafka as base

    stopping = Stopping()
    monkeypatch.setattr(base, "PROCESS_STOP", stopping)
    monkeypatch.setattr("connectors.runtime.stop.FINAL_FLUSH_S", 0.5)
    producer = _NeverAcked()
    assert bounded_flush(producer, 0.3) == 3  # type: ignore[arg-type]
    assert producer.waited == pytest.approx(0.3, abs=0.05)
    stopping.set()
    started = time.monotonic()
    assert bounded_flush(producer, 60.0) == 3  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0
