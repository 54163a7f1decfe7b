"""A deadline on stopping: SIGINT or SIGTERM stops a process within seconds, whatever Kafka does.

A clean stop commits what was processed and leaves the consumer group, which needs Kafka. With
Kafka away, Faust's clean stop waits up to 60 s per consumer thread and librdkafka's clients up to
their request timeouts (issue 22 item 1: a worker took 62 s to stop after Ctrl-C with the broker
down). :func:`watch_stop_signals` chains a handler onto SIGINT and SIGTERM (after the event loop's
own, which still runs the clean stop) that starts a watchdog thread: while Kafka answers, the
clean stop gets ``CRM_STOP_TIMEOUT``; as soon as Kafka does not answer (two metadata requests in
a row, a second each), or when the timeout passes, the process exits at once with the signal's
exit code (SIGINT 130, SIGTERM 0), without the final commit. That is exactly what a kill -9
does, which the worker is built to survive: the restart resumes from the last commit, nothing
is lost or written twice (README, "Crashes: what is guaranteed").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from crmstream.kafka import admin_config
from crmstream.settings import Settings

log = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 0}


def kafka_answers(settings: Settings, timeout_s: float = 1.0) -> bool:
    """One metadata request, ``timeout_s`` to answer."""
    try:
        AdminClient(admin_config(settings)).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


class StopWatch:
    """The watchdog of :func:`watch_stop_signals`; ``exit`` and ``answers`` are for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        exit: Callable[[int], Any] = os._exit,
        answers: Callable[[], bool] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.exit = exit
        self.answers = answers or (lambda: kafka_answers(settings))
        self.poll_s = poll_s
        self.armed = threading.Event()

    def arm(self, signum: int) -> None:
        """Called from the signal handler: start the watchdog once."""
        if self.armed.is_set():
            return
        self.armed.set()
        threading.Thread(
            target=self.watch, args=(signum,), name="stop-watchdog", daemon=True
        ).start()

    def watch(self, signum: int) -> None:
        code = EXIT_CODES.get(signal.Signals(signum), 128 + signum)
        deadline = time.monotonic() + self.settings.stop_timeout_s
        missed = 0
        while True:
            # Two unanswered requests in a row, not one: a busy broker's slow answer must not
            # cut a clean stop short.
            missed = 0 if self.answers() else missed + 1
            if missed >= 2:
                why = (
                    f"Kafka is not reachable at {self.settings.bootstrap_servers} "
                    "(CRM_BOOTSTRAP_SERVERS)"
                )
                break
            if time.monotonic() >= deadline:
                why = (
                    f"the clean stop took longer than {self.settings.stop_timeout_s:g}s "
                    "(CRM_STOP_TIMEOUT)"
                )
                break
            time.sleep(self.poll_s)
        log.warning(
            "stopping now, without the final commit: %s; as after a kill -9, the next start "
            "resumes from the last commit and nothing is lost",
            why,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self.exit(code)


STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def start_command(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a long-running ``crm-stream`` command (``worker``, ``connect``) in a child
    process with SIGINT and SIGTERM blocked; the command unblocks them once its first handlers
    are installed (``crmcli``, before its own imports).

    A signal sent meanwhile waits instead of killing the child: without it, a SIGTERM during
    the interpreter's own start (before any code of the command runs; tens of milliseconds, a
    second or more on a loaded machine) ended the worker with -15, which a supervisor takes for
    a crash. Only for commands that unblock them: any other would never see the signals."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return subprocess.Popen(list(args), **popen)  # the child inherits the mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def watch_stop_signals(settings: Settings, watch: StopWatch | None = None) -> StopWatch:
    """Chain the watchdog onto the current SIGINT and SIGTERM handlers. Call it in the main
    thread, after the event loop installed its own handlers (they keep running)."""
    watch = watch or StopWatch(settings)
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            watch.arm(signum)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
    return watch
