"""The web view in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright;
Playwright never downloads a browser here): the page served by the app over the fake source,
offline, its numbers equal to the API's, following the data without a reload.

``CRM_WEB_SCREENSHOT=docs/web-view.png`` also writes the screenshot the README shows.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from processors.api.query import RATES
from tests.unit.processors.api.conftest import Served
from tests.unit.processors.api.fake_source import BASE_MS, CAMPAIGNS, MINUTE, NO_CAMPAIGN

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
    messages: [...document.querySelectorAll('#messages tbody tr')].map((tr) => ({
      kind: tr.dataset.kind, message_id: tr.dataset.messageId,
      ...Object.fromEntries([...tr.querySelectorAll('td')].map(
        (td) => [td.dataset.field, td.dataset.type === 'int' ? td.dataset.value : td.textContent])),
    })),
    variants: {
      hidden: document.getElementById('variants').hidden,
      columns: [...document.querySelectorAll('#variants thead th[data-kind]')].map((th) => ({
        kind: th.dataset.kind, variant_id: th.dataset.variantId, label: th.textContent })),
      rows: Object.fromEntries([...document.querySelectorAll('#variants tbody tr')].map(
        (tr) => [tr.dataset.row, [...tr.querySelectorAll('td')].map((td) => ({
          value: td.dataset.value, text: td.textContent }))])),
    },
  };
}"""
VARIANT_LABELS = {
    "control": "(control group)",
    "overflow": "(more variants)",
    "none": "(no variant)",
    "not_broken_down": "(not broken down)",
}
MESSAGE_LABELS = {
    "overflow": "(more messages)",
    "none": "(no message)",
    "not_broken_down": "(not broken down)",
}
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
    headers = {"Authorization": f"Bearer {served.token}"} if served.token else {}
    response = httpx.get(f"{served.url}/api/{path}", params=params, headers=headers, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for_list(page: Any, count: int) -> None:
    page.wait_for_function(
        "(n) => document.getElementById('campaigns').dataset.count === String(n)", arg=count
    )


def check_list(page: Any, served: Served, **query: Any) -> dict[str, Any]:
    """Every row's numbers and texts equal the API's, in full (the list's default query, or
    ``query``); a row's event columns add up to its total."""
    expected = api(served, "campaigns", **{"limit": 1000, "window": "1h", **query})["campaigns"]
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
            "opens": t["event_type_counts"].get("OPEN", 0),
            "clicks": t["event_type_counts"].get("CLICK", 0),
            "other": t["total"]
            - sum(
                t["event_type_counts"].get(step, 0)
                for step in ("SEND", "DELIVERY", "OPEN", "CLICK")
            ),
            "total": t["total"],
            "last_window_end": c["last_window_end"],
            **{name: c["rates"][name] for name in RATES},
        }
        for field, value in numbers.items():
            assert row[field][0] == _num(value), (c["campaign_id"], field)
        for field in ("vendor", "app_id", "campaign_name"):
            # The DOM holds the whole text: ids and names are never cut (CSS may wrap them).
            assert row[field][1] == (c[field] if c[field] is not None else "—"), field
        # Traffic of no campaign is labelled as such (issue 22 item 3; formerly "—").
        assert row["campaign_id"][1] == (c["campaign_id"] or "(no campaign)")
        assert row["sends"][1] == f"{numbers['sends']:,}"
        # The columns of a row add up to its total (issue 22 item 3).
        columns = ("sends", "deliveries", "opens", "clicks", "other")
        assert sum(int(row[k][0]) for k in columns) == int(row["total"][0])
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
    check_messages(shown["messages"], c)
    check_variants(shown["variants"], c)
    return c


