"""``crm-stream demo``: the whole pipeline on one machine, on bundled sample feeds.

Starts the embedded Tansu broker (unless ``--bootstrap-servers`` names another), creates the
topics, runs every vendor's connector on its bundled sample feed (files laid out like the
vendor's bucket, webhook requests, the Airship replay server), runs the Faust worker as a child
process, and shows a live per-campaign stats table (``rich``) until Ctrl-C; the workers serve
the query API and the web view, whose URL it prints (``--api-port``, a free port by default).
With ``--once`` it waits until the worker has accounted for every raw record, writes a JSON
summary and exits.

Both processes serve Prometheus metrics, as they do when deployed: the worker its own, the demo
process those of the connectors it runs (``--worker-metrics-port``, ``--metrics-port``; a free
port each by default).

The demo uses the Tansu dev profile (``config/tansu-dev.env``): settings that only work around
the embedded broker. A variable set in the environment wins over the profile.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from connectors.runtime.kafka import RawPublisher
from crmdemo.conversions import NAME as CONVERSION_NAME
from crmdemo.conversions import conversions, publish_conversions
from crmdemo.generators import GENERATORS
from crmdemo.samples import SampleSet, campaigns
from crmstream import metrics
from crmstream.broker import EmbeddedBroker, free_port
from crmstream.errors import BrokerError, ConfigError, CrmStreamError, KafkaUnreachable
from crmstream.kafka import consumer_config, quiet_librdkafka, wait_for_kafka
from crmstream.resources import tansu_dev_profile
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.stopping import start_command
from crmstream.topics import VENDORS, create_topics
from processors.normalize import EVENT_IDS
from processors.uniques import Union, estimate

# The event types of the terminal table: the funnel, and what ends it.
TABLE_TYPES = ("SEND", "DELIVERY", "OPEN", "CLICK", "BOUNCE", "UNSUBSCRIBE")


def demo_environ(bootstrap: str, metrics_port: int, workdir: Path) -> dict[str, str]:
    """The demo's CRM_* variables: Tansu profile, then demo defaults, then the user's env."""
    env = tansu_dev_profile()
    env.update(
        {
            "CRM_TOPIC_PREFIX": "demo.",
            "CRM_PARTITIONS": "4",
            "CRM_DATA_DIR": str(workdir),
            "CRM_APP_ID": "crm-stream-demo",
            # Sample events may be older than the production default; keep their windows open.
            "CRM_STATS_RETENTION": "3650d",
            # Conversions attributed to the campaigns (crmdemo/conversions.py); the sample
            # events' times may be old, so the totals are kept as long as the stats.
            "CRM_ATTRIBUTION": "true",
            "CRM_ATTRIBUTION_RETENTION": "3650d",
        }
    )
    env.update({k: v for k, v in os.environ.items() if k.startswith("CRM_")})
    env["CRM_BOOTSTRAP_SERVERS"] = bootstrap
    env["CRM_METRICS_PORT"] = str(metrics_port)
    return env


def generate_samples(seed: int, total: int) -> dict[str, SampleSet]:
    rng = random.Random(seed)
    shared = campaigns(rng)
    per_vendor = max(1, total // len(VENDORS))
    return {
        vendor: GENERATORS[vendor](random.Random(rng.random()), per_vendor, shared)
        for vendor in VENDORS
    }


@dataclass
class FeedResult:
    """What a connector did with one vendor's sample feed."""

    published: int
    refused: dict[str, int] = field(default_factory=dict)  # refused at the source, by reason
    how: str = ""
    control_lines: int = 0  # stream-control lines a connector does not publish (OFFSET_UPDATE)


