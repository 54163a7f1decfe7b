"""Stopping a connector process within seconds of SIGINT/SIGTERM, whatever the broker does.

Python runs signal handlers on the main thread between bytecodes, so a main thread blocked in
librdkafka (a metadata request or a flush waiting for a paused broker) used to hold a stop for
up to its timeout (issue 22 item 7: the Segment receiver ignored Ctrl-C for 22 s and died of
KeyboardInterrupt at 30 s). Here the two signals are blocked in every thread and received by a
thread of their own, which

* sets :data:`PROCESS_STOP` and calls the connector's stop callbacks at once;
* from then on bounds every Kafka wait that asks :meth:`Stopping.bound` (the final flush and
  checkpoint get :data:`FINAL_FLUSH_S`): what Kafka acknowledged in that time is checkpointed,
  the rest is read again after a restart (Segment: its request is answered 503, or its
  connection closed, and Segment retries);
* ends the process with the stop's exit code if it is still running :data:`STOP_GRACE_S` after
  the signal, or at a second signal. Nothing unacknowledged was checkpointed by then, so this
  is no worse than ``kill -9``, which every connector survives without loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from crmstream.errors import CrmStreamError

log = logging.getLogger(__name__)

FINAL_FLUSH_S = 4.0  # longest wait for Kafka's acknowledgements once a stop was asked
STOP_GRACE_S = 8.0  # the process is gone this long after SIGINT/SIGTERM, at the latest
STOP_EXIT_CODE = 0  # README, "Stopping": a stop asked for is a clean exit
SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class StopRequested(CrmStreamError):
    """A stop was asked while the connector was still starting: nothing to flush, exit cleanly."""


class Stopping:
    """A process-wide "stop was asked" with the time it was asked.

    Code that waits for Kafka asks :meth:`bound` for its timeout, so once a stop is asked no
    wait outlasts :data:`FINAL_FLUSH_S` after it. Never set outside a connector process (tests,
    the demo): then every timeout is the caller's own.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._at: float | None = None
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from the signal thread) when a stop is asked; at once if it was."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._at = time.monotonic()
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("stop callback %r failed", callback)

    def bound(self, timeout: float) -> float:
        """``timeout``, cut so that it ends at most :data:`FINAL_FLUSH_S` after the stop."""
        if self._at is None:
            return timeout
        return max(0.0, min(timeout, self._at + FINAL_FLUSH_S - time.monotonic()))

    def reset(self) -> None:
        """For tests only: forget a stop."""
        with self._lock:
            self._event.clear()
            self._at = None
            self._callbacks = []


PROCESS_STOP = Stopping()


def _hard_exit(code: int, why: str) -> None:
    log.warning("%s; exiting now, without a final checkpoint beyond what Kafka acknowledged", why)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not keep the process alive
            stream.flush()
    os._exit(code)


def install_stop_signals(
    stopping: Stopping = PROCESS_STOP,
    *,
    grace_s: float = STOP_GRACE_S,
    exit_code: int = STOP_EXIT_CODE,
) -> threading.Thread:
    """Receive SIGINT/SIGTERM on a thread of their own (see the module). Call it on the main
    thread before any other thread starts: threads inherit the blocked signals."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def receive() -> None:
        received = signal.sigwait(SIGNALS)
        log.info("%s: stopping", signal.Signals(received).name)
        stopping.set()
        again = signal.sigtimedwait(SIGNALS, grace_s)
        if again is None:
            _hard_exit(exit_code, f"still running {grace_s:g}s after the stop signal")
        else:
            _hard_exit(exit_code, f"{signal.Signals(again.si_signo).name} again")

    thread = threading.Thread(target=receive, name="stop-signals", daemon=True)
    thread.start()
    return thread
