from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop

from crmstream.errors import ConfigError
from crmstream.settings import Settings
from processors.app import use_event_loop


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def _new_loop_type() -> type:
    loop = asyncio.new_event_loop()
    try:
        return type(loop)
    finally:
        loop.close()


def test_uvloop_is_the_default_and_asyncio_can_be_chosen() -> None:
    use_event_loop(Settings.from_env({}).event_loop)
    assert _new_loop_type() is uvloop.Loop
    use_event_loop(Settings.from_env({"CRM_EVENT_LOOP": "AsyncIO"}).event_loop)
    assert not issubclass(_new_loop_type(), uvloop.Loop)


def test_an_unknown_event_loop_stops_startup_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="CRM_EVENT_LOOP"):
        Settings.from_env({"CRM_EVENT_LOOP": "trio"})
