"""SIGINT and SIGTERM stop a running worker within seconds while Kafka is down (issue 22 item 1).

Faust's clean stop waits up to 60 s per consumer thread for a broker that is gone (the worker
took 62 s after Ctrl-C); the watchdog of ``crmstream.stopping`` ends it as soon as Kafka does not
answer, with the signal's exit code. Each case runs its own broker, since it stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crmstream.broker import EmbeddedBroker, free_port
from crmstream.resources import tansu_dev_profile

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the worker did not become ready")


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_signal_stops_the_worker_within_seconds_with_kafka_down(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        env.update(tansu_dev_profile())
        env.update(
            CRM_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            CRM_TOPIC_PREFIX="down.",
            CRM_PARTITIONS="2",
            CRM_DATA_DIR=str(tmp_path / "data"),
            CRM_METRICS_PORT=str(metrics_port),
            CRM_API_PORT="0",
        )
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "crmcli", "worker"], env=env, stdout=log, stderr=log
        )
        try:
            _wait_ready(proc, metrics_port)
        except BaseException:
            proc.kill()
            proc.wait()
            log.close()
            raise
    # The broker is gone: connections are refused.
    try:
        time.sleep(2.0)
        sent = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "worker.log").read_text(errors="replace")
    assert took < 6.0, f"{took:.1f}s\n{output[-3000:]}"
    assert "stopping now, without the final commit: Kafka is not reachable" in output
