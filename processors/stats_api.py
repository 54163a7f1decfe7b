"""The query API's :class:`~processors.api.server.CampaignSource` on a worker: the campaigns of
its stats tables, and of every other worker of the group.

A campaign's windows live in one stats partition (``stats_partition`` of its key), which one
worker of the group owns at a time. So:

* **one campaign** (``GET /api/campaigns/{id}``) is answered by the worker owning its partition:
  any other worker forwards the request to it (``GET /internal/v1/campaign``) and passes its
  answer on;
* **the list** is gathered: each worker lists the campaigns of the partitions it owns
  (``GET /internal/v1/campaigns``); a campaign's totals are complete on its owner, so the lists
  are concatenated, never merged.

Who owns what, and where each worker's API is, come from the consumer group (:class:`Routing`;
:class:`processors.faust_engine.FaustRouting` reads them from Faust's partition assignor, to
which every worker advertises its ``CRM_API_URL`` as its canonical URL). A forwarded request
carries the range the first worker resolved (``from``/``to`` as numbers), so both use the same
windows whatever their clocks. While partitions move (a rebalance, a table being restored) an
answer could miss a campaign or count part of it: the API answers 503 instead
(``Retry-After: 1``).

No Faust here: the tables are :class:`LocalStats` and the group is :class:`Routing`, so the
tests can stand both up without a broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from processors.api import auth
from processors.api.query import (
    CampaignKey,
    CampaignQuery,
    ListQuery,
    QueryError,
    TimeRange,
    parse_campaign_query,
    parse_list_query,
)
from processors.api.server import app_ids_of, windows_of

log = logging.getLogger("crmstream.api")

FORWARDED_TIMEOUT_S = 10.0
INTERNAL = "/internal/v1"


class Routing(Protocol):
    """The consumer group as the API needs it."""

    @property
    def self_url(self) -> str:
        """This worker's advertised API URL."""
        ...

    def partition_of(self, key: str) -> int:
        """The stats partition of a campaign key."""
        ...

    def owner(self, partition: int) -> str | None:
        """The API URL of the worker owning a stats partition (None: not assigned now)."""
        ...

    def peers(self) -> list[str]:
        """The API URL of every worker of the group, this one included."""
        ...

    def local(self) -> set[int] | None:
        """The stats partitions this worker owns and has restored; None while it cannot say
        (a rebalance or a restore in progress)."""
        ...


class LocalStats(Protocol):
    """This worker's stats tables (:class:`processors.stats.StatsTables`)."""

    def has_window_size(self, label: str) -> bool: ...

    def campaign(
        self, label: str, partition: int, campaign: CampaignKey, r: TimeRange, *, series: bool
    ) -> dict[str, Any] | None: ...

    def campaigns(
        self,
        label: str,
        partitions: Any,
        r: TimeRange,
        matches: Callable[[CampaignKey, str | None], bool],
    ) -> list[dict[str, Any]]: ...


def _unavailable(reason: str) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(reason=reason, headers={"Retry-After": "1"})


