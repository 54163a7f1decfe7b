"""A progress file: how a benchmark child process (passthrough, Quix peer) reports its count.

The crm-stream worker reports through its Prometheus endpoint; the other two pipelines have no
such endpoint, and the Quix peer runs in its own virtualenv, so they write a tiny JSON file that
the orchestrator polls. Replaced atomically, so a reader never sees half a file. Standard library
only: the Quix virtualenv imports it too.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


def write(path: Path, processed: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"processed": processed, "at": time.time()}))
    os.replace(tmp, path)


def read(path: Path) -> int:
    """Records the child has accounted for so far; 0 before its first report."""
    try:
        return int(json.loads(path.read_text())["processed"])
    except (OSError, ValueError, KeyError):
        return 0


class Reporter:
    """Writes ``count()`` to ``path`` every ``interval`` seconds from a daemon thread."""

    def __init__(self, path: Path, count: Callable[[], int], interval: float = 0.1) -> None:
        self.path = path
        self.count = count
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> Reporter:
        write(self.path, 0)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            write(self.path, self.count())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        write(self.path, self.count())
