"""SIGTERM reaching `crm-stream worker` before Faust has installed its handler (while it imports,
or waits for an unreachable broker to create its topics) is a clean stop: exit 0, as for a pod
deleted during start-up. It used to die of the signal (-15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_sigterm_during_start_up_exits_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        CRM_BOOTSTRAP_SERVERS="127.0.0.1:1",  # nothing listens: the worker never gets past topics
        CRM_METRICS_PORT="0",
        CRM_API_PORT="0",
        CRM_DATA_DIR=str(tmp_path),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmcli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
