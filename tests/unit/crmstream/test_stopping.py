"""The deadline on stopping (issue 22 item 1): SIGINT/SIGTERM stop the worker within seconds
while Kafka is away, instead of Faust's 60 s shutdown timeouts."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from crmstream.settings import Settings
from crmstream.stopping import StopWatch, watch_stop_signals


class _Exit:
    def __init__(self) -> None:
        self.code: int | None = None
        self.done = threading.Event()

    def __call__(self, code: int) -> None:
        self.code = code
        self.done.set()


def test_kafka_away_stops_at_once_with_the_signals_code() -> None:
    exit = _Exit()
    watch = StopWatch(Settings(), exit=exit, answers=lambda: False, poll_s=0.01)
    started = time.monotonic()
    watch.arm(signal.SIGINT)
    assert exit.done.wait(5)
    assert exit.code == 130 and time.monotonic() - started < 1.0


def test_one_slow_answer_does_not_cut_a_clean_stop_short() -> None:
    answers = iter([False, True, False, True, True, True])
    exit = _Exit()
    watch = StopWatch(
        Settings(stop_timeout_s=0.3),
        exit=exit,
        answers=lambda: next(answers, True),
        poll_s=0.05,
    )
    started = time.monotonic()
    watch.arm(signal.SIGTERM)
    assert exit.done.wait(5)
    # Only the deadline ended it.
    assert exit.code == 0 and time.monotonic() - started >= 0.3


def test_a_clean_stop_that_finishes_is_never_cut() -> None:
    exit = _Exit()
    watch = StopWatch(Settings(stop_timeout_s=60), exit=exit, answers=lambda: True, poll_s=0.01)
    watch.arm(signal.SIGTERM)
    assert not exit.done.wait(0.3)


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_handlers")
def test_the_watchdog_is_chained_after_the_handlers_in_place() -> None:
    seen: list[int] = []

    def loop_handler(signum: int, frame: Any) -> None:
        seen.append(signum)

    signal.signal(signal.SIGTERM, loop_handler)
    signal.signal(signal.SIGINT, loop_handler)
    exit = _Exit()
    watch = watch_stop_signals(
        Settings(), StopWatch(Settings(), exit=exit, answers=lambda: False, poll_s=0.01)
    )
    os.kill(os.getpid(), signal.SIGTERM)
    assert exit.done.wait(5)
    assert seen == [signal.SIGTERM]  # the clean stop still starts
    assert exit.code == 0 and watch.armed.is_set()