def publish_samples(settings: Settings, samples: dict[str, SampleSet]) -> dict[str, int]:
    """Publish every sample record straight to its raw topic, as a connector would (tests)."""
    published: dict[str, int] = {}
    for vendor, sample in samples.items():
        publisher = RawPublisher(settings, vendor, app_id=f"demo-{vendor}")
        for index, (key, value) in enumerate(sample.records):
            publisher.publish(key, value, source=f"sample:{vendor}#{index}", fmt="json")
        publisher.flush()
        published[vendor] = len(sample.records)
    return published


def _file_feed(
    settings: Settings, connector: str, vendor: str, sample: SampleSet, root: Path, seed: int
) -> FeedResult:
    """Lay the samples out the way the vendor lays out its bucket; run the file connector."""
    from connectors.objectstore.cli import run_feed
    from crmdemo.samplefeeds import write_sample_feed

    folder = root / connector
    files = write_sample_feed(connector, sample, folder, random.Random(seed))
    stats = run_feed(
        connector,
        settings,
        folder.resolve().as_uri(),
        key_of=EVENT_IDS[vendor],
        app_id=f"demo-{vendor}",
    )
    return FeedResult(stats.records, how=f"{len(files)} files via `connect {connector}`")


def _pinpoint_feeds(settings: Settings, sample: SampleSet, root: Path) -> FeedResult:
    """Pinpoint's two delivery paths: half the samples as Firehose files, half on Kinesis."""
    from crmdemo.feeds import kinesis_feed

    half = len(sample.records) // 2
    files = SampleSet(sample.vendor, sample.records[:half])
    firehose = _file_feed(settings, "pinpoint-firehose", "pinpoint", files, root, 3)
    values = [value for _key, value in sample.records[half:]]
    kinesis = kinesis_feed(settings, values, EVENT_IDS["pinpoint"])
    return FeedResult(
        firehose.published + kinesis.records,
        how=f"{firehose.how}, {kinesis.records} on Kinesis via `connect pinpoint-kinesis`",
    )


def _segment_feed(settings: Settings, sample: SampleSet) -> FeedResult:
    """POST the samples, signed, to the Segment receiver, one request each."""
    from crmdemo.feeds import segment_feed

    statuses = segment_feed(settings, [value for _key, value in sample.records])
    refused = {f"http_{code}": n for code, n in statuses.items() if code != 200}
    return FeedResult(statuses.get(200, 0), refused, "signed webhook requests")


# Warnings the sample feeds cause on purpose, by logger: the connectors' handling of a bad
# webhook body and of a stream that stalls and is cut is part of what the demo shows.
DELIBERATE_FAULTS = {
    "connectors.segment": ("answered 400",),
    "connectors.airship": (
        "nothing received for",
        "the stream was cut",
        "the server closed the stream",
    ),
}
DELIBERATE_HINT = "(on purpose: a fault of the demo's sample feed)"


class DeliberateFaults(logging.Filter):
    """Appends :data:`DELIBERATE_HINT` to the warnings of :data:`DELIBERATE_FAULTS`, so that a
    user does not take the demo's own faults for trouble."""

    def filter(self, record: logging.LogRecord) -> bool:
        hints = DELIBERATE_FAULTS.get(record.name, ())
        message = record.getMessage()
        if any(hint in message for hint in hints) and DELIBERATE_HINT not in message:
            record.msg = f"{message} {DELIBERATE_HINT}"
            record.args = ()
        return True


