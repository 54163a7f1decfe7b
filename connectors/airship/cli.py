"""``crm-stream connect airship``: options, signals, the summary line."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from confluent_kafka import KafkaException

from connectors.airship.settings import ENV_PREFIX, AirshipSettings, option_name
from connectors.airship.source import CONNECTOR, VENDOR, AirshipConnector
from connectors.runtime.kafka import ensure_topics
from connectors.runtime.stop import PROCESS_STOP
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.settings import Settings

log = logging.getLogger("connectors.airship")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options override CRM_AIRSHIP_* variables. Secrets are not options: CRM_AIRSHIP_TOKEN(_FILE)
    and CRM_AIRSHIP_MASTER_SECRET(_FILE) only, so they never show in a process list."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "environment (options above override them):\n" + "\n".join(
        f"  {var:<32} {doc}" for var, doc in AirshipSettings.describe()
    )
    # One option per setting, from the settings' own fields (name, variable, description).
    for f in fields(AirshipSettings):
        if f.metadata["secret"]:
            continue
        variable = ENV_PREFIX + f.metadata["env"]
        if f.type in (bool, "bool"):
            parser.add_argument(
                "--no-" + option_name(f).removeprefix("--enable-"),
                dest=f"airship_{f.name}",
                action="store_const",
                const="false",
                default=None,
                help=f"turn off: {f.metadata['doc']} [{variable}=false]",
            )
            continue
        if f.metadata.get("json", False):
            dest, metavar = f"airship_{f.name}_file", "FILE"
            help_text = f"file holding the {f.metadata['doc']} [{variable}(_FILE)]"
        else:
            dest = f"airship_{f.name}"
            metavar = "DURATION" if f.name.endswith("_s") else f.name.upper()
            help_text = f"{f.metadata['doc']} [{variable}]"
        parser.add_argument(
            option_name(f), dest=dest, default=None, metavar=metavar, help=help_text
        )


def options_from_args(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        name.removeprefix("airship_"): value
        for name, value in vars(args).items()
        if name.startswith("airship_")
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    config = AirshipSettings.from_env(options=options_from_args(args))
    ensure_topics(settings, VENDOR)
    connector = AirshipConnector(config, settings)
    _watch, health = connector.runner().health()
    metrics.serve(settings.metrics_port, health)
    log.info(
        "streaming %s (%s) into %s",
        config.endpoint,
        config.checkpoint_key,
        settings.topic("raw.airship"),
        extra={"connector": CONNECTOR},
    )
    # SIGTERM or SIGINT: stop reading, settle (flush, checkpoint what Kafka acknowledged).
    PROCESS_STOP.on_stop(connector.stop)
    try:
        stats = connector.run_blocking()
    except KafkaException as exc:  # connect-offsets unreadable at start: one line, no traceback
        raise BrokerError(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    print(
        f"airship: {stats.records} records, {stats.bytes} bytes, {stats.reconnects} reconnects, "
        f"checkpoint {stats.checkpoint}",
        flush=True,
    )
    return 0
