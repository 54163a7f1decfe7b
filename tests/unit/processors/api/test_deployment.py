"""The API as a deployment configures it: the windows it keeps (``CRM_STATS_WINDOWS``, issue 20
item 4 and issue 22 item 4), pages of the list (issue 22 item 9) and bearer tokens
(``CRM_API_TOKEN``, issue 23 item 4). Every response is validated against openapi.yaml, with the
deployment's windows in place of the default's enums."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from crmstream.errors import ConfigError
from crmstream.settings import Settings
from processors.api.query import CampaignKey, default_window, window_sizes
from processors.api.server import OPENAPI, make_app
from tests.unit.processors.api.conftest import ServerThread
from tests.unit.processors.api.fake_source import CAMPAIGNS, MINUTE, FakeSource

HOUR = 60 * MINUTE
DAY = 24 * HOUR
TOKEN = "s3cret-token-for-everything"
APP_TOKEN = "another-token-for-one-app-only"
ONE_APP = "ISex_TTJRuarzs9-o_Gkhg"  # AIRSHIP's app of the fixture


def spec_for(settings: Settings) -> OpenAPI:
    """openapi.yaml as a deployment with these settings serves it: its windows in the enums."""
    spec: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
    windows = window_sizes(settings)
    parameter = spec["components"]["parameters"]["Window"]["schema"]
    parameter["enum"] = list(windows)
    parameter["default"] = default_window(windows)
    spec["components"]["schemas"]["RangeFields"]["properties"]["window"]["enum"] = list(windows)
    return OpenAPI.from_dict(spec)


class Deployment:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.spec = spec_for(settings)

    def get(
        self, path: str, params: dict[str, Any] | None = None, token: str | None = None
    ) -> httpx.Response:
        """GET; the response, whatever its status, must match the deployment's spec."""
        args = {k: str(v) for k, v in (params or {}).items()}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(self.url + path, params=args, headers=headers, timeout=10)
        if path.startswith("/api/campaigns"):
            request = MockRequest(self.url, "get", urlsplit(str(response.url)).path, args=args)
            mimetype = response.headers["content-type"].split(";")[0]
            self.spec.validate_response(
                request,
                MockResponse(response.content, response.status_code, content_type=mimetype),
            )
        return response

    def ok(self, path: str, params: dict[str, Any] | None = None, token: str | None = None) -> Any:
        response = self.get(path, params, token)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def deploy() -> Iterator[Any]:
    """``deploy(**env)``: the app over a fresh fake source with the settings of ``env``."""
    threads: list[ServerThread] = []

    def start(**env: str) -> Deployment:
        settings = Settings.from_env(env)
        source = FakeSource(minutes=3 * 60)
        thread = ServerThread(make_app(source, now_ms=source.now_ms, settings=settings))
        url = thread.__enter__()
        threads.append(thread)
        return Deployment(url, settings)

    yield start
    for thread in threads:
        thread.__exit__(None, None, None)


# --- windows -------------------------------------------------------------------------------


def test_the_api_offers_exactly_the_windows_the_worker_keeps(deploy: Any) -> None:
    """CRM_STATS_WINDOWS=5m,1d: 5m and 1d are answered, 1m and 1h are 400s (formerly the
    reverse: api/query.py hard-coded 1m and 1h)."""
    api = deploy(CRM_STATS_WINDOWS="5m,1d")
    body = api.ok("/api/campaigns")
    assert body["window"] == "1d"  # the largest kept is the default
    assert body["windows"] == {"5m": 5 * MINUTE, "1d": DAY}
    assert body["to"] - body["from"] == 10_000 * DAY
    assert body["total"] == len(CAMPAIGNS)
    five = api.ok("/api/campaigns", {"window": "5m"})
    assert five["to"] % (5 * MINUTE) == 0 and five["total"] == len(CAMPAIGNS)
    key = CAMPAIGNS[0].key
    detail = api.ok(f"/api/campaigns/{key.id}", {"window": "5m"})
    assert {p["window_end"] - p["window_start"] for p in detail["series"]} == {5 * MINUTE}
    assert len(detail["series"]) == 3 * 60 // 5
    days = api.ok(f"/api/campaigns/{key.id}", {"window": "1d"})
    assert days["totals"] == detail["totals"]
    for window in ("1m", "1h"):
        for path in ("/api/campaigns", f"/api/campaigns/{key.id}"):
            response = api.get(path, {"window": window})
            assert response.status_code == 400, (path, window)
            assert response.json()["parameter"] == "window"
            assert "5m, 1d" in response.json()["error"]


def test_the_default_deployment_offers_1m_and_1h(deploy: Any) -> None:
    api = deploy()
    body = api.ok("/api/campaigns")
    assert (body["window"], body["windows"]) == ("1h", {"1m": MINUTE, "1h": HOUR})


# --- the list's pages ----------------------------------------------------------------------