def run_feeds(
    settings: Settings, samples: dict[str, SampleSet], root: Path
) -> dict[str, FeedResult]:
    """Every vendor's samples through its connector, the way production data arrives."""
    for name in DELIBERATE_FAULTS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DeliberateFaults) for f in logger.filters):
            logger.addFilter(DeliberateFaults())
    bad_bodies = samples["segment"].expected_rejects.get("invalid_json", 0)
    print(
        f"the sample feeds misbehave on purpose: {bad_bodies} Segment requests whose body is not "
        "JSON (the receiver answers 400), an Airship stream that goes silent once and is cut "
        "once (the connector reconnects); their warnings say so",
        flush=True,
    )
    # One INFO line per file or request would scroll the demo's own output away; warnings and
    # errors still show. CRM_LOG_LEVEL=DEBUG or INFO below WARNING is left as the user set it.
    if logging.getLogger().level == logging.INFO:
        logging.getLogger().setLevel(logging.WARNING)
        # werkzeug (moto's Kinesis server) sets its own logger to INFO.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    results = {
        "leanplum": _file_feed(settings, "leanplum", "leanplum", samples["leanplum"], root, 1),
        "flarelane": _file_feed(settings, "flarelane", "flarelane", samples["flarelane"], root, 2),
        "pinpoint": _pinpoint_feeds(settings, samples["pinpoint"], root),
        "segment": _segment_feed(settings, samples["segment"]),
    }
    results["airship"] = _airship_feed(settings, samples["airship"], root)
    return results


