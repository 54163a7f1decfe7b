"""Soak: 90 days of event time through one worker, with the retention scaled down (issue 23
item 1). Nothing the worker keeps grows without bound, and what it keeps stays exact.

The worker runs as a user runs it, on the real broker, with ``CRM_STATS_RETENTION=1m=1d,1h=15d``
(production: ``1m=3d,1h=90d``) and ``CRM_DEDUPE_WINDOW=1d``. A window expires its size's
retention after its *last update*, a processing time: the worker's clock is simulated
(``tests/integration/soakclock``, a test-only ``sitecustomize``: the clock reads a file this test
advances a day at a time, and the expiries run every 0.25 s of wall time). Day ``n``'s Segment
events (raw records with their Kafka timestamp at their event time, some published twice) are
published with the clock at the end of day ``n``, so every window's last update is known exactly,
and so is what each expiry deletes.

After every simulated day the test waits until, exactly:

* ``campaign-stats``'s **live keys** (the latest record per key is not a tombstone) are the 1m
  windows of the last 2 days and the 1h windows of the last 16, each with its exact total;
* each stats changelog's live keys are the same windows plus one entry per campaign that lost
  a window, from its first expiry until the retention after its last window expired
  (``processors.plan.plan_expiry``);

and at checkpoints it counts the keys of the local RocksDB stores (read-only, the worker
running): the stats tables hold what their changelogs hold live, the dedupe table the event ids
of the last two days. Tansu does no compaction or retention, so live keys, not broker disk, are
measured; the dedupe changelog has no tombstones (its windows go by range deletes) and is bounded
by its time retention on a real broker: its record count is reported, not asserted.

``CRM_SOAK_REPORT=<path>`` writes the figures per simulated day as JSON.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import rocksdict
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from crmstream.kafka import consumer_config, producer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import H_APP_ID, H_FORMAT, H_INGESTED_AT, H_SOURCE, H_VENDOR, create_topics
from processors.app import changelog_specs
from processors.state.keys import MARKS, WINDOWS, campaign_entry_key, window_key
from tests.integration.harness import Expected, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_CLOCK = Path(__file__).parent / "soakclock"
DAY_MS = 86_400_000
START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAYS = 90
EVENTS_PER_DAY = 48
DUPLICATE_SHARE = 0.05
CAMPAIGN_DAYS = 12  # each campaign is active 12 days; a new one starts every 4 days
CAMPAIGN_EVERY = 4
KEEP_DAYS = {"1m": 1, "1h": 15}
SIZES_MS = {"1m": 60_000, "1h": 3_600_000}
APP_ID = "demo-segment"
CHECKPOINTS = (10, 20, 30, 45, 60, 75, 89)


def end_of(day: int) -> int:
    """The clock while day ``day``'s events are published: the end of that day."""
    return START + (day + 1) * DAY_MS


def set_clock(path: Path, ms: int) -> None:
    """Atomically: the worker reads the file at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(ms))
    os.replace(tmp, path)


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def campaign_id(k: int) -> str:
    return str(1000 + k)


def active(day: int) -> list[int]:
    return [
        k
        for k in range(DAYS // CAMPAIGN_EVERY + 1)
        if 0 <= day - k * CAMPAIGN_EVERY < CAMPAIGN_DAYS
    ]


def day_records(rng: random.Random, day: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, event time) of one day's Segment events, in event-time order: every active
    campaign has events that day; a few are published twice (a redelivery, same messageId)."""
    ks = active(day)
    picks = ks + [rng.choice(ks) for _ in range(EVENTS_PER_DAY - len(ks))]
    times = sorted(START + day * DAY_MS + rng.randrange(DAY_MS) for _ in picks)
    rng.shuffle(picks)
    out: list[tuple[bytes, bytes, int]] = []
    for k, at in zip(picks, times, strict=True):
        mid = f"soak-{day}-{uuid.UUID(int=rng.getrandbits(128))}"
        record = {
            "type": "track",
            "event": rng.choice(["Email Opened", "Email Delivered", "Email Link Clicked"]),
            "messageId": mid,
            "timestamp": iso(at),
            "originalTimestamp": iso(at),
            "sentAt": iso(at + 100),
            "receivedAt": iso(at + 200),
            "userId": f"u{rng.randrange(300)}",
            "properties": {
                "campaign_id": campaign_id(k),
                "campaign_name": f"Soak {k}",
                "message_id": str(5000 + k),
                "email_id": f"e{rng.getrandbits(32)}",
            },
            "context": {},
            "integrations": {},
            "channel": "server",
            "version": 2,
        }
        value = orjson.dumps(record)
        out.append((mid.encode(), value, at))
        if rng.random() < DUPLICATE_SHARE:
            out.append((mid.encode(), value, at))
    return out


