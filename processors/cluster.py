"""The worker's query API server: the aiohttp app of :mod:`processors.api.server` with the routes
other workers forward to (:mod:`processors.stats_api`), on its own runner and port
(``CRM_API_HOST:CRM_API_PORT``), not Faust's web server, which the worker disables.

Who owns which stats partition and where each worker's API is come from the group through the
engine (:class:`processors.faust_engine.FaustRouting`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from crmstream.errors import CrmStreamError
from crmstream.settings import Settings
from processors.api.server import make_app
from processors.attribution_api import AttributionSource, add_internal_route, public_handler
from processors.stats_api import WorkerSource, add_internal_routes

log = logging.getLogger("crmstream.api")


class ApiServer:
    """The query API and web view over the worker's stats, started and stopped with the worker
    (:class:`processors.faust_engine.Startable`)."""

    def __init__(
        self,
        settings: Settings,
        source: WorkerSource,
        attribution: AttributionSource | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.attribution = attribution  # GET /api/attribution (CRM_ATTRIBUTION)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = make_app(
            self.source,
            settings=self.settings,
            attribution=public_handler(self.attribution) if self.attribution else None,
            attributed=self.attribution.converted if self.attribution else None,
        )
        add_internal_routes(app, self.source)
        if self.attribution is not None:
            add_internal_route(app, self.attribution)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.api_host, self.settings.api_port)
        try:
            await site.start()
        except OSError as exc:
            raise CrmStreamError(
                f"the query API cannot listen on {self.settings.api_host}:"
                f"{self.settings.api_port} (CRM_API_PORT): {exc}"
            ) from exc
        log.info(
            "query API and web view on port %d, advertised as %s",
            self.settings.api_port,
            self.source.routing.self_url,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.source.close()
        if self.attribution is not None:
            await self.attribution.close()
