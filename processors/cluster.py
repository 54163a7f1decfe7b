"""The worker's query API in the consumer group: who owns which stats partition, where each
worker's API is, and the aiohttp server serving it (on its own runner and port, not Faust's web
server, which the worker disables).

**Owner routing.** Every worker advertises its API URL (``CRM_API_URL``, default
``http://<hostname>:<CRM_API_PORT>``) as Faust's ``canonical_url``. Faust's partition assignor
sends it with each member's metadata, and after every rebalance each worker knows, per table
changelog partition, the URL of the worker it is assigned to as active
(``assignor.table_metadata``, Faust's table routing). The stats tables are partitioned like
``stats-updates``, so the owner of a campaign's stats partition is the worker whose URL lists that
partition of a stats table's changelog topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from mode import Service

from crmstream.errors import CrmStreamError
from crmstream.settings import Settings
from processors import faust_compat
from processors.api.server import make_app
from processors.records import stats_partition
from processors.stats_api import WorkerSource, add_internal_routes

log = logging.getLogger("crmstream.api")


class FaustRouting:
    """:class:`processors.stats_api.Routing` from a Faust app's assignor and consumer."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        changelog_topic: str,
        stats_updates_topic: str,
        partitions: Callable[[], int],
    ) -> None:
        self.app = app
        self._self_url = settings.advertised_api_url
        self.changelog_topic = changelog_topic
        self.stats_updates_topic = stats_updates_topic
        self.partitions = partitions  # the stats-updates topic's, as the raw side sends to it

    @property
    def self_url(self) -> str:
        return self._self_url

    def partition_of(self, key: str) -> int:
        return stats_partition(key.encode(), self.partitions())

    def _distribution(self) -> dict[str, list[int]]:
        metadata = self.app.assignor.table_metadata(self.changelog_topic)
        return {
            str(url).rstrip("/"): list(topics.get(self.changelog_topic, ()))
            for url, topics in metadata.items()
        }

    def owner(self, partition: int) -> str | None:
        for url, partitions in self._distribution().items():
            if partition in partitions:
                return url
        return None

    def peers(self) -> list[str]:
        urls = set(self._distribution())
        urls.add(self.self_url)
        return sorted(urls)

    def local(self) -> set[int] | None:
        app = self.app
        if app.rebalancing or app.in_recovery or not faust_compat.recovered(app):
            return None
        return {
            tp.partition for tp in app.consumer.assignment() if tp.topic == self.stats_updates_topic
        }


class ApiServer(Service):
    """The query API and web view (:func:`processors.api.server.make_app`) over the worker's
    stats, with the routes other workers forward to, on ``CRM_API_HOST:CRM_API_PORT``."""

    def __init__(self, settings: Settings, source: WorkerSource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.source = source
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        app = make_app(self.source, settings=self.settings)
        add_internal_routes(app, self.source)
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

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.source.close()
