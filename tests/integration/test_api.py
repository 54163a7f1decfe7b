"""The query API served by real workers (issue 15 item 3), on the session broker: two workers in
one group, each on its own API port. Every response is validated against
``processors/api/openapi.yaml`` (openapi-core); the figures are checked against what the
published samples must give (``tests/integration/harness.py``, computed from the normalizers,
not by the worker): totals per window and per range, and unique recipients (exact at these
sizes). Both workers give the same answers for every campaign, though each owns only some of
the stats partitions: a worker forwards a campaign it does not own to its owner, and gathers
the list from every worker. The workers require a bearer token (``CRM_API_TOKEN``, issue 23
item 4): every request carries it, the forwarded ones too, and a request without it is a 401
while the probes and metrics answer without one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from crmstream.broker import free_port
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.api.query import CampaignKey, encode_id, rates
from processors.api.server import OPENAPI
from processors.app import changelog_specs
from tests.integration.harness import (
    CONTROL,
    EXACT_UNIQUES,
    Expected,
    Feed,
    WorkerProcess,
    exactness_failures,
    message_failures,
    read_outputs,
    samples,
    variant_failures,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = OpenAPI.from_file_path(str(OPENAPI))
HOUR = 3_600_000
PER_VENDOR = 150
TOKEN = "integration-api-token-00001"
MAX_MESSAGES = 2
MAX_VARIANTS = 2
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api_get(
    base: str, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] = AUTH
) -> httpx.Response:
    """GET from a worker's API (with the token); the response, whatever its status, must match
    the spec."""
    args = {k: str(v) for k, v in (params or {}).items()}
    response = httpx.get(base + path, params=args, headers=headers, timeout=30)
    request = MockRequest(base, "get", urlsplit(str(response.url)).path, args=args)
    mimetype = response.headers["content-type"].split(";")[0]
    SPEC.validate_response(
        request, MockResponse(response.content, response.status_code, content_type=mimetype)
    )
    return response


def settled_get(base: str, path: str, params: dict[str, Any]) -> Any:
    """A 200 answer, waiting out 503s (partitions moving between the workers)."""
    deadline = time.monotonic() + 90
    while True:
        response = api_get(base, path, params)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        assert response.headers.get("retry-after") == "1"
        time.sleep(1)
    assert response.status_code == 200, response.text
    return response.json()


def by_campaign(expected: Expected, label: str) -> dict[str, dict[int, bytes]]:
    """campaign key -> window start -> upsert key, for the windows of ``label``."""
    out: dict[str, dict[int, bytes]] = {}
    for key in expected.stats:
        campaign, window, start = key.decode().rsplit("|", 2)
        if window == label:
            out.setdefault(campaign, {})[int(start)] = key
    return out


@pytest.mark.slow(seconds=40)
def test_any_worker_answers_any_query_with_the_exact_figures(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = crm_env_factory(
        CRM_PARTITIONS="4",
        CRM_STATS_RETENTION="3650d",
        CRM_API_TOKEN=TOKEN,
        # Fewer than the samples' message ids in some windows: the overflow row is exercised.
        CRM_STATS_MAX_MESSAGES=str(MAX_MESSAGES),
        CRM_STATS_MAX_VARIANTS=str(MAX_VARIANTS),  # and variant ids
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    feed = Feed(settings)
    feed.publish_all(samples(20261215, PER_VENDOR))
    workers: list[WorkerProcess] = []
    urls: list[str] = []
    probes: list[str] = []
    try:
        for index in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            metrics_port = free_port()
            probes.append(f"http://127.0.0.1:{metrics_port}")
            worker_env = dict(
                env,
                CRM_DATA_DIR=str(tmp_path / f"worker-{index}"),
                CRM_METRICS_PORT=str(metrics_port),
                CRM_API_PORT=str(port),
                CRM_API_URL=url,
            )
            worker = WorkerProcess(worker_env, tmp_path / f"worker-{index}.log")
            worker.start()
            workers.append(worker)
            urls.append(url)
        out = read_outputs(settings, feed.expected, timeout=240)
        problems = exactness_failures(out, feed.expected)
        assert not problems, "; ".join(problems)
        try:
            _check_api(urls, feed.expected)
            _check_auth(urls, probes)
        except AssertionError:
            print("\n".join(w.tail() for w in workers))
            raise
    finally:
        for worker in workers:
            worker.stop(timeout=60)


def _check_api(urls: list[str], expected: Expected) -> None:
    hours = by_campaign(expected, "1h")
    starts = [start for windows in hours.values() for start in windows]
    r = {"window": "1h", "from": min(starts), "to": max(starts) + HOUR}
    uniques = expected.uniques()
    # Not vacuous: windows with several recipients, all within the sketch's exact range.
    assert max(uniques.values()) > 5
    assert all(n < EXACT_UNIQUES for n in uniques.values())

    # The list: every campaign, once, with its totals over the range; the same from both.
    lists = [settled_get(url, "/api/campaigns", {**r, "limit": 1000}) for url in urls]
    assert lists[0]["campaigns"] == lists[1]["campaigns"]
    listed = {CampaignKey.from_key(k).id: k for k in hours}
    assert {c["id"] for c in lists[0]["campaigns"]} == set(listed)
    for c in lists[0]["campaigns"]:
        windows = hours[listed[c["id"]]]
        assert c["totals"]["total"] == sum(expected.stats[k] for k in windows.values())
        assert c["rates"] == rates(c["totals"])

    # Each worker holds only part of the campaigns: the partitions are split between them.
    # (worker-to-worker requests are not part of the public contract: no spec check)
    own = [
        httpx.get(url + "/internal/v1/campaigns", params=r, headers=AUTH, timeout=30)
        for url in urls
    ]
    assert [o.status_code for o in own] == [200, 200], [o.text for o in own]
    held = [o.json()["campaigns"] for o in own]
    assert all(held) and sum(len(h) for h in held) == len(hours)

    # One campaign: the same answer from both workers (one of them forwards to the owner), one
    # point per window with its exact total and uniques, and the range's uniques as a union.
    for campaign, windows in hours.items():
        path = f"/api/campaigns/{CampaignKey.from_key(campaign).id}"
        answers = [settled_get(url, path, r) for url in urls]
        assert answers[0] == answers[1], campaign
        body = answers[0]
        assert [p["window_start"] for p in body["series"]] == sorted(windows)
        for point in body["series"]:
            key = windows[point["window_start"]]
            assert point["total"] == expected.stats[key]
            if uniques[key] < EXACT_UNIQUES:
                assert point["uniques"]["recipients"] == uniques[key], key
        people: Counter[str] = Counter()
        for key in windows.values():
            people.update(+expected.recipients[key])
        assert body["totals"]["total"] == sum(expected.stats[k] for k in windows.values())
        if len(people) < EXACT_UNIQUES:
            assert body["totals"]["uniques"]["recipients"] == len(people), campaign
        assert body["rates"] == rates(body["totals"])

    # Per message id: every window's kept ids exact, the rest in the overflow row, events
    # without one in the none row (issue 22, a per-message breakdown); asked of either worker.
    for index, url in enumerate(urls):
        problems = message_failures(
            lambda path, params, url=url: settled_get(url, path, params),
            expected,
            "1h",
            MAX_MESSAGES,
        )
        assert not problems, f"worker {index}: " + "; ".join(problems[:5])
    overflowing = [
        key
        for key, counted in expected.messages.items()
        if b"|1h|" in key and len({m for m, _ in +counted if m is not None}) > MAX_MESSAGES
    ]
    assert overflowing, "the samples must have windows with more message ids than kept"

    # Per variant id the same, with the control group and the unique recipients (issue 24);
    # asked of one worker (which forwards what it does not own), to keep the test's time.
    problems = variant_failures(
        lambda path, params: settled_get(urls[0], path, params), expected, "1h", MAX_VARIANTS
    )
    assert not problems, "; ".join(problems[:5])
    assert any(
        len({v for v, _ in +counted if v not in (None, CONTROL)}) > MAX_VARIANTS
        for key, counted in expected.variants.items()
        if b"|1h|" in key
    ), "the samples must have windows with more variant ids than kept"

    # A campaign no worker knows is a 404; bad parameters are a 400 naming the parameter.
    for url in urls:
        missing = api_get(url, f"/api/campaigns/{encode_id('SEGMENT|nope|nope')}", r)
        assert missing.status_code == 404
        assert missing.json()["id"] == encode_id("SEGMENT|nope|nope")
        wrong = api_get(url, "/api/campaigns", {"window": "5m"})
        assert (wrong.status_code, wrong.json()["parameter"]) == (400, "window")
        ten_years = {"window": "1m", "from": 0, "to": 10 * 365 * 24 * HOUR}
        too_long = api_get(url, "/api/campaigns", ten_years)
        assert too_long.status_code == 400 and too_long.json()["parameter"] in {"from", "to"}


def _check_auth(urls: list[str], probes: list[str]) -> None:
    """Without the token (or with another): 401 and no figures, on every path that has
    figures; the probes and metrics need none."""
    some = f"/api/campaigns/{encode_id('SEGMENT|nope|nope')}"
    for url in urls:
        for headers in ({}, {"Authorization": "Bearer not-the-integration-token"}):
            for path in ("/api/campaigns", some):
                refused = api_get(url, path, headers=headers)
                assert refused.status_code == 401, (path, refused.text)
                assert set(refused.json()) == {"error"}
            for path in ("/internal/v1/campaigns", "/internal/v1/campaign"):
                refused = httpx.get(url + path, headers=headers, timeout=30)
                assert refused.status_code == 401, path
        assert httpx.get(url + "/", timeout=30).status_code == 200  # the page asks for it
    for probe in probes:
        for path in ("/livez", "/readyz", "/metrics"):
            assert httpx.get(probe + path, timeout=30).status_code == 200, probe + path
