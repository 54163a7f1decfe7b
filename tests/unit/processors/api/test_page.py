"""The web view in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright;
Playwright never downloads a browser here): the page served by the app over the fake source,
offline, its numbers equal to the API's, following the data without a reload.

``CRM_WEB_SCREENSHOT=docs/web-view.png`` also writes the screenshot the README shows.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processors.api.query import RATES
from tests.unit.processors.api.conftest import Served
from tests.unit.processors.api.fake_source import CAMPAIGNS

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000
STEPS = ("SEND", "DELIVERY", "OPEN", "CLICK")

# Every number of the list, read from the page: {campaign id: {field: (data-value, text)}}.
READ_ROWS = """() => Object.fromEntries([...document.querySelectorAll('#campaigns tbody tr')].map(
  (tr) => [tr.dataset.campaignId, Object.fromEntries([...tr.querySelectorAll('td')].map(
    (td) => { const v = td.querySelector('[data-value]') || td;
              return [td.dataset.field, [v.dataset.value, v.textContent]]; }))]))"""
READ_CAMPAIGN = """() => {
  const value = (sel) => document.querySelector(sel).dataset.value;
  const section = document.getElementById('campaign-view');
  const steps = {};
  for (const li of document.querySelectorAll('#funnel li[data-step]')) {
    steps[li.dataset.step] = {
      count: li.querySelector('[data-field="count"]').dataset.value,
      uniques: li.querySelector('[data-field="uniques"]').dataset.value,
    };
  }
  const rates = {};
  for (const dd of document.querySelectorAll('#rates dd')) {
    rates[dd.dataset.field] = dd.dataset.value;
  }
  const chart = document.getElementById('chart');
  return {
    id: section.dataset.campaignId, window: section.dataset.window,
    from: section.dataset.from, to: section.dataset.to, updated_at: section.dataset.updatedAt,
    name: document.getElementById('c-name').textContent,
    campaign_id: document.getElementById('c-campaign-id').textContent,
    steps, rates,
    total: value('#c-totals [data-field="total"]'),
    recipients: value('#c-totals [data-field="recipients"]'),
    unattributed: value('#uniques-note [data-field="unattributed"]'),
    error_bound: value('#uniques-note [data-field="error_bound"]'),
    points: chart.dataset.points, last_window_start: chart.dataset.lastWindowStart,
  };
}"""
# The chart drew: a canvas with pixels that are not transparent.
CHART_DRAWN = """() => {
  const canvas = document.querySelector('#chart canvas');
  if (!canvas || !canvas.width || !canvas.height) return false;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted += 1;
  return painted > 1000;
}"""


def _num(value: Any) -> str:
    """How the page writes a number in data-value: JavaScript's String(n)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module, on a fresh profile."""
    if not CHROMIUM.exists():
        message = "no /usr/bin/chromium (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory(prefix="crm-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1440, "height": 1000},
            timezone_id="Asia/Seoul",  # the page shows UTC whatever the browser's zone
        )
        yield context
        context.close()


@pytest.fixture
def console_errors() -> list[str]:
    """What the page logged as errors; a test that expects some removes them."""
    return []


