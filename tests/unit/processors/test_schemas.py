"""The output schemas are registered at start and retried while the registry is down (issue 20
item 6): the worker is not ready meanwhile, and its batches wait instead of exiting 70."""

from __future__ import annotations

import asyncio
from typing import Any

from crmstream.errors import SerdeError
from processors.schemas import Schemas


class FlakyRegistry:
    """A serde whose registry answers only from the third attempt on."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.prepared: list[tuple[str, str]] = []

    def prepare(self, name: str, topic: str) -> bytes:
        if self.failures:
            self.failures -= 1
            raise SerdeError("schema registry http://registry: cannot register: refused")
        self.prepared.append((name, topic))
        return b"\x00"


def test_a_registry_that_is_down_keeps_the_worker_unready_and_is_retried() -> None:
    serde = FlakyRegistry(failures=2)
    schemas = Schemas(
        serde,  # type: ignore[arg-type]
        [("CanonicalEvent", "events"), ("DeadLetter", "dead-letter")],
        retry_first_s=0.01,
    )
    seen: list[Any] = []

    async def scenario() -> None:
        await schemas.start()
        while schemas.attempts < 2:  # the first attempt failed
            await asyncio.sleep(0.001)
        seen.append(schemas.ready())
        await asyncio.wait_for(schemas.wait(), timeout=5)  # a batch waits, it does not fail
        seen.append(schemas.ready())
        await schemas.stop()

    asyncio.run(scenario())
    assert seen[0][0] is False and "schema registry" in seen[0][1]
    assert seen[1] == (True, "registered")
    assert schemas.attempts == 3
    assert serde.prepared == [("CanonicalEvent", "events"), ("DeadLetter", "dead-letter")]


def test_waiting_starts_the_registration() -> None:
    serde = FlakyRegistry(failures=0)
    schemas = Schemas(serde, [("CampaignStats", "campaign-stats")])  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(schemas.wait(), timeout=5))
    assert schemas.ready() == (True, "registered")
