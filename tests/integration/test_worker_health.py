"""The worker's /readyz probed from its first moment, as Kubernetes and `crm-stream demo` do.

Regression: a probe that arrived before Faust had started its table manager built Faust's lazy
recovery service on the metrics thread, which bound the manager to that thread's event loop; the
worker then waited on a loop that never runs and hung after "Recovery: Starting..." for good
(CI: the demo's worker never became ready). The probe here starts before the worker can answer
and polls every few milliseconds, so it lands in that window on every run.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from crmstream.broker import free_port
from tests.integration.harness import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def test_a_worker_probed_from_its_first_moment_becomes_ready(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = crm_env_factory(CRM_METRICS_PORT=str(free_port()))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    url = worker.url.rsplit("/", 1)[0] + "/readyz"
    worker.start()
    try:
        answered: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and worker.alive():
            status = _status(url)
            if status:
                answered.append(status)
            if status == 200:
                break
            time.sleep(0.005)
        assert answered and answered[0] == 503, f"probed too late: {answered[:3]}"
        assert answered[-1] == 200, worker.tail()
    finally:
        assert worker.stop() == 0, worker.tail()
