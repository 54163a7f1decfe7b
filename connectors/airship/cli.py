"""``crm-stream connect airship``: options, signals, the summary line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from connectors.airship.connector import CONNECTOR, VENDOR, AirshipConnector, RunStats
from connectors.airship.settings import AirshipSettings
from connectors.base import KafkaWatch, connector_health, ensure_topics
from crmstream import metrics
from crmstream.settings import Settings

log = logging.getLogger("connectors.airship")


_OPTIONS: list[tuple[str, str, str]] = [
    # (option, field, help)
    ("--url", "url", "US, EU or a base URL [CRM_AIRSHIP_URL]"),
    ("--app-key", "app_key", "app key, sent as X-UA-Appkey [CRM_AIRSHIP_APP_KEY]"),
    ("--stream", "stream", "events or compliance [CRM_AIRSHIP_STREAM]"),
    ("--start", "start", "EARLIEST or LATEST when there is no checkpoint [CRM_AIRSHIP_START]"),
    ("--resume-offset", "resume_offset", "offset when there is no checkpoint"),
    ("--filters-file", "filters_file", "JSON file with the filters array [CRM_AIRSHIP_FILTERS]"),
    ("--subset-file", "subset_file", "JSON file with the subset object [CRM_AIRSHIP_SUBSET]"),
    ("--idle-timeout", "idle_timeout_s", "reconnect after this long without a byte (90s)"),
    ("--backoff-min", "backoff_min_s", "first reconnect delay (1s)"),
    ("--backoff-max", "backoff_max_s", "longest reconnect delay (60s)"),
    ("--not-found-retry", "not_found_retry_s", "delay after HTTP 404 (60s)"),
    ("--checkpoint-interval", "checkpoint_interval_s", "checkpoint every (1s)"),
    ("--stop-after-idle", "stop_after_idle_s", "exit after no event for this long (0: never)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options override CRM_AIRSHIP_* variables. Secrets are not options: CRM_AIRSHIP_TOKEN(_FILE)
    and CRM_AIRSHIP_MASTER_SECRET(_FILE) only, so they never show in a process list."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "environment (options above override them):\n" + "\n".join(
        f"  {var:<32} {doc}" for var, doc in AirshipSettings.describe()
    )
    for option, dest, help_text in _OPTIONS:
        metavar = "DURATION" if dest.endswith("_s") else option[2:].upper().replace("-", "_")
        parser.add_argument(
            option, dest=f"airship_{dest}", default=None, metavar=metavar, help=help_text
        )
    parser.add_argument(
        "--no-offset-updates",
        dest="airship_enable_offset_updates",
        action="store_const",
        const="false",
        default=None,
        help="ask for blank keep-alive lines instead of OFFSET_UPDATE events",
    )


def options_from_args(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        name.removeprefix("airship_"): value
        for name, value in vars(args).items()
        if name.startswith("airship_")
    }


async def _main(connector: AirshipConnector) -> RunStats:
    """SIGTERM or SIGINT: stop reading, settle (flush, checkpoint what Kafka acknowledged)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return await connector.run(stop)


def run(args: argparse.Namespace, settings: Settings) -> int:
    config = AirshipSettings.from_env(options=options_from_args(args))
    ensure_topics(settings, VENDOR)
    connector = AirshipConnector(config, settings)
    watch = KafkaWatch(lambda: connector.publisher).start()
    metrics.serve(settings.metrics_port, connector_health(watch))
    log.info(
        "streaming %s (%s) into %s",
        config.endpoint,
        config.checkpoint_key,
        settings.topic("raw.airship"),
        extra={"connector": CONNECTOR},
    )
    stats = asyncio.run(_main(connector))
    print(
        f"airship: {stats.records} records, {stats.bytes} bytes, {stats.reconnects} reconnects, "
        f"checkpoint {stats.checkpoint}",
        flush=True,
    )
    return 0
