"""The query API and the web view as an aiohttp application over a :class:`CampaignSource`.

The worker implements the source (its stats table, forwarding a key it does not own to the
worker that does) and mounts :func:`make_app` on its API port; this module only validates,
delegates, adds what is derived (ids, rates), orders and serves the page. The contract is
``openapi.yaml``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from processors.api.query import (
    CampaignKey,
    CampaignQuery,
    ListQuery,
    QueryError,
    parse_campaign_query,
    parse_list_query,
    rates,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
OPENAPI = HERE / "openapi.yaml"

# The page loads nothing from elsewhere: a CDN reference would fail here rather than in the field.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class CampaignSource(Protocol):
    """Where the figures come from: the worker's stats (or a fake in tests).

    Both return campaigns as the API shows them, less what the server derives: ``id`` and
    ``rates`` are added here (from ``vendor``/``app_id``/``campaign_id`` and ``totals``), so a
    source returns, per campaign, ``vendor``, ``app_id`` and ``campaign_id`` (None for a missing
    part), ``campaign_name``, ``first_window_start``, ``last_window_end``, ``updated_at`` and
    ``totals``; :meth:`campaign` also ``series``. Uniques in ``totals`` are the union of the
    range's window sketches. They are coroutines because a worker that does not own a campaign
    asks the one that does.
    """

    async def list_campaigns(self, query: ListQuery) -> list[dict[str, Any]]:
        """Campaigns with events in ``query.range`` that pass ``query.matches``. May return
        more than ``query.limit``: the server orders and cuts."""
        ...

    async def campaign(self, query: CampaignQuery) -> dict[str, Any] | None:
        """The campaign with its windows in ``query.range``; None if it does not exist."""
        ...


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _key_of(campaign: dict[str, Any]) -> CampaignKey:
    return CampaignKey(
        campaign["vendor"], campaign.get("app_id") or "", campaign.get("campaign_id") or ""
    )


def _present(campaign: dict[str, Any]) -> dict[str, Any]:
    """The source's campaign with ``id`` first and ``rates`` from its totals."""
    out: dict[str, Any] = _key_of(campaign).fields()
    out.update((k, v) for k, v in campaign.items() if k not in out)
    out["rates"] = rates(campaign["totals"])
    return out


def _order(campaign: dict[str, Any]) -> tuple[int, int, str]:
    return (-(campaign["last_window_end"] or 0), -campaign["totals"]["total"], campaign["id"])


def _range_fields(query: ListQuery | CampaignQuery) -> dict[str, Any]:
    r = query.range
    return {"window": r.window, "from": r.from_ms, "to": r.to_ms}


class _Handlers:
    def __init__(self, source: CampaignSource, now_ms: Callable[[], int]) -> None:
        self.source = source
        self.now_ms = now_ms

    async def list_campaigns(self, request: web.Request) -> web.Response:
        try:
            query = parse_list_query(request.query.items(), self.now_ms())
        except QueryError as exc:
            return _json(exc.body(), 400)
        try:
            listed = await self.source.list_campaigns(query)
        except QueryError as exc:  # a query the source cannot answer (e.g. a window it lacks)
            return _json(exc.body(), 400)
        found = [_present(c) for c in listed]
        found.sort(key=_order)
        return _json({**_range_fields(query), "campaigns": found[: query.limit]})

    async def campaign(self, request: web.Request) -> web.Response:
        campaign_id = request.match_info["id"]
        try:
            query = parse_campaign_query(campaign_id, request.query.items(), self.now_ms())
        except QueryError as exc:
            return _json(exc.body(), 400)
        try:
            found = await self.source.campaign(query)
        except QueryError as exc:
            return _json(exc.body(), 400)
        if found is None:
            return _json({"error": "no such campaign", "id": campaign_id}, 404)
        out = _present(found)
        out.update(_range_fields(query))
        return _json(out)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


JSON_PATHS = ("/api/", "/internal/")
"""Paths whose errors are JSON: the API, and the requests one worker sends another."""


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """JSON errors under /api/ (an unknown path, a source that failed or is unavailable);
    security headers on everything."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith(JSON_PATHS) or exc.status < 400:
            raise
        response = _json({"error": exc.reason}, exc.status)
        response.headers.update(
            (k, v) for k, v in exc.headers.items() if k.lower() == "retry-after"
        )
    except Exception:
        if not request.path.startswith(JSON_PATHS):
            raise
        log.exception("query API: %s %s failed", request.method, request.path_qs)
        response = _json({"error": "internal error"}, 500)
    response.headers.update(SECURITY_HEADERS)
    return response


def make_app(
    source: CampaignSource, *, now_ms: Callable[[], int] = wall_clock_ms
) -> web.Application:
    """The API (``/api/...``), the page (``/``) and its files (``/static/...``).

    ``now_ms`` is the clock of the default range (``to`` = end of the current window).
    """
    handlers = _Handlers(source, now_ms)
    app = web.Application(middlewares=[_errors])
    app.router.add_get("/api/campaigns", handlers.list_campaigns)
    app.router.add_get("/api/campaigns/{id}", handlers.campaign)
    app.router.add_get("/", handlers.index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
