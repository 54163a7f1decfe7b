"""``crm-stream connect pinpoint-kinesis``: options, running, the summary line."""

from __future__ import annotations

import argparse
import logging

from confluent_kafka import KafkaException

from connectors.pinpoint_kinesis.settings import (
    CONNECTOR,
    VENDOR,
    KinesisSettings,
    parse_start,
    parse_timestamp,
)
from connectors.pinpoint_kinesis.source import KinesisSource, check_stream
from connectors.runtime.kafka import KeyFunction, ensure_topics
from connectors.runtime.stop import PROCESS_STOP
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.settings import Settings

log = logging.getLogger("connectors.pinpoint_kinesis")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No credential options: AWS credentials come from the environment or files."""
    parser.add_argument("--stream", default=None, help="stream name (CRM_PINPOINT_KINESIS_STREAM)")
    parser.add_argument(
        "--start",
        type=parse_start,
        default=None,
        help="TRIM_HORIZON, LATEST or AT_TIMESTAMP, for a first start (CRM_PINPOINT_KINESIS_START)",
    )
    parser.add_argument(
        "--start-timestamp",
        type=parse_timestamp,
        default=None,
        help="with AT_TIMESTAMP: ISO-8601 with zone or epoch ms",
    )
    parser.add_argument("--region", default=None, help="AWS region (CRM_PINPOINT_KINESIS_REGION)")
    parser.add_argument(
        "--endpoint-url", default=None, help="endpoint override (CRM_PINPOINT_KINESIS_ENDPOINT_URL)"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="exit once every shard is caught up and checkpointed (demo, backfills)",
    )


def config_from_args(args: argparse.Namespace) -> KinesisSettings:
    return KinesisSettings.from_env(
        stream=getattr(args, "stream", None),
        start=getattr(args, "start", None),
        start_timestamp_ms=getattr(args, "start_timestamp", None),
        region=getattr(args, "region", None),
        endpoint_url=getattr(args, "endpoint_url", None),
    )


def run(args: argparse.Namespace, settings: Settings, key_of: KeyFunction) -> int:
    config = config_from_args(args)
    ensure_topics(settings, VENDOR)
    source = KinesisSource(config, settings, key_of=key_of)
    _watch, health = source.runner().health()
    metrics.serve(settings.metrics_port, health)
    check_stream(source)
    PROCESS_STOP.on_stop(source.stop)
    try:
        stats = source.run(once=bool(getattr(args, "once", False)))
    except KafkaException as exc:
        raise BrokerError(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    log.info(
        "stopped: %d records, %d checkpoints, %d shards drained, errors %s",
        stats.records,
        stats.checkpoints,
        stats.shards_finished,
        stats.errors or "none",
        extra={"connector": CONNECTOR},
    )
    return 0