class WorkerSource:
    """The figures of the whole group, from any worker."""

    def __init__(self, tables: LocalStats, routing: Routing) -> None:
        self.tables = tables
        self.routing = routing
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARDED_TIMEOUT_S)
            )
        return self._session

    def check_window(self, label: str) -> None:
        """Refuse (400) a window size this deployment does not keep."""
        if not self.tables.has_window_size(label):
            raise QueryError("window", f"this deployment keeps no {label} windows")

    # -- CampaignSource ------------------------------------------------------------------

    async def campaign(self, query: CampaignQuery) -> dict[str, Any] | None:
        self.check_window(query.range.window)
        partition = self.routing.partition_of(query.key.key)
        owner = self.routing.owner(partition)
        if owner is None or owner == self.routing.self_url:
            return self.local_campaign(query, partition)
        return await self._forward_campaign(owner, query)

    async def list_campaigns(self, query: ListQuery) -> list[dict[str, Any]]:
        self.check_window(query.range.window)
        peers = [url for url in self.routing.peers() if url != self.routing.self_url]
        remote = await asyncio.gather(*(self._forward_list(url, query) for url in peers))
        out = self.local_campaigns(query)
        for part in remote:
            out.extend(part)
        return out

    # -- this worker's part --------------------------------------------------------------

    def _local_partitions(self) -> set[int]:
        local = self.routing.local()
        if local is None:
            raise _unavailable("the worker's partitions are moving (rebalance); retry")
        return local

    def local_campaign(self, query: CampaignQuery, partition: int) -> dict[str, Any] | None:
        if partition not in self._local_partitions():
            raise _unavailable(f"stats partition {partition} is not served here now; retry")
        return self.tables.campaign(
            query.range.window, partition, query.key, query.range, series=True
        )

    def local_campaigns(self, query: ListQuery) -> list[dict[str, Any]]:
        return self.tables.campaigns(
            query.range.window, sorted(self._local_partitions()), query.range, query.matches
        )

    # -- other workers -------------------------------------------------------------------

    async def _get(self, url: str, path: str, params: dict[str, str]) -> tuple[int, Any]:
        if urlsplit(url).port == 0:
            raise _unavailable(f"the worker at {url} serves no API (CRM_API_PORT=0)")
        try:
            async with self._client().get(
                url + path, params=params, headers=auth.forwarded_headers()
            ) as response:
                body = orjson.loads(await response.read())
                return response.status, body
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            log.warning("query API: %s%s failed: %r", url, path, exc)
            raise _unavailable(f"the worker at {url} did not answer; retry") from exc

    async def _forward_campaign(self, owner: str, query: CampaignQuery) -> dict[str, Any] | None:
        status, body = await self._get(
            owner, f"{INTERNAL}/campaign", {"id": query.key.id, **_range_params(query.range)}
        )
        if status == 404:
            return None
        if status != 200:
            raise _unavailable(f"the worker at {owner} answered {status}: {body}")
        return dict(body)

    async def _forward_list(self, url: str, query: ListQuery) -> list[dict[str, Any]]:
        params = _range_params(query.range)
        for name in ("vendor", "app_id", "q"):
            value = getattr(query, name)
            if value is not None:
                params[name] = value
        status, body = await self._get(url, f"{INTERNAL}/campaigns", params)
        if status != 200:
            raise _unavailable(f"the worker at {url} answered {status}: {body}")
        return list(body["campaigns"])


def _range_params(r: TimeRange) -> dict[str, str]:
    return {"window": r.window, "from": str(r.from_ms), "to": str(r.to_ms)}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def add_internal_routes(app: web.Application, source: WorkerSource) -> None:
    """The two requests one worker sends another (see the module docstring). They answer from
    this worker's partitions only, and never forward. With ``CRM_API_TOKEN`` set they need the
    caller's token, which the forwarding worker passes on (:mod:`processors.api.auth`)."""

    async def campaign(request: web.Request) -> web.Response:
        params = [(k, v) for k, v in request.query.items() if k != "id"]
        app_ids = app_ids_of(request)
        try:
            query = parse_campaign_query(
                request.query.get("id", ""), params, 0, windows_of(request)
            )
            source.check_window(query.range.window)
        except QueryError as exc:
            return _json(exc.body(), 400)
        partition = source.routing.partition_of(query.key.key)
        allowed = app_ids is None or query.key.app_id in app_ids
        found = source.local_campaign(query, partition) if allowed else None
        if found is None:
            return _json({"error": "no such campaign", "id": query.key.id}, 404)
        return _json(found)

    async def campaigns(request: web.Request) -> web.Response:
        try:
            query = parse_list_query(
                request.query.items(), 0, windows_of(request), app_ids_of(request)
            )
            source.check_window(query.range.window)
        except QueryError as exc:
            return _json(exc.body(), 400)
        return _json({"campaigns": source.local_campaigns(query)})

    app.router.add_get(f"{INTERNAL}/campaign", campaign)
    app.router.add_get(f"{INTERNAL}/campaigns", campaigns)
