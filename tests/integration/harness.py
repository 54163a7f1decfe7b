"""Exactness checks of the worker's outputs on a real broker, for the crash, restart and
scale-out tests.

:class:`Feed` publishes sample raw records the way the connectors do (key = vendor event id,
the connectors' headers) and records where each landed. What a correct pipeline must produce is
computed here from the vendors' pure normalizers and the published order (all copies of an event
share a key, so a partition; the first copy published wins), not by the worker:

* the set of canonical event ids, each exactly once on ``events``;
* one dead letter for each malformed record, at its raw position;
* the total of every (campaign, window) in the latest ``campaign-stats`` upsert, and its unique
  recipients (distinct ``user_id``, else ``device_id``): exact while a window has fewer than
  :data:`EXACT_UNIQUES` of them (the HyperLogLog sketch's exact modes at lg_k 12);
* the events per message id of every (campaign, window), as the query API answers them
  (:func:`message_failures`).

:class:`WorkerProcess` runs ``crm-stream worker`` as a child process, as a user would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer

from crmdemo.demo import VendorAccount, scrape
from crmdemo.generators import GENERATORS
from crmdemo.samples import SampleSet, campaigns
from crmstream.kafka import producer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.stopping import start_command
from crmstream.topics import (
    H_APP_ID,
    H_FORMAT,
    H_INGESTED_AT,
    H_SOURCE,
    H_VENDOR,
    VENDORS,
    raw_topic,
)
from processors.api.query import CampaignKey
from processors.normalize import normalize
from processors.normalize.model import CanonicalEvent, NormalizeContext, Rejected
from processors.records import campaign_key, recipient_of, stats_upsert_key, window_start
from tests.kafka_helpers import read_topic

WINDOWS = (("1m", 60), ("1h", 3600))
EXACT_UNIQUES = 300  # below DataSketches' list/set modes at lg_k 12 (384): estimates are exact


def samples(seed: int, per_vendor: int, campaign_count: int = 12) -> dict[str, SampleSet]:
    rng = random.Random(seed)
    shared = campaigns(rng, count=campaign_count)
    return {v: GENERATORS[v](random.Random(rng.random()), per_vendor, shared) for v in VENDORS}


Position = tuple[str, int, int]  # raw topic, partition, offset


@dataclass
class Expected:
    """What a correct pipeline makes of everything published so far."""

    event_ids: set[str] = field(default_factory=set)
    dead_letters: set[Position] = field(default_factory=set)
    stats: Counter[bytes] = field(default_factory=Counter)  # upsert key -> total
    positions: dict[str, Position] = field(default_factory=dict)  # event id -> its first copy
    stats_keys: dict[str, list[bytes]] = field(default_factory=dict)  # event id -> its windows
    # upsert key -> recipients of its events (a multiset: an event may be taken back)
    recipients: dict[bytes, Counter[str]] = field(default_factory=dict)
    recipient: dict[str, str | None] = field(default_factory=dict)  # event id -> its recipient
    # upsert key -> (message id, event type) -> events
    messages: dict[bytes, Counter[tuple[str | None, str]]] = field(default_factory=dict)
    message: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # event id -> it
    # upsert key -> (variant bucket, event type) -> events; the bucket is the variant id, or
    # "(control)" for every CONTROL event (the control group, whatever variant id it carries)
    variants: dict[bytes, Counter[tuple[str | None, str]]] = field(default_factory=dict)
    variant: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # event id -> it

    def uniques(self) -> dict[bytes, int]:
        """The unique recipients of every window."""
        return {key: len(+people) for key, people in self.recipients.items()}

    def dead_lettered(self, event_id: str) -> None:
        """The worker must dead-letter this event's first copy instead (too_large)."""
        self.event_ids.discard(event_id)
        self.dead_letters.add(self.positions[event_id])
        for key in self.stats_keys[event_id]:
            self.stats[key] -= 1
            if not self.stats[key]:
                del self.stats[key]
            who = self.recipient[event_id]
            if who is not None:
                self.recipients[key][who] -= 1
            self.messages[key][self.message[event_id]] -= 1
            self.variants[key][self.variant[event_id]] -= 1

    def add(self, vendor: str, key: bytes | None, value: bytes, app_id: str, at: Position) -> None:
        outcome = normalize(vendor, value, NormalizeContext(app_id=app_id))
        if isinstance(outcome, Rejected):
            self.dead_letters.add(at)
        elif isinstance(outcome, CanonicalEvent) and outcome.event_id not in self.event_ids:
            self.event_ids.add(outcome.event_id)
            self.positions[outcome.event_id] = at
            campaign = campaign_key(outcome)
            keys = self.stats_keys[outcome.event_id] = []
            for label, size in WINDOWS:
                start = window_start(outcome.occurred_at, size)
                keys.append(stats_upsert_key(campaign, label, start))
                self.stats[keys[-1]] += 1
                who = self.recipient[outcome.event_id] = recipient_of(outcome)
                people = self.recipients.setdefault(keys[-1], Counter())
                if who is not None:
                    people[who] += 1
                sent = self.message[outcome.event_id] = (
                    outcome.message_id,
                    outcome.event_type.value,
                )
                self.messages.setdefault(keys[-1], Counter())[sent] += 1
                control = outcome.event_type.value == "CONTROL"
                arm = self.variant[outcome.event_id] = (
                    CONTROL if control else outcome.variant_id,
                    outcome.event_type.value,
                )
                self.variants.setdefault(keys[-1], Counter())[arm] += 1


