"""The stats side of the worker on the benchmark's records, in one process, with digests of what
it writes: ``python -m bench.stats_digest --events N [--campaigns C]``.

The generator's records (``bench/generate.py``, seeded) go through the vendors' normalizers and
the raw path's plan (``processors.plan.plan_raw_batch`` with the marks of the batches before, so
copies are not counted: one ``stats-updates`` record per stats partition and raw batch of 500, as
the worker sends them), then through the stats path's parse
and ``StatsTables.count`` on real RocksDB tables, on a fixed clock and outputs that keep what
is sent. Printed: the records it wrote (upserts, changelog records, of which campaign entries),
a SHA-256 of every upsert (topic, key, value, in order) and one of every changelog record, and
the thread CPU of parse + count per canonical event.

A live feed's shape (``--raw-batch 15 --span-s 20 --raw-batches-per-stats-batch 1``: a 300/s
feed's raw batches of one 50 ms fetch, its events over 20 s of event time, each raw batch's
records a stats batch) gives the stats path its small batches, in which a batch's and a table
partition's fixed costs weigh; ``--profile FILE`` writes a cProfile of parse + count (on the
thread's CPU clock, so that a loaded machine's preemptions are not booked to whatever ran before
them; reading that clock at every call inflates the small functions).

``--flush-interval S`` counts with write-behind (``CRM_STATS_FLUSH_INTERVAL``; its monotonic
clock moves ``--batch-gap-s`` per stats batch, a live feed's 50 ms by default) and writes every
window left in memory at the end, as a clean stop does. It writes fewer upserts and changelog
records by design, so the stream digests differ; ``final sha256`` (every table partition's
windows, and the last upsert of each key, with each sketch taken by its estimate: an image's
bytes depend on the order its recipients came in) is what must match the same run at 0.

So two checkouts can be compared byte for byte (issue 21: a cheaper stats path must write the
same upserts and changelog values): run it from each (``python -m`` takes the working
directory's packages) and compare the digests. The CPU figure is a loop's, without Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.generate import DEFAULT_CAMPAIGNS, SPAN_MS, generate
from crmstream.errors import SerdeError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import VENDORS, raw_topic
from processors import uniques
from processors.normalize import NORMALIZERS
from processors.normalize.model import CanonicalEvent, NormalizeContext
from processors.plan import candidate, plan_raw_batch
from processors.raw import StatsPartitions
from processors.records import (
    RawPosition,
    load_window,
    parse_stats_updates,
    stats_updates_value,
    window_updated_ms,
)
from processors.state.keys import CAMPAIGN_KEY_PREFIX
from processors.state.table import LocalStore, WindowedTable
from processors.stats import StatsTables

RAW_BATCH = 500
NOW_MS = 1_764_000_100_000  # the generator's base time, plus 100 s
DEDUPE_WINDOW_MS = 86_400_000


class _Outputs:
    """Keeps every record sent; acknowledges at once."""

    def __init__(self, partitions: int) -> None:
        self.n_partitions = partitions
        self.upserts = hashlib.sha256()
        self.changelog = hashlib.sha256()
        self.counts = {"upserts": 0, "changelog": 0, "entries": 0}
        self.last: dict[bytes | None, bytes | None] = {}  # each key's last upsert

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: object = None,
    ) -> None:
        self.upserts.update(repr((topic, key, value)).encode())
        self.counts["upserts"] += 1
        self.last[key] = value

    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.changelog.update(repr((topic, partition, key, value)).encode())
        self.counts["changelog"] += 1
        if key.startswith(CAMPAIGN_KEY_PREFIX):
            self.counts["entries"] += 1

    def partitions(self, topic: str) -> int:
        return self.n_partitions

    async def seal(self) -> dict[tuple[str, int], int]:
        return {}


def _canonical(value: Any) -> Any:
    """``value`` with every sketch image replaced by its estimate: an image's bytes depend on
    the order its recipients came in (DataSketches' exact modes are hash tables), its registers
    and estimate do not (processors/uniques.py), so two runs that counted the same events in
    other batches compare equal."""
    if isinstance(value, bytes):
        return ("sketch", uniques.estimate(value))
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _window_state(value: bytes) -> Any:
    """A stored window, canonical (:func:`_canonical`): its update time, counts, raw offsets,
    name, breakdowns and each sketch's estimate."""
    counts = load_window(value, 12)
    sketches = {key: sketch.estimate() for key, sketch in sorted(counts.sketches.items())}
    breakdowns = {}
    for name, b in sorted(counts.breakdowns.items()):
        breakdowns[name] = (
            _canonical(b.dump()),
            sorted((bucket, key, uniques.estimate(image)) for bucket, key, image in b.images()),
        )
    return (
        window_updated_ms(value),
        counts.total,
        _canonical(counts.by_type),
        _canonical(counts.by_channel),
        _canonical(counts.applied),
        counts.unattributed,
        counts.name,
        sketches,
        breakdowns,
    )


def stats_updates(
    events: int,
    campaigns: int,
    partitions: int,
    raw_batch: int = RAW_BATCH,
    span_ms: int = SPAN_MS,
) -> tuple[list[list], int]:
    """Per raw batch of ``raw_batch`` records (the vendors' batches taken in turn), its
    ``stats-updates`` records as ``(partition, value)``; and the number of canonical events.
    ``span_ms``: the event time (occurred_at) the records span."""
    data = generate(events, campaigns=campaigns, span_ms=span_ms)
    context = NormalizeContext(app_id="bench")
    where = StatsPartitions(partitions)
    by_vendor: list[list[list[tuple[int, bytes]]]] = []
    counted = 0
    marks: dict[bytes, bytes] = {}  # the dedupe marks written so far
    for vendor in VENDORS:
        normalize, topic, batches = NORMALIZERS[vendor], raw_topic(vendor), []
        records = data.records[vendor]
        for first in range(0, len(records), raw_batch):
            found = []
            for offset, (key, value) in enumerate(records[first : first + raw_batch], first):
                outcome = normalize(value, context)
                if isinstance(outcome, CanonicalEvent):
                    pos = RawPosition(topic, 0, offset, NOW_MS, {})
                    found.append(candidate(outcome, pos, vendor, value, key, DEDUPE_WINDOW_MS))
            plan = plan_raw_batch(
                found,
                {k: marks[k] for c in found for k in (c.current, c.previous) if k in marks},
                encode=lambda c: b"",
                size=lambda c, value: 0,
                max_record_bytes=1 << 30,
                written=lambda c: False,
                stats_partition=where.of,
            )
            counted += len(plan.counted)
            for written in plan.marks.values():
                marks.update(written)
            batches.append(
                [
                    (
                        partition,
                        stats_updates_value(
                            increments,
                            plan.recipients.get(partition),
                            plan.names.get(partition),
                            plan.dimensions.get(partition),
                        ),
                    )
                    for partition, increments in plan.increments.items()
                ]
            )
        by_vendor.append(batches)
    taken: list[list] = []
    for i in range(max(len(b) for b in by_vendor)):
        taken.extend(b[i] for b in by_vendor if i < len(b))
    return taken, counted


def _groups(batches: list[list], per_stats_batch: int) -> Iterator[list[tuple[int, bytes]]]:
    for first in range(0, len(batches), per_stats_batch):
        yield [record for batch in batches[first : first + per_stats_batch] for record in batch]


async def run(
    events: int,
    campaigns: int,
    partitions: int,
    per_stats_batch: int,
    raw_batch: int = RAW_BATCH,
    span_ms: int = SPAN_MS,
    profile: str | None = None,
    flush_interval_s: float = 0.0,
    batch_gap_s: float = 0.05,
) -> dict:
    batches, counted = stats_updates(events, campaigns, partitions, raw_batch, span_ms)
    root = Path(tempfile.mkdtemp(prefix="stats-digest-"))
    try:
        settings = Settings.from_env({"CRM_DATA_DIR": str(root), "CRM_PARTITIONS": str(partitions)})
        windows = settings.stats_window_seconds()
        retention = {k: int(v * 1000) for k, v in settings.stats_retention_seconds().items()}
        stores = {
            label: LocalStore(root / label, f"stats-{label}-changelog") for label, _ in windows
        }
        tables = {
            label: WindowedTable(stores[label], size * 1000, retention[label])
            for label, size in windows
        }
        stats = StatsTables(
            tables,
            windows,
            AvroSerde(settings),
            "campaign-stats",
            retention,
            settings.stats_hll_lg_k,
            {"message": settings.stats_max_messages, "variant": settings.stats_max_variants},
            flush_interval_s=flush_interval_s,
            monotonic=lambda: mono,
        )
        mono = 0.0
        offsets: dict[int, int] = {}  # per stats partition: the next record's offset
        outputs = _Outputs(partitions)
        now, cpu, stats_batches = NOW_MS, 0.0, 0
        profiler = cProfile.Profile(time.thread_time) if profile else None
        for group in _groups(batches, per_stats_batch):
            if profiler is not None:
                profiler.enable()
            started = time.thread_time()
            parsed = [(p, parse_stats_updates(b"%d" % p, value)) for p, value in group]
            if flush_interval_s > 0:
                firsts = {p: offsets.get(p, 0) for p, _ in group}
                for p, _ in group:
                    offsets[p] = offsets.get(p, 0) + 1
                await stats.count_behind(parsed, outputs, now, firsts)  # type: ignore[arg-type]
            else:
                await stats.count(parsed, outputs, now)  # type: ignore[arg-type]
            cpu += time.thread_time() - started
            mono += batch_gap_s
            if profiler is not None:
                profiler.disable()
            now += 1000
            stats_batches += 1
        if profiler is not None and profile:
            profiler.dump_stats(profile)
        started = time.thread_time()
        await stats.flush(outputs, everything=True)  # type: ignore[arg-type]
        cpu += time.thread_time() - started
        serde = AvroSerde(settings)
        final = hashlib.sha256()
        for key, value in sorted(outputs.last.items(), key=lambda item: item[0] or b""):
            try:
                upsert: Any = None if value is None else _canonical(serde.decode(value)[1])
            except SerdeError:
                upsert = value  # not a CampaignStats record: its bytes
            final.update(repr((key, upsert)).encode())
        for label in sorted(tables):
            for partition in range(partitions):
                for key, value in stores[label].db(partition).items():
                    final.update(repr((label, partition, key, _window_state(value))).encode())
        for store in stores.values():
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "events": counted,
        **outputs.counts,
        "upserts_sha256": outputs.upserts.hexdigest(),
        "changelog_sha256": outputs.changelog.hexdigest(),
        "final_sha256": final.hexdigest(),
        "cpu_us_per_event": round(cpu / max(1, counted) * 1e6, 1),
        "stats_batches": stats_batches,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="raw records generated")
    p.add_argument("--campaigns", type=int, default=DEFAULT_CAMPAIGNS)
    p.add_argument("--partitions", type=int, default=4, help="stats-updates partitions")
    p.add_argument(
        "--raw-batches-per-stats-batch",
        type=int,
        default=4,
        help="how many raw batches' stats-updates records one stats batch counts",
    )
    p.add_argument(
        "--raw-batch",
        type=int,
        default=RAW_BATCH,
        help="raw records per raw batch (a live feed's are small: its rate times the 50 ms of a "
        "fetch, e.g. 15 at 300/s, 150 at 3000/s)",
    )
    p.add_argument(
        "--span-s",
        type=float,
        default=SPAN_MS / 1000,
        help="seconds of event time the records span (a live feed's: its events over its rate, "
        "so that its batches keep touching the same windows)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="write a cProfile of parse + count (deterministic; the CPU figure then includes "
        "the profiler's own cost)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.0,
        help="CRM_STATS_FLUSH_INTERVAL in seconds (write-behind); 0: every batch writes",
    )
    p.add_argument(
        "--batch-gap-s",
        type=float,
        default=0.05,
        help="seconds between two stats batches on write-behind's clock",
    )
    args = p.parse_args(argv)
    if args.raw_batch < 1 or args.raw_batches_per_stats_batch < 1:
        p.error("--raw-batch and --raw-batches-per-stats-batch must be at least 1")
    result = asyncio.run(
        run(
            args.events,
            args.campaigns,
            args.partitions,
            args.raw_batches_per_stats_batch,
            args.raw_batch,
            max(1, int(args.span_s * 1000)),
            args.profile,
            args.flush_interval,
            args.batch_gap_s,
        )
    )
    n = max(1, result["events"])
    print(
        f"{result['events']} canonical events: {result['upserts']} upserts "
        f"({result['upserts'] / n:.2f} per event), {result['changelog']} changelog records "
        f"({result['changelog'] / n:.2f}), of which {result['entries']} campaign entries "
        f"({result['entries'] / n:.2f})"
    )
    print(f"upserts   sha256 {result['upserts_sha256']}")
    print(f"changelog sha256 {result['changelog_sha256']}")
    print(f"final     sha256 {result['final_sha256']}")
    per_batch = result["events"] / max(1, result["stats_batches"])
    print(
        f"parse + count: {result['cpu_us_per_event']} us of thread CPU per event, "
        f"{result['stats_batches']} stats batches ({per_batch:.0f} events each)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
