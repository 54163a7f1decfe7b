"""``make bench``: throughput, latency and memory of crm-stream against the passthrough limit and
two peers (Quix Streams and Bytewax), on one embedded broker, in one run.

What it does, in order (``--help`` lists the knobs):

1. Starts the embedded Tansu broker (or uses ``--bootstrap-servers``) and generates ``--events``
   raw records of the five vendors (:mod:`bench.generate`: 5% duplicates, 0.5% malformed,
   ``--campaigns`` campaigns).
2. For each pipeline, one after another (crm-stream once per ``--workers`` count, e.g. ``1,2``):
   its own topic prefix, the same records preloaded into its raw topics (identical input, and the
   latency phases of one run cannot leak into the next one's backlog), then the pipeline is
   started as child processes (crm-stream: N ``crm-stream worker`` processes with one
   ``CRM_APP_ID``, so one consumer group, each with its own data dir and metrics port; the others:
   one process) and measured, all its processes together:

   * **throughput**: raw records / time from the first record the pipeline accounted for to the
     last (polled from its progress: the workers' Prometheus counters, added up; the others'
     progress file), the stats stage included: it ends with the upsert that completes the counts;
   * **CPU seconds per million records** over the same window (``psutil``, user + system);
   * **peak RSS** (``VmHWM`` of each child at the end of the throughput phase, added up);
   * **state disk per million dedupe keys**: ``du`` of the children's state directories /
     distinct canonical events (RocksDB for crm-stream and Quix, SQLite for Bytewax);
   * **end-to-end latency** p50/p99 in two open-loop phases, fresh records fed at 100% and at 50%
     of the pipeline's own measured maximum rate: output record timestamp minus the raw record's
     ``ingested_at`` header. Tansu does not set LogAppendTime, so the output timestamp is the
     record's CreateTime, set by the pipeline's producer when it sends (librdkafka in all of
     them): it leaves out the broker append, which the pipelines share.

3. Checks that every crm-stream run and every peer agree (as many canonical events as generated,
   no duplicate ``event_id``, the same id set and the same per-campaign 1h counts as the crm-stream
   run with the fewest workers) by consuming their output topics, never by watermark.
4. Writes ``results.json`` and ``results.png`` under ``--out`` and prints a table with the ratios
   crm-stream / passthrough, crm-stream / each peer (the run with the fewest workers) and N
   workers / 1 worker. ``--profile crm-stream`` records each worker with py-spy during its
   throughput phase and prints the top of the profile (a run's workers together).

The peers run in their own virtualenvs, created on first use and then reused: ``.venv-quix``
(quixstreams 3.28 pins confluent-kafka below crm-stream's version) and ``.venv-bytewax``
(``bytewax[kafka]`` at :data:`BYTEWAX_VERSION`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench import generate, progress
from crmdemo.demo import scrape
from crmstream.broker import EmbeddedBroker, free_port
from crmstream.kafka import consumer_config, producer_config
from crmstream.resources import tansu_dev_profile
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import (
    H_FORMAT,
    H_INGESTED_AT,
    H_SOURCE,
    H_VENDOR,
    VENDORS,
    TopicSpec,
    create_topics,
    raw_topic,
)

REPO = Path(__file__).resolve().parent.parent
QUIX_VENV = REPO / ".venv-quix"
QUIX_REQUIREMENT = "quixstreams==3.28.*"
BYTEWAX_VENV = REPO / ".venv-bytewax"
BYTEWAX_VERSION = "0.21.1"
# What crm-stream's pure modules (normalizers, record builders, Avro serde) need in a peer's venv.
PEER_EXTRAS = ("orjson", "httpx", "fastavro")
PIPELINES = ("passthrough", "crm-stream", "quix", "bytewax")
PEERS = ("quix", "bytewax")
LABELS = {
    "passthrough": "passthrough",
    "crm-stream": "crm-stream",
    "quix": "Quix Streams",
    "bytewax": "Bytewax",
}


# On top of the Tansu dev profile (config/tansu-dev.env), which now batches changelog records
# like production (a restore takes each changelog's end from a fetch's high watermark,
# CRM_CHANGELOG_END_FROM_FETCH), so the benchmark adds nothing: ``--worker-env`` adds settings.
WORKER_DEFAULTS: dict[str, str] = {}


class BenchError(Exception):
    """The benchmark could not measure something; the message says what."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- broker I/O -----------------------------------------------------------------------------


def _producer(bootstrap: str, linger_ms: float | None = None) -> Producer:
    """The connectors' producer (RawPublisher's ``producer_config``), so the raw records arrive
    as theirs do: the same batches, hence the same produce requests for the broker to serve.
    ``linger_ms`` (``--feed-linger-ms``) overrides its linger; until December 2026 the feed
    lingered 5 ms against the connectors' 20, ~4x their produce requests at a live rate."""
    extra = {} if linger_ms is None else {"linger.ms": linger_ms}
    return Producer(producer_config(Settings.from_env({}, bootstrap_servers=bootstrap), **extra))


def _headers(vendor: str, index: int, ingested_at: int) -> list[tuple[str, bytes]]:
    return [
        (H_VENDOR, vendor.encode()),
        (H_SOURCE, f"bench:{vendor}#{index}".encode()),
        (H_FORMAT, b"json"),
        (H_INGESTED_AT, str(ingested_at).encode()),
    ]


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes, headers: Any) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def _interleaved(data: generate.Dataset) -> Iterator[tuple[str, int, bytes | None, bytes]]:
    """Records of all vendors round-robin, as connectors running side by side would publish."""
    lists = [(v, data.records[v]) for v in VENDORS if v in data.records]
    longest = max(len(r) for _, r in lists)
    for i in range(longest):
        for vendor, records in lists:
            if i < len(records):
                key, value = records[i]
                yield vendor, i, key, value


def preload(
    bootstrap: str, prefix: str, data: generate.Dataset, producer: Producer | None = None
) -> float:
    """Publish every record to ``<prefix>raw.<vendor>``; returns the seconds it took."""
    producer = producer or _producer(bootstrap)
    started = time.perf_counter()
    for n, (vendor, i, key, value) in enumerate(_interleaved(data)):
        _produce(producer, f"{prefix}{raw_topic(vendor)}", key, value, _headers(vendor, i, 0))
        if n % 1000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise BenchError(f"preload to {prefix}raw.*: records not acknowledged in 120 s")
    return time.perf_counter() - started