class Feed:
    """Publishes raw records as a connector does and keeps what a correct pipeline must make of
    them (in publish order, per raw topic)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.expected = Expected()
        self.published = Counter[str]()
        self._producer = Producer(producer_config(settings))
        self._lock = threading.Lock()

    def publish(self, vendor: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Publish and wait for every acknowledgement; returns how many."""
        topic = self.settings.topic(raw_topic(vendor))
        app_id = f"demo-{vendor}"
        landed: list[tuple[int, bytes | None, bytes, Position]] = []
        errors: list[str] = []

        def delivered(index: int, key: bytes | None, value: bytes) -> Callable[..., None]:
            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(err.str())
                else:
                    at = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                    landed.append((index, key, value, at))

            return on_delivery

        count = 0
        for index, (key, value) in enumerate(records):
            headers = [
                (H_VENDOR, vendor.encode()),
                (H_SOURCE, f"sample:{vendor}#{self.published[vendor] + index}".encode()),
                (H_FORMAT, b"json"),
                (H_INGESTED_AT, str(time.time_ns() // 1_000_000).encode()),
                (H_APP_ID, app_id.encode()),
            ]
            while True:
                try:
                    self._producer.produce(
                        topic,
                        value=value,
                        key=key,
                        headers=headers,
                        on_delivery=delivered(index, key, value),
                    )
                    break
                except BufferError:
                    self._producer.poll(0.1)
            count += 1
        if self._producer.flush(60):
            raise AssertionError("raw records not acknowledged")
        assert not errors, errors[:3]
        with self._lock:
            # In each partition, offset order is publish order (idempotent producer).
            for _index, key, value, at in sorted(landed, key=lambda r: r[3]):
                self.expected.add(vendor, key, value, app_id, at)
            self.published[vendor] += count
        return count

    def publish_all(self, sets: dict[str, SampleSet], part: slice = slice(None)) -> int:
        return sum(self.publish(v, s.records[part]) for v, s in sets.items())


@dataclass
class Outputs:
    """What the worker wrote, read back from the output topics."""

    event_ids: list[str]
    event_sources: dict[str, list[str]]  # event id -> the raw_position header of each copy
    dead_letters: list[Position]
    stats: dict[bytes, int]  # upsert key -> total of the latest upsert
    uniques: dict[bytes, int | None]  # upsert key -> unique_recipients of the latest upsert


def read_outputs(settings: Settings, expected: Expected, timeout: float = 120) -> Outputs:
    """Read every output topic until it holds what ``expected`` asks for (then a little longer,
    so that extra records show), or until ``timeout``."""
    serde = AvroSerde(settings)
    want_ids = len(expected.event_ids)
    events = read_topic(
        settings,
        settings.topic("events"),
        until=lambda r: len({m.key() for m in r}) >= want_ids,
        timeout=timeout,
    )
    dl_topic = settings.topic("dead-letter")
    dead = read_topic(
        settings, dl_topic, until=lambda r: len(r) >= len(expected.dead_letters), timeout=30
    )
    stats_topic = settings.topic("campaign-stats")

    def live(records: list[Message]) -> dict[bytes, Message]:
        """The latest record of each key, without the keys whose latest is a tombstone (an
        expired window: README, "What is kept and for how long")."""
        out: dict[bytes, Message] = {}
        for m in records:
            if m.value() is None:
                out.pop(m.key() or b"", None)
            else:
                out[m.key() or b""] = m
        return out

    def latest(records: list[Message]) -> dict[bytes, int]:
        return {
            key: serde.decode(m.value() or b"", stats_topic)[1]["total"]
            for key, m in live(records).items()
        }

    stats = read_topic(
        settings,
        stats_topic,
        until=lambda r: latest(r) == dict(expected.stats),
        timeout=60,
    )
    uniques = {
        key: serde.decode(m.value() or b"", stats_topic)[1]["unique_recipients"]
        for key, m in live(stats).items()
    }
    positions = []
    for m in dead:
        record = serde.decode(m.value() or b"", dl_topic)[1]
        positions.append(
            (record["source_topic"], record["source_partition"], record["source_offset"])
        )
    sources: dict[str, list[str]] = {}
    for m in events:
        header = dict(m.headers() or []).get("raw_position") or b""
        sources.setdefault((m.key() or b"").decode(), []).append(bytes(header).decode())
    return Outputs(
        event_ids=[(m.key() or b"").decode() for m in events],
        event_sources=sources,
        dead_letters=positions,
        stats=latest(stats),
        uniques=uniques,
    )


def exactness_failures(out: Outputs, expected: Expected) -> list[str]:
    """Every way ``out`` differs from ``expected``, as readable lines (empty when exact)."""
    problems: list[str] = []
    ids = Counter(out.event_ids)
    missing = expected.event_ids - set(ids)
    extra = set(ids) - expected.event_ids
    repeated = {i: n for i, n in ids.items() if n > 1}
    if missing:
        problems.append(f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected events, e.g. {sorted(extra)[:5]}")
    if repeated:
        problems.append(
            f"{sum(repeated.values()) - len(repeated)} duplicate records on events, "
            f"e.g. {[(i, out.event_sources.get(i)) for i in sorted(repeated)[:5]]}"
        )
    dead = Counter(out.dead_letters)
    if set(dead) != expected.dead_letters or any(n > 1 for n in dead.values()):
        problems.append(
            f"dead letters: {len(out.dead_letters)} for {len(expected.dead_letters)} malformed "
            f"records; missing {sorted(expected.dead_letters - set(dead))[:5]}, repeated "
            f"{sorted(p for p, n in dead.items() if n > 1)[:5]}"
        )
    wrong = {k: (out.stats.get(k), n) for k, n in expected.stats.items() if out.stats.get(k) != n}
    unexpected = set(out.stats) - set(expected.stats)
    if wrong or unexpected:
        over = sum(max(0, (got or 0) - n) for got, n in wrong.values())
        under = sum(max(0, n - (got or 0)) for got, n in wrong.values())
        problems.append(
            f"campaign-stats: {len(wrong)} of {len(expected.stats)} windows wrong (+{over} "
            f"-{under}), {len(unexpected)} unexpected, e.g. {sorted(wrong.items())[:3]}"
        )
    want = {k: n for k, n in expected.uniques().items() if n < EXACT_UNIQUES and k in out.stats}
    off = {k: (out.uniques.get(k), n) for k, n in want.items() if out.uniques.get(k) != n}
    if off:
        problems.append(
            f"campaign-stats uniques: {len(off)} of {len(want)} windows wrong (got, want), "
            f"e.g. {sorted(off.items())[:3]}"
        )
    return problems


def message_failures(
    get: Callable[[str, dict[str, Any]], Any], expected: Expected, label: str, max_keys: int
) -> list[str]:
    """Every way the query API's ``messages`` of each (campaign, window of ``label``) differs
    from ``expected``, as readable lines. ``get(path, params)``: the API's 200 answer. Asked for
    one window, the API lists the message ids the window kept: at most ``max_keys``, the first
    it counted (which ones depends on arrival order, so any of them), each with all of its
    events in the window; the others' events are the overflow row, events without a message id
    the ``none`` row; nothing is ``not_broken_down``."""
    problems: list[str] = []
    for key, counted in expected.messages.items():
        campaign, window, start = key.decode().rsplit("|", 2)
        if window != label or not +counted:
            continue
        size = int(get_size(label))
        body = get(
            f"/api/campaigns/{CampaignKey.from_key(campaign).id}",
            {"window": label, "from": int(start), "to": int(start) + size},
        )
        want: dict[str | None, Counter[str]] = {}
        for (message, event_type), n in (+counted).items():
            want.setdefault(message, Counter())[event_type] += n
        rows = body["messages"]
        kept = {
            r["message_id"]: Counter(r["event_type_counts"]) for r in rows if r["kind"] == "value"
        }
        other = {r["kind"]: Counter(r["event_type_counts"]) for r in rows if r["kind"] != "value"}
        ids = {m for m in want if m is not None}
        overflow: Counter[str] = Counter()
        for m in ids - set(kept):
            overflow.update(want[m])
        wrong = [
            what
            for what, ok in [
                ("a kept id's counts", all(want.get(m) == c for m, c in kept.items())),
                ("the bound", len(kept) == min(max_keys, len(ids))),
                ("the overflow", other.get("overflow", Counter()) == overflow),
                ("no message", other.get("none", Counter()) == want.get(None, Counter())),
                ("not broken down", "not_broken_down" not in other),
            ]
            if not ok
        ]
        if wrong:
            problems.append(f"{key!r}: {', '.join(wrong)}: got {rows}, want {want}")
    return problems


CONTROL = "(control)"
"""The control group's bucket in :attr:`Expected.variants` (not a string a vendor sends: the
test's own marker)."""


def variant_failures(
    get: Callable[[str, dict[str, Any]], Any], expected: Expected, label: str, max_keys: int
) -> list[str]:
    """Every way the query API's ``variants`` of each (campaign, window of ``label``) differs
    from ``expected``, as readable lines, as :func:`message_failures` for message ids: at most
    ``max_keys`` variant ids kept (the first the window counted), each with all its events;
    the others in the overflow row; events without a variant id in the ``none`` row; every
    CONTROL event in the ``control`` row; nothing ``not_broken_down``. The unique recipients
    of each kept variant, of the control group and of the overflow are exact (below
    :data:`EXACT_UNIQUES`)."""
    problems: list[str] = []
    for key, counted in expected.variants.items():
        campaign, window, start = key.decode().rsplit("|", 2)
        if window != label or not +counted:
            continue
        body = get(
            f"/api/campaigns/{CampaignKey.from_key(campaign).id}",
            {"window": label, "from": int(start), "to": int(start) + get_size(label)},
        )
        want: dict[str | None, Counter[str]] = {}
        for (arm, event_type), n in (+counted).items():
            want.setdefault(arm, Counter())[event_type] += n
        rows = body["variants"]
        kept = {r["variant_id"]: r for r in rows if r["kind"] == "value"}
        other = {r["kind"]: r for r in rows if r["kind"] != "value"}
        ids = {v for v in want if v not in (None, CONTROL)}
        overflow: Counter[str] = Counter()
        for v in ids - set(kept):
            overflow.update(want[v])
        people = _variant_recipients(expected, key)
        extra = set(ids - set(kept))

        def uniques_ok(row: dict[str, Any] | None, who: set[str]) -> bool:
            if len(who) >= EXACT_UNIQUES:
                return True
            return row is not None and row["uniques"]["recipients"] == len(who)

        overflow_people = set().union(*(people.get(v, set()) for v in extra))
        wrong = [
            what
            for what, ok in [
                (
                    "a kept id's counts",
                    all(want.get(v) == Counter(r["event_type_counts"]) for v, r in kept.items()),
                ),
                ("the bound", len(kept) == min(max_keys, len(ids))),
                ("the overflow", _row_counts(other, "overflow") == overflow),
                ("no variant", _row_counts(other, "none") == want.get(None, Counter())),
                (
                    "the control group",
                    _row_counts(other, "control") == want.get(CONTROL, Counter()),
                ),
                ("not broken down", "not_broken_down" not in other),
                (
                    "a kept id's uniques",
                    all(uniques_ok(r, people.get(v, set())) for v, r in kept.items()),
                ),
                (
                    "the control group's uniques",
                    CONTROL not in people or uniques_ok(other.get("control"), people[CONTROL]),
                ),
                (
                    "the overflow's uniques",
                    not overflow_people or uniques_ok(other.get("overflow"), overflow_people),
                ),
            ]
            if not ok
        ]
        if wrong:
            problems.append(f"{key!r}: {', '.join(wrong)}: got {rows}, want {want}")
    return problems


def _row_counts(rows: dict[str, dict[str, Any]], kind: str) -> Counter[str]:
    return Counter(rows[kind]["event_type_counts"]) if kind in rows else Counter()


def _variant_recipients(expected: Expected, key: bytes) -> dict[str | None, set[str]]:
    """The recipients of each variant bucket of one (campaign, window)."""
    out: dict[str | None, set[str]] = {}
    for event_id in expected.event_ids:
        if key not in expected.stats_keys.get(event_id, ()):
            continue
        who = expected.recipient.get(event_id)
        if who is not None:
            out.setdefault(expected.variant[event_id][0], set()).add(who)
    return out


def get_size(label: str) -> int:
    """A window label's size in ms (``1m`` -> 60000)."""
    return {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[label[-1]] * int(label[:-1])


class WorkerProcess:
    """``crm-stream worker`` in a child process, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{env['CRM_METRICS_PORT']}/metrics"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        # No query API unless the test asks for one on a port of its own: the default 8080 is
        # one port for every worker of every test running side by side (a worker found it taken
        # and refused to start, naming CRM_API_PORT).
        env["CRM_API_PORT"] = "0"
        env.update(self.env)
        with self.log.open("ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
        # With the stop signals blocked until the command installs its handlers: a SIGTERM at
        # any moment of the start is a clean stop, even during the interpreter's own start.
        self.proc = start_command(
            [sys.executable, "-m", "crmcli", "worker"],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return None if self.proc is None else self.proc.returncode

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def accounts(self) -> dict[str, VendorAccount]:
        try:
            return scrape(self.url)
        except OSError:
            return {}

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (all labels); 0 when it is not there yet."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        )

    def dump_stacks(self) -> None:
        """Ask the worker to log every thread's and task's stack (mode's SIGUSR1 handler)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)


def require_alive(worker: WorkerProcess, context: str) -> None:
    if not worker.alive():
        assert worker.proc is not None
        pytest.fail(f"{context}: worker exited {worker.proc.returncode}\n{worker.tail()}")


def probe(url: str) -> tuple[int, dict]:
    """GET a health endpoint: (status, its JSON), or (0, the error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError as err:
        return 0, {"error": str(err)}


def wait_status(url: str, status: int, timeout: float) -> dict:
    """Poll ``url`` until it answers ``status``; its JSON (the test fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, dict] = (0, {})
    while time.monotonic() < deadline:
        last = probe(url)
        if last[0] == status:
            return last[1]
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer {status} in {timeout}s; last {last}")
