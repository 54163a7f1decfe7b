"""The metrics server's health endpoints (crmstream/metrics.py), over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from crmstream import metrics
from crmstream.broker import free_port


def _get(port: int, path: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        body, status = err.read().decode(), err.code
    return status, json.loads(body) if body.startswith("{") else body


def test_live_and_ready_report_every_check_and_fail_on_any() -> None:
    state = {"loop": True, "kafka": True}

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    health = metrics.Health(
        live={"loop": lambda: (state["loop"], "loop detail")},
        ready={"kafka": lambda: (state["kafka"], "kafka detail")},
    )
    port = metrics.serve(free_port(), health)
    assert _get(port, "/livez") == (
        200,
        {"status": "ok", "checks": {"loop": {"ok": True, "detail": "loop detail"}}},
    )
    status, report = _get(port, "/readyz")
    assert status == 200 and set(report["checks"]) == {"loop", "kafka"}  # type: ignore[index]
    state["kafka"] = False  # the broker is away: not ready, still alive
    assert _get(port, "/readyz")[0] == 503 and _get(port, "/livez")[0] == 200
    state["loop"] = False  # stuck: not alive, hence not ready either
    assert _get(port, "/livez")[0] == 503 and _get(port, "/readyz")[0] == 503
    health.ready["broken"] = broken
    state.update(loop=True, kafka=True)
    status, report = _get(port, "/readyz")
    assert status == 503 and "boom" in report["checks"]["broken"]["detail"]  # type: ignore[index]
    status, text = _get(port, "/metrics")
    assert status == 200 and "crm_worker_records_in_total" in str(text)
    assert _get(port, "/nope")[0] == 404
