"""The web view's attribution table in a real headless Chromium: the rows and totals equal
``GET /api/attribution``'s, following the data without a reload, filtered by conversion name;
hidden where attribution is off (the other page tests serve it off)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from processors.api.server import make_app
from processors.attribution import (
    UNATTRIBUTED,
    Conversion,
    Outcome,
    Tally,
    Touch,
    UserState,
    Windows,
    apply,
)
from processors.attribution_api import AttributionSource, public_handler
from tests.unit.processors.api.conftest import ServerThread
from tests.unit.processors.api.fake_source import FakeSource
from tests.unit.processors.api.test_page import WAIT_MS, chromium  # noqa: F401

pytestmark = pytest.mark.browser

H = 3_600_000
READ = """() => ({
  enabled: document.getElementById('attribution-view').dataset.enabled,
  hidden: document.getElementById('attribution-view').hidden,
  conversions: document.getElementById('attr-totals').dataset.conversions,
  control: document.getElementById('attr-totals').dataset.controlConversions,
  unattributed: document.getElementById('attr-totals').dataset.unattributed,
  missed: [...document.querySelectorAll('#attr-unattributed tbody tr')].map((tr) =>
    Object.fromEntries([...tr.querySelectorAll('td')].map(
      (td) => [td.dataset.field, td.dataset.value ?? td.textContent]))),
  rows: [...document.querySelectorAll('#attribution tbody tr')].map((tr) =>
    Object.fromEntries([...tr.querySelectorAll('td')].map(
      (td) => [td.dataset.field, td.dataset.value ?? td.textContent]))),
})"""


class Table:
    """The attribution table's totals, grown by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.held: list[tuple[str, str, Tally]] = []

    def credit(self, vendor: str, campaign: str, name: str, kind: str, value: float | None) -> None:
        touch = Touch(f"{vendor}:{len(self.held)}", self.now_ms - H, vendor, "app", campaign, kind)
        conv = Conversion(f"c{len(self.held)}", "u", name, self.now_ms, "conversions", value, "USD")
        (made,) = apply(UserState(), [touch, conv], Windows(3 * 24 * H), Outcome())
        tally = Tally()
        tally.add(made)
        self.held.append((touch.campaign, name, tally))

    def miss(self, name: str, exposed: bool) -> None:
        """A conversion no touch gets: before any exposure, or after the window of one."""
        touch = Touch(f"X:{len(self.held)}", self.now_ms - 5 * 24 * H, "AIRSHIP", "", "c", "SEND")
        conv = Conversion(f"c{len(self.held)}", "u", name, self.now_ms, "conversions")
        outcome = Outcome()
        assert apply(UserState(), [touch] * exposed + [conv], Windows(3 * 24 * H), outcome) == []
        tally = Tally()
        for _, why in outcome.misses:
            tally.miss(why)
        self.held.append((UNATTRIBUTED, name, tally))

    def tallies(
        self, partitions: Iterable[int], from_ms: int, to_ms: int, name: str | None
    ) -> list[tuple[str, str, Tally]]:
        return [t for t in self.held if name is None or t[1] == name]


class Alone:
    self_url = "http://127.0.0.1:1"

    def peers(self) -> list[str]:
        return [self.self_url]


@pytest.fixture
def served() -> Iterator[tuple[str, Table]]:
    source = FakeSource()
    table = Table(source.now_ms())
    table.credit("AIRSHIP", "push-1", "Order Completed", "SEND", 30.25)
    table.credit("LEANPLUM", "spring", "Order Completed", "CONTROL", 10.0)
    attribution = AttributionSource(table, Alone(), lambda: {0})
    app = make_app(
        source, now_ms=source.now_ms, attribution=public_handler(attribution, source.now_ms)
    )
    with ServerThread(app) as url:
        yield url, table


def shown_matches(page: Any, body: dict[str, Any]) -> bool:
    shown = page.evaluate(READ)
    if shown["enabled"] != "true" or shown["hidden"]:
        return False
    want = [
        {
            "vendor": r["vendor"],
            "app_id": r["app_id"] or "—",
            "campaign_id": r["campaign_id"],
            "campaign_name": r["campaign_name"] or "—",
            "conversions": str(r["conversions"]),
            "control_conversions": str(r["control_conversions"]),
            "value": r["value"],
            "control_value": r["control_value"],
        }
        for r in body["campaigns"]
    ]
    money = ("value", "control_value")
    got = [
        {k: orjson.loads(v) if k in money else v for k, v in row.items()} for row in shown["rows"]
    ]
    missed = [{k: str(v) if k != "name" else v for k, v in r.items()} for r in body["unattributed"]]
    return (
        got == want
        and shown["conversions"] == str(body["conversions"])
        and shown["control"] == str(body["control_conversions"])
        and shown["unattributed"] == str(body["unattributed_conversions"])
        and shown["missed"] == missed
    )


def wait_equal(page: Any, url: str, **params: str) -> dict[str, Any]:
    body = httpx.get(f"{url}/api/attribution", params=params, timeout=10).json()
    rows = len(body["campaigns"])
    page.wait_for_function(f"() => document.getElementById('attribution').dataset.rows == {rows}")
    for _ in range(WAIT_MS // 250):
        if shown_matches(page, body):
            return body
        page.wait_for_timeout(250)
    raise AssertionError(f"the page shows {page.evaluate(READ)}, the API {body}")


def test_the_attribution_table_shows_the_apis_numbers_and_follows_them(
    chromium: Any,  # noqa: F811
    served: tuple[str, Table],
) -> None:
    url, table = served
    errors: list[str] = []
    page = chromium.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(f"{url}/?refresh=300")
        body = wait_equal(page, url, **{"from": "0"})
        assert [r["vendor"] for r in body["campaigns"]] == ["AIRSHIP", "LEANPLUM"]
        # More conversions arrive: the table follows without a reload.
        table.credit("PINPOINT", "winback", "Signed Up", "DELIVERY", None)
        table.credit("AIRSHIP", "push-1", "Signed Up", "SEND", 5.0)
        table.miss("Signed Up", exposed=False)
        table.miss("Signed Up", exposed=True)
        table.miss("Order Completed", exposed=False)
        body = wait_equal(page, url, **{"from": "0"})
        assert body["conversions"] == 3 and body["control_conversions"] == 1
        assert body["unattributed_conversions"] == 3
        assert body["unattributed"] == [
            {"name": "Signed Up", "conversions": 2, "no_exposure": 1, "outside_window": 1},
            {"name": "Order Completed", "conversions": 1, "no_exposure": 1, "outside_window": 0},
        ]
        # One conversion name only.
        page.select_option("#attr-name", "Signed Up")
        body = wait_equal(page, url, name="Signed Up", **{"from": "0"})
        assert [r["campaign_id"] for r in body["campaigns"]] == ["push-1", "winback"]
        assert [r["name"] for r in body["unattributed"]] == ["Signed Up"]
        assert errors == []
    finally:
        page.close()


def test_the_table_is_hidden_where_attribution_is_off(chromium: Any) -> None:  # noqa: F811
    source = FakeSource()
    with ServerThread(make_app(source, now_ms=source.now_ms)) as url:
        assert httpx.get(f"{url}/api/attribution").json() == {"enabled": False, "campaigns": []}
        page = chromium.new_page()
        try:
            page.goto(f"{url}/?refresh=300")
            page.wait_for_function(
                "() => document.getElementById('attribution-view').dataset.enabled === 'false'"
            )
            assert page.evaluate("document.getElementById('attribution-view').hidden")
        finally:
            page.close()
