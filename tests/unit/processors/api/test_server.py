"""The query API over HTTP: the app on a free port over the fake source, every response (200s,
400s, 404s) validated against openapi.yaml by openapi-core, and the page's files served."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from processors.api.query import MAX_WINDOWS, CampaignKey, decode_id, encode_id, rates
from processors.api.server import OPENAPI, STATIC, make_app
from tests.unit.processors.api.conftest import Served, ServerThread
from tests.unit.processors.api.fake_source import BASE_MS, CAMPAIGNS, MINUTE, FakeSource

SPEC = OpenAPI.from_file_path(str(OPENAPI))  # also checks the file is a valid OpenAPI 3.1
REPO = Path(__file__).resolve().parents[4]
HOUR = 3_600_000
TEN_YEARS = 10 * 365 * 24 * HOUR


def get(served: Served, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
    """GET, and validate the response (whatever its status) against the spec."""
    params = {k: str(v) for k, v in (params or {}).items()}
    response = httpx.get(served.url + path, params=params, timeout=10)
    request = MockRequest(served.url, "get", urlsplit(str(response.url)).path, args=params)
    mimetype = response.headers["content-type"].split(";")[0]
    SPEC.validate_response(
        request, MockResponse(response.content, response.status_code, content_type=mimetype)
    )
    return response


def valid_get(served: Served, path: str, params: dict[str, Any] | None = None) -> Any:
    """A request the spec allows, answered with 200."""
    params = {k: str(v) for k, v in (params or {}).items()}
    SPEC.validate_request(MockRequest(served.url, "get", path, args=params))
    response = get(served, path, params)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def campaign_path(key: CampaignKey) -> str:
    return f"/api/campaigns/{key.id}"


# --- the list ------------------------------------------------------------------------------


def test_list(served: Served) -> None:
    body = valid_get(served, "/api/campaigns")
    assert body["window"] == "1h"
    assert body["to"] == BASE_MS + 2 * HOUR  # end of the window holding the fake's clock
    assert body["to"] - body["from"] == MAX_WINDOWS * HOUR
    campaigns = body["campaigns"]
    assert len(campaigns) == len(CAMPAIGNS)
    by_key = {decode_id(c["id"]): c for c in campaigns}
    for profile in CAMPAIGNS:
        c = by_key[profile.key]
        assert c["campaign_name"] == profile.name  # full, never cut
        assert c["campaign_id"] == (profile.key.campaign_id or None)
        assert c["app_id"] == (profile.key.app_id or None)
        assert c["rates"] == rates(c["totals"])
        assert c["totals"]["uniques"]["error_bound"] > 0
    # Newest activity first, then the most events.
    order = [(-c["last_window_end"], -c["totals"]["total"], c["id"]) for c in campaigns]
    assert order == sorted(order)
    assert campaigns[-1]["campaign_name"] == "Welcome series #1 (staging), ended"


def test_list_filters(served: Served) -> None:
    def ids(**params: Any) -> list[str | None]:
        body = valid_get(served, "/api/campaigns", params)
        return [c["campaign_id"] for c in body["campaigns"]]

    assert len(ids(vendor="AIRSHIP")) == 2
    assert ids(vendor="PINPOINT") == ["c7a1f0e2d3b44c5a8e9f0a1b2c3d4e5f"]
    assert ids(app_id="ISex_TTJRuarzs9-o_Gkhg") == ["f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"]
    assert ids(q="black friday") == ["5629499534213120"]
    assert ids(q="FLASH|SALE%2") == ["flash|sale%2 (category: weekend)"]
    assert ids(q="eu-west") == ["onboarding/day-3/profile"]  # app id
    assert ids(q="no such thing") == []
    everything = ids()
    assert ids(limit=2) == everything[:2]
    assert ids(limit=1000) == everything
    # The staging campaign stopped after minute 29; the Segment one started at minute 20.
    late = ids(window="1m", **{"from": BASE_MS + 40 * MINUTE})
    assert "4785074604081152" not in late and len(late) == len(CAMPAIGNS) - 1
    early = ids(window="1m", **{"from": BASE_MS, "to": BASE_MS + 20 * MINUTE})
    assert "onboarding/day-3/profile" not in early and len(early) == len(CAMPAIGNS) - 1


def test_list_follows_the_source(served: Served) -> None:
    def sends() -> int:
        body = valid_get(served, "/api/campaigns", {"vendor": "PINPOINT"})
        return int(body["campaigns"][0]["totals"]["event_type_counts"]["SEND"])

    before = sends()
    served.source.grow(3)
    assert sends() > before


# --- one campaign --------------------------------------------------------------------------


@pytest.mark.parametrize("profile", CAMPAIGNS, ids=lambda p: p.key.vendor + ":" + p.key.campaign_id)
def test_campaign(served: Served, profile: Any) -> None:
    minutes = valid_get(served, campaign_path(profile.key), {"window": "1m"})
    assert decode_id(minutes["id"]) == profile.key
    assert minutes["campaign_name"] == profile.name
    series = minutes["series"]
    assert series and [p["window_start"] for p in series] == sorted(
        p["window_start"] for p in series
    )
    assert all(p["window_end"] - p["window_start"] == MINUTE for p in series)
    assert minutes["first_window_start"] == series[0]["window_start"]
    assert minutes["last_window_end"] == series[-1]["window_end"]
    totals = minutes["totals"]
    # Counts add up over the windows; uniques are a union: at least the largest window's,
    # at most the sum.
    assert totals["total"] == sum(p["total"] for p in series)
    for event_type, n in totals["event_type_counts"].items():
        assert n == sum(p["event_type_counts"].get(event_type, 0) for p in series)
    assert totals["uniques"]["unattributed"] == sum(p["uniques"]["unattributed"] for p in series)
    recipients = [p["uniques"]["recipients"] for p in series]
    assert max(recipients) <= totals["uniques"]["recipients"] <= sum(recipients)
    assert minutes["rates"] == rates(totals)
    # The same data in 1h windows: fewer points, the same totals and rates.
    whole_hours = {"from": BASE_MS, "to": BASE_MS + 2 * HOUR}
    hours = valid_get(served, campaign_path(profile.key), {"window": "1h", **whole_hours})
    assert 0 < len(hours["series"]) < len(series)
    assert hours["totals"] == totals
    assert hours["rates"] == minutes["rates"]


def test_campaign_without_events_in_the_range(served: Served) -> None:
    key = CAMPAIGNS[0].key
    body = valid_get(served, campaign_path(key), {"from": 0, "to": HOUR})
    assert body["series"] == []
    assert body["totals"]["total"] == 0 and body["totals"]["event_type_counts"] == {}
    assert body["first_window_start"] is None and body["last_window_end"] is None
    assert set(body["rates"].values()) == {None}


def test_a_range_grows_with_the_source(served: Served) -> None:
    key = CAMPAIGNS[1].key
    before = valid_get(served, campaign_path(key), {"window": "1m"})
    served.source.grow(2)
    after = valid_get(served, campaign_path(key), {"window": "1m"})
    assert len(after["series"]) == len(before["series"]) + 2
    assert after["series"][:-2] == before["series"]
    assert after["totals"]["total"] > before["totals"]["total"]


# --- errors --------------------------------------------------------------------------------


def test_unknown_campaign_is_a_404(served: Served) -> None:
    missing = CampaignKey("SEGMENT", "app", "never-sent").id
    response = get(served, f"/api/campaigns/{missing}")
    assert response.status_code == 404
    assert response.json() == {"error": "no such campaign", "id": missing}


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/api/campaigns", {"window": "5m"}, "window"),
        ("/api/campaigns", {"from": BASE_MS, "to": BASE_MS}, "from"),
        ("/api/campaigns", {"from": BASE_MS + HOUR, "to": BASE_MS}, "from"),
        ("/api/campaigns", {"window": "1m", "from": BASE_MS - TEN_YEARS, "to": BASE_MS}, "from"),
        ("/api/campaigns", {"from": "yesterday"}, "from"),
        ("/api/campaigns", {"vendor": "BRAZE"}, "vendor"),
        ("/api/campaigns", {"limit": 0}, "limit"),
        ("/api/campaigns", {"limit": 1001}, "limit"),
        ("/api/campaigns", {"sort": "name"}, "sort"),
        ("CAMPAIGN", {"window": "1d"}, "window"),
        ("CAMPAIGN", {"window": "1m", "from": BASE_MS - TEN_YEARS, "to": BASE_MS}, "from"),
        ("CAMPAIGN", {"to": 0}, "to"),
        ("/api/campaigns/not-an-id", {}, "id"),
        (f"/api/campaigns/{encode_id('BRAZE|app|c')}", {}, "id"),
    ],
)
def test_bad_parameters_are_400s(
    served: Served, path: str, params: dict[str, Any], parameter: str
) -> None:
    if path == "CAMPAIGN":
        path = campaign_path(CAMPAIGNS[0].key)
    response = get(served, path, params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["parameter"] == parameter and body["error"]


def test_ten_years_of_minutes_is_refused_at_once(served: Served) -> None:
    """The 400 comes from validation, before the source is asked for anything."""
    calls: list[str] = []

    class Counting(FakeSource):
        async def campaign(self, query: Any) -> dict[str, Any] | None:
            calls.append("campaign")
            return await super().campaign(query)

    source = Counting()
    with ServerThread(make_app(source, now_ms=source.now_ms)) as url:
        path = campaign_path(CAMPAIGNS[0].key)
        params = {"window": "1m", "from": str(BASE_MS - TEN_YEARS), "to": str(BASE_MS)}
        response = httpx.get(url + path, params=params, timeout=10)
    assert response.status_code == 400 and response.json()["parameter"] == "from"
    assert calls == []


def test_other_api_errors_are_json(served: Served) -> None:
    response = httpx.get(served.url + "/api/nothing", timeout=10)
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = httpx.post(served.url + "/api/campaigns", timeout=10)
    assert response.status_code == 405 and "error" in response.json()


def test_a_failing_source_is_a_500_without_details() -> None:
    class Broken(FakeSource):
        async def list_campaigns(self, query: Any) -> list[dict[str, Any]]:
            raise RuntimeError("table not ready: secret detail")

    source = Broken()
    with ServerThread(make_app(source, now_ms=source.now_ms)) as url:
        response = httpx.get(url + "/api/campaigns", timeout=10)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}


# --- the page ------------------------------------------------------------------------------


def test_page_and_its_files_are_served_from_the_package(served: Served) -> None:
    page = httpx.get(served.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    # Everything the page loads is the package's own (no CDN: it works offline).
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and not [r for r in refs if re.match(r"[a-z]+:(?!,)|//", r) and r != "data:,"]
    for ref in refs:
        if ref.startswith("static/"):
            response = httpx.get(f"{served.url}/{ref}", timeout=10)
            assert response.status_code == 200, ref
            assert response.content == (STATIC / ref.removeprefix("static/")).read_bytes()
    assert httpx.get(served.url + "/static/../openapi.yaml", timeout=10).status_code == 404


def test_the_spec_validation_is_not_vacuous(served: Served) -> None:
    """Responses that break the contract in small ways are refused by the same validation."""
    body = valid_get(served, "/api/campaigns", {"limit": 1})
    path = campaign_path(CAMPAIGNS[0].key)
    detail = valid_get(served, path)

    def refused(url_path: str, broken: Any, status: int = 200) -> bool:
        request = MockRequest(served.url, "get", url_path)
        response = MockResponse(orjson.dumps(broken), status)
        return any(True for _ in SPEC.iter_response_errors(request, response))

    assert not refused("/api/campaigns", body)
    c = body["campaigns"][0]
    for breakage in (
        {**c, "extra": 1},
        {**c, "rates": {**c["rates"], "delivery_rate": "92%"}},
        {k: v for k, v in c.items() if k != "campaign_name"},
        {**c, "vendor": "BRAZE"},
        {**c, "totals": {**c["totals"], "uniques": {"recipients": 3}}},
    ):
        assert refused("/api/campaigns", {**body, "campaigns": [breakage]})
    assert refused(path, {**detail, "series": [{"window_start": 0}]})
    assert refused(path, {"error": "x"}, 404)
    assert refused("/api/campaigns", {"error": "x", "parameter": "q", "id": "y"}, 400)


def test_the_vendored_chart_library_is_the_pinned_one() -> None:
    """`make vendor-web` fetched what the Makefile pins, with its licence."""
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^UPLOT_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert pinned
    vendor = STATIC / "vendor"
    header = (vendor / "uPlot.iife.min.js").read_text()[:100]
    assert header.startswith(f"/*! https://github.com/leeoniya/uPlot (v{pinned[1]}) */")
    assert "The MIT License" in (vendor / "uPlot.LICENSE").read_text()
    assert (vendor / "uPlot.min.css").stat().st_size > 0


def test_the_wheel_ships_the_page_and_the_spec() -> None:
    """pyproject's package-data globs (expanded as setuptools does) cover every file the app
    serves, so an installed worker (the Docker image: a wheel) has them. Checked by building
    a wheel once by hand too: `pip wheel --no-deps -w /tmp/w .`."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["processors.api"]
    package = OPENAPI.parent
    shipped = {p for pattern in globs for p in package.glob(pattern) if p.is_file()}
    needed = {p for p in STATIC.rglob("*") if p.is_file()} | {OPENAPI}
    assert needed <= shipped, sorted(str(p.relative_to(package)) for p in needed - shipped)