def test_the_list_has_a_total_and_a_cursor(deploy: Any) -> None:
    api = deploy()
    everything = api.ok("/api/campaigns", {"limit": 1000})
    assert everything["total"] == len(CAMPAIGNS) and everything["next_cursor"] is None
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = api.ok("/api/campaigns", params)
        assert page["total"] == len(CAMPAIGNS)
        assert len(page["campaigns"]) <= 3
        pages.extend(page["campaigns"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert [c["id"] for c in pages] == [c["id"] for c in everything["campaigns"]]
    # Filters count too: the total is of the matching campaigns.
    airship = api.ok("/api/campaigns", {"vendor": "AIRSHIP", "limit": 1})
    assert (airship["total"], len(airship["campaigns"])) == (2, 1)
    assert airship["next_cursor"] is not None
    for bad in ("not a cursor", "e30", "WzEsMl0"):  # text, {}, [1, 2]
        response = api.get("/api/campaigns", {"cursor": bad})
        assert (response.status_code, response.json()["parameter"]) == (400, "cursor")


def test_a_vendor_in_lower_case(deploy: Any) -> None:
    """``vendor=pinpoint`` as the CLI writes it (formerly a 400)."""
    api = deploy()
    lower = api.ok("/api/campaigns", {"vendor": "pinpoint"})
    upper = api.ok("/api/campaigns", {"vendor": "PINPOINT"})
    assert lower == upper and [c["vendor"] for c in lower["campaigns"]] == ["PINPOINT"]


# --- tokens --------------------------------------------------------------------------------


def test_without_a_token_configured_the_api_is_open(deploy: Any) -> None:
    api = deploy()
    assert api.ok("/api/campaigns")["total"] == len(CAMPAIGNS)
    assert api.ok("/api/campaigns", token="anything at all")["total"] == len(CAMPAIGNS)


@pytest.mark.parametrize(
    "path",
    [
        "/api/campaigns",
        f"/api/campaigns/{CAMPAIGNS[0].key.id}",
        f"/api/campaigns/{CampaignKey('SEGMENT', 'x', 'never').id}",
        "/api/campaigns/not-an-id",
        "/api/nothing",
    ],
)
def test_every_api_path_needs_the_token(deploy: Any, path: str) -> None:
    api = deploy(CRM_API_TOKEN=TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ):
        response = httpx.get(api.url + path, headers=headers, timeout=10)
        assert response.status_code == 401, (path, headers)
        assert response.headers["www-authenticate"] == 'Bearer realm="crm-stream"'
        assert set(response.json()) == {"error"}  # no data
        assert "campaign" not in response.text.lower()
    if path.startswith("/api/campaigns"):
        assert api.get(path).status_code == 401  # and the spec says so
    answered = httpx.get(
        api.url + path, headers={"Authorization": f"bearer {TOKEN}"}, timeout=10
    ).status_code
    assert answered != 401


def test_the_page_itself_is_open_and_holds_no_figures(deploy: Any) -> None:
    api = deploy(CRM_API_TOKEN=TOKEN)
    for path in ("/", "/static/app.js", "/static/app.css"):
        response = httpx.get(api.url + path, timeout=10)
        assert response.status_code == 200, path
        assert CAMPAIGNS[0].name and CAMPAIGNS[0].name[:20] not in response.text


def test_a_token_restricted_to_an_app(deploy: Any) -> None:
    """``TOKEN app_id,...``: that token lists and opens only those apps' campaigns."""
    api = deploy(CRM_API_TOKEN=f"{TOKEN}\n{APP_TOKEN} {ONE_APP},app-with-no-data\n")
    everything = api.ok("/api/campaigns", token=TOKEN)
    assert everything["total"] == len(CAMPAIGNS)
    mine = api.ok("/api/campaigns", token=APP_TOKEN)
    assert [c["app_id"] for c in mine["campaigns"]] == [ONE_APP]
    assert mine["total"] == 1
    other = next(p.key for p in CAMPAIGNS if p.key.app_id != ONE_APP)
    own = next(p.key for p in CAMPAIGNS if p.key.app_id == ONE_APP)
    assert api.ok(f"/api/campaigns/{own.id}", token=APP_TOKEN)["app_id"] == ONE_APP
    hidden = api.get(f"/api/campaigns/{other.id}", token=APP_TOKEN)
    assert hidden.status_code == 404 and hidden.json() == {
        "error": "no such campaign",
        "id": other.id,
    }
    assert api.ok("/api/campaigns", {"app_id": other.app_id}, token=APP_TOKEN)["total"] == 0
    assert api.ok(f"/api/campaigns/{other.id}", token=TOKEN)["app_id"] == other.app_id


def test_the_token_is_never_logged(deploy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_env({"CRM_API_TOKEN": TOKEN})
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.describe())
    api = deploy(CRM_API_TOKEN=TOKEN)
    api.get("/api/campaigns", token=TOKEN)
    api.get("/api/campaigns", token=TOKEN[:-1])
    assert TOKEN not in caplog.text and TOKEN[:-1] not in caplog.text


def test_the_token_from_a_file(deploy: Any, tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text(f"# the API's readers\n{TOKEN}\n")
    api = deploy(CRM_API_TOKEN_FILE=str(path))
    assert api.get("/api/campaigns").status_code == 401
    assert api.ok("/api/campaigns", token=TOKEN)["total"] == len(CAMPAIGNS)


@pytest.mark.parametrize(
    "value", ["short", "has a space inside", f"{TOKEN} app,,b", "t\u00f6ken-with-umlaut-0123"]
)
def test_a_malformed_token_setting_names_the_variable_not_the_token(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CRM_API_TOKEN": value})
    assert "CRM_API_TOKEN" in str(info.value)
    assert value not in str(info.value)