def check_variants(shown: dict[str, Any], c: dict[str, Any]) -> None:
    """The variant comparison is the API's ``variants``, a column per row in its order: the
    funnel, conversion and lift (with its intervals) are the API's numbers, and the verdict is
    its ``significant`` ("too small to say" where the lift is null)."""
    rows = c["variants"]
    assert shown["hidden"] == (not any(r["kind"] in ("value", "control") for r in rows))
    assert [(col["kind"], col["variant_id"]) for col in shown["columns"]] == [
        (r["kind"], r["variant_id"] or "") for r in rows
    ]
    for col, r in zip(shown["columns"], rows, strict=True):
        assert col["label"] == (
            r["variant_id"] if r["kind"] == "value" else VARIANT_LABELS[r["kind"]]
        )
    want: dict[str, list[Any]] = {
        "recipients": [r["uniques"]["recipients"] if r["uniques"] else None for r in rows],
        "received": [r["received"] for r in rows],
        "SEND": [r["event_type_counts"].get("SEND", 0) for r in rows],
        "DELIVERY": [r["event_type_counts"].get("DELIVERY", 0) for r in rows],
        "unique_OPEN": [
            r["uniques"]["by_event_type"].get("OPEN", 0) if r["uniques"] else None for r in rows
        ],
        "unique_CLICK": [
            r["uniques"]["by_event_type"].get("CLICK", 0) if r["uniques"] else None for r in rows
        ],
        "unique_open_rate": [r["rates"]["unique_open_rate"] for r in rows],
        "click_to_open_rate": [r["rates"]["click_to_open_rate"] for r in rows],
        "converted": [r["converted"] for r in rows],
        "conversion_rate": [r["conversion_rate"] for r in rows],
        "lift_absolute": [r["lift"]["absolute"] if r["lift"] else None for r in rows],
        "lift_relative": [r["lift"]["relative"] if r["lift"] else None for r in rows],
        "p_value": [r["lift"]["p_value"] if r["lift"] else None for r in rows],
    }
    for key, values in want.items():
        # Compared as numbers: JavaScript writes 1.4e-06 as 0.0000014.
        got = [float(cell["value"]) if cell["value"] else None for cell in shown["rows"][key]]
        assert got == [None if v is None else float(v) for v in values], key
    for key in ("absolute_ci95", "relative_ci95"):
        got = [
            json.loads(cell["value"]) if cell["value"] else None
            for cell in shown["rows"][f"lift_{key}"]
        ]
        assert got == [r["lift"][key] if r["lift"] else None for r in rows], key
    verdicts = [cell["value"] for cell in shown["rows"]["verdict"]]
    for verdict, r in zip(verdicts, rows, strict=True):
        if r["kind"] == "control":
            assert verdict == "control group"
        elif r["kind"] != "value":
            assert verdict == ""
        else:
            assert (
                verdict
                == {True: "significant", False: "not significant", None: "too small to say"}[
                    r["significant"]
                ]
            ), r


def check_messages(shown: list[dict[str, str]], c: dict[str, Any]) -> None:
    """The per-message table is the API's ``messages``, row for row in its order (by total,
    most first), the buckets labelled, and its rows add up to the campaign's totals."""
    rows = c["messages"]
    assert len(shown) == len(rows)
    for row, r in zip(shown, rows, strict=True):
        counts = r["event_type_counts"]
        assert row["kind"] == r["kind"]
        assert row["message_id"] == (r["message_id"] or "")
        assert row["message"] == (
            r["message_id"] if r["kind"] == "value" else MESSAGE_LABELS[r["kind"]]
        )
        for step in STEPS:
            assert row[step] == _num(counts.get(step, 0)), (r, step)
        assert row["other"] == _num(r["total"] - sum(counts.get(step, 0) for step in STEPS))
        assert row["total"] == _num(r["total"])
    totals = [int(row["total"]) for row in shown]
    assert totals == sorted(totals, reverse=True)
    t = c["totals"]
    assert sum(totals) == t["total"]
    for step in STEPS:
        assert sum(int(row[step]) for row in shown) == t["event_type_counts"].get(step, 0)
    summed: dict[str, int] = {}
    for r in rows:
        for event_type, n in r["event_type_counts"].items():
            summed[event_type] = summed.get(event_type, 0) + n
    assert summed == t["event_type_counts"]


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