def feed(
    bootstrap: str,
    prefix: str,
    data: generate.Dataset,
    rate: float,
    producer: Producer | None = None,
) -> dict[str, float]:
    """Publish ``data`` open-loop at ``rate`` records/s, stamping ``ingested_at`` at send time.

    Give it a ``producer`` that has already delivered (the preload's): a new idempotent
    producer holds its first records until the broker gave it a producer id (about 0.5 s on
    Tansu), and those records, stamped at send time, would carry that wait as latency."""
    producer = producer or _producer(bootstrap)
    started = time.monotonic()
    n = 0
    for n, (vendor, i, key, value) in enumerate(_interleaved(data), start=1):
        if n % 20 == 0:
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            producer.poll(0)
        _produce(
            producer, f"{prefix}{raw_topic(vendor)}", key, value, _headers(vendor, i, now_ms())
        )
    elapsed = time.monotonic() - started
    if producer.flush(60):
        raise BenchError("latency feed: records not acknowledged in 60 s")
    return {"records": n, "seconds": round(elapsed, 3), "achieved_rate": round(n / elapsed, 1)}


class OutputReader:
    """Reads one output topic from the start with manually assigned partitions, incrementally.

    Counts by consuming: Tansu's high watermark can under-report, so a phase reads until it has
    the records it expects, then ``idle`` seconds more (to see unexpected extra ones), or until
    ``timeout``.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        settings = Settings.from_env({}, bootstrap_servers=bootstrap)
        self.topic = topic
        self.consumer = Consumer(
            consumer_config(settings, group_id=f"bench-reader-{uuid.uuid4().hex[:8]}")
        )
        meta = self.consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise BenchError(f"output topic {topic} does not exist")
        parts = sorted(meta.topics[topic].partitions)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])

    def read(
        self, expect: int, handle: Callable[[Message], None], timeout: float, idle: float = 2.0
    ) -> int:
        got = 0
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = self.consumer.consume(5000, 0.2)
            fresh = 0
            for msg in batch:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise BenchError(f"reading {self.topic}: {error.str()}")
                handle(msg)
                fresh += 1
            if fresh:
                got += fresh
                last = time.monotonic()
            elif got >= expect and time.monotonic() - last >= idle:
                break
        return got

    def close(self) -> None:
        self.consumer.close()


# --- the pipelines under test ---------------------------------------------------------------


@dataclass
class Pipeline:
    """One pipeline run: how to start its child processes (``workers`` of them for crm-stream,
    one consumer group), read their progress and find their output."""

    name: str
    prefix: str
    bootstrap: str
    workdir: Path
    partitions: int
    workers: int = 1
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    output_topic: str = ""
    state_dir: Path | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    _metrics_urls: list[str] = field(default_factory=list)
    _last_progress: list[int] = field(default_factory=list)
    _progress_file: Path | None = None
    # py-spy on the children (``--profile``): stopped with them if a phase fails.
    profilers: list[Profiler] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The run's name in the results: ``crm-stream``, ``crm-stream-2w``, ``quix``, ..."""
        return run_key(self.name, self.workers)

    def log_path(self, index: int = 0) -> Path:
        if self.workers == 1:
            return self.workdir / f"{self.key}.log"
        return self.workdir / f"{self.key}-w{index}.log"

    def settings_env(self, index: int = 0) -> dict[str, str]:
        env = tansu_dev_profile()
        data_dir = self.workdir / f"{self.key}-state"
        if self.workers > 1:
            data_dir = data_dir / f"w{index}"
        env.update(
            {
                "CRM_BOOTSTRAP_SERVERS": self.bootstrap,
                "CRM_TOPIC_PREFIX": self.prefix,
                "CRM_PARTITIONS": str(self.partitions),
                "CRM_DATA_DIR": str(data_dir),
                # One consumer group: every worker of a run has the same app id.
                "CRM_APP_ID": f"bench-{self.prefix.rstrip('.')}",
                "CRM_LOG_LEVEL": "WARNING",
            }
        )
        env.update(self.env_overrides)
        return env

    def create_topics(self) -> None:
        settings = Settings.from_env(self.settings_env())
        extra: list[TopicSpec] = []
        if self.name == "crm-stream":
            from processors.app import changelog_specs

            extra = changelog_specs(settings)
        elif self.name == "passthrough":
            extra = [
                TopicSpec(
                    "passthrough",
                    "bench: raw bytes copied",
                    {"retention.ms": str(14 * 86400_000), "retention.bytes": "-1"},
                )
            ]
        create_topics(settings, extra=extra)

    def start(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        if self.name == "crm-stream":
            # N ``crm-stream worker`` processes, same CRM_APP_ID, own data dir and metrics port.
            self.state_dir = self.workdir / f"{self.key}-state"
            self.output_topic = f"{self.prefix}events"
            for index in range(self.workers):
                port = free_port()
                env = dict(base)
                env.update(self.settings_env(index))
                env["CRM_METRICS_PORT"] = str(port)
                # The query API is not measured; several workers would contend for its port.
                env.setdefault("CRM_API_PORT", "0")
                self._metrics_urls.append(f"http://127.0.0.1:{port}/metrics")
                self._spawn([sys.executable, "-m", "crmcli", "worker"], env, index)
            self._last_progress = [0] * self.workers
            return
        if self.workers != 1:
            raise BenchError(f"{self.name}: --workers applies to crm-stream only")
        env = dict(base)
        self._progress_file = self.workdir / f"{self.key}.progress.json"
        if self.name == "passthrough":
            self.output_topic = f"{self.prefix}passthrough"
            cmd = [
                sys.executable,
                "-m",
                "bench.passthrough",
                "--bootstrap-servers",
                self.bootstrap,
                "--input",
                ",".join(f"{self.prefix}{raw_topic(v)}" for v in VENDORS),
                "--output",
                self.output_topic,
                "--progress",
                str(self._progress_file),
                *self.extra_args,
            ]
        else:
            # The peers run in their own virtualenv, on the repository's pure modules.
            self.state_dir = self.workdir / f"{self.key}-state"
            self.output_topic = f"{self.prefix}events"
            env["PYTHONPATH"] = str(REPO)
            common = [
                "--bootstrap-servers",
                self.bootstrap,
                "--prefix",
                self.prefix,
                "--state-dir",
                str(self.state_dir),
                "--progress",
                str(self._progress_file),
                *self.extra_args,
            ]
            if self.name == "quix":
                cmd = [
                    str(ensure_quix_venv()),
                    "-m",
                    "bench.quix_peer",
                    "--group",
                    f"bench-quix-{self.prefix.rstrip('.')}",
                    "--partitions",
                    str(self.partitions),
                    *common,
                ]
            else:
                cmd = [str(ensure_bytewax_venv()), "-m", "bench.bytewax_peer", *common]
        self._spawn(cmd, env, 0)

    def _spawn(self, cmd: list[str], env: dict[str, str], index: int) -> None:
        with self.log_path(index).open("ab") as log:
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def worker_progress(self) -> list[int]:
        """Raw records each child has accounted for (output acknowledged or dropped)."""
        self.check_alive()
        if self._progress_file is not None:
            return [progress.read(self._progress_file)]
        for index, url in enumerate(self._metrics_urls):
            try:
                accounts = scrape(url)
            except OSError:
                continue  # not up yet, or a slow scrape: keep its last count
            self._last_progress[index] = sum(a.accounted for a in accounts.values())
        return list(self._last_progress)

    @property
    def has_stages(self) -> bool:
        """Whether the pipeline reports CPU by stage (crm-stream's workers)."""
        return bool(self._metrics_urls)

    def stage_cpu(self) -> dict[str, float] | None:
        """CPU seconds by stage, its workers together (``crm_worker_stage_cpu_seconds_total``);
        None for a pipeline without them (the peers)."""
        if not self._metrics_urls:
            return None
        total: dict[str, float] = {}
        for url in self._metrics_urls:
            try:
                found = stage_seconds(url)
            except OSError:
                return None  # a scrape that failed: no breakdown rather than a wrong one
            for stage, seconds in found.items():
                total[stage] = total.get(stage, 0.0) + seconds
        return total

    def progress(self) -> int:
        """Raw records the pipeline has accounted for, all its processes together."""
        return sum(self.worker_progress())

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = self.log_path(index).read_text(errors="replace")[-3000:]
                which = self.name if self.workers == 1 else f"{self.key} worker {index}"
                raise BenchError(f"{which} exited with {proc.returncode}:\n{tail}")

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.procs]

    def stop(self) -> None:
        for profiler in self.profilers:
            profiler.stop()
        self.profilers = []
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_key(name: str, workers: int) -> str:
    return name if workers == 1 else f"{name}-{workers}w"


