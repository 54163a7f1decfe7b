"""Every mistake a user can make on the command line is one line on stderr and an exit code,
never a traceback (issue 22 item 8: ``crm-stream normalize pinpoint /nonexistent`` printed a
``FileNotFoundError`` traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crmcli import main

CASES = [
    # (arguments, exit code, the line's start)
    (
        ["normalize", "pinpoint", "/nonexistent"],
        1,
        "crm-stream: No such file or directory: /nonexistent",
    ),
    (["normalize", "pinpoint", "/"], 1, "crm-stream: Is a directory: /"),
    (["normalize", "nosuchvendor"], 2, "crm-stream normalize: argument vendor: invalid choice"),
    (["nosuchcommand"], 2, "crm-stream: argument COMMAND: invalid choice"),
    (["normalize"], 2, "crm-stream normalize: the following arguments are required: vendor"),
    (["demo", "--events", "-3"], 2, "crm-stream demo: argument --events: must be at least 1"),
    (["demo", "--workers", "0"], 2, "crm-stream demo: argument --workers: must be at least 1"),
    (["demo", "--api-port", "70000"], 2, "crm-stream demo: argument --api-port: a port is 0-65535"),
    (["broker", "--port", "99999"], 2, "crm-stream broker: argument --port: a port is 0-65535"),
    (
        ["airship-replay", "/nonexistent"],
        2,
        "crm-stream: invalid setting FILE: no such NDJSON file",
    ),
    (["airship-replay", "x", "--port", "-1"], 2, "crm-stream airship-replay: argument --port:"),
    (["decode", "events", "--max", "x"], 2, "crm-stream decode: argument --max: invalid int value"),
    (["connect", "leanplum", "--source", "nowhere"], 2, "crm-stream: invalid setting --source:"),
    (["connect", "nosuch"], 2, "crm-stream connect: argument CONNECTOR: invalid choice"),
]


@pytest.mark.parametrize(("argv", "code", "line"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_user_mistake_is_one_line_and_an_exit_code(
    argv: list[str], code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse exits itself
        got = int(exc.code or 0)
    err = capsys.readouterr().err
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(line), lines[0]


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    """What a process hits first when its port is taken: the OSError of the bind, in one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sample = tmp_path / "a.ndjson"
        sample.write_text("{}\n")
        done = subprocess.run(
            [sys.executable, "-m", "crmcli", "airship-replay", str(sample), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("crm-stream: "), lines[0]
    assert "in use" in lines[0], lines[0]


@pytest.mark.parametrize("setting", ["CRM_METRICS_PORT", "CRM_API_PORT"])
def test_a_worker_port_that_is_taken_is_one_line_naming_the_setting(
    tmp_path: Path, setting: str
) -> None:
    """The query API's port, taken, stopped the worker with Faust's tracebacks."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update(
            CRM_BOOTSTRAP_SERVERS="127.0.0.1:1",
            CRM_METRICS_PORT="0",
            CRM_API_PORT="0",
            CRM_DATA_DIR=str(tmp_path),
        )
        env[setting] = str(port)
        done = subprocess.run(
            [sys.executable, "-m", "crmcli", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"crm-stream: invalid setting {setting}: port {port} is taken (Address already in use)"
    ]