def test_a_campaigns_variants_side_by_side_with_lift_and_its_verdict(
    page: Any, served: Served
) -> None:
    """The Black Friday campaign's variant B clearly beats its holdout, A does not; an Airship
    campaign converts too little to say; a campaign without variants says it has none."""
    wait_for_list(page, len(CAMPAIGNS))
    target = CAMPAIGNS[0].key
    open_campaign(page, target.id)
    c = check_campaign(page, served)
    by_id = {r["variant_id"]: r for r in c["variants"] if r["kind"] == "value"}
    assert set(by_id) == {"A", "B"}
    assert by_id["B"]["significant"] is True and by_id["B"]["lift"]["absolute_ci95"][0] > 0
    control = next(r for r in c["variants"] if r["kind"] == "control")
    assert control["received"] == control["uniques"]["by_event_type"]["CONTROL"] > 0
    verdicts = page.evaluate(
        "() => [...document.querySelectorAll('#variants td[data-field=\"verdict\"]')]"
        ".map((td) => td.textContent)"
    )
    assert "significant" in verdicts and "control group" in verdicts
    assert c["conversions"]["events"] == c["totals"]["event_type_counts"]["CONVERSION"]

    airship = CAMPAIGNS[4].key
    open_campaign(page, airship.id)
    c = check_campaign(page, served)
    shown = [r["significant"] for r in c["variants"] if r["kind"] == "value"]
    assert shown and all(s is not True for s in shown)
    texts = page.evaluate(
        "() => [...document.querySelectorAll('#variants td[data-field=\"verdict\"]')]"
        ".map((td) => td.textContent)"
    )
    assert {"not significant", "too small to say"} & set(texts)

    plain = CAMPAIGNS[1].key  # Pinpoint: no variant ids, no control group
    open_campaign(page, plain.id)
    c = check_campaign(page, served)
    assert [r["kind"] for r in c["variants"]] == ["none"]
    assert page.evaluate("() => document.getElementById('variants').hidden") is True
    assert "no variant id" in page.text_content("#variants-note")


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


# --- issue 22 (the page a new user meets) and issue 23 item 4 (signing in) -----------------

DAY_MS = 86_400_000
TOKEN = "page-test-token-0123456789"


