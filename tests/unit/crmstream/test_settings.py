from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crmstream.errors import ConfigError
from crmstream.kafka import client_config, producer_config
from crmstream.settings import Secret, Settings, parse_duration
from processors.faust_engine import faust_broker_kwargs


def test_defaults_are_production_defaults() -> None:
    s = Settings.from_env({})
    assert s.bootstrap_servers == "localhost:9092"
    assert s.replication_factor == -1
    assert s.dedupe_window_s == 7 * 86400
    assert s.consumer_session_timeout_s == 45.0
    assert s.changelog_max_batch_bytes == 1_000_000
    assert s.changelog_linger_s == 0.1
    assert s.output_linger_s == 0.02
    assert s.positions_interval_s == 1.0
    assert s.topic("events") == "crm.events"
    assert s.stats_window_seconds() == [("1m", 60), ("1h", 3600)]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CRM_PARTITIONS": "many"}, "CRM_PARTITIONS"),
        ({"CRM_PARTITIONS": "0"}, "CRM_PARTITIONS"),
        ({"CRM_METRICS_PORT": "70000"}, "CRM_METRICS_PORT"),
        ({"CRM_DEDUPE_WINDOW": "a week"}, "CRM_DEDUPE_WINDOW"),
        ({"CRM_DEDUPE_WINDOW": "1h"}, "CRM_DEDUPE_WINDOW"),
        ({"CRM_SECURITY_PROTOCOL": "TLS"}, "CRM_SECURITY_PROTOCOL"),
        ({"CRM_SECURITY_PROTOCOL": "SASL_SSL"}, "CRM_SASL_USERNAME"),
        ({"CRM_SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "CRM_SSL_CA_LOCATION"),
        ({"CRM_TOPIC_PREFIX": "bad prefix"}, "CRM_TOPIC_PREFIX"),
        ({"CRM_REPLICATION_FACTOR": "0"}, "CRM_REPLICATION_FACTOR"),
        ({"CRM_STATS_WINDOWS": "1m,60s"}, "CRM_STATS_WINDOWS"),
        ({"CRM_LOG_FORMAT": "xml"}, "CRM_LOG_FORMAT"),
        ({"CRM_OUTPUT_LINGER": "soon"}, "CRM_OUTPUT_LINGER"),
        ({"CRM_OUTPUT_LINGER": "0"}, "CRM_OUTPUT_LINGER"),
        ({"CRM_CHANGELOG_LINGER": "0"}, "CRM_CHANGELOG_LINGER"),
        ({"CRM_CHANGELOG_LINGER": "later"}, "CRM_CHANGELOG_LINGER"),
        ({"CRM_POSITIONS_INTERVAL": "-1s"}, "CRM_POSITIONS_INTERVAL"),
        ({"CRM_POSITIONS_INTERVAL": "often"}, "CRM_POSITIONS_INTERVAL"),
        ({"CRM_POSITIONS_INTERVAL": "2h"}, "CRM_POSITIONS_INTERVAL"),
        ({"CRM_MAX_MESSAGE_BYTES": "0"}, "CRM_MAX_MESSAGE_BYTES"),
        ({"CRM_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "CRM_SASL_PASSWORD_FILE"),
        ({"CRM_API_PORT": "70000"}, "CRM_API_PORT"),
        ({"CRM_API_PORT": "http"}, "CRM_API_PORT"),
        ({"CRM_API_HOST": ""}, "CRM_API_HOST"),
        ({"CRM_API_URL": "worker-0:8080"}, "CRM_API_URL"),
        ({"CRM_API_URL": "http://worker-0:8080/api"}, "CRM_API_URL"),
        ({"CRM_STATS_HLL_LG_K": "3"}, "CRM_STATS_HLL_LG_K"),
        ({"CRM_STATS_HLL_LG_K": "22"}, "CRM_STATS_HLL_LG_K"),
        ({"CRM_STATS_MAX_MESSAGES": "0"}, "CRM_STATS_MAX_MESSAGES"),
        ({"CRM_STATS_MAX_MESSAGES": "10001"}, "CRM_STATS_MAX_MESSAGES"),
        ({"CRM_STATS_MAX_MESSAGES": "many"}, "CRM_STATS_MAX_MESSAGES"),
        ({"CRM_STATS_MAX_VARIANTS": "0"}, "CRM_STATS_MAX_VARIANTS"),
        ({"CRM_STATS_MAX_VARIANTS": "1001"}, "CRM_STATS_MAX_VARIANTS"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.setting == variable
    assert variable in str(info.value)


def test_the_api_url_advertised_to_the_group() -> None:
    assert Settings.from_env({"CRM_API_URL": "http://w-0.svc:8080/"}).advertised_api_url == (
        "http://w-0.svc:8080"
    )
    settings = Settings.from_env({"CRM_API_PORT": "9000"})
    assert settings.advertised_api_url.startswith("http://")
    assert settings.advertised_api_url.endswith(":9000")
    defaults = Settings.from_env({})
    assert (defaults.api_port, defaults.stats_hll_lg_k) == (8080, 12)


def test_durations() -> None:
    assert parse_duration("7d") == 604800
    assert parse_duration("250ms") == 0.25
    assert parse_duration("90") == 90
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_sasl_and_tls_reach_both_clients(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used by this test")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = Settings.from_env(
        {
            "CRM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CRM_SASL_MECHANISM": "scram-sha-512",
            "CRM_SASL_USERNAME": "svc",
            "CRM_SASL_PASSWORD_FILE": str(pw),
        }
    )
    conf = client_config(s)
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "svc"
    assert conf["sasl.password"] == "s3cret"
    creds = faust_broker_kwargs(s)["broker_credentials"]
    assert creds.username == "svc" and creds.password == "s3cret"
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s.describe())


def test_producer_never_loses_or_reorders() -> None:
    conf = producer_config(Settings.from_env({}))
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["partitioner"] == "murmur2_random"


def test_secret_hides_itself() -> None:
    assert "x" not in repr(Secret("x")) and Secret("x").get() == "x"


def test_cli_stops_on_bad_setting_with_its_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crmcli", "topics", "list"],
        env={"CRM_PARTITIONS": "-3", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "CRM_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr
