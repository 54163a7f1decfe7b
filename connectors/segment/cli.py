"""``crm-stream connect segment``: options, serving until a stop."""

from __future__ import annotations

import argparse
import asyncio
import logging

from connectors.runtime.kafka import ensure_topics
from connectors.runtime.stop import PROCESS_STOP
from connectors.segment.settings import CONNECTOR, VENDOR, SegmentSettings
from connectors.segment.source import SegmentReceiver
from crmstream import metrics
from crmstream.settings import Settings, parse_duration

log = logging.getLogger("connectors.segment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Non-secret options only: the shared secret comes from the environment or a file."""
    parser.add_argument("--host", default=None, help="listen address (CRM_SEGMENT_HOST)")
    parser.add_argument("--port", type=int, default=None, help="listen port (CRM_SEGMENT_PORT)")
    parser.add_argument("--path", default=None, help="webhook path (CRM_SEGMENT_PATH)")
    parser.add_argument(
        "--max-body-bytes", type=int, default=None, help="body limit (CRM_SEGMENT_MAX_BODY_BYTES)"
    )
    parser.add_argument(
        "--ack-timeout",
        type=parse_duration,
        default=None,
        help="Kafka ack wait before 503 (CRM_SEGMENT_ACK_TIMEOUT)",
    )
    parser.add_argument("--app-id", default=None, help="app id header (CRM_SEGMENT_APP_ID)")


def config_from_args(args: argparse.Namespace) -> SegmentSettings:
    return SegmentSettings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        path=getattr(args, "path", None),
        max_body_bytes=getattr(args, "max_body_bytes", None),
        ack_timeout_s=getattr(args, "ack_timeout", None),
        app_id=getattr(args, "app_id", None),
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT: then stop accepting, wait for the acknowledgements of the
    requests in flight (each still gets its answer), flush and exit 0."""
    config = config_from_args(args)
    if not config.shared_secret:
        log.warning(
            "CRM_SEGMENT_SHARED_SECRET is not set: unsigned webhook posts are accepted",
            extra={"connector": CONNECTOR},
        )
    ensure_topics(settings, VENDOR)
    receiver = SegmentReceiver(config, settings)
    metrics.serve(settings.metrics_port, receiver.health)
    asyncio.run(_serve_until_signal(receiver))
    return 0


async def _serve_until_signal(receiver: SegmentReceiver) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    PROCESS_STOP.on_stop(lambda: loop.call_soon_threadsafe(stop.set))
    url = await receiver.start()
    log.info("segment receiver listening on %s", url, extra={"connector": CONNECTOR})
    try:
        await stop.wait()
    finally:
        await receiver.stop()
        log.info("segment receiver stopped", extra={"connector": CONNECTOR})