def read_detail_totals(page: Any) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#funnel li[data-step]')]
             .map((li) => [li.dataset.step, li.querySelector('[data-field="count"]').dataset.value])
             .concat([['total', document.querySelector('#c-totals [data-field="total"]')
                                 .dataset.value]]))"""
    )


def open_campaign(page: Any, campaign_id: str) -> None:
    page.click(f'#campaigns tr[data-campaign-id="{campaign_id}"] td[data-field="campaign_id"] a')
    page.wait_for_function(
        "(id) => document.getElementById('campaign-view').dataset.campaignId === id",
        arg=campaign_id,
    )
    page.wait_for_function(CHART_DRAWN)


def test_the_detail_shows_the_lists_range(page: Any, served: Served) -> None:
    """Five hours of data: the detail's funnel is the list row's figures (formerly 1m windows
    over the last three hours, leaving the rest out), charted in 1m windows."""
    target = CAMPAIGNS[1].key
    wait_for_list(page, len(CAMPAIGNS))
    served.source.grow(210)
    total = api(served, "campaigns", vendor="PINPOINT")["campaigns"][0]["totals"]["total"]
    page.wait_for_function(
        """([id, n]) => document.querySelector(`#campaigns tr[data-campaign-id="${id}"]
             td[data-field="total"]`).dataset.value === n""",
        arg=[target.id, str(total)],
    )
    listed = check_list(page, served)
    open_campaign(page, target.id)
    shown = check_campaign(page, served)
    assert shown["window"] == "1m" and len(shown["series"]) == 300
    row = listed[target.id]["totals"]
    detail = read_detail_totals(page)
    assert detail["total"] == str(row["total"])
    for step in STEPS:
        assert detail[step] == str(row["event_type_counts"].get(step, 0)), step
    assert page.is_hidden("#c-partial")
    # A chosen window shows the same totals.
    page.select_option("#c-window", "1h")
    page.wait_for_function("() => document.getElementById('campaign-view').dataset.window === '1h'")
    assert read_detail_totals(page)["total"] == str(row["total"])


@pytest.mark.parametrize("fake_source", [{"profiles": (*CAMPAIGNS, NO_CAMPAIGN)}], indirect=True)
def test_rows_add_up_and_traffic_of_no_campaign_is_named(page: Any, served: Served) -> None:
    wait_for_list(page, len(CAMPAIGNS) + 1)
    listed = check_list(page, served)  # also: sends + deliveries + opens + clicks + other = total
    (none,) = [c for c in listed.values() if c["campaign_id"] is None]
    cell = f'#campaigns tr[data-campaign-id="{none["id"]}"] td[data-field="campaign_id"]'
    assert page.text_content(cell) == "(no campaign)"
    assert "no campaign id" in (page.get_attribute(f"{cell} a", "title") or "")
    header = '#campaigns th[data-column="other"]'
    assert page.text_content(header) == "Other events" and page.get_attribute(header, "title")
    open_campaign(page, none["id"])
    assert page.text_content("#c-campaign-id") == "(no campaign)"
    assert "(no campaign)" in page.text_content("#c-name")
    t = none["totals"]
    steps = sum(t["event_type_counts"].get(s, 0) for s in STEPS)
    assert page.get_attribute('#c-totals [data-field="other"]', "data-value") == str(
        t["total"] - steps
    )


@pytest.mark.parametrize("api_env", [{"CRM_STATS_WINDOWS": "1m,5m"}], indirect=True)
def test_the_page_offers_the_windows_the_worker_keeps(page: Any, served: Served) -> None:
    """CRM_STATS_WINDOWS=1m,5m: formerly the page opened on "this deployment keeps no 1h
    windows" above an empty table."""
    wait_for_list(page, len(CAMPAIGNS))
    options = "(id) => [...document.getElementById(id).options].map((o) => o.value)"
    assert page.evaluate(options, "window") == ["1m", "5m"]
    assert page.input_value("#window") == "5m"
    check_list(page, served, window="5m")
    page.select_option("#window", "1m")
    page.wait_for_function("() => document.getElementById('campaigns').dataset.window === '1m'")
    wait_for_list(page, len(CAMPAIGNS))
    open_campaign(page, CAMPAIGNS[0].key.id)
    assert page.evaluate(options, "c-window") == ["", "1m", "5m"]
    page.select_option("#c-window", "5m")
    page.wait_for_function("() => document.getElementById('campaign-view').dataset.window === '5m'")
    check_campaign(page, served)
    assert page.is_hidden("#error")


@pytest.mark.parametrize("fake_source", [{"lag_ms": 200 * DAY_MS}], indirect=True)
def test_data_dated_in_the_past_is_shown(page: Any, served: Served) -> None:
    """The clock is 200 days past the data (the demo's samples are dated January to June):
    the API's default 1m range holds nothing, the page's default range is the data held."""
    assert api(served, "campaigns", window="1m")["campaigns"] == []
    wait_for_list(page, len(CAMPAIGNS))
    page.select_option("#window", "1m")
    page.wait_for_function("() => document.getElementById('campaigns').dataset.window === '1m'")
    wait_for_list(page, len(CAMPAIGNS))
    table = page.evaluate("() => ({...document.getElementById('campaigns').dataset})")
    held = {"from": int(table["heldFrom"]), "to": int(table["heldTo"])}
    assert int(table["from"]) <= held["from"] and int(table["to"]) >= held["to"] - 3_600_000
    check_list(page, served, window="1m", **{"from": table["from"], "to": table["to"]})
    assert page.text_content("#range option[value='held']") == "All data held"