class Publisher:
    """Raw records as the Segment receiver writes them, with the Kafka timestamp at the event
    time (the dedupe windows are on it), and what a correct pipeline makes of them."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic("raw.segment")
        self.producer = Producer(producer_config(settings))
        self.expected = Expected()
        self.published = 0

    def publish(self, records: list[tuple[bytes, bytes, int]]) -> None:
        landed: list[tuple[tuple[str, int, int], bytes, bytes]] = []
        errors: list[str] = []

        def delivered(key: bytes, value: bytes) -> Callable[[KafkaError | None, Message], None]:
            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(err.str())
                else:
                    landed.append(
                        ((msg.topic() or "", msg.partition() or 0, msg.offset() or 0), key, value)
                    )

            return on_delivery

        for key, value, at in records:
            self.producer.produce(
                self.topic,
                value=value,
                key=key,
                timestamp=at,
                headers=[
                    (H_VENDOR, b"segment"),
                    (H_SOURCE, f"soak:segment#{self.published}".encode()),
                    (H_FORMAT, b"json"),
                    (H_INGESTED_AT, str(at).encode()),
                    (H_APP_ID, APP_ID.encode()),
                ],
                on_delivery=delivered(key, value),
            )
            self.published += 1
        assert not self.producer.flush(60), "raw records not acknowledged"
        assert not errors, errors[:3]
        for at, key, value in sorted(landed):  # offset order is publish order per partition
            self.expected.add("segment", key, value, APP_ID, at)


@dataclass
class Live:
    """The latest record per key of some topics, read as they grow."""

    settings: Settings
    topics: list[str]
    latest: dict[str, dict[bytes, bytes | None]] = field(default_factory=dict)
    records: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.consumer = Consumer(
            consumer_config(self.settings, group_id=f"soak-{uuid.uuid4().hex}")
        )
        parts = []
        for topic in self.topics:
            meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
            parts += [TopicPartition(topic, p, 0) for p in meta.partitions]
            self.latest[topic] = {}
        self.consumer.assign(parts)

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.05):
                if msg.error() is not None:
                    continue
                topic = msg.topic() or ""
                self.latest[topic][msg.key() or b""] = msg.value()
                self.records[topic] += 1

    def live(self, topic: str) -> dict[bytes, bytes]:
        return {k: v for k, v in self.latest[topic].items() if v is not None}

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Want:
    """What the output and the stats changelogs must hold live after a simulated day."""

    output: dict[bytes, int]  # upsert key -> its total
    changelog: dict[str, set[bytes]]  # window size -> table keys

    def met(
        self,
        live: Live,
        serde: AvroSerde,
        stats_topic: str,
        changelogs: dict[str, str],
        totals: dict[bytes, int],
    ) -> bool:
        output = live.live(stats_topic)
        if set(output) != set(self.output):
            return False
        for key, value in output.items():
            if totals.get(key) != self.output[key]:  # decoded again only while it differs
                totals[key] = serde.decode(value, stats_topic)[1]["total"]
        if any(totals[key] != self.output[key] for key in output):
            return False
        return all(set(live.live(changelogs[lb])) == keys for lb, keys in self.changelog.items())

    def diff(
        self, live: Live, stats_topic: str, changelogs: dict[str, str], totals: dict[bytes, int]
    ) -> dict[str, Any]:
        output = live.live(stats_topic)
        out: dict[str, Any] = {
            "output missing": sorted(set(self.output) - set(output))[:5],
            "output extra": sorted(set(output) - set(self.output))[:5],
            "wrong totals": [
                (k, totals.get(k), self.output[k])
                for k in output
                if k in self.output and totals.get(k) != self.output[k]
            ][:5],
        }
        for label, keys in self.changelog.items():
            held = set(live.live(changelogs[label]))
            out[f"{label} changelog missing"] = sorted(keys - held)[:5]
            out[f"{label} changelog extra"] = sorted(held - keys)[:5]
        return out


def rocksdb_keys(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Per table (dedupe, stats-1m, stats-1h): (window keys and dedupe marks, other keys of
    ours), over every partition's store, read-only while the worker runs. Faust's own
    ``__faust`` keys are left out."""
    out: dict[str, list[int]] = {}
    for store in sorted(data_dir.glob("**/tables/*.db")):
        table = store.name.rsplit("-", 1)[0]  # <table>-<partition>.db
        db = rocksdict.Rdict(
            str(store),
            options=rocksdict.Options(raw_mode=True),
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            counts = out.setdefault(table, [0, 0])
            for key in db.keys():  # noqa: SIM118 (an Rdict iterates items)
                if key in WINDOWS or key in MARKS:
                    counts[0] += 1
                elif key.startswith(b"__crm/"):
                    counts[1] += 1
        finally:
            db.close()
    return {table: (c[0], c[1]) for table, c in out.items()}


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


@pytest.mark.slow(seconds=110)
def test_90_days_of_events_keep_state_changelogs_and_output_bounded_and_exact(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    clock = tmp_path / "clock"
    set_clock(clock, end_of(0))
    env = crm_env_factory(
        CRM_STATS_RETENTION=",".join(f"{label}={d}d" for label, d in KEEP_DAYS.items()),
        CRM_DEDUPE_WINDOW="1d",
        CRM_TEST_CLOCK_FILE=str(clock),
        PYTHONPATH=str(SOAK_CLOCK),
    )
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("CRM_")})
    create_topics(settings, extra=changelog_specs(settings))
    serde = AvroSerde(settings)
    stats_topic = settings.topic("campaign-stats")
    changelogs = {
        label: settings.topic(f"{settings.app_id}-stats-{label}-changelog") for label in KEEP_DAYS
    }
    dedupe_changelog = settings.topic(f"{settings.app_id}-dedupe-changelog")
    live = Live(settings, [stats_topic, *changelogs.values(), dedupe_changelog])
    publisher = Publisher(settings)
    rng = random.Random(int(os.environ.get("CRM_SOAK_SEED", "2311")))
    data_dir = Path(env["CRM_DATA_DIR"])

    window_day: dict[bytes, int] = {}  # upsert key -> the day of its events (its last update)
    first_day: dict[str, int] = {}  # campaign key -> first and last day with an event
    last_day: dict[str, int] = {}
    first_copy_day: dict[str, int] = {}  # event id -> its day (the dedupe window it is marked in)
    totals: dict[bytes, int] = {}  # upsert key -> total of its latest upsert, decoded once
    figures: list[dict[str, Any]] = []

    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        for day in range(DAYS):
            set_clock(clock, end_of(day))
            known = set(publisher.expected.event_ids)
            publisher.publish(day_records(rng, day))
            for event_id in publisher.expected.event_ids - known:
                first_copy_day[event_id] = day
            for key in publisher.expected.stats:
                if key not in window_day:
                    window_day[key] = day
                    campaign = key.rsplit(b"|", 2)[0].decode()
                    first_day.setdefault(campaign, day)
            for key, d in window_day.items():
                if d == day:
                    last_day[key.rsplit(b"|", 2)[0].decode()] = day

            want_output = {
                key: publisher.expected.stats[key]
                for key, d in window_day.items()
                if d >= day - KEEP_DAYS[key.rsplit(b"|", 2)[1].decode()]
            }
            want_changelog = {
                label: {
                    window_key(int(key.rsplit(b"|", 1)[1]), key.rsplit(b"|", 2)[0])
                    for key in want_output
                    if key.rsplit(b"|", 2)[1].decode() == label
                }
                | {
                    # An entry comes with the campaign's first expiry (its first day's windows,
                    # at the end of day first + keep + 1), and goes the retention after its last
                    # window expired (at the end of day last + keep + 1): day last + 2 * keep + 1
                    # has it still.
                    campaign_entry_key(c)
                    for c, first in first_day.items()
                    if first + KEEP_DAYS[label] + 1 <= day <= last_day[c] + 2 * KEEP_DAYS[label] + 1
                }
                for label in KEEP_DAYS
            }

            want = Want(want_output, want_changelog)
            deadline = time.monotonic() + 60
            while not want.met(live, serde, stats_topic, changelogs, totals):
                if time.monotonic() > deadline or not worker.alive():
                    diff = want.diff(live, stats_topic, changelogs, totals)
                    raise AssertionError(f"day {day}: {diff}\n{worker.tail(4000)}")
                live.poll(0.1)

            row: dict[str, Any] = {
                "day": day,
                "output_live": len(want_output),
                "output_keys_ever": len(live.latest[stats_topic]),
                **{f"changelog_{lb}_live": len(want_changelog[lb]) for lb in KEEP_DAYS},
                "dedupe_changelog_records": live.records[dedupe_changelog],
                "events": len(publisher.expected.event_ids),
            }
            if day in CHECKPOINTS:
                marked = sum(1 for d in first_copy_day.values() if d >= day - 1)
                deadline = time.monotonic() + 30
                while True:  # the dedupe expiry runs on its own timer: wait for it
                    keys = rocksdb_keys(data_dir)
                    if keys.get("dedupe", (0, 0))[0] == marked or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert keys["dedupe"][0] == marked, (day, keys, marked)
                for label in KEEP_DAYS:
                    # The local table holds exactly what its changelog holds live.
                    windows, entries = keys[f"stats-{label}"]
                    assert windows + entries == len(want_changelog[label]), (day, label, keys)
                row.update(
                    rocksdb={t: sum(c) for t, c in keys.items()},
                    state_dir_bytes=dir_bytes(data_dir),
                    # RocksDB's write-ahead logs hold every write (deletes too) until the
                    # memtable is flushed (its write buffer, 64 MB): bounded by that, not by
                    # the data; the sorted files hold what compaction kept.
                    wal_bytes=dir_bytes(data_dir, "*.log"),
                    sst_bytes=dir_bytes(data_dir, "*.sst"),
                )
            figures.append(row)
    finally:
        live.close()
        assert worker.stop() == 0, worker.tail()

    figures[-1]["state_dir_bytes_after_stop"] = dir_bytes(data_dir)
    report = os.environ.get("CRM_SOAK_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=1))
    by_day = {row["day"]: row for row in figures}
    # A plateau: from the day the longest retention is reached, the live keys and the state
    # stop growing, while the keys ever written keep growing with the days.
    for name in ("output_live", "changelog_1m_live", "changelog_1h_live"):
        settled = max(by_day[d][name] for d in range(20, 35))
        assert max(by_day[d][name] for d in range(35, DAYS)) <= settled * 1.25, name
    assert by_day[89]["output_keys_ever"] > 4 * by_day[89]["output_live"]
    for table in ("dedupe", "stats-1m", "stats-1h"):
        settled = max(by_day[d]["rocksdb"][table] for d in (20, 30))
        assert max(by_day[d]["rocksdb"][table] for d in (45, 60, 75, 89)) <= settled * 1.25, table
