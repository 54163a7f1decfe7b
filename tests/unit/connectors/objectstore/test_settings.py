"""ObjectStoreSettings: every option validated, the bad one named."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.objectstore.settings import ObjectStoreSettings
from crmstream.errors import ConfigError

# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"source": "http://bucket/x"}, "--source"),
        ({"source": "s3:///prefix"}, "--source"),
        ({"source": "file://host/path"}, "--source"),
        ({"source": "s3://b", "endpoint_url": "localhost:9000"}, "--endpoint-url"),
        ({"source": "s3://b", "poll_interval_s": 0}, "--poll-interval"),
        ({"source": "s3://b", "late_days": -1}, "--late-days"),
        ({"source": "s3://b", "checkpoint_every": 0}, "--checkpoint-every"),
        ({"source": "s3://b", "retry_mode": "eager"}, "--retry-mode"),
        ({"source": "s3://b", "max_attempts": 0}, "--max-attempts"),
        ({"source": "s3://b", "project_id": "a/b"}, "--project-id"),
    ],
)
def test_settings_name_the_bad_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as err:
        ObjectStoreSettings(**kwargs)
    assert err.value.setting == option


def test_settings_accept_s3_and_file_sources() -> None:
    assert (
        ObjectStoreSettings(source="s3://bucket/feed/", endpoint_url="http://127.0.0.1:1").once
        is False
    )
    assert ObjectStoreSettings(source="file:///tmp").late_days == 3