def test_any_range_from_to(page: Any, served: Served) -> None:
    """Beyond the presets: any from and to (UTC)."""
    wait_for_list(page, len(CAMPAIGNS))
    page.select_option("#window", "1m")
    page.select_option("#range", "custom")
    page.fill("#from", "2026-11-30T09:40")  # the staging campaign stopped at 09:29
    page.fill("#to", "2026-11-30T10:10")
    page.dispatch_event("#to", "change")
    page.wait_for_function(
        "(to) => document.getElementById('campaigns').dataset.to === to",
        arg=str(BASE_MS + 70 * MINUTE),
    )
    wait_for_list(page, len(CAMPAIGNS) - 1)
    table = page.evaluate("() => ({...document.getElementById('campaigns').dataset})")
    assert (int(table["from"]), int(table["to"])) == (
        BASE_MS + 40 * MINUTE,
        BASE_MS + 70 * MINUTE,
    )
    check_list(page, served, window="1m", **{"from": table["from"], "to": table["to"]})


def _csv(page: Any, button: str) -> list[dict[str, str]]:
    with page.expect_download() as info:
        page.click(button)
    path = info.value.path()
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_of_the_list_and_of_a_series(page: Any, served: Served) -> None:
    wait_for_list(page, len(CAMPAIGNS))
    table = page.evaluate("() => ({...document.getElementById('campaigns').dataset})")
    rows = _csv(page, "#list-csv")
    expected = api(
        served, "campaigns", limit=1000, window="1h", **{"from": table["from"], "to": table["to"]}
    )["campaigns"]
    assert [r["id"] for r in rows] == [c["id"] for c in expected]
    for row, c in zip(rows, expected, strict=True):
        t = c["totals"]
        assert row["campaign_name"] == (c["campaign_name"] or "")
        assert row["campaign_id"] == (c["campaign_id"] or "")
        assert int(row["total"]) == t["total"]
        counted = [k for k in row if k.startswith("count_") and k != "count_other"]
        assert sum(int(row[k]) for k in counted) == t["total"]
        steps = sum(t["event_type_counts"].get(s, 0) for s in STEPS)
        assert int(row["count_other"]) == t["total"] - steps
        for event_type, n in t["event_type_counts"].items():
            assert int(row[f"count_{event_type}"]) == n
        assert int(row["unique_recipients"]) == t["uniques"]["recipients"]
        for name, value in c["rates"].items():
            assert (float(row[name]) if row[name] else None) == value
    open_campaign(page, CAMPAIGNS[0].key.id)
    shown = page.evaluate(READ_CAMPAIGN)
    detail = api(
        served,
        f"campaigns/{shown['id']}",
        window=shown["window"],
        **{"from": shown["from"], "to": shown["to"]},
    )
    points = _csv(page, "#c-csv")
    assert len(points) == len(detail["series"])
    for row, p in zip(points, detail["series"], strict=True):
        assert row["window_start"] == datetime.fromtimestamp(
            p["window_start"] / 1000, UTC
        ).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert int(row["total"]) == p["total"]
        for event_type, n in p["event_type_counts"].items():
            assert int(row[f"count_{event_type}"]) == n
        assert int(row["unique_recipients"]) == p["uniques"]["recipients"]


