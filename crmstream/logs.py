"""Logging setup: text for people, JSON lines for log pipelines (``CRM_LOG_FORMAT=json``).

Record-level messages pass ``extra={"vendor": ..., "source": ...}``; the JSON formatter
writes those fields on every line that has them.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from crmstream.settings import Settings

RECORD_FIELDS = ("vendor", "source", "connector", "topic", "partition", "offset", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in RECORD_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
