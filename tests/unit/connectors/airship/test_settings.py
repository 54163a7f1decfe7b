"""AirshipSettings validation (TAXONOMY §7), filters and subsets, the request body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.airship.filters import validate_filters, validate_subset
from connectors.airship.settings import BASE_URLS, AirshipSettings
from crmstream.errors import ConfigError
from crmstream.settings import Secret

BASE = {"CRM_AIRSHIP_APP_KEY": "app", "CRM_AIRSHIP_TOKEN": "tok-secret"}


def load(**env: str) -> AirshipSettings:
    return AirshipSettings.from_env({**BASE, **env})


def rejected(setting: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        AirshipSettings.from_env({**BASE, **env})
    assert info.value.setting == setting, info.value
    return info.value


def test_defaults() -> None:
    s = load()
    assert s.url == BASE_URLS["US"] and s.endpoint == "https://connect.urbanairship.com/api/events"
    assert s.idle_timeout_s == 90.0  # seed 004: "ninety seconds"
    assert s.enable_offset_updates and s.start is None and s.resume_offset is None
    assert s.checkpoint_key == "app/events/all"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("US", "https://connect.urbanairship.com"),
        ("eu", "https://connect.asnapieu.com"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://proxy.example/rtds", "https://proxy.example/rtds"),
    ],
)
def test_url_is_us_eu_or_a_url(url: str, expected: str) -> None:
    assert load(CRM_AIRSHIP_URL=url).url == expected


@pytest.mark.parametrize("url", ["APAC", "ftp://host", "http://", "http://h/x?y=1"])
def test_bad_url(url: str) -> None:
    rejected("CRM_AIRSHIP_URL", CRM_AIRSHIP_URL=url)


def test_token_from_env_or_file_and_never_printed(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file-token\n")
    env = {"CRM_AIRSHIP_APP_KEY": "app", "CRM_AIRSHIP_TOKEN_FILE": str(secret_file)}
    s = AirshipSettings.from_env(env)
    assert s.token.get() == "from-file-token"
    assert "from-file-token" not in repr(s) and "tok-secret" not in repr(load())
    assert s.headers()["Authorization"] == "Bearer from-file-token"


def test_token_is_required_and_missing_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        AirshipSettings.from_env({"CRM_AIRSHIP_APP_KEY": "app"})
    assert info.value.setting == "CRM_AIRSHIP_TOKEN"
    with pytest.raises(ConfigError) as info:
        AirshipSettings.from_env(
            {"CRM_AIRSHIP_APP_KEY": "app", "CRM_AIRSHIP_TOKEN_FILE": str(tmp_path / "none")}
        )
    assert info.value.setting == "CRM_AIRSHIP_TOKEN_FILE"


def test_secrets_are_not_command_line_options() -> None:
    from connectors.airship.cli import options_from_args
    from crmcli import build_parser

    parser = build_parser()
    args = parser.parse_args(["connect", "airship", "--url", "EU", "--start", "earliest"])
    options = options_from_args(args)
    assert "token" not in options and "master_secret" not in options
    with pytest.raises(SystemExit):
        parser.parse_args(["connect", "airship", "--token", "x"])
    s = AirshipSettings.from_env(BASE, options)
    assert s.url == BASE_URLS["EU"] and s.start == "EARLIEST"


def test_app_key_required() -> None:
    with pytest.raises(ConfigError) as info:
        AirshipSettings.from_env({"CRM_AIRSHIP_TOKEN": "t"})
    assert info.value.setting == "CRM_AIRSHIP_APP_KEY"


def test_compliance_needs_master_secret_and_uses_basic() -> None:
    rejected("CRM_AIRSHIP_MASTER_SECRET", CRM_AIRSHIP_STREAM="compliance")
    s = load(CRM_AIRSHIP_STREAM="compliance", CRM_AIRSHIP_MASTER_SECRET="ms")
    assert s.endpoint.endswith("/api/events/general")
    # base64("app:ms")
    assert s.headers()["Authorization"] == "Basic YXBwOm1z"
    assert s.headers()["X-UA-Appkey"] == "app"


def test_start_and_resume_offset_never_both() -> None:
    error = rejected(
        "CRM_AIRSHIP_RESUME_OFFSET", CRM_AIRSHIP_START="EARLIEST", CRM_AIRSHIP_RESUME_OFFSET="12"
    )
    assert "never both" in str(error)
    rejected("CRM_AIRSHIP_START", CRM_AIRSHIP_START="NOW")


def test_request_body_has_start_xor_resume_offset() -> None:
    s = load(CRM_AIRSHIP_START="EARLIEST")
    assert s.request_body(None) == {"start": "EARLIEST", "enable_offset_updates": True}
    assert s.request_body("MTIzNQ") == {"resume_offset": "MTIzNQ", "enable_offset_updates": True}
    assert load().request_body(None)["start"] == "LATEST"
    plain = load(CRM_AIRSHIP_OFFSET_UPDATES="false", CRM_AIRSHIP_RESUME_OFFSET="-1099401623")
    assert plain.request_body(plain.resume_offset) == {"resume_offset": "-1099401623"}


def test_headers() -> None:
    h = load().headers()
    assert h["Accept"] == "application/vnd.urbanairship+x-ndjson; version=3;"
    assert h["Content-Type"] == "application/json" and h["X-UA-Appkey"] == "app"


@pytest.mark.parametrize(
    ("filters", "problem"),
    [
        ("[]", "empty array"),
        ("{}", "JSON array"),
        ('[{"channel": "x"}]', "unknown field"),
        ('[{"types": []}]', "empty array"),
        ('[{"device_types": ["ios", "windows"]}]', "windows"),
        ('[{"latency": -1}]', "latency"),
        ('[{"latency": "5"}]', "latency"),
        ('[{"notifications": {"push_id": "a", "group_id": "b"}}]', "exactly one"),
        ('[{"devices": [{"email": "x"}]}]', "unknown field"),
        ('[{"users": []}]', "empty array"),
        ('[{"predicates": [{"key": "name"}]}]', "value matcher"),
        ('[{"predicates": [{"key": "n", "value": {"like": "x"}}]}]', "unknown matcher"),
        ('[{"predicates": [{"and": []}]}]', "empty array"),
        ("[1]", "JSON object"),
        ("not json", "not JSON"),
    ],
)
def test_bad_filters(filters: str, problem: str) -> None:
    error = rejected("CRM_AIRSHIP_FILTERS", CRM_AIRSHIP_FILTERS=filters)
    assert problem in str(error)


def test_seed_filter_examples_are_accepted() -> None:
    # The request example and the filter/predicate examples of seed 004 (made valid JSON).
    filters: list[dict[str, Any]] = [
        {
            "device_types": ["android", "amazon"],
            "devices": [{"channel": "5b38"}, {"named_user_id": "George"}],
            "latency": 20000000,
        },
        {"notifications": [{"group_id": "a30a"}], "types": ["OPEN"]},
        {"notifications": {"push_id": "fae0"}, "users": [{"contact_id": "982B"}]},
        {
            "device_types": ["sms"],
            "types": ["CUSTOM"],
            "predicates": [
                {
                    "and": [
                        {"key": "interaction_type", "scope": ["body"], "value": {"equals": "x"}},
                        {"not": {"key": "name", "scope": ["body"], "value": {"equals": "y"}}},
                    ]
                }
            ],
        },
        {
            "types": ["PUSH_BODY"],
            "predicates": {
                "key": "categories",
                "scope": ["body", "campaigns"],
                "value": {"array_contains": {"value": {"equals": "spring_sale"}}},
            },
        },
        {"predicates": [{"key": "app_version", "value": {"version_matches": "[18.4.1,19.2.3]"}}]},
        {"predicates": [{"key": "value", "scope": "body", "value": {"at_least": 100}}]},
        {"types": ["SOME_FUTURE_TYPE"]},
    ]
    assert validate_filters(filters) == filters


def test_compliance_filters_are_narrower() -> None:
    assert validate_filters([{"device_types": ["email"], "latency": 120000}], "compliance")
    with pytest.raises(ValueError, match="unknown field"):
        validate_filters([{"types": ["COMPLIANCE"]}], "compliance")
    with pytest.raises(ValueError, match="ios"):
        validate_filters([{"device_types": ["ios"]}], "compliance")


@pytest.mark.parametrize(
    ("subset", "problem"),
    [
        ('{"type": "PARTITION", "count": 4, "selection": 4}', "less than count"),
        ('{"type": "PARTITION", "count": 4, "selection": 7}', "less than count"),
        ('{"type": "PARTITION", "count": 0, "selection": 0}', "count"),
        ('{"type": "PARTITION", "count": 2}', "selection"),
        ('{"type": "SAMPLE", "proportion": 1.5}', "outside"),
        ('{"type": "SAMPLE", "proportion": true}', "numeric"),
        ('{"type": "SAMPLE", "proportion": 0.5, "seed": 1}', "unknown"),
        ('{"type": "RANDOM"}', "SAMPLE or PARTITION"),
        ("[]", "JSON object"),
    ],
)
def test_bad_subset(subset: str, problem: str) -> None:
    error = rejected("CRM_AIRSHIP_SUBSET", CRM_AIRSHIP_SUBSET=subset)
    assert problem in str(error)


def test_subset_from_file_and_its_checkpoint_key(tmp_path: Path) -> None:
    path = tmp_path / "subset.json"
    path.write_text('{"type": "PARTITION", "count": 8, "selection": 3}')
    s = load(CRM_AIRSHIP_SUBSET_FILE=str(path))
    assert s.subset == {"type": "PARTITION", "count": 8, "selection": 3}
    assert s.checkpoint_key == "app/events/partition-3-of-8"
    other = load(CRM_AIRSHIP_SUBSET='{"type": "PARTITION", "count": 8, "selection": 4}')
    assert other.checkpoint_key != s.checkpoint_key
    assert validate_subset({"type": "SAMPLE", "proportion": 0}) == {
        "type": "SAMPLE",
        "proportion": 0,
    }


def test_filters_file_option_overrides_env(tmp_path: Path) -> None:
    path = tmp_path / "filters.json"
    path.write_text('[{"types": ["SEND"]}]')
    s = AirshipSettings.from_env({**BASE, "CRM_AIRSHIP_FILTERS": "[]"}, {"filters_file": str(path)})
    assert s.filters == [{"types": ["SEND"]}]
    path.write_text("[]")
    with pytest.raises(ConfigError) as info:
        AirshipSettings.from_env(BASE, {"filters_file": str(path)})
    assert info.value.setting == "CRM_AIRSHIP_FILTERS"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CRM_AIRSHIP_IDLE_TIMEOUT": "0"}, "CRM_AIRSHIP_IDLE_TIMEOUT"),
        ({"CRM_AIRSHIP_IDLE_TIMEOUT": "soon"}, "CRM_AIRSHIP_IDLE_TIMEOUT"),
        (
            {"CRM_AIRSHIP_BACKOFF_MIN": "10s", "CRM_AIRSHIP_BACKOFF_MAX": "1s"},
            "CRM_AIRSHIP_BACKOFF_MIN",
        ),
        ({"CRM_AIRSHIP_STREAM": "firehose"}, "CRM_AIRSHIP_STREAM"),
        ({"CRM_AIRSHIP_OFFSET_UPDATES": "maybe"}, "CRM_AIRSHIP_OFFSET_UPDATES"),
    ],
)
def test_bad_scalars(env: dict[str, str], setting: str) -> None:
    rejected(setting, **env)


def test_durations() -> None:
    s = load(CRM_AIRSHIP_IDLE_TIMEOUT="1500ms", CRM_AIRSHIP_STOP_AFTER_IDLE="3s")
    assert s.idle_timeout_s == 1.5 and s.stop_after_idle_s == 3.0


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError):
        AirshipSettings(app_key="a", token=Secret("t"), filters=[])


def test_every_setting_but_the_secrets_is_an_option_named_after_its_field() -> None:
    """The options come from the settings' fields (declared once): a bad value names the option,
    and each option overrides its variable."""
    from dataclasses import fields

    from connectors.airship.cli import options_from_args
    from connectors.airship.settings import option_name
    from crmcli import build_parser

    parser = build_parser()
    for f in fields(AirshipSettings):
        if f.metadata["secret"] or f.type in (bool, "bool") or f.metadata.get("json", False):
            continue
        args = parser.parse_args(["connect", "airship", option_name(f), "-1"])
        assert options_from_args(args)[f.name] == "-1", f.name
    args = parser.parse_args(["connect", "airship", "--idle-timeout", "-1"])
    with pytest.raises(ConfigError) as info:
        AirshipSettings.from_env(BASE, options_from_args(args))
    assert info.value.setting == "--idle-timeout"
    args = parser.parse_args(["connect", "airship", "--no-offset-updates"])
    assert AirshipSettings.from_env(BASE, options_from_args(args)).enable_offset_updates is False
