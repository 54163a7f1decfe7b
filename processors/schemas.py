"""The output schemas, registered when the worker starts rather than from inside a batch.

With a Schema Registry (``CRM_SCHEMA_REGISTRY_URL``) the first record of each schema used to
register it lazily: blocking HTTP (10 s timeout) on the event loop, from inside a batch, where a
registry that was down meant exit 70 and a restart loop. Here the schemas are registered at start
on a thread, retried with backoff while the registry cannot be reached; meanwhile the worker is
not ready (``/readyz``: ``schemas``) and its batches wait. Once registered, encoding never calls
the registry again (:meth:`crmstream.serde.AvroSerde.prepare` caches the header).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from crmstream.serde import AvroSerde

log = logging.getLogger("crmstream.worker")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class Schemas:
    """Registers ``(schema, topic)`` pairs once, until it succeeds
    (:class:`processors.faust_engine.Startable`)."""

    def __init__(
        self,
        serde: AvroSerde,
        schemas: Sequence[tuple[str, str]],
        *,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.serde = serde
        self.schemas = list(schemas)
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.attempts = 0
        self.problem: str | None = "not registered yet"
        self._done: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _event(self) -> asyncio.Event:
        if self._done is None:
            self._done = asyncio.Event()
        return self._done

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._register())

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self) -> None:
        """Until every schema is registered (starting the registration if nobody did)."""
        done = self._event()
        if done.is_set():
            return
        await self.start()
        await done.wait()

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: whether the schemas are registered."""
        if self.problem is None:
            return True, "registered"
        return False, self.problem

    async def _register(self) -> None:
        delay = self.retry_first_s
        while True:
            self.attempts += 1
            try:
                await asyncio.to_thread(self._register_all)
            except Exception as exc:  # a registry that is down, slow or refusing: retried
                self.problem = f"schema registry: {exc}"[:300]
                log.warning(
                    "registering the output schemas failed (retrying in %.0fs): %s", delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            self.problem = None
            self._event().set()
            return

    def _register_all(self) -> None:
        for name, topic in self.schemas:
            self.serde.prepare(name, topic)
