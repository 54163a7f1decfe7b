"""Segment receiver settings and body handling, without a server."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import orjson
import pytest

from connectors.segment import Reject, SegmentSettings, signature, split_events
from crmstream.errors import ConfigError
from crmstream.settings import Secret


def test_defaults_and_env() -> None:
    config = SegmentSettings.from_env(
        {
            "CRM_SEGMENT_PORT": "9000",
            "CRM_SEGMENT_PATH": "/hooks/segment",
            "CRM_SEGMENT_MAX_BODY_BYTES": "1000",
            "CRM_SEGMENT_ACK_TIMEOUT": "2500ms",
            "CRM_SEGMENT_SHARED_SECRET": "abc",
            "CRM_SEGMENT_APP_ID": "src",
        }
    )
    assert (config.port, config.path, config.max_body_bytes) == (9000, "/hooks/segment", 1000)
    assert config.ack_timeout_s == 2.5
    assert config.shared_secret.get() == "abc"
    assert config.app_id == "src"
    assert "abc" not in repr(config)


def test_command_line_overrides_env_but_none_does_not() -> None:
    env = {"CRM_SEGMENT_PORT": "9000"}
    assert SegmentSettings.from_env(env, port=None).port == 9000
    assert SegmentSettings.from_env(env, port=9100).port == 9100


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    config = SegmentSettings.from_env({"CRM_SEGMENT_SHARED_SECRET_FILE": str(secret_file)})
    assert config.shared_secret.get() == "from-file"
    with pytest.raises(ConfigError) as err:
        SegmentSettings.from_env({"CRM_SEGMENT_SHARED_SECRET_FILE": str(tmp_path / "missing")})
    assert err.value.setting == "CRM_SEGMENT_SHARED_SECRET_FILE"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CRM_SEGMENT_PORT": "70000"}, "CRM_SEGMENT_PORT"),
        ({"CRM_SEGMENT_PORT": "http"}, "CRM_SEGMENT_PORT"),
        ({"CRM_SEGMENT_PATH": "segment"}, "CRM_SEGMENT_PATH"),
        ({"CRM_SEGMENT_PATH": "/healthz"}, "CRM_SEGMENT_PATH"),
        ({"CRM_SEGMENT_MAX_BODY_BYTES": "0"}, "CRM_SEGMENT_MAX_BODY_BYTES"),
        ({"CRM_SEGMENT_ACK_TIMEOUT": "soon"}, "CRM_SEGMENT_ACK_TIMEOUT"),
        ({"CRM_SEGMENT_ACK_TIMEOUT": "1h"}, "CRM_SEGMENT_ACK_TIMEOUT"),
        ({"CRM_SEGMENT_HOST": " "}, "CRM_SEGMENT_HOST"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        SegmentSettings.from_env(env)
    assert err.value.setting == setting


def test_a_plain_string_secret_is_refused() -> None:
    with pytest.raises(ConfigError):
        SegmentSettings(shared_secret="plain")  # type: ignore[arg-type]
    assert SegmentSettings(shared_secret=Secret("x")).shared_secret


def test_signature_is_hex_hmac_sha1_of_the_raw_body() -> None:
    body = b'{"messageId":"m"}'
    expected = hmac.new(b"k", body, hashlib.sha1).hexdigest()
    assert signature("k", body) == expected
    assert len(expected) == 40


def test_split_single_object_keeps_the_bytes() -> None:
    body = b'{ "messageId" : "m-1", "event": "Email Opened" }'
    assert split_events(body) == [("m-1", body)]


def test_split_array_and_keys() -> None:
    events = [{"messageId": "a"}, {"event": "x"}, {"messageId": 12}, {"messageId": ""}]
    out = split_events(orjson.dumps(events))
    assert [k for k, _ in out] == ["a", None, "12", None]
    assert [orjson.loads(v) for _, v in out] == events
    assert split_events(b"[]") == []


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"nope", "invalid_json"), (b"12", "invalid_shape"), (b'[{"a":1},"b"]', "invalid_shape")],
)
def test_split_refuses_what_is_not_events(body: bytes, kind: str) -> None:
    with pytest.raises(Reject) as err:
        split_events(body)
    assert (err.value.status, err.value.kind) == (400, kind)
