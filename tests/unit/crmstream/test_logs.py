"""CRM_LOG_FORMAT=json: one JSON object a line, with vendor and source position on record-level
messages, so a log pipeline can filter by vendor and find the exact source record."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest

from crmstream import logs
from crmstream.settings import Settings


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("crmstream.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_record_level_message_carries_vendor_and_source_position() -> None:
    line = logs.JsonFormatter().format(
        _record(
            "rejected %s",
            "invalid_timestamp",
            vendor="airship",
            source="offset=1000001778910",
            topic="crm.raw.airship",
            partition=3,
            offset=42,
            reason="invalid_timestamp",
        )
    )
    assert "\n" not in line
    out = orjson.loads(line)
    assert out["msg"] == "rejected invalid_timestamp"
    assert out["level"] == "WARNING"
    assert out["logger"] == "crmstream.test"
    assert out["vendor"] == "airship"
    assert out["source"] == "offset=1000001778910"
    assert (out["topic"], out["partition"], out["offset"]) == ("crm.raw.airship", 3, 42)
    assert out["reason"] == "invalid_timestamp"
    assert out["ts"].endswith("+00:00")


def test_fields_absent_from_the_record_are_not_invented() -> None:
    out = orjson.loads(logs.JsonFormatter().format(_record("worker started")))
    assert set(out) == {"ts", "level", "logger", "msg"}


def test_exception_is_kept_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", vendor="segment")
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    out = orjson.loads(line)
    assert "ValueError: boom" in out["exc"]
    assert out["vendor"] == "segment"


def test_configure_json_routes_logger_extra_through_the_formatter(
    restore_root_logger: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    logs.configure(Settings.from_env({"CRM_LOG_FORMAT": "json", "CRM_LOG_LEVEL": "INFO"}))
    log = logging.getLogger("crmstream.worker")
    log.debug("not shown at INFO")
    log.info("dead letter", extra={"vendor": "leanplum", "source": "s3://b/dt=2024-01-01/f.json:7"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    out = orjson.loads(lines[0])
    assert out["vendor"] == "leanplum"
    assert out["source"] == "s3://b/dt=2024-01-01/f.json:7"
    assert out["msg"] == "dead letter"


def test_configure_text_is_the_default(
    restore_root_logger: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    logs.configure(Settings.from_env({}))
    logging.getLogger("crmstream.worker").warning("plain", extra={"vendor": "segment"})
    text = stream.getvalue()
    assert "WARNING crmstream.worker: plain" in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
