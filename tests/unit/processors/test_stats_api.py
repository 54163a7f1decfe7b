"""Two workers' query APIs (``processors.stats_api.WorkerSource`` with its internal routes) over
fake stats tables and a fake group: a campaign one worker does not own is forwarded to its
owner, the list is gathered from both, with the deployment's windows (``CRM_STATS_WINDOWS``) and
with ``CRM_API_TOKEN`` set: the forwarding worker passes the caller's token on, and the owner
applies its restriction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from crmstream.settings import Settings
from processors.api.query import CampaignKey, CampaignQuery, TimeRange
from processors.api.server import make_app
from processors.stats_api import WorkerSource, add_internal_routes
from tests.unit.processors.api.conftest import ServerThread
from tests.unit.processors.api.fake_source import CAMPAIGNS, MINUTE, FakeSource

TOKEN = "token-of-the-whole-group-0001"
APP_TOKEN = "token-of-one-app-only-000002"
ONE_APP = "ISex_TTJRuarzs9-o_Gkhg"


def partition_of(key: str) -> int:
    return sum(key.encode()) % 2


class Group:
    """Where each worker's API is; worker ``i`` owns stats partition ``i``."""

    def __init__(self) -> None:
        self.urls: list[str] = ["", ""]


class FakeRouting:
    def __init__(self, group: Group, index: int) -> None:
        self.group = group
        self.index = index

    @property
    def self_url(self) -> str:
        return self.group.urls[self.index]

    def partition_of(self, key: str) -> int:
        return partition_of(key)

    def owner(self, partition: int) -> str | None:
        return self.group.urls[partition]

    def peers(self) -> list[str]:
        return list(self.group.urls)

    def local(self) -> set[int] | None:
        return {self.index}


class FakeTables:
    """:class:`processors.stats_api.LocalStats` over the fake source: only the campaigns of
    the partitions asked for."""

    def __init__(self, source: FakeSource, windows: list[str]) -> None:
        self.source = source
        self.windows = windows

    def has_window_size(self, label: str) -> bool:
        return label in self.windows

    def campaign(
        self, label: str, partition: int, campaign: CampaignKey, r: TimeRange, *, series: bool
    ) -> dict[str, Any] | None:
        assert partition_of(campaign.key) == partition
        return self.source.one(CampaignQuery(campaign, r))

    def campaigns(
        self,
        label: str,
        partitions: Any,
        r: TimeRange,
        matches: Callable[[CampaignKey, str | None], bool],
    ) -> list[dict[str, Any]]:
        wanted = set(partitions)
        return self.source.listed(r, matches, lambda key: partition_of(key.key) in wanted)


@pytest.fixture
def workers() -> Iterator[Callable[..., list[str]]]:
    threads: list[ServerThread] = []

    def start(**env: str) -> list[str]:
        settings = Settings.from_env(env)
        windows = [label for label, _ in settings.stats_window_seconds()]
        source = FakeSource(minutes=60)
        group = Group()
        for index in range(2):
            worker = WorkerSource(FakeTables(source, windows), FakeRouting(group, index))
            app = make_app(worker, now_ms=source.now_ms, settings=settings)
            add_internal_routes(app, worker)
            thread = ServerThread(app)
            group.urls[index] = thread.__enter__()
            threads.append(thread)
        return list(group.urls)

    yield start
    for thread in threads:
        thread.__exit__(None, None, None)


def test_the_fixture_spreads_the_campaigns_over_both_workers() -> None:
    owners = {partition_of(p.key.key) for p in CAMPAIGNS}
    assert owners == {0, 1}


def _get(url: str, path: str, token: str | None = None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url + path, params=params, headers=headers, timeout=10)


@pytest.mark.parametrize("env", [{}, {"CRM_STATS_WINDOWS": "5m,1d"}], ids=["default", "5m,1d"])
def test_forwarding_with_the_token(workers: Callable[..., list[str]], env: dict[str, str]) -> None:
    urls = workers(CRM_API_TOKEN=TOKEN, **env)
    window = "5m" if env else "1m"
    for url in urls:
        listed = _get(url, "/api/campaigns", TOKEN, window=window)
        assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == len(CAMPAIGNS)
        for profile in CAMPAIGNS:  # half of them forwarded to the other worker
            path = f"/api/campaigns/{profile.key.id}"
            answer = _get(url, path, TOKEN, window=window)
            assert answer.status_code == 200, answer.text
            series = answer.json()["series"]
            assert series and series[0]["window_end"] - series[0]["window_start"] == (
                5 * MINUTE if env else MINUTE
            )
        # Without the token: 401 on the public and on the internal routes alike.
        assert _get(url, "/api/campaigns").status_code == 401
        assert _get(url, "/internal/v1/campaigns", window=window).status_code == 401
        assert _get(url, "/internal/v1/campaign", id=CAMPAIGNS[0].key.id).status_code == 401
    if env:
        refused = _get(urls[0], "/internal/v1/campaigns", TOKEN, window="1h")
        assert (refused.status_code, refused.json()["parameter"]) == (400, "window")


def test_an_app_restriction_holds_on_the_owner_too(workers: Callable[..., list[str]]) -> None:
    urls = workers(CRM_API_TOKEN=f"{TOKEN}\n{APP_TOKEN} {ONE_APP}")
    own = next(p.key for p in CAMPAIGNS if p.key.app_id == ONE_APP)
    other = next(
        p.key
        for p in CAMPAIGNS
        if p.key.app_id != ONE_APP and partition_of(p.key.key) == partition_of(own.key)
    )
    for url in urls:
        listed = _get(url, "/api/campaigns", APP_TOKEN).json()
        assert [c["app_id"] for c in listed["campaigns"]] == [ONE_APP]
        assert _get(url, f"/api/campaigns/{own.id}", APP_TOKEN).status_code == 200
        assert _get(url, f"/api/campaigns/{other.id}", APP_TOKEN).status_code == 404
        assert _get(url, f"/api/campaigns/{other.id}", TOKEN).status_code == 200
        # The internal routes apply the token's restriction themselves.
        mine = _get(url, "/internal/v1/campaigns", APP_TOKEN, window="1h").json()["campaigns"]
        assert {c["app_id"] for c in mine} <= {ONE_APP}
        owner = urls[partition_of(other.key)]
        hidden = _get(owner, "/internal/v1/campaign", APP_TOKEN, id=other.id, window="1h")
        assert hidden.status_code == 404


def test_without_a_token_forwarding_is_open(workers: Callable[..., list[str]]) -> None:
    urls = workers()
    for url in urls:
        for profile in CAMPAIGNS:
            assert _get(url, f"/api/campaigns/{profile.key.id}").status_code == 200
