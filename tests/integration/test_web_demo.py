"""The web view of the real demo (issue 15 item 4): ``crm-stream demo`` on the session broker,
its worker serving the page and the API; the URL the demo prints is opened in Debian's headless
Chromium, and the list, the funnel and the rates on the page equal the API's answers.

The helpers and the browser fixture are those of the page test over the fake source
(tests/unit/processors/api/test_page.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmstream.broker import free_port
from tests.unit.processors.api.conftest import Served
from tests.unit.processors.api.test_page import (  # noqa: F401 - chromium is a fixture
    CHART_DRAWN,
    READ_CAMPAIGN,
    STEPS,
    _num,
    check_list,
    chromium,
    wait_for_list,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser, pytest.mark.demo]


@pytest.fixture
def demo(
    crm_env_factory: Callable[..., dict[str, str]],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> Iterator[tuple[str, Path]]:
    """``crm-stream demo`` (following, not --once) until the test ends; yields the web view URL
    it printed and its output file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(crm_env_factory(CRM_DATA_DIR=str(tmp_path / "state"), CRM_PARTITIONS="4"))
    del env["CRM_METRICS_PORT"]
    out = tmp_path / "demo.out"
    port = free_port()
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crmcli",
                "demo",
                "--events",
                "400",
                "--bootstrap-servers",
                kafka_bootstrap,
                "--api-port",
                str(port),
                "--workdir",
                str(tmp_path / "demo"),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        url = None
        while url is None:
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            found = re.search(r"web view: (http://\S+/)", out.read_text(errors="replace"))
            url = found.group(1) if found else None
            time.sleep(0.5)
        assert url == f"http://127.0.0.1:{port}/"
        yield url.rstrip("/"), out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the demo stops its worker and exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _settled_list(url: str) -> list[dict[str, Any]]:
    """The API's list once every sample is counted: two answers 3 s apart agree."""
    deadline = time.monotonic() + 240
    last: Any = None
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/api/campaigns", params={"limit": 1000}, timeout=30)
        if response.status_code == 200:
            campaigns = response.json()["campaigns"]
            if campaigns and campaigns == last:
                return list(campaigns)
            last = campaigns
        time.sleep(3)
    raise AssertionError(f"the demo's figures did not settle: {last!r:.500}")


@pytest.mark.slow(seconds=60)
def test_the_demo_page_shows_the_workers_numbers(
    chromium: Any,  # noqa: F811 - the fixture imported above
    demo: tuple[str, Path],
) -> None:
    url, _ = demo
    campaigns = _settled_list(url)
    served = Served(url, None)  # type: ignore[arg-type] - check_list reads only .url
    errors: list[str] = []
    page = chromium.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(20_000)
    try:
        page.goto(f"{url}/?refresh=1000")
        wait_for_list(page, len(campaigns))
        listed = check_list(page, served)
        assert sum(c["totals"]["total"] for c in listed.values()) > 300

        # The busiest campaign: its funnel, rates and totals are the API's, and the chart draws.
        top = max(campaigns, key=lambda c: c["totals"]["total"])
        page.click(f'#campaigns tr[data-campaign-id="{top["id"]}"] td[data-field="campaign_id"] a')
        page.wait_for_function(
            "(id) => document.getElementById('campaign-view').dataset.campaignId === id",
            arg=top["id"],
        )
        page.wait_for_function(CHART_DRAWN)
        shown = page.evaluate(READ_CAMPAIGN)
        answer = httpx.get(
            f"{url}/api/campaigns/{shown['id']}",
            params={"window": shown["window"], "from": shown["from"], "to": shown["to"]},
            timeout=30,
        ).json()
        totals = answer["totals"]
        for step in STEPS:
            assert shown["steps"][step] == {
                "count": _num(totals["event_type_counts"].get(step, 0)),
                "uniques": _num(totals["uniques"]["by_event_type"].get(step, 0)),
            }, step
        assert shown["rates"] == {name: _num(v) for name, v in answer["rates"].items()}
        assert shown["total"] == _num(totals["total"])
        assert shown["recipients"] == _num(totals["uniques"]["recipients"])
        assert int(shown["recipients"]) > 0
        assert errors == []
    finally:
        page.close()
