"""The worker end to end on a real broker: sample raw events of all five vendors in; exact counts
of canonical events, duplicates, dead letters and campaign stats out; then a restart with the
local RocksDB state removed, recovering the dedupe table from its changelog, and a replay of the
same raw events that must not let a single duplicate through."""

from __future__ import annotations

import datetime
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from crmdemo.demo import VendorAccount, publish_samples, scrape
from crmdemo.generators import GENERATORS
from crmdemo.samples import SampleSet, campaigns
from crmstream.broker import free_port
from crmstream.kafka import client_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.stopping import start_command
from crmstream.topics import VENDORS, create_topics
from processors.app import changelog_specs
from tests.kafka_helpers import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_VENDOR = 160


def _samples() -> dict[str, SampleSet]:

    rng = random.Random(20261125)
    shared = campaigns(rng, count=12)
    return {v: GENERATORS[v](random.Random(rng.random()), PER_VENDOR, shared) for v in VENDORS}


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{env['CRM_METRICS_PORT']}/metrics"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update(self.env)
        # With the stop signals blocked until the command installs its handlers: a SIGTERM at
        # any moment of the start is a clean stop, even during the interpreter's own start.
        self.proc = start_command(
            [sys.executable, "-m", "crmcli", "worker"],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_gauges(
        self, done: Callable[[dict[tuple[str, str], float]], bool], timeout: float = 40
    ) -> dict[tuple[str, str], float]:
        from prometheus_client.parser import text_string_to_metric_families

        deadline = time.monotonic() + timeout
        gauges: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                text = response.read().decode()
            gauges = {
                (s.name, s.labels.get("table") or s.labels.get("vendor", "")): s.value
                for family in text_string_to_metric_families(text)
                if family.type == "gauge"
                for s in family.samples
            }
            if done(gauges):
                return gauges
            time.sleep(1)
        pytest.fail(f"gauges not as expected in {timeout}s: {gauges}")

    def wait_accounts(
        self, done: Callable[[dict[str, VendorAccount]], bool], timeout: float = 180
    ) -> dict[str, VendorAccount]:
        deadline = time.monotonic() + timeout
        accounts: dict[str, VendorAccount] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"worker exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
                )
            try:
                accounts = scrape(self.url)
            except OSError:
                time.sleep(0.5)
                continue
            if done(accounts):
                return accounts
            time.sleep(0.5)
        self.dump_stacks()
        pytest.fail(
            f"worker did not finish in {timeout}s; last accounts {accounts}\n"
            f"{self.log.read_text()[-20000:]}"
        )

    def dump_stacks(self) -> None:
        """Ask the worker to log every thread's and task's stack (mode's SIGUSR1 handler)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)


@pytest.fixture
def worker_env(crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path) -> dict[str, str]:
    return crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
    )


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(worker_env, tmp_path / "worker.log")
    yield proc
    proc.stop()


def test_counts_stats_and_recovery_without_local_state(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    settings = Settings.from_env(worker_env)
    create_topics(settings, extra=changelog_specs(settings))
    samples = _samples()
    expected_events = sum(s.expected_events for s in samples.values())

    published = publish_samples(settings, samples)
    worker.start()
    accounts = worker.wait_accounts(
        lambda acc: all(acc[v].raw_in == published[v] == acc[v].accounted for v in VENDORS)
    )
    # The default CRM_EVENT_LOOP: these counts were reached on uvloop.
    assert "worker starting on the uvloop event loop" in worker.log.read_text()

    for vendor, sample in samples.items():
        acc = accounts[vendor]
        assert acc.canonical_out == sample.expected_events, vendor
        assert acc.duplicates == sample.expected_duplicates, vendor
        assert acc.dead_letters == {r: n for r, n in sample.expected_rejects.items() if n}, vendor
        assert acc.skipped == sample.expected_skips, vendor

    serde = AvroSerde(settings)
    events_topic = settings.topic("events")
    events = read_topic(settings, events_topic, until=lambda r: len(r) >= expected_events)
    decoded = [serde.decode(m.value() or b"", events_topic)[1] for m in events]
    ids = [r["event_id"] for r in decoded]
    assert len(ids) == expected_events
    assert len(set(ids)) == len(ids), "a duplicate reached the events topic"
    assert all(m.key() == r["event_id"].encode() for m, r in zip(events, decoded, strict=True))
    per_vendor = Counter(r["vendor"].lower() for r in decoded)
    assert per_vendor == {v: s.expected_events for v, s in samples.items()}

    dl_topic = settings.topic("dead-letter")
    expected_dl = sum(sum(s.expected_rejects.values()) for s in samples.values())
    dead = read_topic(settings, dl_topic, until=lambda r: len(r) >= expected_dl)
    dead_records = [serde.decode(m.value() or b"", dl_topic)[1] for m in dead]
    assert len(dead_records) == expected_dl
    by_reason = Counter((r["vendor"], r["reason"]) for r in dead_records)
    for vendor, sample in samples.items():
        for reason, n in sample.expected_rejects.items():
            assert by_reason[(vendor, reason)] == n, (vendor, reason)
    for r in dead_records:
        assert r["source_topic"].endswith(f"raw.{r['vendor']}")
        assert r["source_position"].startswith(f"sample:{r['vendor']}#")
        assert r["detail"]

    # Campaign stats: the latest upsert per (campaign, window); summed over the 1h windows they
    # count every canonical event exactly once, and so do the 1m windows.
    stats_topic = settings.topic("campaign-stats")

    def stats_complete(records: list) -> bool:
        latest = {m.key(): serde.decode(m.value(), stats_topic)[1] for m in records}
        return sum(r["total"] for r in latest.values() if r["window"] == "1h") == expected_events

    stats = read_topic(settings, stats_topic, until=stats_complete, timeout=60)
    latest = {m.key(): serde.decode(m.value() or b"", stats_topic)[1] for m in stats}
    for window in ("1m", "1h"):
        totals: Counter[str] = Counter()
        for r in latest.values():
            if r["window"] == window:
                totals[r["vendor"].lower()] += r["total"]
                assert r["total"] == sum(r["event_type_counts"].values())
                assert r["total"] == sum(r["channel_counts"].values())
                assert (
                    r["window_end"] - r["window_start"] == {"1m": 60_000, "1h": 3_600_000}[window]
                )
        assert totals == {v: s.expected_events for v, s in samples.items()}, window
    for key, r in latest.items():
        assert key.decode().endswith(f"|{r['window']}|{r['window_start']}")

    # The read gauges: RocksDB holds the dedupe marks, and nothing of the raw topics is left.
    # (The gauges are read every 10 s, so an early reading may still show the backlog.)
    gauges = worker.wait_gauges(
        lambda g: (
            g.get(("crm_worker_table_keys", "dedupe"), 0) > 0
            and all(g.get(("crm_worker_raw_topic_lag_records", v)) == 0 for v in VENDORS)
        )
    )
    assert gauges[("crm_worker_table_keys", "dedupe")] > 0

    # Restart without local state: the dedupe table must come back from its changelog.
    worker.stop()
    shutil.rmtree(worker_env["CRM_DATA_DIR"])
    worker.start()
    replayed = publish_samples(settings, samples)
    # Every replayed record is read once: the offsets were committed before the stop, and the
    # restarted worker positions its partitions before it hands out a record (see
    # processors/faust_engine.py). Every record read must be a duplicate (or a dead letter
    # again), none a new canonical event.
    accounts = worker.wait_accounts(
        lambda acc: all(
            acc[v].raw_in >= replayed[v] and acc[v].accounted == acc[v].raw_in for v in VENDORS
        )
    )
    for vendor in VENDORS:
        acc = accounts[vendor]
        assert acc.raw_in == replayed[vendor], f"{vendor}: records read twice after the restart"
        assert acc.canonical_out == 0, f"{vendor}: a replayed event got through after recovery"
        sample = samples[vendor]
        assert acc.duplicates >= sample.expected_events + sample.expected_duplicates, vendor
    events_after = read_topic(settings, events_topic, until=lambda r: len(r) >= expected_events)
    assert len(events_after) == expected_events


def test_a_copy_arriving_while_the_first_awaits_its_ack_is_a_duplicate(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """Batches of one record, several in flight: the second copy of each event is read while
    the first copy's batch still waits for Kafka's acknowledgement (its dedupe mark is not in
    RocksDB yet), and must still be dropped."""
    worker.env.update(CRM_WORKER_BATCH_SIZE="1", CRM_WORKER_MAX_INFLIGHT="4")
    settings = Settings.from_env(worker.env)
    create_topics(settings, extra=changelog_specs(settings))
    sample = _samples()["pinpoint"]
    doubled = SampleSet(sample.vendor, [record for record in sample.records for _ in range(2)])
    published = publish_samples(settings, {"pinpoint": doubled})
    worker.start()
    accounts = worker.wait_accounts(
        lambda acc: acc["pinpoint"].raw_in == published["pinpoint"] == acc["pinpoint"].accounted
    )

    acc = accounts["pinpoint"]
    assert acc.canonical_out == sample.expected_events
    assert acc.duplicates == 2 * sample.expected_duplicates + sample.expected_events
    events_topic = settings.topic("events")
    events = read_topic(settings, events_topic, until=lambda r: len(r) >= sample.expected_events)
    ids = [m.key() for m in events]
    assert len(ids) == sample.expected_events
    assert len(set(ids)) == len(ids), "a copy read while the first was in flight got through"


def test_a_worker_killed_mid_stream_loses_nothing(
    worker: WorkerProcess, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL while batches are in flight, restart on the same local state: every canonical
    event and dead letter is there afterwards (some may be repeated: at-least-once)."""
    worker.env.update(CRM_WORKER_BATCH_SIZE="5", CRM_WORKER_MAX_INFLIGHT="4")
    settings = Settings.from_env(worker.env)
    create_topics(settings, extra=changelog_specs(settings))
    samples = _samples()
    expected_events = sum(s.expected_events for s in samples.values())
    expected_rejects = sum(sum(s.expected_rejects.values()) for s in samples.values())
    publish_samples(settings, samples)

    worker.start()
    deadline = time.monotonic() + 120
    accounts: dict[str, VendorAccount] = {}
    while time.monotonic() < deadline:
        try:
            accounts = scrape(worker.url)
        except OSError:
            accounts = {}
        if accounts and sum(a.canonical_out for a in accounts.values()) > 0:
            break
        time.sleep(0.02)
    killed_after = sum(a.canonical_out for a in accounts.values())
    assert worker.proc is not None
    worker.proc.kill()
    worker.proc.wait()
    assert 0 < killed_after < expected_events, "the worker must be killed mid-stream"

    restarted = WorkerProcess(worker.env, tmp_path / "restarted.log")
    restarted.start()
    try:
        events = read_topic(
            settings,
            settings.topic("events"),
            until=lambda r: len({m.key() for m in r}) >= expected_events,
            timeout=120,
        )
        dead = read_topic(
            settings,
            settings.topic("dead-letter"),
            until=lambda r: len(r) >= expected_rejects,
            timeout=30,
        )
        if len({m.key() for m in events}) < expected_events:
            restarted.dump_stacks()
    finally:
        restarted.stop()
    assert len({m.key() for m in events}) == expected_events, (
        f"{killed_after} events before the kill; restarted worker's log:\n"
        f"{restarted.log.read_text()[-20000:]}"
    )
    serde = AvroSerde(settings)
    positions = {
        (r["source_topic"], r["source_partition"], r["source_offset"])
        for r in (serde.decode(m.value() or b"", settings.topic("dead-letter"))[1] for m in dead)
    }
    assert len(positions) == expected_rejects


