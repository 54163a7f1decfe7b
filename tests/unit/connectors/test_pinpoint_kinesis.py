"""Pinpoint Kinesis connector settings and record keys, without AWS or Kafka."""

from __future__ import annotations

import orjson
import pytest

from connectors.pinpoint_kinesis.settings import KinesisSettings, parse_timestamp
from connectors.pinpoint_kinesis.source import record_key
from crmstream.errors import ConfigError
from processors.normalize import EVENT_IDS


def test_env_and_command_line() -> None:
    env = {
        "CRM_PINPOINT_KINESIS_STREAM": "from-env",
        "CRM_PINPOINT_KINESIS_START": "at_timestamp",
        "CRM_PINPOINT_KINESIS_START_TIMESTAMP": "2026-11-25T10:00:00Z",
        "CRM_PINPOINT_KINESIS_DISCOVERY_INTERVAL": "2m",
        "CRM_PINPOINT_KINESIS_BATCH_LIMIT": "500",
    }
    config = KinesisSettings.from_env(env, stream=None)
    assert config.stream == "from-env"
    assert config.start == "AT_TIMESTAMP"
    assert config.start_timestamp_ms == 1795600800000
    assert config.discovery_interval_s == 120
    assert config.batch_limit == 500
    assert KinesisSettings.from_env(env, stream="from-cli").stream == "from-cli"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "CRM_PINPOINT_KINESIS_STREAM"),
        ({"CRM_PINPOINT_KINESIS_START": "EARLIEST"}, "CRM_PINPOINT_KINESIS_START"),
        ({"CRM_PINPOINT_KINESIS_START": "AT_TIMESTAMP"}, "CRM_PINPOINT_KINESIS_START_TIMESTAMP"),
        (
            {"CRM_PINPOINT_KINESIS_START_TIMESTAMP": "2026-11-25T10:00:00Z"},
            "CRM_PINPOINT_KINESIS_START_TIMESTAMP",
        ),
        (
            {
                "CRM_PINPOINT_KINESIS_START": "AT_TIMESTAMP",
                "CRM_PINPOINT_KINESIS_START_TIMESTAMP": "2026-11-25T10:00:00",
            },
            "CRM_PINPOINT_KINESIS_START_TIMESTAMP",
        ),
        ({"CRM_PINPOINT_KINESIS_BATCH_LIMIT": "10001"}, "CRM_PINPOINT_KINESIS_BATCH_LIMIT"),
        ({"CRM_PINPOINT_KINESIS_BATCH_LIMIT": "0"}, "CRM_PINPOINT_KINESIS_BATCH_LIMIT"),
        ({"CRM_PINPOINT_KINESIS_POLL_INTERVAL": "0"}, "CRM_PINPOINT_KINESIS_POLL_INTERVAL"),
        (
            {"CRM_PINPOINT_KINESIS_ENDPOINT_URL": "localhost:4566"},
            "CRM_PINPOINT_KINESIS_ENDPOINT_URL",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], setting: str) -> None:
    values = {"CRM_PINPOINT_KINESIS_STREAM": "s", **env} if env else {}
    with pytest.raises(ConfigError) as err:
        KinesisSettings.from_env(values)
    assert err.value.setting == setting


def test_parse_timestamp() -> None:
    assert parse_timestamp("1795600800000") == 1795600800000
    assert parse_timestamp("2026-11-25T11:00:00+01:00") == 1795600800000
    with pytest.raises(ValueError, match="zone"):
        parse_timestamp("2026-11-25 10:00:00")
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_record_key_is_the_synthetic_a10_id_or_none() -> None:
    event = {
        "event_type": "_campaign.send",
        "event_timestamp": 1,
        "arrival_timestamp": 2,
        "client": {"client_id": "ep-1"},
        "attributes": {"campaign_activity_id": "act"},
    }
    assert record_key(orjson.dumps(event), EVENT_IDS["pinpoint"]) == "_campaign.send|ep-1|act|1|2"
    del event["client"]
    assert record_key(orjson.dumps(event), EVENT_IDS["pinpoint"]) is None
    assert record_key(b"{not json", EVENT_IDS["pinpoint"]) is None
    assert record_key(b"[1, 2]", EVENT_IDS["pinpoint"]) is None
