"""``python -m bench.restore``: how long a worker that lost its disk is dark, and how long a
standby replica takes over (issue 23).

1. The bench generator's records (``bench/generate.py``: 5% duplicates, 0.5% malformed) go
   through one ``crm-stream worker`` until it has accounted for all of them: that many dedupe
   keys (one per distinct canonical event) are in its tables and their changelogs.
2. ``kill -9``, its data dir deleted, a new worker started: seconds until ``/readyz`` answers
   200 (its tables restored from the changelogs), and keys restored per second: the dedupe keys
   over those seconds less the start-up floor (the first worker's own seconds to ready, with
   nothing to restore: process start, group join).
3. Exactness: ``--fresh`` records (default 5,000): 80% new events, 20% byte-for-byte copies of
   records of step 1. The new worker must account for exactly these, and ``events`` must then hold
   every event of step 1 and of the new ones exactly once (no old event written again, whether
   from a resent copy or from a record of step 1 processed again).
``--direct`` skips step 1's worker: the dedupe changelog is written directly (``--keys`` marks
in the layout the worker writes, spread over the partitions), which measures the restore alone at
sizes whose first pass would take hours here (10M). Its exactness check has no copies (there are
no old records to copy).

4. ``--standby``: a second worker (standby replicas: ``CRM_TABLE_STANDBY_REPLICAS``, 1 by
   default) joins; once both are ready and the standbys caught up, the worker of step 2 is killed
   (-9): the takeover time is from the kill until the survivor's ``/readyz`` is 200 again after
   the rebalance, and until ``--takeover-records`` fresh records over every partition are all on
   ``events``.

The worker runs with the Tansu dev profile (``config/tansu-dev.env``) plus ``--worker-env``.
Results: printed, and ``restore.json`` in ``--out`` (default ``bench/results/restore``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message

from bench import generate
from bench.run import REPO, BenchError, OutputReader, _broker, _du_bytes, feed, preload
from crmdemo.demo import scrape
from crmstream.broker import free_port
from crmstream.resources import tansu_dev_profile
from crmstream.settings import Settings
from crmstream.topics import create_topics

# What share of the generator's raw records become distinct canonical events (bench/README.md).
EVENTS_PER_RECORD = 1 - generate.DUPLICATE_RATE - generate.MALFORMED_RATE


class Worker:
    """One ``crm-stream worker`` process of the run."""

    def __init__(self, name: str, env: dict[str, str], out: Path) -> None:
        self.name = name
        self.env = env
        self.log = out / f"{name}.log"
        self.port = int(env["CRM_METRICS_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def data_dir(self) -> Path:
        return Path(self.env["CRM_DATA_DIR"])

    def start(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        with self.log.open("ab") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crmcli", "worker"],
                env={**base, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchError(f"{self.name} exited with {code}:\n{tail}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float, since: float | None = None) -> float:
        """Seconds from ``since`` (default: the start) until ``/readyz`` answers 200."""
        since = self.started if since is None else since
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if self.ready():
                return time.monotonic() - since
            time.sleep(0.25)  # each /readyz checks the broker: not too often
        raise BenchError(f"{self.name} not ready after {timeout} s")

    def metric(self, name: str, label: str) -> float:
        """The value of the sample ``name{...label...}`` on /metrics (0 when absent)."""
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and label in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def accounted(self) -> int:
        """Raw records accounted for since the process started (output acknowledged or
        dropped)."""
        try:
            return sum(
                a.accounted for a in scrape(f"http://127.0.0.1:{self.port}/metrics").values()
            )
        except OSError:
            return 0

    def wait_accounted(self, n: int, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self.check()
            got = self.accounted()
            if got >= n:
                return time.monotonic() - started
            time.sleep(0.5)
        raise BenchError(f"{self.name}: {self.accounted()} of {n} records in {timeout} s")


def worker_env(
    bootstrap: str, prefix: str, partitions: int, data_dir: Path, extra: dict[str, str]
) -> dict[str, str]:
    env = tansu_dev_profile()
    env.update(
        {
            "CRM_BOOTSTRAP_SERVERS": bootstrap,
            "CRM_TOPIC_PREFIX": prefix,
            "CRM_PARTITIONS": str(partitions),
            "CRM_DATA_DIR": str(data_dir),
            "CRM_APP_ID": f"bench-{prefix.rstrip('.')}",
            "CRM_LOG_LEVEL": "WARNING",
            "CRM_METRICS_PORT": str(free_port()),
            "CRM_API_PORT": "0",
        }
    )
    env.update(extra)
    return env


def fresh_records(
    old: generate.Dataset, n: int, seed: int, salt: int
) -> tuple[generate.Dataset, int]:
    """``n`` records: 80% new events (their own ids), 20% copies of ``old``'s records. Returns
    them and how many distinct new events they hold."""
    copies = n // 5
    new = generate.generate(n - copies, seed=seed, id_salt=salt, duplicate_rate=0.0)
    step = max(1, old.total // copies)
    flat = [(v, r) for v, records in old.records.items() for r in records]
    for vendor, record in flat[::step][:copies]:
        new.records.setdefault(vendor, []).append(record)
    return new, new.expected_events


def write_marks(bootstrap: str, settings: Settings, n: int) -> float:
    """``n`` dedupe marks straight into the dedupe changelog (``--direct``), as the worker
    writes them: a mark key of this week's window, its value, partition by partition."""
    from confluent_kafka import Producer

    from crmstream.kafka import producer_config
    from processors.state import keys as layout

    topic = settings.topic(f"{settings.app_id}-dedupe-changelog")
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    window = int(settings.dedupe_window_s * 1000)
    start = time.time_ns() // 1_000_000
    start -= start % window
    began = time.monotonic()
    for i in range(n):
        key = layout.mark_key(start, layout.id_digest(b"bench:%d" % i))
        while True:
            try:
                producer.produce(
                    topic, layout.mark_value(i), key, partition=i % settings.partitions
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(300):
        raise BenchError("direct marks not acknowledged in 300 s")
    return round(time.monotonic() - began, 1)


def read_events(bootstrap: str, prefix: str, expect: int, timeout: float) -> tuple[int, int]:
    """(records on ``events``, distinct keys), reading until ``expect`` and 5 s more."""
    reader = OutputReader(bootstrap, f"{prefix}events")
    keys: set[bytes] = set()

    def collect(msg: Message) -> None:
        keys.add(msg.key() or b"")

    try:
        count = reader.read(expect, collect, timeout=timeout, idle=5.0)
    finally:
        reader.close()
    return count, len(keys)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    extra = dict(kv.split("=", 1) for kv in args.worker_env)
    if args.direct:
        data = generate.Dataset()
        keys = args.keys
    else:
        data = generate.generate(math.ceil(args.keys / EVENTS_PER_RECORD), seed=args.seed)
        keys = data.expected_events
    result: dict[str, Any] = {
        "dedupe_keys": keys,
        "raw_records": data.total,
        "partitions": args.partitions,
        "worker_env": extra,
        "cpus": os.cpu_count(),
    }
    print(f"{data.total} raw records, {keys} distinct events (dedupe keys)", flush=True)
    with _broker(args, out) as bootstrap:
        prefix = "restore."
        env = worker_env(bootstrap, prefix, args.partitions, out / "state-a", extra)
        settings = Settings.from_env(env)
        from processors.app import changelog_specs

        create_topics(settings, extra=changelog_specs(settings))
        if not args.direct:
            result["preload_s"] = round(preload(bootstrap, prefix, data), 1)
        first = Worker("worker-a", env, out)
        workers = [first]
        try:
            first.start()
            result["first_ready_s"] = round(first.wait_ready(args.timeout), 2)
            if args.direct:
                # Behind the running worker's back: only a restore reads them.
                result["changelog_written_s"] = write_marks(bootstrap, settings, keys)
            else:
                result["first_pass_s"] = round(first.wait_accounted(data.total, args.timeout), 1)
                print(f"first pass: {result['first_pass_s']} s", flush=True)
            # The marks and positions go to the changelog after the outputs are acknowledged.
            time.sleep(args.settle)
            result["state_disk_mb"] = round(_du_bytes(first.data_dir) / 2**20, 1)
            first.kill9()
            shutil.rmtree(first.data_dir)
            lost = Worker("worker-a-restored", env, out)
            workers.append(lost)
            lost.start()
            ready = lost.wait_ready(args.timeout)
            restoring = max(0.001, ready - result["first_ready_s"])
            result["restore"] = {
                "ready_s": round(ready, 2),
                "startup_floor_s": result["first_ready_s"],
                "keys_per_s": round(keys / restoring),
                "keys_per_s_over_ready_s": round(keys / ready),
                "state_disk_mb": round(_du_bytes(lost.data_dir) / 2**20, 1),
            }
            print(f"restore: {result['restore']}", flush=True)
            if args.direct:
                fresh = generate.generate(args.fresh, seed=args.seed + 1, id_salt=7)
                fresh_events = fresh.expected_events
            else:
                fresh, fresh_events = fresh_records(data, args.fresh, args.seed + 1, salt=7)
            feed(bootstrap, prefix, fresh, rate=args.fresh_rate)
            lost.wait_accounted(fresh.total, args.timeout)
            expect = (0 if args.direct else keys) + fresh_events
            count, distinct = read_events(bootstrap, prefix, expect, args.timeout)
            accounted = lost.accounted()
            result["exactness"] = {
                "fresh_records": fresh.total,
                "fresh_new_events": fresh_events,
                "accounted_after_restore": accounted,
                "events_expected": expect,
                "events_found": count,
                "distinct_event_ids": distinct,
                "exact": count == distinct == expect and accounted == fresh.total,
            }
            print(f"exactness: {result['exactness']}", flush=True)
            if args.standby:
                result["standby"] = takeover(args, bootstrap, prefix, extra, out, lost, expect)
                print(f"standby: {result['standby']}", flush=True)
        finally:
            for worker in workers:
                worker.stop()
    (out / "restore.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def takeover(
    args: argparse.Namespace,
    bootstrap: str,
    prefix: str,
    extra: dict[str, str],
    out: Path,
    active: Worker,
    events_so_far: int,
) -> dict[str, Any]:
    """A second worker joins; once its standbys caught up, ``active`` is killed (-9)."""
    env = worker_env(bootstrap, prefix, args.partitions, out / "state-b", extra)
    env.setdefault("CRM_TABLE_STANDBY_REPLICAS", "1")
    b = Worker("worker-b", env, out)
    b.start()
    try:
        b.wait_ready(args.timeout)
        active.wait_ready(args.timeout, since=time.monotonic())
        # The standbys restore in the background once the group settled (the standby follower,
        # or Faust record by record with CRM_STANDBY_FOLLOWER=false): wait until the new worker's
        # dedupe table (actives and standbys) holds about every mark (RocksDB's estimate), for
        # --standby-wait seconds at most.
        joined = time.monotonic()
        caught_up = False
        while time.monotonic() - joined < args.standby_wait:
            b.check()
            if b.metric("crm_worker_table_keys", 'table="dedupe"') >= 0.97 * events_so_far:
                caught_up = True
                break
            time.sleep(2)
        standby_catch_up_s = round(time.monotonic() - joined, 1)
        time.sleep(args.settle)
        standby_mb = round(_du_bytes(b.data_dir) / 2**20, 1)
        killed = time.monotonic()
        active.kill9()
        # The survivor notices (session timeout), rebalances, turns its standbys active.
        saw_rebalance = False
        while time.monotonic() - killed < args.timeout:
            b.check()
            ok = b.ready()
            if not ok:
                saw_rebalance = True
            elif saw_rebalance:
                break
            time.sleep(0.25)  # each /readyz checks the broker: not too often
        ready_s = time.monotonic() - killed
        batch = generate.generate(
            args.takeover_records, seed=args.seed + 2, id_salt=9, duplicate_rate=0.0
        )
        batch_events = batch.expected_events
        feed(bootstrap, prefix, batch, rate=2000)
        count, distinct = read_events(bootstrap, prefix, events_so_far + batch_events, args.timeout)
        return {
            "standby_caught_up": caught_up,
            "standby_catch_up_s": standby_catch_up_s,
            "standby_state_mb": standby_mb,
            "ready_again_s": round(ready_s, 2),
            "saw_not_ready": saw_rebalance,
            "fresh_on_events_s": round(time.monotonic() - killed, 2),
            "events_expected": events_so_far + batch_events,
            "events_found": count,
            "distinct_event_ids": distinct,
        }
    finally:
        b.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__)
    p.add_argument("--keys", type=int, default=1_000_000, help="dedupe keys (default 1M)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--fresh", type=int, default=5000, help="records fed after the restore")
    p.add_argument("--fresh-rate", type=float, default=2000.0)
    p.add_argument(
        "--direct", action="store_true", help="write the marks to the changelog, no first pass"
    )
    p.add_argument("--standby", action="store_true", help="also measure a standby's takeover")
    p.add_argument("--takeover-records", type=int, default=500)
    p.add_argument(
        "--standby-wait", type=float, default=600.0, help="longest wait for the standbys"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle", type=float, default=5.0, help="seconds before each kill -9")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "restore")
    p.add_argument("--bootstrap-servers", default="")
    p.add_argument("--worker-env", action="append", default=[], metavar="CRM_VAR=VALUE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = run(parse_args(argv))
    print(json.dumps(result, indent=2))
    exact = result.get("exactness", {}).get("exact")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