def _airship_feed(settings: Settings, sample: SampleSet, root: Path) -> FeedResult:
    """Serve the samples with the RTDS replay server and stream them with the connector.

    The server misbehaves as RTDS does now and then: it drops the connection once mid-stream and
    goes silent once (the connector's idle timeout, shortened here, reconnects). The connector
    resumes from its checkpoint each time, so nothing is lost or published twice; its metrics
    count both reconnects and the idle timeout."""
    import asyncio

    from connectors.airship.settings import AirshipSettings
    from connectors.airship.source import AirshipConnector
    from crmdemo.airship_replay import ReplayOptions, ReplayThread
    from crmstream.settings import Secret

    root.mkdir(parents=True, exist_ok=True)
    path = root / "airship-rtds.ndjson"
    path.write_bytes(b"\n".join(value for _key, value in sample.records) + b"\n")
    third = max(1, len(sample.records) // 3)
    options = ReplayOptions(
        path=path, keepalive_s=0.5, stall_after=third, stall_s=1.5, disconnect_after=2 * third
    )
    server = ReplayThread(options).start()
    try:
        config = AirshipSettings(
            app_key="demo-airship",
            token=Secret("demo-token"),
            url=server.url,
            start="EARLIEST",
            idle_timeout_s=1.0,
            backoff_min_s=0.1,
            stop_after_idle_s=3.0,
            # Blank keep-alives, not OFFSET_UPDATE ones: the OFFSET_UPDATE lines the connector
            # reads (and does not publish) are then exactly the sample's own, which the
            # summary's balance counts (control_lines_not_published).
            enable_offset_updates=False,
        )
        stats = asyncio.run(AirshipConnector(config, settings).run())
    finally:
        server.stop()
    return FeedResult(
        stats.records,
        how=(
            f"RTDS stream from `airship-replay`, 307 + cookie, keep-alives, "
            f"{stats.reconnects} reconnects ({stats.idle_timeouts} after an idle timeout)"
        ),
        control_lines=stats.offset_updates,
    )


# --- the worker's own account, read from its metrics endpoint -------------------------------


@dataclass
class VendorAccount:
    raw_in: int = 0
    canonical_out: int = 0
    duplicates: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @property
    def accounted(self) -> int:
        return self.canonical_out + self.duplicates + sum(self.dead_letters.values()) + self.skipped


def scrape_all(urls: Iterable[str]) -> dict[str, VendorAccount]:
    """The accounts of several workers of one group, added up."""
    total = {v: VendorAccount() for v in VENDORS}
    for url in urls:
        for vendor, account in scrape(url).items():
            mine = total[vendor]
            mine.raw_in += account.raw_in
            mine.canonical_out += account.canonical_out
            mine.duplicates += account.duplicates
            mine.skipped += account.skipped
            for reason, n in account.dead_letters.items():
                mine.dead_letters[reason] = mine.dead_letters.get(reason, 0) + n
    return total


def scrape(url: str) -> dict[str, VendorAccount]:
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    accounts: dict[str, VendorAccount] = {v: VendorAccount() for v in VENDORS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            vendor = sample.labels.get("vendor")
            if vendor not in accounts:
                continue
            acc = accounts[vendor]
            value = int(sample.value)
            if sample.name == "crm_worker_records_in_total":
                acc.raw_in += value
            elif sample.name == "crm_worker_events_out_total":
                acc.canonical_out += value
            elif sample.name == "crm_worker_duplicates_total":
                acc.duplicates += value
            elif sample.name == "crm_worker_dead_letters_total":
                reason = sample.labels["reason"]
                acc.dead_letters[reason] = acc.dead_letters.get(reason, 0) + value
            elif sample.name == "crm_worker_skipped_total":
                acc.skipped += value
    return accounts


# --- live campaign stats -------------------------------------------------------------------


@dataclass
class CampaignRow:
    """One campaign of the demo's table."""

    key: tuple[str, str, str]  # vendor, app id, campaign id
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    unique_opens: int = 0
    named: tuple[int, str] = (-1, "")


NO_CAMPAIGN = "(no campaign)"
"""The campaign cell of the events that carry no campaign id (the web view says the same)."""


class StatsView:
    """The latest upsert per campaign window, read from the ``campaign-stats`` topic."""

    def __init__(self, settings: Settings) -> None:
        self.serde = AvroSerde(settings)
        self.topic = settings.topic("campaign-stats")
        self.latest: dict[bytes, dict[str, Any]] = {}
        self.consumer = Consumer(consumer_config(settings, group_id="crm-demo-stats-view"))
        meta = self.consumer.list_topics(self.topic, timeout=10)
        parts = meta.topics[self.topic].partitions
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in parts])

    def poll(self, budget_s: float = 0.5) -> None:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            if msg.value() is None:  # the window expired (CRM_STATS_RETENTION): a tombstone
                self.latest.pop(msg.key() or b"", None)
                continue
            _, record = self.serde.decode(msg.value() or b"", self.topic)
            self.latest[msg.key() or b""] = record

    def campaigns(self) -> set[tuple[str, str, str]]:
        return {
            (r["vendor"], r["app_id"] or "", r["campaign_id"] or "") for r in self.latest.values()
        }

    def totals(self, window: str) -> list[CampaignRow]:
        """Per campaign, event-type counts summed over its windows of one size, and its unique
        openers: the union of the windows' OPEN sketches (as any consumer of ``campaign-stats``
        can merge them), never a sum of estimates."""
        acc: dict[tuple[str, str, str], CampaignRow] = {}
        opens: dict[tuple[str, str, str], Union] = {}
        for r in self.latest.values():
            if r["window"] != window:
                continue
            key = (r["vendor"], r["app_id"] or "", r["campaign_id"] or "")
            row = acc.get(key)
            if row is None:
                row = acc[key] = CampaignRow(key)
            if r.get("campaign_name") and (r["window_start"], r["campaign_name"]) > row.named:
                row.named = (r["window_start"], r["campaign_name"])
            for t, n in r["event_type_counts"].items():
                row.counts[t] = row.counts.get(t, 0) + n
            row.total += r["total"]
            sketch = (r.get("event_type_sketches") or {}).get("OPEN")
            if sketch:
                opens.setdefault(key, Union()).add(sketch)
        for key, union in opens.items():
            image = union.image()
            acc[key].unique_opens = estimate(image) if image else 0
        return sorted(acc.values(), key=lambda row: (-row.total, row.key))

    def close(self) -> None:
        self.consumer.close()


