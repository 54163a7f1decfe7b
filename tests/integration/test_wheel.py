"""`crm-stream demo --once` from a wheel installed in a fresh virtualenv, run outside the checkout
(issue 12): the schemas and the Tansu dev profile must come from the package
(``crmstream.resources``), the embedded broker and the Kinesis feed from the ``[demo]`` extra.

The wheel is built from a copy of the source tree (no stale ``build/`` of the work tree can leak
into it); dependencies install from pip's cache with the pins of ``constraints.txt``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.demo]

REPO = Path(__file__).resolve().parents[2]
# Work-tree state that is not source: left out of the copy the wheel is built from.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "var",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "results",
    "tests",
)


def _run(
    cmd: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow(seconds=85)
@pytest.mark.timeout(600)
def test_the_demo_runs_from_an_installed_wheel_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            ".",
        ],
        300,
        cwd=source,
    )
    (wheel,) = (tmp_path / "dist").glob("crm_stream-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 120)
    python = venv / "bin" / "python"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "constraints.txt"),
            f"{wheel}[demo]",
        ],
        420,
    )

    # Nothing of the checkout on the path, no schema override: only what the wheel installed.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRM_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [str(python), "-c", "import crmstream.serde as s; print(s.schema_dir())"],
        60,
        cwd=elsewhere,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    summary = elsewhere / "summary.json"
    demo = _run(
        [
            str(venv / "bin" / "crm-stream"),
            "demo",
            "--once",
            "--events",
            "250",
            "--summary-json",
            str(summary),
        ],
        400,
        cwd=elsewhere,
        env=env,
    )
    assert json.loads(summary.read_text())["balanced"] is True, demo.stdout[-3000:]
    # The default working directory is relative to where the demo runs, not to the install.
    assert (elsewhere / "var" / "demo" / "worker.log").exists()
