"""``crm-stream worker`` (and ``topics create``) with no Kafka to talk to (issue 22 item 1).

It used to print ~20 librdkafka lines a second, then die after 30 s with a traceback that named
no setting. Now: one warning while it retries for ``CRM_KAFKA_WAIT``, then one line naming
``CRM_BOOTSTRAP_SERVERS`` and exit code 69; SIGINT and SIGTERM stop it within a second or so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crmstream.kafka import LibrdkafkaLog

UNREACHABLE = "kafka.nowhere.invalid:9092"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        CRM_BOOTSTRAP_SERVERS=UNREACHABLE,
        CRM_METRICS_PORT="0",
        CRM_API_PORT="0",
        CRM_DATA_DIR=str(tmp_path),
        **extra,
    )
    return env


def _run(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmcli", *args],
        env=_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_no_flood(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "rdkafka" not in stderr and "%3|" not in stderr, stderr


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        (["worker"], "CRM_BOOTSTRAP_SERVERS"),
        (["topics", "create"], "CRM_BOOTSTRAP_SERVERS"),
        (["decode", "events"], "CRM_BOOTSTRAP_SERVERS"),
        (["demo", "--once", "--bootstrap-servers", UNREACHABLE], "--bootstrap-servers"),
    ],
)
def test_kafka_unreachable_is_one_line_naming_the_setting_and_exit_69(
    tmp_path: Path, command: list[str], setting: str
) -> None:
    if command[0] == "demo":
        command = [*command, "--workdir", str(tmp_path / "demo")]
    started = time.monotonic()
    done = _run(tmp_path, *command, CRM_KAFKA_WAIT="3s")
    took = time.monotonic() - started
    assert done.returncode == 69, done.stderr
    _assert_no_flood(done.stderr)
    lines = done.stderr.strip().splitlines()
    # While it retries: one warning; when it gives up: one line, the last.
    assert len(lines) == 2, lines
    assert "retrying for up to 3s (CRM_KAFKA_WAIT)" in lines[0]
    assert lines[-1].startswith(
        f"crm-stream: Kafka is not reachable at {UNREACHABLE} ({setting}): "
    ), lines[-1]
    assert lines[-1].endswith("gave up after 3s (CRM_KAFKA_WAIT)"), lines[-1]
    assert took < 20, took


def test_kafka_wait_0_tries_once_and_says_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path, "worker", CRM_KAFKA_WAIT="0")
    assert done.returncode == 69, done.stderr
    _assert_no_flood(done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"crm-stream: Kafka is not reachable at {UNREACHABLE}")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_signal_stops_the_waiting_worker_within_seconds(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmcli", "worker"],
        env=_env(tmp_path, CRM_KAFKA_WAIT="60s"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Until it is waiting for Kafka (its warning), well past its imports.
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "CRM_KAFKA_WAIT" in first, first
        time.sleep(1.5)
        sent = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == code
        # Within a few seconds: about one to notice (a metadata attempt lasts up to 1 s), the
        # rest the interpreter's exit, slower on a loaded two-core machine (make test, -n 6).
        assert time.monotonic() - sent < 5.0
        _assert_no_flood(proc.stderr.read())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_librdkafka_repeats_are_said_once_per_quiet_period() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.librdkafka")
    logger.addHandler(Keep())
    logger.propagate = False
    now = [0.0]
    quiet = LibrdkafkaLog(logger, quiet_s=60.0, clock=lambda: now[0])
    refused = "[thrd:b:9092/1]: b:9092/1: Connect to ipv4#b:9092 failed: Connection refused"
    for i in range(40):  # two clients, 20 lines a second for a second
        now[0] = i * 0.05
        client = f"rdkafka#producer-{1 + i % 2}"
        quiet.log(
            logging.ERROR, "%s [%s] %s", "FAIL", client, f"{refused} (after {i}ms in state CONNECT)"
        )
    assert len(records) == 1
    now[0] = 61.0
    quiet.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", refused)
    assert len(records) == 2
    assert records[1].getMessage().endswith("(39 more like it in the last 60s)")
    quiet.log(logging.WARNING, "%s [%s] %s", "OTHER", "rdkafka#producer-1", "something else")
    assert len(records) == 3
