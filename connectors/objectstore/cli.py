"""``crm-stream connect leanplum|flarelane|pinpoint-firehose``: options, running, the summary."""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson

from connectors.feeds import FeedProfile
from connectors.objectstore.settings import RETRY_MODES, ObjectStoreSettings
from connectors.objectstore.source import ObjectStoreSource, PassStats
from connectors.runtime.health import KafkaWatch, connector_health
from connectors.runtime.kafka import KeyFunction, ensure_topics
from connectors.runtime.stop import PROCESS_STOP
from crmstream import metrics
from crmstream.settings import Settings


def add_arguments(profile: FeedProfile, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help=f"s3://bucket/prefix or file:///path laid out as the {profile.vendor} feed",
    )
    parser.add_argument(
        "--app-id", default=None, help="app id for events whose payload has none (docs/events.md)"
    )
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (default: AWS, or $AWS_ENDPOINT_URL_S3)",
    )
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS chain's)")
    parser.add_argument(
        "--poll-interval", type=float, default=60.0, help="seconds between listing passes"
    )
    parser.add_argument(
        "--late-days",
        type=int,
        default=3,
        help="date partitions before the newest one that are re-listed for late files",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=50_000, help="rows between mid-file checkpoints"
    )
    parser.add_argument("--retry-mode", default="adaptive", choices=RETRY_MODES)
    parser.add_argument("--max-attempts", type=int, default=10, help="S3 request attempts")
    parser.add_argument(
        "--once", action="store_true", help="list until nothing new is left, then exit"
    )
    if profile.root_dir is not None:
        parser.add_argument(
            "--project-id",
            default=None,
            help=f"read only this {profile.root_dir} folder (default: every one)",
        )


def settings_from_args(args: argparse.Namespace) -> ObjectStoreSettings:
    return ObjectStoreSettings(
        source=args.source,
        app_id=args.app_id,
        endpoint_url=args.endpoint_url or None,
        region=args.region,
        poll_interval_s=args.poll_interval,
        late_days=args.late_days,
        once=args.once,
        checkpoint_every=args.checkpoint_every,
        retry_mode=args.retry_mode,
        max_attempts=args.max_attempts,
        project_id=getattr(args, "project_id", None),
    )


def run(
    profile: FeedProfile, args: argparse.Namespace, settings: Settings, key_of: KeyFunction
) -> int:
    config = settings_from_args(args)
    ensure_topics(settings, profile.vendor)
    source = ObjectStoreSource(profile, config, settings, key_of=key_of)
    watch = KafkaWatch(lambda: source.publisher).start()
    metrics.serve(settings.metrics_port, connector_health(watch))
    PROCESS_STOP.on_stop(source.stop)
    total = source.run()
    print(
        orjson.dumps(
            {
                "connector": profile.connector,
                "objects_listed": total.listed,
                "objects_ingested": total.ingested,
                "objects_failed": total.failed,
                "records": total.records,
                "bytes": total.bytes,
                "errors": total.errors,
            }
        ).decode()
    )
    return 0


def run_feed(
    connector: str,
    settings: Settings,
    source: str,
    *,
    key_of: KeyFunction,
    app_id: str | None = None,
    **options: Any,
) -> PassStats:
    """Run one feed connector in-process to completion (``--once``); what the demo calls."""
    from connectors.feeds import FEEDS

    config = ObjectStoreSettings(source=source, app_id=app_id, once=True, **options)
    return ObjectStoreSource(FEEDS[connector], config, settings, key_of=key_of).run()
