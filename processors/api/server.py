"""The query API and the web view as an aiohttp application over a :class:`CampaignSource`.

The worker implements the source (its stats table, forwarding a key it does not own to the
worker that does) and mounts :func:`make_app` on its API port; this module only validates,
delegates, adds what is derived (ids, rates; a campaign's variants' rates and lift,
:mod:`processors.api.lift`), orders and serves the page. The contract is
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

from crmstream.settings import Settings
from processors.api import auth
from processors.api.lift import (
    ATTRIBUTED_CONVERSION_RATE_FORMULA,
    CONVERSION_RATE_FORMULA,
    LIFT_RULE,
    present_variants,
)
from processors.api.query import (
    CampaignKey,
    CampaignQuery,
    Cursor,
    ListQuery,
    QueryError,
    Windows,
    parse_campaign_query,
    parse_list_query,
    rate_formulas,
    rates,
    window_sizes,
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


WINDOWS_KEY: web.AppKey[Windows] = web.AppKey("crm_api_windows")
GRANT_KEY: web.RequestKey[auth.Grant] = web.RequestKey("crm_api_grant", auth.Grant)


def windows_of(request: web.Request) -> Windows:
    """The windows the app serves (``CRM_STATS_WINDOWS``): what a ``window`` may be."""
    return request.app[WINDOWS_KEY]


def app_ids_of(request: web.Request) -> frozenset[str] | None:
    """The apps the request's token may read; None: every app."""
    return request.get(GRANT_KEY, auth.OPEN).app_ids


def _cursor_of(campaign: dict[str, Any]) -> str:
    return Cursor(
        campaign["last_window_end"] or 0, campaign["totals"]["total"], campaign["id"]
    ).encode()


Attributed = Callable[[CampaignQuery], Awaitable[dict[str, bytes]]]
"""The users credited to a campaign per variant over a query's range
(:meth:`processors.attribution_api.AttributionSource.converted`)."""


class _Handlers:
    def __init__(
        self, source: CampaignSource, now_ms: Callable[[], int], attributed: Attributed | None
    ) -> None:
        self.attributed = attributed
        self.source = source
        self.now_ms = now_ms

    async def list_campaigns(self, request: web.Request) -> web.Response:
        windows = windows_of(request)
        try:
            query = parse_list_query(
                request.query.items(), self.now_ms(), windows, app_ids_of(request)
            )
        except QueryError as exc:
            return _json(exc.body(), 400)
        try:
            listed = await self.source.list_campaigns(query)
        except QueryError as exc:  # a query the source cannot answer (e.g. a window it lacks)
            return _json(exc.body(), 400)
        found = [_present(c) for c in listed if query.matches(_key_of(c), c["campaign_name"])]
        found.sort(key=_order)
        total = len(found)
        if query.cursor is not None:
            after = query.cursor.order()
            found = [c for c in found if _order(c) > after]
        page = found[: query.limit]
        return _json(
            {
                **_range_fields(query),
                "windows": dict(windows),
                "total": total,
                "next_cursor": _cursor_of(page[-1]) if len(found) > query.limit else None,
                "campaigns": page,
            }
        )

    async def campaign(self, request: web.Request) -> web.Response:
        campaign_id = request.match_info["id"]
        try:
            query = parse_campaign_query(
                campaign_id, request.query.items(), self.now_ms(), windows_of(request)
            )
        except QueryError as exc:
            return _json(exc.body(), 400)
        app_ids = app_ids_of(request)
        if app_ids is not None and query.key.app_id not in app_ids:
            # Another app's campaign: as if it did not exist (its existence is not told).
            return _json({"error": "no such campaign", "id": campaign_id}, 404)
        try:
            found = await self.source.campaign(query)
        except QueryError as exc:
            return _json(exc.body(), 400)
        if found is None:
            return _json({"error": "no such campaign", "id": campaign_id}, 404)
        out = _present(found)
        if "variants" in out:
            # With attribution on, the variants' conversions are the credited ones (lift.py).
            converted = await self.attributed(query) if self.attributed is not None else None
            out["variants"] = present_variants(out["variants"], converted)
        out["rate_formulas"] = {
            **rate_formulas(),
            "conversion_rate": (
                CONVERSION_RATE_FORMULA
                if self.attributed is None
                else ATTRIBUTED_CONVERSION_RATE_FORMULA
            ),
            "lift": LIFT_RULE,
        }
        out.update(_range_fields(query))
        return _json(out)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _attribution_off(request: web.Request) -> web.Response:
    """``GET /api/attribution`` where attribution is off (``CRM_ATTRIBUTION``)."""
    return _json({"enabled": False, "campaigns": []})


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


UNAUTHORIZED = "a bearer token is required (Authorization: Bearer <CRM_API_TOKEN>)"


def _authenticate(tokens: auth.Tokens) -> Any:
    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A token for the figures (:mod:`processors.api.auth`): 401 and no data without one."""
        if not tokens.required or not request.path.startswith(auth.PROTECTED):
            return await handler(request)
        authorization = request.headers.get("Authorization")
        grant = tokens.check(authorization)
        if grant is None:
            response = _json({"error": UNAUTHORIZED}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="crm-stream"'
            return response
        request[GRANT_KEY] = grant
        forwarded = auth.set_forwarded(authorization)
        try:
            return await handler(request)
        finally:
            auth.reset_forwarded(forwarded)

    return authenticate


def make_app(
    source: CampaignSource,
    *,
    now_ms: Callable[[], int] = wall_clock_ms,
    settings: Settings | None = None,
    attribution: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
    attributed: Attributed | None = None,
) -> web.Application:
    """The API (``/api/...``), the page (``/``) and its files (``/static/...``).

    ``now_ms`` is the clock of the default range (``to`` = end of the current window).
    ``settings`` give the windows offered (``CRM_STATS_WINDOWS``) and the tokens required
    (``CRM_API_TOKEN``); by default those of the default settings: 1m and 1h, no token.
    ``attribution`` answers ``GET /api/attribution``, and ``attributed`` gives a campaign's
    credited users per variant (both only with ``CRM_ATTRIBUTION``).
    """
    settings = settings if settings is not None else Settings()
    tokens = auth.Tokens(settings.api_grants())
    handlers = _Handlers(source, now_ms, attributed)
    app = web.Application(middlewares=[_errors, _authenticate(tokens)])
    app[WINDOWS_KEY] = window_sizes(settings)
    app.router.add_get("/api/campaigns", handlers.list_campaigns)
    app.router.add_get("/api/campaigns/{id}", handlers.campaign)
    # GET /api/attribution (processors/attribution_api.py); without it the page is told it is off.
    app.router.add_get("/api/attribution", attribution or _attribution_off)
    app.router.add_get("/", handlers.index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
