"""The Pinpoint Kinesis connector's settings (``CRM_PINPOINT_KINESIS_*``), validated on
construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors.runtime.settings import settings_from_env
from crmstream.errors import ConfigError
from crmstream.settings import choice, parse_duration, parse_int, positive, setting

CONNECTOR = "pinpoint-kinesis"
VENDOR = "pinpoint"
START_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
MAX_GET_RECORDS_LIMIT = 10000  # Kinesis GetRecords API limit

parse_start = choice(*START_POSITIONS)


def parse_timestamp(text: str) -> int:
    """ISO-8601 with a zone (``2026-11-25T10:00:00Z``) or epoch milliseconds -> epoch ms."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 time or epoch ms: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no zone designator (add Z or +00:00)")
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class KinesisSettings:
    """The connector's own settings (``CRM_PINPOINT_KINESIS_*``); Kafka comes from Settings."""

    stream: str = setting(
        "PINPOINT_KINESIS_STREAM", "", None, "Kinesis stream Pinpoint writes to (or --stream)"
    )
    region: str = setting(
        "PINPOINT_KINESIS_REGION",
        "",
        None,
        "AWS region; empty uses boto3's chain (AWS_REGION, AWS_DEFAULT_REGION, config file)",
    )
    endpoint_url: str = setting(
        "PINPOINT_KINESIS_ENDPOINT_URL",
        "",
        None,
        "Kinesis endpoint override (VPC endpoint, moto, LocalStack); empty for AWS",
    )
    start: str = setting(
        "PINPOINT_KINESIS_START",
        "TRIM_HORIZON",
        parse_start,
        "Where a first start reads from: TRIM_HORIZON, LATEST or AT_TIMESTAMP",
    )
    start_timestamp_ms: int | None = setting(
        "PINPOINT_KINESIS_START_TIMESTAMP",
        None,
        parse_timestamp,
        "With AT_TIMESTAMP: ISO-8601 time with zone, or epoch ms",
    )
    discovery_interval_s: float = setting(
        "PINPOINT_KINESIS_DISCOVERY_INTERVAL",
        30.0,
        parse_duration,
        "How often ListShards looks for new shards (reshards)",
    )
    poll_interval_s: float = setting(
        "PINPOINT_KINESIS_POLL_INTERVAL",
        1.0,
        parse_duration,
        "Wait between GetRecords rounds that returned nothing (Kinesis allows 5 calls/s/shard)",
    )
    batch_limit: int = setting(
        "PINPOINT_KINESIS_BATCH_LIMIT",
        1000,
        positive(parse_int),
        "GetRecords Limit: records per call and per checkpoint (at most 10000)",
    )
    max_backoff_s: float = setting(
        "PINPOINT_KINESIS_MAX_BACKOFF",
        30.0,
        parse_duration,
        "Longest wait between retries after throttling or a connection error",
    )
    app_id: str = setting(
        "PINPOINT_KINESIS_APP_ID",
        "",
        None,
        "app_id header of the raw records (the payload's application.app_id wins downstream)",
    )

    def __post_init__(self) -> None:
        if not self.stream.strip():
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_STREAM", "required: the stream name (or --stream NAME)"
            )
        if self.start not in START_POSITIONS:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_START", f"{self.start!r} is not one of {START_POSITIONS}"
            )
        if self.start == "AT_TIMESTAMP" and self.start_timestamp_ms is None:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_START_TIMESTAMP", "required when the start is AT_TIMESTAMP"
            )
        if self.start != "AT_TIMESTAMP" and self.start_timestamp_ms is not None:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_START_TIMESTAMP", "only valid with start AT_TIMESTAMP"
            )
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_ENDPOINT_URL", f"not an http(s) URL: {self.endpoint_url!r}"
            )
        if not 1 <= self.batch_limit <= MAX_GET_RECORDS_LIMIT:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_BATCH_LIMIT", f"must be 1..{MAX_GET_RECORDS_LIMIT}"
            )
        for var, value in (
            ("CRM_PINPOINT_KINESIS_DISCOVERY_INTERVAL", self.discovery_interval_s),
            ("CRM_PINPOINT_KINESIS_POLL_INTERVAL", self.poll_interval_s),
            ("CRM_PINPOINT_KINESIS_MAX_BACKOFF", self.max_backoff_s),
        ):
            if value <= 0:
                raise ConfigError(var, "must be greater than 0")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> KinesisSettings:
        return settings_from_env(cls, environ, **overrides)
