"""``GET /api/attribution``: which vendor and campaign drove the conversions.

The attribution totals live in the attribution table by *user* partition
(:mod:`processors.attribution_path`), so one campaign's conversions are spread over every
partition: each worker sums its own partitions (``GET /internal/v1/attribution``), and the worker
asked merges the parts (sums, never concatenation). While partitions move the answer would miss
some: 503 (``Retry-After: 1``), as the campaign list.

Parameters: ``from``, ``to`` (epoch ms; the hours of conversion time whose start lies in
``[from rounded down to the hour, to)``; default: the 30 days up to the end of the current hour),
``name`` (one conversion name), ``vendor``, ``app_id``. A token limited to some apps sees only
their campaigns (:mod:`processors.api.auth`).

Besides one row per vendor and campaign (``campaigns``), ``unattributed`` has one row per
conversion name of the conversions credited to no campaign, with why
(:data:`processors.attribution.NO_EXPOSURE`, :data:`processors.attribution.OUTSIDE_WINDOW`);
they belong to no vendor or app, so a query (or a token) for some leaves them out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from processors.api import auth
from processors.api.query import (
    MAX_TEXT,
    TIME_END_MS,
    VENDORS,
    CampaignQuery,
    QueryError,
    _single_values,
    _time,
)
from processors.api.server import app_ids_of, wall_clock_ms
from processors.attribution import (
    BUCKET_MS,
    UNATTRIBUTED,
    Tally,
    converted_of,
    rows,
    unattributed_rows,
)
from processors.campaigns import campaign_key, split_campaign_key

log = logging.getLogger("crmstream.api")

INTERNAL = "/internal/v1/attribution"
PARAMETERS = frozenset({"from", "to", "name", "vendor", "app_id"})
DEFAULT_SPAN_MS = 30 * 86_400_000
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AttributionQuery:
    from_ms: int
    to_ms: int
    name: str | None
    vendor: str | None
    app_id: str | None
    app_ids: frozenset[str] | None

    def matches(self, campaign: str) -> bool:
        if campaign == UNATTRIBUTED:
            # Credited to no campaign, so of no vendor or app: left out when the query (or the
            # token) asks for some.
            return self.vendor is None and self.app_id is None and self.app_ids is None
        vendor, app_id, _ = split_campaign_key(campaign)
        return (
            (self.vendor is None or vendor == self.vendor)
            and (self.app_id is None or app_id == self.app_id)
            and (self.app_ids is None or app_id in self.app_ids)
        )

    def params(self) -> dict[str, str]:
        out = {"from": str(self.from_ms), "to": str(self.to_ms)}
        for name in ("name", "vendor", "app_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def parse_query(
    params: Iterable[tuple[str, str]], now_ms: int, app_ids: frozenset[str] | None
) -> AttributionQuery:
    """The query of ``GET /api/attribution``; :class:`QueryError` names a bad parameter."""
    values = _single_values(params, PARAMETERS)
    to_given = _time(values, "to")
    from_given = _time(values, "from")
    to_ms = (
        to_given
        if to_given is not None
        else min(-(-(now_ms + 1) // BUCKET_MS) * BUCKET_MS, TIME_END_MS)
    )
    from_ms = from_given if from_given is not None else max(0, to_ms - DEFAULT_SPAN_MS)
    if from_ms >= to_ms:
        raise QueryError("from", "from must be earlier than to (default: the end of this hour)")
    for name in ("name", "app_id"):
        if len(values.get(name, "")) > MAX_TEXT:
            raise QueryError(name, f"{name} is longer than {MAX_TEXT} characters")
    vendor = values.get("vendor")
    if vendor is not None:
        vendor = vendor.upper()
        if vendor not in VENDORS:
            raise QueryError("vendor", f"vendor must be one of {', '.join(VENDORS)}")
    return AttributionQuery(
        from_ms, to_ms, values.get("name"), vendor, values.get("app_id"), app_ids
    )


class LocalTallies(Protocol):
    """The worker's attribution table (:class:`processors.attribution_path.AttributionTable`)."""

    def tallies(
        self, partitions: Iterable[int], from_ms: int, to_ms: int, name: str | None
    ) -> list[tuple[str, str, Tally]]: ...