@pytest.mark.slow(seconds=40)
def test_raw_records_published_before_the_first_start_are_processed(
    worker: WorkerProcess, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A connector publishes before the worker has ever run: it creates only its own topics
    (raw, dead letters, checkpoints), the worker creates the others when it starts. Every
    record already in the raw topic comes out, read from the moment the worker starts (before
    it has created the events topic: a reader must wait for it, or it reads nothing)."""
    settings = Settings.from_env(worker_env)
    ids = [f"lp-early-{i:03d}" for i in range(24)]
    lines = ids + ids[:6]  # 6 duplicates
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    good = [
        {
            "event_id": event_id,
            "name": "(Leanplum) Campaign Enter",
            "properties": {"user_id": "u1", "time": f"{at:%Y-%m-%d %H:%M:%S}.000"},
        }
        for event_id in lines
    ]
    bad = {"event_id": "lp-early-bad", "properties": {"user_id": "u1"}}  # no name, no time
    part = tmp_path / "feed" / f"dt={at:%Y-%m-%d}"
    part.mkdir(parents=True)
    (part / "part-0.json").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [*good, bad]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(worker_env, CRM_METRICS_PORT="0")
    feed = f"file://{tmp_path / 'feed'}"
    connect = [sys.executable, "-m", "crmcli", "connect", "leanplum", "--source", feed, "--once"]
    done = subprocess.run(connect, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    events_topic = settings.topic("events")
    dl_topic = settings.topic("dead-letter")
    existing = AdminClient(client_config(settings)).list_topics(timeout=10).topics
    assert settings.topic("raw.leanplum") in existing and events_topic not in existing

    worker.start()
    serde = AvroSerde(settings)
    events = read_topic(settings, events_topic, until=lambda r: len(r) >= len(ids), timeout=120)
    decoded = [serde.decode(m.value() or b"", events_topic)[1] for m in events]
    assert sorted(r["vendor_event_id"] for r in decoded) == ids, (
        f"{len(events)} events read; the worker's log:\n{worker.log.read_text()[-3000:]}"
    )
    assert [m.key() for m in events] == [
        f"LEANPLUM:{r['vendor_event_id']}".encode() for r in decoded
    ]
    dead = read_topic(settings, dl_topic, until=lambda r: len(r) >= 1)
    dead_letters = [serde.decode(m.value() or b"", dl_topic)[1] for m in dead]
    assert [(d["raw_key"], d["source_topic"]) for d in dead_letters] == [
        (b"lp-early-bad", settings.topic("raw.leanplum"))
    ]
    accounts = worker.wait_accounts(
        lambda acc: acc["leanplum"].raw_in == len(lines) + 1 == acc["leanplum"].accounted
    )
    assert accounts["leanplum"].canonical_out == len(ids)
    assert accounts["leanplum"].duplicates == len(lines) - len(ids)
