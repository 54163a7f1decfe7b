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

from crmstream.stopping import start_command


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


# Runs `python -m crmcli worker` and sends itself SIGTERM at the first import of a module of the
# command's own (argparse, crmstream, ...): a moment a loaded machine stretches to hundreds of ms.
_SIGTERM_WHILE_IMPORTING = """
import os, runpy, signal, sys

class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"argparse", "crmstream", "logging", "dataclasses"}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.argv = ["crm-stream", "worker"]
sys.meta_path.insert(0, SignalOnImport())
runpy.run_module("crmcli", run_name="__main__", alter_sys=True)
"""


def test_sigterm_while_the_command_still_imports_exits_0(tmp_path: Path) -> None:
    """Before main() runs, `python -m crmcli` imports the package (argparse, the settings...),
    and a SIGTERM then killed the worker (-15), which the scale-out test takes for a crash. The
    handler is installed before those imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(CRM_BOOTSTRAP_SERVERS="127.0.0.1:1", CRM_DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", _SIGTERM_WHILE_IMPORTING],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_sigterm_during_the_interpreters_own_start_exits_0(tmp_path: Path) -> None:
    """Sent as soon as the process exists, before any code of the command runs: started with
    the stop signals blocked (crmstream.stopping.start_command), the signal waits for the
    command's handler instead of killing it (-15)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(CRM_BOOTSTRAP_SERVERS="127.0.0.1:1", CRM_DATA_DIR=str(tmp_path))
    proc = start_command(
        [sys.executable, "-m", "crmcli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set(), "the parent's mask is back"