class Peers(Protocol):
    @property
    def self_url(self) -> str: ...

    def peers(self) -> list[str]: ...


def _unavailable(reason: str) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(reason=reason, headers={"Retry-After": "1"})


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class AttributionSource:
    """The group's attribution totals, from any worker."""

    def __init__(
        self,
        table: LocalTallies,
        routing: Peers,
        local: Callable[[], set[int] | None],
    ) -> None:
        self.table = table
        self.routing = routing
        self.local = local
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def local_tallies(self, query: AttributionQuery) -> list[tuple[str, str, Tally]]:
        partitions = self.local()
        if partitions is None:
            raise _unavailable("the worker's partitions are moving (rebalance); retry")
        return [
            t
            for t in self.table.tallies(sorted(partitions), query.from_ms, query.to_ms, query.name)
            if query.matches(t[0])
        ]

    async def tallies(self, query: AttributionQuery) -> list[tuple[str, str, Tally]]:
        peers = [url for url in self.routing.peers() if url != self.routing.self_url]
        remote = await asyncio.gather(*(self._forward(url, query) for url in peers))
        out = self.local_tallies(query)
        for part in remote:
            out.extend(part)
        return out

    async def converted(self, query: CampaignQuery) -> dict[str, bytes]:
        """The users credited to the campaign of ``query`` per variant
        (:func:`processors.attribution.converted_of`), for the conversions in the hours of its
        range, every worker's partitions together."""
        key = query.key
        found = await self.tallies(
            AttributionQuery(
                query.range.from_ms,
                min(query.range.to_ms, TIME_END_MS),
                None,
                key.vendor,
                None,
                None,
            )
        )
        return converted_of(found, campaign_key(key.vendor, key.app_id or "", key.campaign_id))

    async def _forward(self, url: str, query: AttributionQuery) -> list[tuple[str, str, Tally]]:
        if urlsplit(url).port == 0:
            raise _unavailable(f"the worker at {url} serves no API (CRM_API_PORT=0)")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        try:
            async with self._session.get(
                url + INTERNAL, params=query.params(), headers=auth.forwarded_headers()
            ) as response:
                status, body = response.status, orjson.loads(await response.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            log.warning("query API: %s%s failed: %r", url, INTERNAL, exc)
            raise _unavailable(f"the worker at {url} did not answer; retry") from exc
        if status != 200:
            raise _unavailable(f"the worker at {url} answered {status}: {body}")
        return [(c, n, Tally.decode(orjson.dumps(t))) for c, n, t in body["tallies"]]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public_handler(
    source: AttributionSource | None, now_ms: Callable[[], int] = wall_clock_ms
) -> Handler:
    """``GET /api/attribution``. Without a source (``CRM_ATTRIBUTION`` off) it answers
    ``enabled: false`` and no rows, so the page can tell "off" from "nothing yet"."""

    async def attribution(request: web.Request) -> web.StreamResponse:
        try:
            query = parse_query(request.query.items(), now_ms(), app_ids_of(request))
        except QueryError as exc:
            return _json(exc.body(), 400)
        tallies = await source.tallies(query) if source is not None else []
        found = rows(tallies)
        missed = unattributed_rows(tallies)
        return _json(
            {
                "enabled": source is not None,
                "from": query.from_ms,
                "to": query.to_ms,
                "name": query.name,
                "conversions": sum(r["conversions"] for r in found),
                "control_conversions": sum(r["control_conversions"] for r in found),
                "unattributed_conversions": sum(r["conversions"] for r in missed),
                "campaigns": found,
                "unattributed": missed,
            }
        )

    return attribution


def add_internal_route(app: web.Application, source: AttributionSource) -> None:
    """The request one worker sends another for its part of the totals."""

    async def internal(request: web.Request) -> web.Response:
        try:
            query = parse_query(request.query.items(), 0, app_ids_of(request))
        except QueryError as exc:
            return _json(exc.body(), 400)
        return _json(
            {
                "tallies": [
                    (c, n, orjson.loads(t.encode())) for c, n, t in source.local_tallies(query)
                ]
            }
        )

    app.router.add_get(INTERNAL, internal)