@pytest.fixture
def page(chromium: Any, served: Served, console_errors: list[str]) -> Iterator[Any]:
    """A tab on the served page, refreshing every 0.5 s, that may load nothing but the app's
    own URLs (the page must work offline) and must log no error."""
    outside: list[str] = []
    errors = console_errors

    def route(route: Any) -> None:
        if route.request.url.startswith(served.url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    tab = chromium.new_page()
    tab.route("**/*", route)
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{served.url}/?refresh=500")
    yield tab
    tab.close()
    assert outside == [], "the page loaded something from elsewhere"
    assert errors == []


def api(served: Served, path: str, **params: Any) -> Any:
    response = httpx.get(f"{served.url}/api/{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for_list(page: Any, count: int) -> None:
    page.wait_for_function(
        "(n) => document.getElementById('campaigns').dataset.count === String(n)", arg=count
    )


def check_list(page: Any, served: Served) -> dict[str, Any]:
    """Every row's numbers and texts equal the API's, in full."""
    expected = api(served, "campaigns", limit=1000, window="1h")["campaigns"]
    rows = page.evaluate(READ_ROWS)
    assert set(rows) == {c["id"] for c in expected}
    for c in expected:
        row = rows[c["id"]]
        t = c["totals"]
        numbers = {
            "sends": t["event_type_counts"].get("SEND", 0),
            "deliveries": t["event_type_counts"].get("DELIVERY", 0),
            "unique_opens": t["uniques"]["by_event_type"].get("OPEN", 0),
            "unique_clicks": t["uniques"]["by_event_type"].get("CLICK", 0),
            "total": t["total"],
            "last_window_end": c["last_window_end"],
            **{name: c["rates"][name] for name in RATES},
        }
        for field, value in numbers.items():
            assert row[field][0] == _num(value), (c["campaign_id"], field)
        for field in ("vendor", "app_id", "campaign_id", "campaign_name"):
            # The DOM holds the whole text: ids and names are never cut (CSS may wrap them).
            assert row[field][1] == (c[field] if c[field] is not None else "—"), field
        assert row["sends"][1] == f"{numbers['sends']:,}"
    return {c["id"]: c for c in expected}


def check_campaign(page: Any, served: Served) -> dict[str, Any]:
    """The funnel, rates, totals and chart equal the API's answer to the page's own query."""
    shown = page.evaluate(READ_CAMPAIGN)
    c = api(
        served,
        f"campaigns/{shown['id']}",
        window=shown["window"],
        **{"from": shown["from"], "to": shown["to"]},
    )
    t = c["totals"]
    assert shown["name"] == (c["campaign_name"] or "(no name)")
    assert shown["campaign_id"] == c["campaign_id"]
    assert shown["updated_at"] == _num(c["updated_at"])
    for step in STEPS:
        assert shown["steps"][step] == {
            "count": _num(t["event_type_counts"].get(step, 0)),
            "uniques": _num(t["uniques"]["by_event_type"].get(step, 0)),
        }, step
    assert shown["rates"] == {name: _num(v) for name, v in c["rates"].items()}
    assert shown["total"] == _num(t["total"])
    assert shown["recipients"] == _num(t["uniques"]["recipients"])
    assert shown["unattributed"] == _num(t["uniques"]["unattributed"])
    assert shown["error_bound"] == _num(t["uniques"]["error_bound"])
    size = c["series"][1]["window_start"] - c["series"][0]["window_start"]
    span = (c["series"][-1]["window_start"] - c["series"][0]["window_start"]) // size + 1
    assert shown["points"] == str(span)
    assert shown["last_window_start"] == str(c["series"][-1]["window_start"])
    assert page.evaluate(CHART_DRAWN)
    return c


def test_the_page_shows_the_apis_numbers_and_follows_the_data(page: Any, served: Served) -> None:
    wait_for_list(page, len(CAMPAIGNS))
    listed = check_list(page, served)

    # Sortable by every column; nulls last.
    ids_in_page = (
        "() => [...document.querySelectorAll('#campaigns tbody tr')].map(r => r.dataset.campaignId)"
    )
    page.click('#campaigns th[data-column="sends"] button')
    by_sends = sorted(listed.values(), key=lambda c: -c["totals"]["event_type_counts"]["SEND"])
    assert page.evaluate(ids_in_page) == [c["id"] for c in by_sends]
    page.click('#campaigns th[data-column="sends"] button')
    assert page.evaluate(ids_in_page) == [c["id"] for c in reversed(by_sends)]
    page.click('#campaigns th[data-column="campaign_name"] button')
    names = [listed[i]["campaign_name"] for i in page.evaluate(ids_in_page)]
    assert names[-2:] == [None, None]
    assert names[:-2] == sorted(names[:-2], key=str.lower)
    for column in page.evaluate(
        "() => [...document.querySelectorAll('#campaigns th')].map(th => th.dataset.column)"
    ):
        page.click(f'#campaigns th[data-column="{column}"] button')
        assert page.get_attribute(f'#campaigns th[data-column="{column}"]', "aria-sort") in {
            "ascending",
            "descending",
        }

    # Searchable (the API's q).
    page.fill("#q", "black friday")
    wait_for_list(page, 1)
    page.fill("#q", "")
    wait_for_list(page, len(CAMPAIGNS))

    # One campaign: funnel, rates and chart.
    target = CAMPAIGNS[0].key
    page.click(f'#campaigns tr[data-campaign-id="{target.id}"] td[data-field="campaign_id"] a')
    page.wait_for_function(
        "(id) => document.getElementById('campaign-view').dataset.campaignId === id",
        arg=target.id,
    )
    page.wait_for_function(CHART_DRAWN)
    before = check_campaign(page, served)

    # The data grows; the page follows without a reload.
    page.evaluate("() => { window.__sameDocument = true; }")
    served.source.grow(3)
    after = api(served, f"campaigns/{target.id}", window="1m")
    page.wait_for_function(
        "(at) => document.getElementById('campaign-view').dataset.updatedAt === at",
        arg=str(after["updated_at"]),
    )
    page.wait_for_function(
        "(at) => document.getElementById('chart').dataset.lastWindowStart === at",
        arg=str(after["series"][-1]["window_start"]),
    )
    grown = check_campaign(page, served)
    assert grown["totals"]["total"] > before["totals"]["total"]
    sends = after["totals"]["event_type_counts"]["SEND"]
    page.wait_for_function(
        """([id, n]) => document.querySelector(`#campaigns tr[data-campaign-id="${id}"]
             td[data-field="sends"]`).dataset.value === n""",
        arg=[target.id, str(sends)],
    )
    check_list(page, served)
    assert page.evaluate("() => window.__sameDocument") is True

    shot = os.environ.get("CRM_WEB_SCREENSHOT")
    page.evaluate(
        "() => { window.scrollTo(0, 0); document.querySelector('.table-wrap').scrollLeft = 0; }"
    )
    page.screenshot(
        path=shot or str(Path(tempfile.gettempdir()) / "crm-web-view.png"), full_page=True
    )


def test_a_refused_query_is_shown(page: Any, served: Served, console_errors: list[str]) -> None:
    """30 days of 1m windows is more than the API answers: the page says which parameter."""
    wait_for_list(page, len(CAMPAIGNS))
    page.select_option("#window", "1m")
    page.select_option("#range", "2592000000")
    page.wait_for_selector("#error:not([hidden])")
    assert "(parameter from)" in page.text_content("#error")
    page.select_option("#range", "86400000")
    page.wait_for_selector("#error", state="hidden")
    refused = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    assert refused in console_errors
    console_errors[:] = [e for e in console_errors if e != refused]
