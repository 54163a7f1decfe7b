from __future__ import annotations

import asyncio
from pathlib import Path

from crmstream.settings import Settings
from processors.faust_engine import FaustEngine


def _fetch_wait_ms(tmp_path: Path, **env: str) -> int:
    engine = FaustEngine(Settings.from_env({"CRM_DATA_DIR": str(tmp_path), **env}))
    app = engine.app

    async def build() -> int:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)

    return asyncio.run(build())


def test_the_worker_consumer_fetch_wait_follows_the_setting(tmp_path: Path) -> None:
    assert _fetch_wait_ms(tmp_path / "a", CRM_CONSUMER_FETCH_MAX_WAIT="50ms") == 50
    # The default leaves Faust's own consumer as it is.
    assert _fetch_wait_ms(tmp_path / "b") == 1500