def run_label(key: str) -> str:
    """``crm-stream-2w`` -> ``crm-stream x2``."""
    if key in LABELS:
        return LABELS[key]
    base, _, n = key.rpartition("-")
    return f"{LABELS.get(base, base)} x{n.rstrip('w')}"


def _ensure_venv(venv: Path, requirements: list[str], probe: str) -> Path:
    """``<venv>/bin/python`` with ``requirements``, created on first use (and again when
    ``probe`` fails in it, e.g. after a version pin changed)."""
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0
    ):
        return python
    print(f"creating {venv} with {' '.join(requirements)} ...", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    print(f"created {venv} in {time.perf_counter() - started:.0f} s", flush=True)
    return python


def ensure_quix_venv() -> Path:
    """``.venv-quix/bin/python`` with quixstreams 3.28 (and what crm-stream's normalizers,
    record builders and Avro serde import); created on first use."""
    return _ensure_venv(
        QUIX_VENV,
        [QUIX_REQUIREMENT, *PEER_EXTRAS],
        "import quixstreams, orjson, fastavro, httpx",
    )


def ensure_bytewax_venv() -> Path:
    """``.venv-bytewax/bin/python`` with Bytewax (pinned, with its Kafka extra: confluent-kafka)
    and what crm-stream's pure modules import; created on first use, then reused."""
    return _ensure_venv(
        BYTEWAX_VENV,
        [f"bytewax[kafka]=={BYTEWAX_VERSION}", *PEER_EXTRAS],
        "import bytewax.connectors.kafka, orjson, fastavro, httpx\n"
        "from importlib.metadata import version\n"
        f"assert version('bytewax') == {BYTEWAX_VERSION!r}",
    )


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU of the processes and their children."""
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
    return total


STAGE_METRIC = "crm_worker_stage_cpu_seconds_total"
STAGES = ("normalize", "dedupe", "encode", "produce", "stats")
CONSUME = "consume"  # the process's CPU time less the stages': Faust, event loop, threads


def stage_seconds(url: str) -> dict[str, float]:
    """A worker's CPU seconds by stage so far, from its metrics endpoint."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == STAGE_METRIC:
                out[sample.labels["stage"]] = float(sample.value)
    return out


def stage_us_per_event(
    before: dict[str, float], after: dict[str, float], cpu_s: float, events: int
) -> dict[str, float]:
    """CPU microseconds per raw record by stage between two readings, and ``consume``: the rest
    of the processes' CPU time ``cpu_s`` over the same span."""
    per = {
        stage: round((after.get(stage, 0.0) - before.get(stage, 0.0)) / events * 1e6, 1)
        for stage in STAGES
    }
    per[CONSUME] = round(cpu_s / events * 1e6 - sum(per.values()), 1)
    return {stage: per[stage] for stage in (CONSUME, *STAGES)}


def _peak_rss_mb(proc: psutil.Process) -> float:
    """``VmHWM``: the child's peak resident set since it started."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return proc.memory_info().rss / 2**20


def _du_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[index])


class Profiler:
    """py-spy attached to a child for its throughput phase (``--profile``)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "100",
                "--format",
                "raw",
                "--nonblocking",
                "--threads",
                "--nolineno",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def profile_top(collapsed: list[Path], limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Functions by self and by inclusive share of samples, from py-spy's collapsed stacks (of
    all the run's worker processes together)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    lines = [line for path in collapsed for line in path.read_text().splitlines()]
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {
                "function": frame,
                "self_pct": round(100 * own[frame] / total, 1),
                "inclusive_pct": round(100 * inclusive[frame] / total, 1),
            }
            for frame, _n in counter.most_common(limit)
        ]

    if not total:
        return {"self": [], "inclusive": [], "samples": []}
    return {"self": rows(own), "inclusive": rows(inclusive), "samples": [{"total": total}]}


# --- one pipeline, measured -----------------------------------------------------------------


def _event_handler(
    name: str, serde: AvroSerde | None, topic: str
) -> Callable[[Message], int | None]:
    """``msg -> ingested_at`` for a pipeline's output records."""
    if name == "passthrough":

        def from_header(msg: Message) -> int | None:
            headers = msg.headers() or []
            items = headers.items() if isinstance(headers, dict) else headers
            for key, value in items:
                if key == H_INGESTED_AT and isinstance(value, bytes | str) and value:
                    return int(value)
            return None

        return from_header
    assert serde is not None

    def from_avro(msg: Message) -> int | None:
        return int(serde.decode(msg.value() or b"", topic)[1]["ingested_at"])

    return from_avro


def wait_for_stats(
    pipe: Pipeline, serde: AvroSerde, expected: int, args: argparse.Namespace
) -> tuple[int, dict[str, int]]:
    """Read ``campaign-stats`` until the latest 1h windows sum to ``expected`` events.

    Returns the timestamp of the upsert that completed the count and the 1h total per campaign.
    """
    topic = f"{pipe.prefix}campaign-stats"
    reader = OutputReader(pipe.bootstrap, topic)
    latest: dict[bytes, tuple[int, dict[str, Any]]] = {}

    def on_stat(msg: Message) -> None:
        if msg.value() is None:  # a tombstone: an expired window (README, "What is kept")
            latest.pop(msg.key() or b"", None)
            return
        record = serde.decode(msg.value(), topic)[1]
        if record["window"] == "1h":
            latest[msg.key() or b""] = (msg.timestamp()[1], record)

    deadline = time.monotonic() + args.phase_timeout
    try:
        while True:
            pipe.check_alive()
            reader.read(0, on_stat, timeout=1.0, idle=0.2)
            if sum(r["total"] for _, r in latest.values()) >= expected:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{pipe.key}: campaign stats incomplete after the timeout")
    finally:
        reader.close()
    totals: Counter[str] = Counter()
    for _, r in latest.values():
        totals[f"{r['vendor']}|{r['app_id'] or ''}|{r['campaign_id'] or ''}"] += r["total"]
    return max(ts for ts, _ in latest.values()), dict(totals)


def measure(
    pipe: Pipeline,
    data: generate.Dataset,
    args: argparse.Namespace,
    out: Path,
    one_worker_rate: float | None = None,
) -> dict[str, Any]:
    """One pipeline's throughput, CPU, memory, state and latency phases. ``one_worker_rate``
    (a crm-stream run of several workers): the 1-worker run's events/s, so that one more phase
    feeds this run at the 1-worker run's half rate, the same load its half-rate phase had."""
    total = data.total
    result: dict[str, Any] = {"pipeline": pipe.name, "workers": pipe.workers, "prefix": pipe.prefix}
    pipe.create_topics()
    # One producer for the preload and both latency feeds, as a connector keeps its own: a new
    # one's first records wait for its producer id, which the latency would count (feed()).
    producer = _producer(pipe.bootstrap, args.feed_linger_ms)
    result["feed_linger_ms"] = args.feed_linger_ms
    result["preload_s"] = round(preload(pipe.bootstrap, pipe.prefix, data, producer), 2)
    result["preload_rate"] = round(total / result["preload_s"], 1)
    print(f"[{pipe.key}] preloaded {total} records in {result['preload_s']} s", flush=True)

    pipe.start()
    procs = pipe.processes()
    if pipe.name in args.profile:
        for index, proc in enumerate(procs):
            suffix = "" if len(procs) == 1 else f"-w{index}"
            pipe.profilers.append(Profiler(proc.pid, out / f"profile-{pipe.key}{suffix}.txt"))
    started, started_wall = time.monotonic(), time.time()
    first = 0
    while True:
        # The CPU and stage readings are taken before the progress that ends the wait: read
        # after it, a loaded machine could let the worker finish a small input in between (one
        # scrape waits for its GIL), and every stage would then read zero.
        t0, t0_wall, cpu0 = time.monotonic(), time.time(), _cpu_seconds(procs)
        stages0 = pipe.stage_cpu()
        # (A stage scrape that failed is taken again: a run without its breakdown says less.)
        if (first := pipe.progress()) > 0 and (stages0 is not None or not pipe.has_stages):
            break
        if time.monotonic() - started > args.startup_timeout:
            raise BenchError(f"{pipe.key} processed nothing in {args.startup_timeout} s")
        time.sleep(0.02)
    result["startup_s"] = round(t0 - started, 2)
    done = first
    # Several workers: when did the last of them account for its first record (the group has
    # formed and every worker has partitions)? Until then one worker may hold them all.
    all_active: float | None = t0 if len(procs) == 1 else None
    # Each scrape of the worker's /metrics costs it CPU (prometheus_client renders every series):
    # at 0.2 s it was 4% of the worker's profile, so poll it less often.
    poll = 1.0 if pipe.name == "crm-stream" else 0.05
    deadline = t0 + args.phase_timeout
    while done < total:
        if time.monotonic() > deadline:
            raise BenchError(f"{pipe.key} accounted for {done}/{total} in {args.phase_timeout} s")
        time.sleep(poll)
        per_worker = pipe.worker_progress()
        done = sum(per_worker)
        if all_active is None and all(per_worker):
            all_active = time.monotonic()
    t1, t1_wall = time.monotonic(), time.time()
    measured = total - first
    window = "first to last record accounted for"
    if measured < total // 2:
        # A tiny input was half done before the first poll: time it from the child's start,
        # startup included (only the smoke test runs this small).
        window = "from process start (input too small to time)"
        measured, t0, t0_wall, cpu0 = total, started, started_wall, 0.0
        stages0 = {} if stages0 is not None else None
    serde = (
        AvroSerde(Settings.from_env({}, bootstrap_servers=pipe.bootstrap))
        if pipe.name != "passthrough"
        else None
    )
    stats_end_ms: int | None = None
    campaign_totals: dict[str, int] = {}
    if serde is not None:
        # The stats stage runs behind the events (crm-stream: its own agent on stats-updates;
        # Quix: group_by's repartition topic), so the phase ends when the campaign stats count
        # every canonical event. Its end is the last upsert's timestamp, not when we noticed.
        stats_end_ms, campaign_totals = wait_for_stats(pipe, serde, data.expected_events, args)
    t2, cpu2 = time.monotonic(), _cpu_seconds(procs)
    stages2 = pipe.stage_cpu()
    if pipe.profilers:
        result["profile"] = [str(profiler.out) for profiler in pipe.profilers]
        for profiler in pipe.profilers:
            profiler.stop()
        pipe.profilers = []
    end_wall = stats_end_ms / 1000 if stats_end_ms is not None else t1_wall
    elapsed = max(end_wall, t1_wall) - t0_wall
    result.update(
        throughput_window=window,
        throughput_window_s=round(elapsed, 3),
        events_per_s=round(measured / elapsed, 1),
        # Raw records accounted for (events out, duplicates and dead letters dropped), stats
        # stage not included.
        events_stage_per_s=round(measured / (t1 - t0), 1),
        cpu_s_per_million=round((cpu2 - cpu0) / (measured / 1e6), 2),
        cpu_utilisation=round((cpu2 - cpu0) / (t2 - t0), 2),
        # CPU microseconds per raw record by stage (crm-stream only), over the same span.
        cpu_us_per_event_by_stage=(
            stage_us_per_event(stages0, stages2, cpu2 - cpu0, measured)
            if stages0 is not None and stages2 is not None
            else None
        ),
        # All the run's processes together (a worker's peak each, added up).
        peak_rss_mb=round(sum(_peak_rss_mb(proc) for proc in procs), 1),
    )
    if len(procs) > 1:
        # Per worker: its share of the records (a rebalance can make a worker re-process
        # records another one had processed but not committed, so these may add up to more than
        # the input) and its own peak RSS.
        result["accounted_per_worker"] = pipe.worker_progress()
        result["peak_rss_mb_per_worker"] = [round(_peak_rss_mb(proc), 1) for proc in procs]
        result["all_workers_active_after_s"] = (
            round(all_active - t0, 1) if all_active is not None else None
        )
    print(
        f"[{pipe.key}] {measured} records in {elapsed:.2f} s: {result['events_per_s']:.0f}/s "
        f"(events stage alone {result['events_stage_per_s']:.0f}/s), "
        f"{result['cpu_s_per_million']} CPU s per million, peak RSS {result['peak_rss_mb']} MB",
        flush=True,
    )
    if result["cpu_us_per_event_by_stage"] is not None:
        by_stage = ", ".join(f"{k} {v}" for k, v in result["cpu_us_per_event_by_stage"].items())
        print(f"[{pipe.key}] CPU us per event by stage: {by_stage}", flush=True)

    # Outputs of the throughput phase: count, distinct keys, output-timestamp span.
    reader = OutputReader(pipe.bootstrap, pipe.output_topic)
    expect = total if pipe.name == "passthrough" else data.expected_events
    keys: set[bytes] = set()
    stamps: list[int] = []

    def collect(msg: Message) -> None:
        keys.add(msg.key() or b"")
        stamps.append(msg.timestamp()[1])

    count = reader.read(expect, collect, timeout=args.phase_timeout)
    result["outputs"] = {
        "records": count,
        "expected": expect,
        "distinct_keys": len(keys),
        "duplicate_keys": count - len(keys) if pipe.name != "passthrough" else None,
        "output_span_s": round((max(stamps) - min(stamps)) / 1000, 3) if stamps else None,
        "campaigns_with_stats": len(campaign_totals) if serde is not None else None,
        "stats_total_1h": sum(campaign_totals.values()) if serde is not None else None,
    }
    if pipe.name != "passthrough":
        disk = _du_bytes(pipe.state_dir)
        result["state_disk_mb"] = round(disk / 2**20, 2)
        result["rocksdb_mb_per_million_keys"] = round(
            disk / 2**20 / (max(1, data.expected_events) / 1e6), 1
        )
    else:
        result["rocksdb_mb_per_million_keys"] = None

    # Latency: open loop at 100% and 50% of this pipeline's own maximum. Each phase starts
    # once the previous one is done, its stats included (as the throughput phase ends): the
    # full-rate phase overloads the pipeline on purpose, and a stats stage still catching up
    # on it would otherwise be measured as the half-rate phase's latency.
    ingested = _event_handler(pipe.name, serde, pipe.output_topic)
    result["latency"] = {}
    accounted = pipe.progress()
    counted = data.expected_events  # canonical events the campaign stats count by now
    phases: list[tuple[str, float]] = [("full", result["events_per_s"])]
    if one_worker_rate is not None:
        # Two workers' own half rate is more records a second than one worker's: at the same
        # load, which of the two is faster is a question of latency alone. It comes second, as
        # the 1-worker run's half-rate phase did, so both meet the broker after the same phases:
        # on the embedded broker a fetch costs more the more batches its partition holds, and
        # a later phase at the same rate measured up to 4x that phase's p99 (bench/README.md).
        phases.append((SAME_LOAD, one_worker_rate * 0.5))
    phases += [("half", result["events_per_s"] * 0.5)]
    phases += [(f"{rate:g}/s", rate) for rate in args.latency_rates]
    for salt, (label, wanted) in enumerate(phases, start=1):
        if serde is not None and label != "full":
            wait_for_stats(pipe, serde, counted, args)
        rate = max(50.0, wanted)
        n = int(min(args.latency_max_events, max(200, rate * args.latency_seconds)))
        stages_before = pipe.stage_cpu()
        cpu_before, phase_t0 = _cpu_seconds(procs), time.monotonic()
        broker_before = _cpu_seconds(BROKER_PROCESSES)
        # Live records: their occurred_at spread over the phase's own length before it starts
        # (each one occurred that long before it is sent), unless --latency-event-span says
        # otherwise (3600: an hour of event time in each phase, as before issue 21's last stop).
        span_s = args.latency_event_span if args.latency_event_span else n / rate
        phase = generate.generate(
            n,
            seed=args.seed + salt,
            campaigns=args.campaigns,
            base_ms=now_ms(),
            id_salt=salt,
            span_ms=max(1, int(span_s * 1000)),
        )
        phase_start = now_ms()
        fed = feed(pipe.bootstrap, pipe.prefix, phase, rate, producer)
        target = accounted + phase.total
        deadline = time.monotonic() + args.phase_timeout
        while (accounted := pipe.progress()) < target:
            if time.monotonic() > deadline:
                raise BenchError(f"{pipe.key}: latency phase {label} did not finish")
            time.sleep(poll)
        # The pipeline's CPU while the phase was fed and drained: its share (1.0 is one core
        # busy) and per record (a live feed arrives in smaller batches than a backlog).
        phase_cpu_s = _cpu_seconds(procs) - cpu_before
        phase_cpu = phase_cpu_s / max(1e-9, time.monotonic() - phase_t0)
        broker_cpu = (_cpu_seconds(BROKER_PROCESSES) - broker_before) / max(
            1e-9, time.monotonic() - phase_t0
        )
        stages_after = pipe.stage_cpu()
        latencies: list[int] = []
        by_second: dict[int, list[int]] = {}

        def on_output(
            msg: Message,
            _start: int = phase_start,
            _out: list[int] = latencies,
            _by_second: dict[int, list[int]] = by_second,
        ) -> None:
            ingested_at = ingested(msg)
            if ingested_at is not None and ingested_at >= _start:
                latency = msg.timestamp()[1] - ingested_at
                _out.append(latency)
                _by_second.setdefault((ingested_at - _start) // 1000, []).append(latency)

        phase_expect = phase.total if pipe.name == "passthrough" else phase.expected_events
        counted += phase.expected_events
        # No idle wait for extra records here: the agreement is checked on the throughput
        # phase's outputs, and a late extra record of this phase is older than the next one's.
        reader.read(phase_expect, on_output, timeout=60, idle=0.2)
        result["latency"][label] = {
            "target_rate": round(rate, 1),
            **fed,
            "measured": len(latencies),
            "expected": phase_expect,
            "p50_ms": _percentile(latencies, 0.50),
            "p99_ms": _percentile(latencies, 0.99),
            "max_ms": float(max(latencies)) if latencies else math.nan,
            # Per second of the feed: records, p50 and max latency. A steady queue and a
            # periodic stall give the same p99, not the same series.
            "by_second": [
                [second, len(v), _percentile(v, 0.50), float(max(v))]
                for second, v in sorted(by_second.items())
            ],
            "cpu_utilisation": round(phase_cpu, 2),
            "broker_cpu_utilisation": round(broker_cpu, 2) if BROKER_PROCESSES else None,
            "cpu_s_per_million": round(phase_cpu_s / (phase.total / 1e6), 1),
            # A live feed's CPU by stage: where a phase's cost per record differs from the
            # backlog's (smaller batches), and from one worker's (half of them each).
            "cpu_us_per_event_by_stage": (
                stage_us_per_event(stages_before, stages_after, phase_cpu_s, phase.total)
                if stages_before is not None and stages_after is not None
                else None
            ),
        }
        print(
            f"[{pipe.key}] latency at {label} rate ({rate:.0f}/s): "
            f"p50 {result['latency'][label]['p50_ms']:.0f} ms, "
            f"p99 {result['latency'][label]['p99_ms']:.0f} ms, "
            f"CPU {phase_cpu:.2f} cores"
            + (f" (broker {broker_cpu:.2f})" if BROKER_PROCESSES else "")
            + ", "
            f"{result['latency'][label]['cpu_s_per_million']:.0f} CPU s per million",
            flush=True,
        )
        if (by_stage := result["latency"][label]["cpu_us_per_event_by_stage"]) is not None:
            print(
                f"[{pipe.key}]   CPU us per event by stage at {label} rate: "
                + ", ".join(f"{k} {v}" for k, v in by_stage.items()),
                flush=True,
            )
    reader.close()
    pipe.stop()
    result["_keys"] = keys  # for the agreement check; not written out
    result["_campaign_totals"] = campaign_totals
    return result


# --- report -----------------------------------------------------------------------------------


def crm_runs(results: dict[str, dict[str, Any]]) -> list[str]:
    """The crm-stream runs, fewest workers first."""
    return sorted(
        (k for k, r in results.items() if r["pipeline"] == "crm-stream"),
        key=lambda k: results[k]["workers"],
    )


def base_crm_run(results: dict[str, dict[str, Any]]) -> str | None:
    """The crm-stream run the peers are compared with: the one with the fewest workers."""
    runs = crm_runs(results)
    return runs[0] if runs else None


def agreement(results: dict[str, dict[str, Any]], data: generate.Dataset) -> dict[str, Any]:
    """Every crm-stream run and every peer must emit the same canonical events, each exactly
    once, and the same per-campaign 1h counts."""
    out: dict[str, Any] = {"expected_canonical_events": data.expected_events}
    ok = True
    canonical = [k for k, r in results.items() if r["pipeline"] != "passthrough"]
    for key in canonical:
        o = results[key]["outputs"]
        out[key] = {"events": o["records"], "duplicate_ids": o["duplicate_keys"]}
        ok = ok and o["records"] == data.expected_events and o["duplicate_keys"] == 0
    if len(canonical) > 1:
        reference = base_crm_run(results) or canonical[0]
        others = [k for k in canonical if k != reference]
        ids = {k: results[k]["_keys"] == results[reference]["_keys"] for k in others}
        counts = {
            k: results[k]["_campaign_totals"] == results[reference]["_campaign_totals"]
            for k in others
        }
        out["compared_with"] = reference
        out["same_event_ids"] = all(ids.values())
        out["same_campaign_counts"] = all(counts.values())
        differ = sorted(k for k in others if not (ids[k] and counts[k]))
        if differ:
            out["differ"] = differ
        ok = ok and out["same_event_ids"] and out["same_campaign_counts"]
    if "passthrough" in results:
        o = results["passthrough"]["outputs"]
        out["passthrough"] = {"records": o["records"], "expected": data.total}
        ok = ok and o["records"] == data.total
    out["passed"] = ok
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def _ratio_row(crm: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    return {
        "events_per_s": _ratio(crm["events_per_s"], peer["events_per_s"]),
        "cpu_s_per_million": _ratio(crm["cpu_s_per_million"], peer["cpu_s_per_million"]),
        "peak_rss_mb": _ratio(crm["peak_rss_mb"], peer["peak_rss_mb"]),
        "p99_ms_half_rate": _ratio(
            crm["latency"]["half"]["p99_ms"], peer["latency"]["half"]["p99_ms"]
        ),
        # crm-stream runs only: at the 1-worker run's half rate (the same load for both)
        "p99_ms_1w_half_rate": _ratio(_same_load(crm, "p99_ms"), _same_load(peer, "p99_ms")),
    }


def ratio_columns(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """``(json key, header, numerator run, denominator run)`` for each ratio the run allows:
    the 1-worker (fewest workers) crm-stream run over each other pipeline, and each crm-stream
    run with more workers over it (the scaling)."""
    base = base_crm_run(results)
    if base is None:
        return []
    cols: list[tuple[str, str, str, str]] = []
    short = {"passthrough": "pass", "quix": "quix", "bytewax": "bwax"}
    for other in ("passthrough", *PEERS):
        if other in results:
            cols.append((f"crm_over_{other}", f"crm/{short[other]}", base, other))
    n0 = results[base]["workers"]
    for key in crm_runs(results)[1:]:
        n = results[key]["workers"]
        cols.append((f"crm_{n}w_over_{n0}w", f"{n}w/{n0}w", key, base))
    return cols


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        json_key: _ratio_row(results[a], results[b])
        for json_key, _header, a, b in ratio_columns(results)
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def run_order(results: dict[str, dict[str, Any]]) -> list[str]:
    """Columns: passthrough, the crm-stream runs by workers, then the peers."""
    order = [k for k in ("passthrough",) if k in results] + crm_runs(results)
    return order + [k for k in PEERS if k in results]


# The latency phase of a several-worker crm-stream run at the 1-worker run's half rate.
SAME_LOAD = "half of 1 worker"


def _same_load(r: dict[str, Any], stat: str) -> Any:
    """A crm-stream run's latency at the 1-worker run's half rate: its own half-rate phase for
    the 1-worker run, the same-load phase for several workers; none for the other pipelines."""
    if r["pipeline"] != "crm-stream":
        return None
    phase = r["latency"].get(SAME_LOAD) if r["workers"] > 1 else r["latency"].get("half")
    return phase[stat] if phase else None


def table(report: dict[str, Any]) -> str:
    results = report["pipelines"]
    names = run_order(results)
    rows: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
        ("events/s", lambda r: r["events_per_s"], 0),
        ("CPU s / million events", lambda r: r["cpu_s_per_million"], 1),
        ("peak RSS MB", lambda r: r["peak_rss_mb"], 0),
        ("p50 ms, full rate", lambda r: r["latency"]["full"]["p50_ms"], 0),
        ("p99 ms, full rate", lambda r: r["latency"]["full"]["p99_ms"], 0),
        ("p50 ms, half rate", lambda r: r["latency"]["half"]["p50_ms"], 0),
        ("p99 ms, half rate", lambda r: r["latency"]["half"]["p99_ms"], 0),
        ("p50 ms, 1 worker's half", functools.partial(_same_load, stat="p50_ms"), 0),
        ("p99 ms, 1 worker's half", functools.partial(_same_load, stat="p99_ms"), 0),
        ("state MB / M keys", lambda r: r["rocksdb_mb_per_million_keys"], 1),
        ("output records", lambda r: r["outputs"]["records"], 0),
    ]
    rows += [
        (f"CPU us/event: {stage}", functools.partial(_stage_of, stage=stage), 1)
        for stage in (CONSUME, *STAGES)
    ]
    cols = ratio_columns(results)
    header = f"{'':<24}" + "".join(f"{run_label(n):>15}" for n in names)
    header += "".join(f"{h:>10}" for _, h, _, _ in cols)
    lines = [header, "-" * len(header)]
    for label, get, digits in rows:
        line = f"{label:<24}" + "".join(f"{_fmt(get(results[n]), digits):>15}" for n in names)
        for _, _, a, b in cols:
            ratio = _ratio(_num(get(results[a])), _num(get(results[b])))
            line += f"{_fmt(ratio, 2):>10}"
        lines.append(line)
    agree = report["agreement"]
    lines.append("")
    lines.append(
        f"agreement: {'PASSED' if agree['passed'] else 'FAILED'} "
        f"({orjson.dumps({k: v for k, v in agree.items() if k != 'passed'}).decode()})"
    )
    return "\n".join(lines)


def _stage_of(result: dict[str, Any], stage: str) -> float | None:
    by_stage = result.get("cpu_us_per_event_by_stage")
    return None if by_stage is None else by_stage.get(stage)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


COLORS = {
    "passthrough": "#9e9e9e",
    "crm-stream": "#1f77b4",
    "quix": "#ff7f0e",
    "bytewax": "#2ca02c",
}


def _color(result: dict[str, Any]) -> str:
    if result["pipeline"] == "crm-stream" and result["workers"] > 1:
        return "#0b3d66"  # crm-stream with more workers: a darker blue
    return COLORS[result["pipeline"]]


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["pipelines"]
    names = run_order(results)
    labels = [run_label(n) for n in names]
    panels = [
        ("events / s (higher is better)", [results[n]["events_per_s"] for n in names]),
        ("CPU s per million events", [results[n]["cpu_s_per_million"] for n in names]),
        ("peak RSS (MB)", [results[n]["peak_rss_mb"] for n in names]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(4.3 * 4 + 1.2 * max(0, len(names) - 3), 4.4))
    for ax, (title, values) in zip(axes, panels, strict=False):
        ax.bar(labels, values, color=[_color(results[n]) for n in names])
        ax.set_title(title, fontsize=10)
        if max(values) > 20 * max(min(values), 1e-9):
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8, labelrotation=20)
    ax = axes[3]
    width = 0.2
    for j, (phase, stat) in enumerate(
        (("full", "p50_ms"), ("full", "p99_ms"), ("half", "p50_ms"), ("half", "p99_ms"))
    ):
        vals = [results[n]["latency"][phase][stat] for n in names]
        ax.bar(
            [i + (j - 1.5) * width for i in range(len(names))],
            vals,
            width,
            label=f"{stat[:3]} {phase}",
        )
    ax.set_xticks(range(len(names)), labels)
    ax.tick_params(axis="x", labelsize=8, labelrotation=20)
    ax.set_yscale("log")
    ax.set_title("end-to-end latency (ms, log)", fontsize=10)
    ax.legend(fontsize=7)
    run = report["run"]
    fig.suptitle(
        f"crm-stream benchmark: {run['events']:,} raw events, {run['cpus']} CPUs, {run['broker']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="raw records (default 1M)")
    p.add_argument(
        "--pipelines",
        default=",".join(PIPELINES),
        help=f"comma-separated, in run order (default {','.join(PIPELINES)})",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--bootstrap-servers", default="", help="use this broker, not an embedded one")
    p.add_argument("--campaigns", type=int, default=generate.DEFAULT_CAMPAIGNS)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--workers",
        default="1",
        help="crm-stream worker processes in one consumer group; a list (e.g. 1,2) runs "
        "crm-stream once per count, in sequence, each on fresh topics (default 1)",
    )
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--latency-max-events", type=int, default=200_000)
    p.add_argument(
        "--feed-linger-ms",
        type=float,
        default=None,
        help="the raw feed producer's linger.ms (default: the connectors' own, "
        "crmstream.kafka.producer_config); 5 reproduces the tables before December 2026",
    )
    p.add_argument(
        "--latency-event-span",
        type=float,
        default=0.0,
        help="seconds of event time (occurred_at) the records of one latency phase span; "
        "default: the phase's own length (a live feed). 3600 compresses an hour of event time "
        "into each phase, which touches ~360x more 1-minute windows per second",
    )
    p.add_argument(
        "--latency-rates",
        default="",
        help="comma-separated fixed rates (records/s) of further latency phases after the full "
        "and half rate ones, e.g. 2000,4000: the latency at the rate a deployment's peak needs",
    )
    p.add_argument("--phase-timeout", type=float, default=1800.0)
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="CRM_VAR=VALUE",
        help="a crm-stream worker setting (repeatable), e.g. CRM_WORKER_BATCH_SIZE=2000",
    )
    p.add_argument(
        "--profile",
        default="",
        help="comma-separated pipelines to record with py-spy during their throughput phase",
    )
    args = p.parse_args(argv)
    args.pipelines = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = set(args.pipelines) - set(PIPELINES)
    if unknown or not args.pipelines:
        p.error(f"--pipelines: unknown {sorted(unknown)}; choose from {', '.join(PIPELINES)}")
    args.profile = [n.strip() for n in args.profile.split(",") if n.strip()]
    try:
        args.latency_rates = [float(r) for r in args.latency_rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--latency-rates wants rates like 2000,4000, got {args.latency_rates!r}")
    if any(r <= 0 for r in args.latency_rates):
        p.error(f"--latency-rates wants positive rates, got {args.latency_rates!r}")
    try:
        workers = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        p.error(f"--workers wants counts like 1 or 1,2, got {args.workers!r}")
    if not workers or min(workers) < 1:
        p.error(f"--workers wants counts of at least 1, got {args.workers!r}")
    args.workers = list(dict.fromkeys(workers))
    if args.events < 100:
        p.error("--events must be at least 100")
    for item in args.worker_env:
        if not item.startswith("CRM_") or "=" not in item:
            p.error(f"--worker-env wants CRM_VAR=VALUE, got {item!r}")
    return args


BROKER_PROCESSES: list[psutil.Process] = []
"""The embedded broker's process (none with ``--bootstrap-servers``): its CPU share in each latency
phase says how much of the machine the pipeline's requests and the feed cost it."""


@contextlib.contextmanager
def _broker(args: argparse.Namespace, out: Path) -> Iterator[str]:
    if args.bootstrap_servers:
        yield args.bootstrap_servers
        return
    with EmbeddedBroker(log_path=out / "tansu.log") as broker:
        BROKER_PROCESSES[:] = [psutil.Process(broker.pid)]
        try:
            yield broker.bootstrap_servers
        finally:
            BROKER_PROCESSES.clear()


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir()
    if "quix" in args.pipelines:
        ensure_quix_venv()
    if "bytewax" in args.pipelines:
        ensure_bytewax_venv()

    started = time.perf_counter()
    data = generate.generate(
        args.events, seed=args.seed, campaigns=args.campaigns, base_ms=now_ms()
    )
    gen_s = time.perf_counter() - started
    print(
        f"generated {data.total} raw records in {gen_s:.1f} s: {data.duplicates} duplicates, "
        f"{data.malformed} malformed, {data.expected_events} distinct canonical events",
        flush=True,
    )
    run_id = uuid.uuid4().hex[:6]
    overrides = dict(WORKER_DEFAULTS)
    overrides.update(item.split("=", 1) for item in args.worker_env)
    results: dict[str, dict[str, Any]] = {}
    runs = [
        (name, n)
        for name in args.pipelines
        for n in (args.workers if name == "crm-stream" else [1])
    ]
    with _broker(args, out) as bootstrap:
        for name, workers in runs:
            key = run_key(name, workers)
            pipe = Pipeline(
                name=name,
                prefix=f"bench{run_id}-{key.replace('-', '')}.",
                bootstrap=bootstrap,
                workdir=workdir,
                partitions=args.partitions,
                workers=workers,
                env_overrides=overrides if name == "crm-stream" else {},
            )
            base = base_crm_run(results) if name == "crm-stream" and workers > 1 else None
            one_worker_rate = (
                results[base]["events_per_s"]
                if base is not None and results[base]["workers"] == 1
                else None
            )
            try:
                results[key] = measure(pipe, data, args, out, one_worker_rate)
            finally:
                pipe.stop()

    report: dict[str, Any] = {
        "run": {
            "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]]),
            "events": data.total,
            "per_vendor": data.per_vendor(),
            "duplicates": data.duplicates,
            "malformed": data.malformed,
            "expected_canonical_events": data.expected_events,
            "campaigns": args.campaigns,
            "partitions": args.partitions,
            "crm_stream_workers": args.workers if "crm-stream" in args.pipelines else [],
            "bytewax_version": BYTEWAX_VERSION if "bytewax" in args.pipelines else None,
            "generation_s": round(gen_s, 2),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "broker": args.bootstrap_servers or "embedded Tansu",
            "worker_env": overrides,
            "latency_timestamp": "output CreateTime (producer send time) - ingested_at header",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(time.perf_counter() - started, 1),
        },
        "agreement": agreement(results, data),
        "pipelines": {
            n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()
        },
    }
    report["ratios"] = ratios(results)
    profiled = {k: r["profile"] for k, r in results.items() if "profile" in r}
    if profiled:
        report["profile_top"] = {
            k: profile_top([Path(path) for path in paths]) for k, paths in profiled.items()
        }
    (out / "results.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    chart(report, out / "results.png")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print()
    print(table(report))
    for key, top in report.get("profile_top", {}).items():
        workers = report["pipelines"][key]["workers"]
        whose = f"{workers} processes together" if workers > 1 else "one process"
        print(
            f"\ntop of the {run_label(key)} profile (py-spy, {whose}, % of samples, by self time):"
        )
        for row in top["self"][:15]:
            share = f"self {row['self_pct']:5.1f}%  incl {row['inclusive_pct']:5.1f}%"
            print(f"  {share}  {row['function']}")
    print(f"\nresults: {args.out / 'results.json'}, chart: {args.out / 'results.png'}")
    return 0 if report["agreement"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