def render(
    accounts: dict[str, VendorAccount],
    view: StatsView,
    window: str,
    limit: int,
    web_url: str = "",
    *,
    once: bool = False,
) -> Group:
    """The demo's screen: the vendors' accounting and the busiest campaigns, as ``rich``
    tables (full headers; long ids and names fold onto a second line, never cut). ``once``:
    the final figures of ``--once``, which neither goes on nor keeps the page up."""
    vendors = Table(title="records by vendor", title_justify="left")
    vendors.add_column("vendor")
    for name in ("raw in", "events", "duplicates", "dead letters", "skipped"):
        vendors.add_column(name, justify="right", no_wrap=True)
    for vendor, acc in accounts.items():
        vendors.add_row(
            vendor,
            str(acc.raw_in),
            str(acc.canonical_out),
            str(acc.duplicates),
            str(sum(acc.dead_letters.values())),
            str(acc.skipped),
        )
    rows = view.totals(window)
    campaigns = Table(
        title=f"campaigns by events ({window} windows summed), top {limit} of {len(rows)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,  # no vertical rules, collapsed padding: it fits in 120 columns
        collapse_padding=True,
        pad_edge=False,
    )
    # Headers are never cut (min_width); ids and names fold onto more lines when narrow.
    campaigns.add_column("vendor", no_wrap=True, min_width=9)
    campaigns.add_column("app", overflow="fold", min_width=8)
    campaigns.add_column("campaign", overflow="fold", min_width=12)
    campaigns.add_column("name", overflow="fold", min_width=10)
    # "other": the events of every type not shown (e.g. SEND_REQUESTED, OTHER), so that the
    # event-type columns of a row add up to its total ("unique OPEN" counts recipients).
    numbers = ["total", *TABLE_TYPES[:3], "unique OPEN", *TABLE_TYPES[3:], "other"]
    for header in numbers:
        campaigns.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for row in rows[:limit]:
        vendor, app, campaign = row.key
        # Events that carry no campaign id (app opens, sends outside a campaign) are a row of
        # their own per vendor and app, named for what they are rather than left blank.
        cells = [vendor, app, campaign or NO_CAMPAIGN, row.named[1], str(row.total)]
        for t in TABLE_TYPES:
            cells.append(str(row.counts.get(t, 0)))
            if t == "OPEN":
                cells.append(str(row.unique_opens))
        cells.append(str(row.total - sum(row.counts.get(t, 0) for t in TABLE_TYPES)))
        campaigns.add_row(*cells)
    footer = Text(f"campaigns with stats: {len(view.campaigns())}")
    title = (
        "crm-stream demo --once: per-campaign stats at the end of the run"
        if once
        else "crm-stream demo: live per-campaign stats (Ctrl-C stops)"
    )
    parts: list[Any] = [Text(title, style="bold"), vendors, campaigns, footer]
    if web_url and not once:
        parts.append(Text(f"web view: {web_url}"))
    return Group(*parts)


# The file that marks a folder as the demo's own: only such a folder is emptied.
WORKDIR_MARKER = ".crm-stream-demo"


