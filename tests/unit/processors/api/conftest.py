"""Fixtures of the query API tests: the fake source, and the app serving it on a free port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from crmstream.settings import Settings
from processors.api.server import make_app
from tests.unit.processors.api.fake_source import FakeSource


@dataclass
class Served:
    """The app on ``url``, over ``source`` (grow it to see the page follow)."""

    url: str
    source: FakeSource
    token: str | None = None
    """A token the API takes, when the app requires one."""


class ServerThread:
    """An aiohttp app on 127.0.0.1 and a free port, on its own event loop in a thread, so that
    blocking clients (httpx, Playwright's sync API) can call it from the test."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
        self.loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the API server did not start")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def fake_source(request: pytest.FixtureRequest) -> FakeSource:
    """A fresh fake source; ``FakeSource`` arguments by indirect parametrization."""
    options: dict[str, Any] = getattr(request, "param", {})
    return FakeSource(**options)


@pytest.fixture
def api_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The app's ``CRM_*`` settings (windows, tokens), by indirect parametrization."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def served(fake_source: FakeSource, api_env: dict[str, str]) -> Iterator[Served]:
    """The app over a fresh fake source, its clock the fake's (so default ranges hold it)."""
    settings = Settings.from_env(api_env)
    grants = settings.api_grants()
    token = grants[0][0].get() if grants else None
    app = make_app(fake_source, now_ms=fake_source.now_ms, settings=settings)
    with ServerThread(app) as url:
        yield Served(url, fake_source, token)
