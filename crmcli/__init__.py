"""The ``crm-stream`` command.

Each subcommand lives in the module that owns the behaviour; this file only declares the
arguments and imports the implementation when the command runs (so ``crm-stream normalize``
does not import Faust).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _stop_before_start(code: int) -> Callable[[int, Any], None]:
    """A signal handler for the time before a process reads or writes anything: it exits at
    once with ``code``. ``os._exit`` skips the interpreter's teardown, which waits for
    librdkafka's threads (seconds while a broker's name does not resolve: a worker waiting for
    Kafka took 4-6 s to stop under load). Nothing is lost that a kill -9 would not lose, and the
    crash tests cover kill -9 at any moment."""

    def stop(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            # The signal may land while the main thread is inside this very stream's write (the
            # waiting warning): flush then raises instead of exiting, and the stop is lost.
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    return stop


def _stop_cleanly_until_started(given: list[str]) -> None:
    """SIGINT or SIGTERM before a long-running command has taken the signals over is a clean
    stop: nothing was read yet.

    * ``connect``: while a connector still imports (seconds on a busy machine, before
      connectors.runtime.stop takes the signals over). Without this Ctrl-C printed a
      KeyboardInterrupt traceback (issue 22 item 7).
    * ``worker``: while the worker still imports, waits for Kafka and starts (seconds, before
      Faust installs its own handlers). Without this it died of the signal (-15), which
      Kubernetes and the scale-out test take for a crash.
    """
    if given[:1] == ["connect"]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stop_before_start(0))
    elif given[:1] == ["worker"]:
        signal.signal(signal.SIGTERM, _stop_before_start(0))
        signal.signal(signal.SIGINT, _stop_before_start(130))
    else:
        return
    # Started by crmstream.stopping.start_command, the process has them blocked: one sent while
    # the interpreter itself started (before any of this ran) waited, and is handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


# Before this module's own imports (argparse, logging, the settings): on a loaded machine
# `python -m crmcli worker` spends hundreds of milliseconds in them, and a SIGTERM then killed
# the worker (-15). What no code of the process can guard is the interpreter's own start (site):
# a launcher that starts the command with the signals blocked (crmstream.stopping.start_command:
# the demo's, the tests') has a signal of that moment wait for these handlers. Only when
# this process is the command (``-m`` while Python imports the package to run it, or the
# ``crm-stream`` script); main() installs them too, for its own argv.
if os.path.basename(sys.argv[0]) in {"-m", "crm-stream"}:
    _stop_cleanly_until_started(sys.argv[1:])

import argparse  # noqa: E402
import logging  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import fields  # noqa: E402
from typing import NoReturn  # noqa: E402

from crmstream.errors import ConfigError, CrmStreamError  # noqa: E402
from crmstream.settings import ENV_PREFIX, MASK, Settings  # noqa: E402
from crmstream.vendors import VENDOR_NAMES  # noqa: E402


def _variables(cls: type[Any], prefix: str) -> list[tuple[str, str, str]]:
    """(variable, value set or default, description) of a connector's settings class, read
    without validating: the connector itself checks its values when it starts."""
    rows = []
    for f in fields(cls):
        var = prefix + f.metadata["env"]
        if f.metadata["secret"]:
            value = MASK if os.environ.get(var) or os.environ.get(var + "_FILE") else ""
        else:
            value = os.environ.get(var, "" if f.default is None else str(f.default))
        rows.append((var, value, f.metadata["doc"]))
    return rows


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.airship import AirshipSettings
    from connectors.airship.settings import ENV_PREFIX as AIRSHIP_PREFIX
    from connectors.pinpoint_kinesis import KinesisSettings
    from connectors.registry import CONNECTORS
    from connectors.segment import SegmentSettings
    from crmstream.broker import tansu_binary
    from crmstream.serde import schema_dir

    # Each connector's own variables, besides the shared Kafka ones above; the others take
    # options only (`crm-stream connect NAME --help`).
    own: dict[str, list[tuple[str, str, str]]] = {
        "segment": _variables(SegmentSettings, ENV_PREFIX),
        "pinpoint-kinesis": _variables(KinesisSettings, ENV_PREFIX),
        "airship": _variables(AirshipSettings, AIRSHIP_PREFIX),
    }
    try:
        tansu = str(tansu_binary())
    except CrmStreamError:
        tansu = ""
    rows = [
        *settings.describe(),
        ("CRM_SCHEMA_DIR", str(schema_dir()), "Avro schemas (.avsc); default: those installed"),
        ("CRM_TANSU_BIN", tansu, "Tansu binary of the embedded broker (demo, tests)"),
    ]
    for var, value, doc in rows:
        print(f"{var:<40} {value:<24} {doc}")
    for name in CONNECTORS:
        print(f"\n# crm-stream connect {name}")
        if name not in own:
            print(f"  options only: crm-stream connect {name} --help")
        for var, value, doc in own.get(name, []):
            print(f"{var:<40} {value:<24} {doc}")
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from crmstream.topics import create_topics, topic_specs

    if args.action == "list":
        for spec in topic_specs(settings):
            print(f"{settings.topic(spec.name):<32} {spec.doc}")
        return 0
    from crmstream.kafka import wait_for_kafka

    wait_for_kafka(settings)
    for name, state in sorted(create_topics(settings).items()):
        print(f"{state:<8} {name}")
    return 0


def _cmd_normalize(args: argparse.Namespace, settings: Settings) -> int:
    from processors.normalize.cli import run

    return run(args.vendor, args.file, app_id=args.app_id, include_pii=args.include_pii)


def _cmd_decode(args: argparse.Namespace, settings: Settings) -> int:
    from crmstream.decode import run

    return run(args, settings)


def _port_is_free(port: int, setting: str) -> None:
    """Refuse, in one line naming the setting, a port another process listens on: found later,
    by the worker's HTTP servers, it stopped Faust with a page of tracebacks."""
    if not port:
        return
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise ConfigError(setting, f"port {port} is taken ({exc.strerror})") from None


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from crmstream.kafka import wait_for_kafka

    _port_is_free(settings.metrics_port, "CRM_METRICS_PORT")
    _port_is_free(settings.api_port, "CRM_API_PORT")
    # Before anything else touches Kafka: one warning while it waits (CRM_KAFKA_WAIT), then one
    # line and exit code 69, instead of librdkafka's flood and a timeout's traceback.
    wait_for_kafka(settings)
    from processors.app import run_worker

    return run_worker(settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from crmdemo.demo import run

    return run(args)


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from crmstream.broker import EmbeddedBroker
    from crmstream.resources import tansu_dev_profile

    # SIGTERM (kill, a process manager) must stop the broker too, not orphan it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with EmbeddedBroker(port=args.port) as broker:
        print(f"tansu listening on {broker.bootstrap_servers} (memory only; Ctrl-C stops)")
        print("its clients need the Tansu dev profile (config/tansu-dev.env):")
        for var, value in tansu_dev_profile().items():
            print(f"  {var}={value}")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def _cmd_airship_replay(args: argparse.Namespace, settings: Settings) -> int:
    from crmdemo.airship_replay import run

    return run(args)


def _cmd_connect(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.registry import CONNECTORS
    from processors.normalize import EVENT_IDS

    entry = CONNECTORS[args.connector]
    return entry.run(args, settings, EVENT_IDS[entry.vendor])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line like every other crm-stream error (its usage
    block, several lines, stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        description="Normalize raw vendor records, one per line, to one JSON line each: the "
        'canonical event, {"reject": REASON, "detail": ...} or {"skip": REASON}. '
        "docs/events.md describes the canonical event, its enums, each vendor's mapping and "
        "the reasons.",
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
        "s.encode('latin-1') gives the bytes back). Every character outside printable ASCII is "
        "written as a \\uXXXX escape, so each record is one ASCII line. An undecodable record "
        "prints error and bytes instead of value and makes the exit status 1.",
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
    p.add_argument(
        "--events", type=_positive_int, default=3000, help="sample events per run, about"
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this broker instead of starting the embedded one",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="serve the connectors' metrics (they run in the demo process) here (0: a free port)",
    )
    p.add_argument(
        "--worker-metrics-port",
        type=_port,
        default=0,
        help="the worker's metrics port (0: a free port)",
    )
    p.add_argument(
        "--api-port",
        type=_port,
        default=0,
        help="the first worker's query API and web view port (0: a free port; the others get "
        "free ports too)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes in one consumer group (at most CRM_PARTITIONS, 4 in the demo)",
    )
    p.add_argument(
        "--workdir",
        default="var/demo",
        help="the demo's logs, sample feeds and worker state (default: %(default)s); a folder an "
        "earlier demo made is emptied first, any other folder must be new or empty",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("broker", help="run the embedded Tansu broker in the foreground")
    p.add_argument("--port", type=_port, default=9092)
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser(
        "airship-replay",
        help="serve an NDJSON file as Airship's RTDS API on loopback (tests, demo)",
    )
    p.add_argument("file", help="NDJSON file of Airship events, one a line")
    p.add_argument("--host", default="127.0.0.1", help="listen address (loopback)")
    p.add_argument("--port", type=_port, default=0, help="listen port (0: pick a free one)")
    p.add_argument("--app-key", default=None, help="required X-UA-Appkey (default: any)")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between two events")
    p.add_argument("--keepalive", type=float, default=1.0, help="keep-alive period when idle")
    p.add_argument("--keepalive-every", type=int, default=0, help="keep-alive every N events")
    p.add_argument("--redirect", default="first", help="307+cookie: first, every or never")
    p.add_argument("--stall-after", type=int, default=0, help="go silent once after N events")
    p.add_argument("--stall", type=float, default=0.0, help="seconds of silence")
    p.add_argument("--disconnect-after", type=int, default=0, help="drop once after N events")
    p.add_argument("--fail", default="", help="statuses for the first requests, e.g. 402,500")
    p.add_argument("--no-gzip", action="store_true", help="never gzip the stream")
    p.set_defaults(func=_cmd_airship_replay)

    from connectors.registry import CONNECTORS

    p = sub.add_parser("connect", help="run a source connector")
    conn = p.add_subparsers(dest="connector", required=True, metavar="CONNECTOR")
    for entry in CONNECTORS.values():
        cp = conn.add_parser(entry.name, help=entry.doc)
        entry.add_arguments(cp)
    p.set_defaults(func=_cmd_connect)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    # Installed before the parser, which imports every connector (half a second, more on a
    # loaded machine); already done at import time for the process's own command line.
    _stop_cleanly_until_started(given)
    args = build_parser().parse_args(given)
    try:
        settings = Settings.from_env()
        from crmstream.logs import configure

        configure(settings)
        return int(args.func(args, settings) or 0)
    except CrmStreamError as exc:
        # ConfigError 2, KafkaUnreachable 69, the others 1.
        print(f"crm-stream: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A file that is not there or not readable, a port already taken: the user's to fix,
        # said in one line. (A bug surfacing as OSError would lose its traceback here:
        # CRM_LOG_LEVEL=DEBUG logs it.)
        logging.getLogger("crmcli").debug("stopped by", exc_info=True)
        print(f"crm-stream: {_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _os_error(exc: OSError) -> str:
    """``No such file or directory: /nonexistent``, without ``[Errno 2]`` and the repr."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {os.fsdecode(exc.filename)}"
    return exc.strerror or str(exc)