def prepare_workdir(workdir: Path) -> Path:
    """An empty ``workdir`` marked as the demo's, made or emptied for this run.

    Tansu keeps nothing across restarts, so neither may the worker's local state: a folder an
    earlier demo left (it holds :data:`WORKDIR_MARKER`) is emptied. Any other folder that holds
    something is refused, never emptied: it may be the user's."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError("--workdir", f"{workdir} exists and is not a folder")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / WORKDIR_MARKER).is_file():
            raise ConfigError(
                "--workdir",
                f"{workdir} is not empty and no demo made it (it has no {WORKDIR_MARKER} file); "
                "the demo empties its folder first, so name a new or empty one",
            )
        import shutil

        for child in workdir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / WORKDIR_MARKER).write_text(
        "Made by `crm-stream demo`: its logs, sample feeds and worker state. The next demo run "
        "with this --workdir empties this folder.\n"
    )
    return workdir


@contextlib.contextmanager
def broker_for(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    if args.bootstrap_servers:
        yield args.bootstrap_servers
        return
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        yield broker.bootstrap_servers


def wait_ready(
    workers: list[subprocess.Popen[bytes]], ports: list[int], steady_s: float = 3.0
) -> None:
    """Until every worker answers /readyz with 200 for ``steady_s`` in a row: the group is
    formed and stable before records arrive, so no rebalance makes a worker process records
    another one already did (harmless to the outputs, but the demo's counts are per process)."""
    deadline = time.monotonic() + 120
    steady_since: float | None = None
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.poll() is not None:
                raise CrmStreamError(f"a worker exited with code {worker.returncode}")
        ready = True
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                    pass
            except OSError:
                ready = False
        if not ready:
            steady_since = None
        elif steady_since is None:
            steady_since = time.monotonic()
        elif time.monotonic() - steady_since >= steady_s:
            return
        time.sleep(0.5)
    raise BrokerError("the workers did not become ready in 120 s")


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    full_env.update(env)
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    return start_command(
        [sys.executable, "-m", "crmcli", "worker"],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    # Relative to the current directory (`make demo`: the checkout's var/demo), never to the
    # install: an installed package's directory may be read-only.
    workdir = prepare_workdir(Path(args.workdir).resolve())
    # The connectors' producers outlive their feeds: without this each printed librdkafka's
    # "Connection refused" when the broker stopped at the end.
    quiet_librdkafka()
    with broker_for(args, workdir) as bootstrap:
        metrics_port = args.worker_metrics_port or free_port()
        connector_metrics_port = args.metrics_port or free_port()
        # The connectors run in this process: their metrics are served from here, bound now
        # rather than after the workers started (seconds in which another process could take
        # the port: CI saw "Address already in use").
        metrics.serve(connector_metrics_port)
        env = demo_environ(bootstrap, metrics_port, workdir)
        ports = [metrics_port] + [free_port() for _ in range(args.workers - 1)]
        api_ports = [getattr(args, "api_port", 0) or free_port()]
        api_ports += [free_port() for _ in range(args.workers - 1)]
        settings = Settings.from_env(env)
        if args.bootstrap_servers:
            # Someone else's broker: one line and exit 69 if it does not answer (CRM_KAFKA_WAIT).
            try:
                wait_for_kafka(settings)
            except KafkaUnreachable as exc:
                message = str(exc).replace("(CRM_BOOTSTRAP_SERVERS)", "(--bootstrap-servers)")
                raise KafkaUnreachable(message) from None
        from processors.app import changelog_specs

        create_topics(settings, extra=changelog_specs(settings))
        print(f"broker {bootstrap}; topics under '{settings.topic_prefix}'", flush=True)
        samples = generate_samples(args.seed, args.events)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for index, port in enumerate(ports):
                api = f"http://127.0.0.1:{api_ports[index]}"
                # The query API; advertised to the group on loopback (the workers share a host).
                worker_env = dict(
                    env,
                    CRM_METRICS_PORT=str(port),
                    CRM_API_PORT=str(api_ports[index]),
                    CRM_API_URL=api,
                )
                if args.workers > 1:
                    # One group; each worker its own state, as the Helm StatefulSet runs them.
                    worker_env["CRM_DATA_DIR"] = str(workdir / f"worker-{index}")
                name = "worker.log" if args.workers == 1 else f"worker-{index}.log"
                workers.append(start_worker(worker_env, workdir / name))
                print(f"worker metrics on http://127.0.0.1:{port}/metrics", flush=True)
                if not args.once:
                    print(f"web view and query API on {api}/", flush=True)
                # One at a time: two workers creating the same changelog topics at the same
                # instant hung one of them for minutes on the embedded broker (Tansu).
                wait_ready(workers, ports[: index + 1])
            print(
                f"connector metrics on http://127.0.0.1:{connector_metrics_port}/metrics",
                flush=True,
            )
            feeds = run_feeds(settings, samples, workdir / "feeds")
            for vendor, feed in feeds.items():
                refused = f", refused at the source {feed.refused}" if feed.refused else ""
                print(f"{vendor:<10} {feed.published:>6} raw records ({feed.how}){refused}")
            sys.stdout.flush()
            web_url = f"http://127.0.0.1:{api_ports[0]}/"
            if not args.once:
                print(f"web view: {web_url} (any worker's API port serves it)", flush=True)
            return follow(args, settings, samples, feeds, workers, ports, web_url)
        finally:
            for worker in workers:
                stop_worker(worker)


def follow(
    args: argparse.Namespace,
    settings: Settings,
    samples: dict[str, SampleSet],
    feeds: dict[str, FeedResult],
    workers: list[subprocess.Popen[bytes]],
    ports: list[int],
    web_url: str = "",
) -> int:
    published = {vendor: feed.published for vendor, feed in feeds.items()}
    # Once every raw record is accounted for (the touches are in), the customer's conversions.
    converted: int | None = None
    view = StatsView(settings)
    deadline = time.monotonic() + 300
    accounts: dict[str, VendorAccount] = {}
    console = Console()
    live: Live | None = None
    if not args.once:
        live = Live(render(accounts, view, "1h", 20, web_url), console=console, auto_refresh=False)
        live.start()
    try:
        while True:
            for worker in workers:
                if worker.poll() is not None:
                    raise CrmStreamError(
                        f"a worker exited with code {worker.returncode}; "
                        f"see {args.workdir}/worker*.log"
                    )
            with contextlib.suppress(OSError):
                accounts = scrape_all(f"http://127.0.0.1:{port}/metrics" for port in ports)
            view.poll()
            done = bool(accounts) and all(
                accounts[v].raw_in >= published[v] and accounts[v].accounted == accounts[v].raw_in
                for v in published
            )
            if done and converted is None and settings.attribution:
                converted = publish_conversions(settings, conversions(samples, args.seed))
                if live is None:
                    print(f"conversions: {converted} published to {settings.topic('conversions')}")
            if live is not None:
                live.update(render(accounts, view, "1h", 20, web_url), refresh=True)
                time.sleep(1.0)
                continue
            if done:
                # Let the last stats upserts arrive.
                view.poll(2.0)
                summary = build_summary(accounts, samples, feeds, view)
                if converted:
                    summary["attribution"] = wait_for_attribution(web_url, converted)
                    for row in summary["attribution"]["campaigns"][:5]:
                        print(
                            f"attributed: {row['vendor']:<10} {row['campaign_id']:<24} "
                            f"{row['conversions']:>4} conversions, "
                            f"{row['control_conversions']} in its control group"
                        )
                # Wide enough for every header when the output is not a terminal (a log).
                wide = console if console.is_terminal else Console(width=240)
                wide.print(render(accounts, view, "1h", 10, once=True))
                if args.summary_json:
                    path = Path(args.summary_json)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
                    print(f"summary written to {path}")
                for vendor, row in summary["vendors"].items():
                    for problem in row["problems"]:
                        print(f"not balanced: {vendor}: {problem}", file=sys.stderr)
                print(
                    "the web view lives as long as the demo: `make demo` (no --once) keeps it up",
                    flush=True,
                )
                return 0 if summary["balanced"] else 1
            if time.monotonic() > deadline:
                raise BrokerError("the worker did not account for every raw record in 300 s")
    except KeyboardInterrupt:
        return 0
    finally:
        if live is not None:
            live.stop()
        view.close()


def wait_for_attribution(web_url: str, converted: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """``GET /api/attribution`` of the demo's conversions over every hour held, once it credits
    the ``converted`` the demo published (each follows a touch of its user within the window),
    or what it says after ``timeout_s``. (The samples' own vendor conversions, Leanplum's, have
    other names.)"""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {"campaigns": []}
    while time.monotonic() < deadline:
        try:
            url = f"{web_url}api/attribution?from=0&name={urllib.parse.quote(CONVERSION_NAME)}"
            with urllib.request.urlopen(url, timeout=10) as r:
                body = orjson.loads(r.read())
        except OSError:
            body = {"campaigns": []}
        if body.get("conversions", 0) + body.get("control_conversions", 0) >= converted:
            break
        time.sleep(0.5)
    return {
        "published": converted,
        "conversions": body.get("conversions", 0),
        "control_conversions": body.get("control_conversions", 0),
        "campaigns": body.get("campaigns", []),
    }


def balance_problems(row: dict[str, Any]) -> list[str]:
    """What does not add up in one vendor's summary row; empty when it balances.

    Every sample record is published to the raw topic, refused by the connector at the source
    (Segment answers 400 to a body that is not JSON: one of the sample's ``invalid_json``
    records), or a stream-control line the connector reads and does not publish (Airship
    ``OFFSET_UPDATE``: one of the sample's expected skips, skipped before the worker). The
    worker accounts for every raw record it read as exactly one outcome, and the outcomes are
    the sample's."""
    expected = row["expected"]
    refused = sum(row["refused_by_connector"].values())
    control = row["control_lines_not_published"]
    dead = sum(row["dead_letters"].values())
    accounted = row["canonical_out"] + row["duplicates"] + dead + row["skipped"]
    checks = [
        (accounted == row["raw_in"], f"outcomes {accounted} != raw_in {row['raw_in']}"),
        (
            row["raw_in"] == row["published"],
            f"raw_in {row['raw_in']} != published {row['published']}",
        ),
        (
            row["published"] + refused + control == expected["records"],
            f"published {row['published']} + refused {refused} + control lines {control} "
            f"!= the sample's {expected['records']} records",
        ),
        (
            row["skipped"] + control == expected["skipped"],
            f"skipped {row['skipped']} + control lines {control} "
            f"!= the sample's {expected['skipped']} skips",
        ),
        (
            row["canonical_out"] == expected["canonical_out"],
            f"canonical_out {row['canonical_out']} != {expected['canonical_out']}",
        ),
        (
            row["duplicates"] == expected["duplicates"],
            f"duplicates {row['duplicates']} != {expected['duplicates']}",
        ),
        (
            dead + refused == sum(expected["dead_letters"].values()),
            f"dead letters {dead} + refused {refused} "
            f"!= the sample's {sum(expected['dead_letters'].values())} malformed records",
        ),
    ]
    problems = [problem for ok, problem in checks if not ok]
    for reason, n in row["dead_letters"].items():
        if n > expected["dead_letters"].get(reason, 0):
            problems.append(f"{n} dead letters {reason}, the sample has fewer")
    return problems


def build_summary(
    accounts: dict[str, VendorAccount],
    samples: dict[str, SampleSet],
    feeds: dict[str, FeedResult],
    view: StatsView,
) -> dict[str, Any]:
    """The ``--summary-json`` document; README, "The demo's summary", describes each field."""
    vendors: dict[str, Any] = {}
    for vendor, acc in accounts.items():
        sample = samples[vendor]
        feed = feeds[vendor]
        row: dict[str, Any] = {
            "raw_in": acc.raw_in,
            "published": feed.published,
            "refused_by_connector": dict(feed.refused),
            "control_lines_not_published": feed.control_lines,
            "canonical_out": acc.canonical_out,
            "duplicates": acc.duplicates,
            "dead_letters": dict(sorted(acc.dead_letters.items())),
            "skipped": acc.skipped,
            "expected": {
                "records": len(sample.records),
                "canonical_out": sample.expected_events,
                "duplicates": sample.expected_duplicates,
                "dead_letters": dict(sorted(sample.expected_rejects.items())),
                "skipped": sample.expected_skips,
            },
        }
        row["problems"] = balance_problems(row)
        row["balanced"] = not row["problems"]
        vendors[vendor] = row
    return {
        "vendors": vendors,
        "campaigns_with_stats": len(view.campaigns()),
        "balanced": all(v["balanced"] for v in vendors.values()),
    }
