"""The ``crm-stream`` command.

Each subcommand lives in the module that owns the behaviour; this file only declares the
arguments and imports the implementation when the command runs (so ``crm-stream normalize``
does not import Faust).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from crmstream.errors import ConfigError, CrmStreamError
from crmstream.settings import Settings

VENDOR_NAMES = ("leanplum", "pinpoint", "segment", "flarelane", "airship")


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for var, value, doc in settings.describe():
        print(f"{var:<34} {value:<24} {doc}")
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from crmstream.topics import create_topics, topic_specs

    if args.action == "list":
        for spec in topic_specs(settings):
            print(f"{settings.topic(spec.name):<32} {spec.doc}")
        return 0
    for name, state in sorted(create_topics(settings).items()):
        print(f"{state:<8} {name}")
    return 0


def _cmd_normalize(args: argparse.Namespace, settings: Settings) -> int:
    from processors.normalize.cli import run

    return run(args.vendor, args.file, app_id=args.app_id, include_pii=args.include_pii)


def _cmd_decode(args: argparse.Namespace, settings: Settings) -> int:
    from crmstream.decode import run

    return run(args, settings)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from processors.app import run_worker

    return run_worker(settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from crmstream.demo import run

    return run(args)


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from crmstream.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as broker:
        print(f"tansu listening on {broker.bootstrap_servers} (memory only; Ctrl-C stops)")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def _cmd_connect(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.registry import CONNECTORS

    return CONNECTORS[args.connector].run(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-stream",
        description="Kafka stream processor for CRM campaign events. Settings: CRM_* variables "
        "(see `crm-stream settings`).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("settings", help="print every CRM_* setting with its current value")
    p.set_defaults(func=_cmd_settings)

    p = sub.add_parser("topics", help="list or create crm-stream's topics (idempotent)")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser(
        "normalize",
        help="normalize raw vendor records, one per line, to canonical JSON lines",
    )
    p.add_argument("vendor", choices=VENDOR_NAMES)
    p.add_argument("file", nargs="?", default="-", help="input file (default: stdin)")
    p.add_argument("--app-id", default=None, help="app id for vendors whose payload has none")
    p.add_argument("--include-pii", action="store_true", help="copy PII into attributes")
    p.set_defaults(func=_cmd_normalize)

    p = sub.add_parser(
        "decode",
        help="print an output topic as JSON lines, whatever its encoding",
        description="Read TOPIC from the beginning (partitions assigned, nothing committed) and "
        "print one JSON object per record: {topic, partition, offset, timestamp, key, schema, "
        "value}. value is the Avro record (Avro single-object or Confluent wire format): enums "
        "as names, timestamps as epoch ms, null for a tombstone. Bytes (the key, DeadLetter.raw) "
        "are strings of code points U+0000-U+00FF, one per byte (Avro's JSON convention; "
        "s.encode('latin-1') gives the bytes back). An undecodable record prints error and "
        "bytes instead of value and makes the exit status 1.",
    )
    p.add_argument("topic", help="topic name, with or without the CRM_TOPIC_PREFIX")
    p.add_argument(
        "--from-beginning", action="store_true", default=True, help="always on (the default)"
    )
    p.add_argument("--max", type=int, default=0, help="stop after this many records (0: no limit)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="stop after this many seconds without a record (0: follow forever)",
    )
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("worker", help="run the Faust worker (normalize, dedupe, stats)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("demo", help="embedded broker + connectors on sample feeds + worker + stats")
    p.add_argument("--once", action="store_true", help="run to completion and exit")
    p.add_argument("--summary-json", default=None, help="write the run's summary here")
    p.add_argument("--seed", type=int, default=7, help="sample-data random seed")
    p.add_argument("--events", type=int, default=3000, help="sample events per run, about")
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this broker instead of starting the embedded one",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("broker", help="run the embedded Tansu broker in the foreground")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=_cmd_broker)

    from connectors.registry import CONNECTORS

    p = sub.add_parser("connect", help="run a source connector")
    conn = p.add_subparsers(dest="connector", required=True, metavar="CONNECTOR")
    for entry in CONNECTORS.values():
        cp = conn.add_parser(entry.name, help=entry.doc)
        entry.add_arguments(cp)
    p.set_defaults(func=_cmd_connect)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        from crmstream.logs import configure

        configure(settings)
        return int(args.func(args, settings) or 0)
    except ConfigError as exc:
        print(f"crm-stream: {exc}", file=sys.stderr)
        return 2
    except CrmStreamError as exc:
        print(f"crm-stream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