def test_a_campaigns_messages_with_the_overflow_and_no_message_rows(
    page: Any, served: Served
) -> None:
    """Issue 22, "Also for the page": a per-message breakdown of a campaign. The Airship
    campaign sends a push operation a minute: more message ids than the bound, so the range's
    largest have rows and the rest are "(more messages)"; Pinpoint has no message ids at all."""
    wait_for_list(page, len(CAMPAIGNS))
    airship, pinpoint, leanplum = CAMPAIGNS[4].key, CAMPAIGNS[1].key, CAMPAIGNS[0].key
    open_campaign(page, airship.id)
    c = check_campaign(page, served)
    kinds = [r["kind"] for r in c["messages"]]
    assert kinds.count("value") == 6 and {"overflow", "none"} <= set(kinds)
    labels = page.evaluate(
        "() => [...document.querySelectorAll('#messages td[data-field=\"message\"]')]"
        ".map((td) => td.textContent)"
    )
    assert "(more messages)" in labels and "(no message)" in labels
    # The CSV of the table: the same rows.
    rows = _csv(page, "#c-messages-csv")
    assert [(r["kind"], r["message_id"], int(r["total"])) for r in rows] == [
        (m["kind"], m["message_id"] or "", m["total"]) for m in c["messages"]
    ]
    for row, m in zip(rows, c["messages"], strict=True):
        for event_type, n in m["event_type_counts"].items():
            assert int(row[f"count_{event_type}"]) == n
    page.click("#c-close")
    open_campaign(page, pinpoint.id)
    c = check_campaign(page, served)
    assert [r["kind"] for r in c["messages"]] == ["none"]
    page.click("#c-close")
    open_campaign(page, leanplum.id)
    c = check_campaign(page, served)
    assert {r["message_id"] for r in c["messages"] if r["kind"] == "value"} == {
        "msg-a",
        "msg-b",
        "msg-c",
    }


@pytest.mark.parametrize("api_env", [{"CRM_API_TOKEN": TOKEN}], indirect=True)
def test_signing_in(page: Any, served: Served, console_errors: list[str]) -> None:
    """With CRM_API_TOKEN set the page asks for the token, sends it, and shows the figures."""
    page.wait_for_selector("#login-view:not([hidden])")
    assert page.is_hidden("#list-view") and page.evaluate(READ_ROWS) == {}
    page.fill("#token", "not-the-token-at-all")
    page.press("#token", "Enter")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "refused" in page.text_content("#login-error")
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    wait_for_list(page, len(CAMPAIGNS))
    check_list(page, served)
    open_campaign(page, CAMPAIGNS[0].key.id)
    check_campaign(page, served)
    # Signing out forgets the token and the figures.
    page.click("#logout")
    page.wait_for_selector("#login-view:not([hidden])")
    assert page.evaluate(READ_ROWS) == {}
    assert page.evaluate("() => sessionStorage.length") == 0
    refused = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    assert refused in console_errors
    console_errors[:] = [e for e in console_errors if e != refused]


@pytest.mark.parametrize("api_env", [{"CRM_STATS_WINDOWS": "1s,1h"}], indirect=True)
@pytest.mark.parametrize("fake_source", [{"minutes": 200}], indirect=True)
def test_a_detail_too_fine_for_the_range_says_it_is_partial(page: Any, served: Served) -> None:
    """Four hours in 1s windows is more than 10,000 of them: the detail shows the latest
    10,000 and says so, and how to see everything; Auto picks a window that shows it all."""
    wait_for_list(page, len(CAMPAIGNS))
    target = CAMPAIGNS[0].key
    open_campaign(page, target.id)
    assert page.evaluate("() => document.getElementById('campaign-view').dataset.window") == "1h"
    assert page.is_hidden("#c-partial")
    page.select_option("#c-window", "1s")
    page.wait_for_function(
        "() => document.getElementById('campaign-view').dataset.partial === 'true'"
    )
    note = page.text_content("#c-partial")
    assert note.startswith("Partial:") and "Choose a larger window" in note
    shown = page.evaluate(READ_CAMPAIGN)
    assert (int(shown["to"]) - int(shown["from"])) // 1000 == 10_000
    answer = api(
        served,
        f"campaigns/{target.id}",
        window="1s",
        **{"from": shown["from"], "to": shown["to"]},
    )
    assert shown["total"] == str(answer["totals"]["total"])
    listed = api(served, "campaigns", limit=1000)["campaigns"]
    whole = next(c for c in listed if c["id"] == target.id)["totals"]["total"]
    assert f"of its {whole:,} events" in note and answer["totals"]["total"] < whole
