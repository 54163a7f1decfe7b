"""The Faust worker: raw topics -> normalize -> dedupe -> canonical events, stats, dead letters.

Two agents:

``normalize_agent`` consumes every raw topic in batches. Each record is normalized (pure
functions in :mod:`processors.normalize`); a rejected record goes to ``dead-letter``; a canonical
event is checked against the dedupe table (a tumbling window of ``CRM_DEDUPE_WINDOW`` on the raw
record's Kafka timestamp, looked up in the current and the previous window, so an id is
remembered for at least one full window and at most two), sent to ``events`` keyed by
``event_id``, and its stats increment goes to ``stats-updates``, to its campaign's partition
(one record per partition and batch). Only after Kafka acknowledged the batch's outputs are its
dedupe marks written, with the raw partitions' new positions, in one RocksDB write batch.

``stats_agent`` consumes ``stats-updates`` (so each campaign is counted by exactly one worker),
adds each increment to a tumbling window per configured size on ``occurred_at``, and emits the
window's new totals to the compacted ``campaign-stats`` topic as an upsert.

What a crash (kill -9 at any moment, with or without the local state) cannot do:

* **lose a record**: every stream partition's position is kept by what the agents processed
  (:mod:`processors.positioning`): a record Faust drops is noticed and read again, and only a
  processed, acknowledged position is committed (:mod:`processors.faust_engine`). A raw
  partition's position is saved with its dedupe marks, atomically;
* **write an event or a dead letter twice**: every output carries its raw record's position
  (header ``raw_position``). A restarted worker reads back what an earlier run wrote for records
  beyond the saved position (:meth:`Probe.read_back`) and does not write those outputs again.
  Processing from the saved position, with the dedupe state saved with it, decides exactly as
  the earlier run did;
* **count an event twice**: each stats increment carries its raw position, and each window
  remembers the highest raw offset it counted per raw partition, in the same value as its
  counts (:class:`processors.records.WindowCounts`). The agent writes a window locally only
  after its changelog record and upsert are acknowledged, and upserts every window it touched,
  so the latest upsert of a window is its exact count.

The tables are Faust tables in RocksDB (changelog, restore, standbys and assignment are Faust's),
read and written a batch at a time through :mod:`processors.state`.

This module is the composition root: it builds the parts and wires them to the engine, and does
nothing else. The engine (:mod:`processors.faust_engine`, behind :mod:`processors.engine`) runs
the agents; :mod:`processors.positioning` places the partitions and admits records;
:mod:`processors.raw` and :mod:`processors.stats_path` handle the batches;
:mod:`processors.outputs` writes; :mod:`processors.state` stores. ARCHITECTURE.md has the
picture.

Dedupe relies on raw records being keyed by the vendor event id (what every connector does), so
that all copies of an event land on the same raw partition and therefore the same table
partition.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from crmstream import metrics
from crmstream.errors import ConfigError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import VENDORS, TopicSpec, create_topics, raw_topic
from processors.attribution import BUCKET_MS as ATTRIBUTION_BUCKET_MS
from processors.attribution import conversion_names, windows_of
from processors.attribution_api import AttributionSource
from processors.attribution_path import STREAM as ATTRIBUTION
from processors.attribution_path import AttributionPath, AttributionTable, FeedPath, RawFeed
from processors.cluster import ApiServer
from processors.engine import TableStore
from processors.faust_engine import FaustEngine, Startable, Upgrade
from processors.outputs import ConfluentOutputs, DeadLetters
from processors.positioning import EXIT_STATE_LOST, Floors, Positioning
from processors.positions import TopicPartition
from processors.probe import Probe
from processors.raw import RawPath, StatsPartitions
from processors.records import RawPosition
from processors.schemas import Schemas
from processors.state.keys import WINDOWS, upgrade_mark
from processors.state.table import WindowedTable, quarantine_corrupt_stores
from processors.stats import StatsTables, expiry_interval_s
from processors.stats_api import WorkerSource
from processors.stats_path import StatsPath

log = logging.getLogger("crmstream.worker")

__all__ = ["EXIT_STATE_LOST", "Worker", "changelog_specs", "run_worker", "use_event_loop"]

HEARTBEAT_S = 5.0
# A loop that runs no timer for this long is stuck (liveness fails; Kubernetes restarts it).
# Generous: a large table restore or a long GC pause is not stuck.
STUCK_LOOP_S = 120.0


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """The Faust changelog topics, created up front with the configured partitions and
    replication (Faust would create them with its own defaults otherwise)."""
    specs = [
        TopicSpec(
            f"{settings.app_id}-dedupe-changelog",
            "dedupe marks",
            {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(settings.dedupe_window_s * 2 * 1000) + 86400000),
            },
        )
    ]
    retention = settings.stats_retention_seconds()
    for label, _size in settings.stats_window_seconds():
        specs.append(
            TopicSpec(
                f"{settings.app_id}-stats-{label}-changelog",
                f"campaign stats, {label} windows",
                {
                    "cleanup.policy": "compact,delete",
                    # Windows expire with tombstones; the time limit is a backstop a day past
                    # the retention (campaign entries are written again before it, plan_expiry).
                    "retention.ms": str(int(retention[label] * 1000) + 86400000),
                },
            )
        )
    if settings.attribution:
        longest_ms = windows_of(*settings.attribution_windows()).longest_ms
        specs.append(
            TopicSpec(
                f"{settings.app_id}-attribution-changelog",
                "attribution: user states and hourly totals",
                {
                    "cleanup.policy": "compact,delete",
                    "retention.ms": str(
                        max(int(settings.attribution_retention_s * 1000), longest_ms) + 86400000
                    ),
                },
            )
        )
    return specs


def build_stats(
    settings: Settings, serde: AvroSerde, table: Callable[[str], TableStore]
) -> tuple[dict[str, WindowedTable], StatsTables]:
    """The stats tables, one per ``CRM_STATS_WINDOWS`` size (``table(name)`` makes each one's
    store), and the :class:`StatsTables` over them, with the retention and limits of
    ``settings``: what the worker counts with (the unit tests' fake engine builds them here
    too)."""
    windows = settings.stats_window_seconds()
    retention_ms = {
        label: int(seconds * 1000) for label, seconds in settings.stats_retention_seconds().items()
    }
    tables = {
        label: WindowedTable(
            table(f"stats-{label}"), size_ms=size * 1000, keep_ms=retention_ms[label]
        )
        for label, size in windows
    }
    stats = StatsTables(
        tables,
        windows,
        serde,
        settings.topic("campaign-stats"),
        retention_ms,
        settings.stats_hll_lg_k,
        {"message": settings.stats_max_messages, "variant": settings.stats_max_variants},
        flush_interval_s=settings.stats_flush_interval_s,
        max_held_bytes=settings.stats_flush_max_mb << 20,
    )
    return tables, stats


def wall_clock_ms() -> int:
    """Epoch milliseconds now: what a window's last update and the expiries are measured on."""
    return time.time_ns() // 1_000_000


class Worker:
    """The worker's parts, built and wired to one engine."""

    DEDUPE_EXPIRY_S = 60.0
    """How often the dedupe windows older than two ``CRM_DEDUPE_WINDOW`` are range-deleted."""

    def __init__(
        self,
        settings: Settings,
        engine: FaustEngine | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        # The expiries' and the windows' time (wall_clock_ms; a soak test simulates months).
        self.clock = clock or (lambda: wall_clock_ms())
        self.engine = engine = engine if engine is not None else FaustEngine(settings)
        self.serde = AvroSerde(settings)
        self.outputs = outputs = ConfluentOutputs(settings)
        self.events_topic = settings.topic("events")
        self.stats_updates_topic = settings.topic("stats-updates")
        self.vendor_of_topic = {settings.topic(raw_topic(v)): v for v in VENDORS}
        # The attribution agents' topics (CRM_ATTRIBUTION), placed like stats-updates.
        self.attribution_inputs_topic = settings.topic("attribution-inputs")
        self.attribution_topics = (
            {t: ATTRIBUTION for t in (settings.topic("conversions"), self.attribution_inputs_topic)}
            if settings.attribution
            else {}
        )
        self.schemas = Schemas(
            self.serde,
            [
                ("CanonicalEvent", self.events_topic),
                ("DeadLetter", settings.topic("dead-letter")),
                ("CampaignStats", settings.topic("campaign-stats")),
                *(
                    [("Attribution", settings.topic("attributions"))]
                    if settings.attribution
                    else []
                ),
            ],
        )
        self.stats_partitions = StatsPartitions(settings.partitions)
        window_s = settings.dedupe_window_s
        self.dedupe = WindowedTable(
            engine.table("dedupe", upgrade=Upgrade(*WINDOWS, upgrade_mark)),
            size_ms=int(window_s * 1000),
            # The current window and the previous one are read; older ones are deleted.
            keep_ms=int(2 * window_s * 1000),
        )
        self.stats_tables, self.stats = build_stats(
            settings, self.serde, lambda name: engine.table(name)
        )
        floors = Floors([self.events_topic, settings.topic("dead-letter")])
        self.positioning = positioning = Positioning(
            engine,
            Probe(settings),
            outputs,
            self.dedupe,
            raw_topics=self.vendor_of_topic,
            stats_topic=self.stats_updates_topic,
            floors=floors,
            allow_state_reset=settings.allow_state_reset,
            start_outputs=self.start_outputs,
            drained=self._raw_written,
            busy=self._busy,
            streams=self.attribution_topics,
            placing=self._placing,
        )
        dead_letters = DeadLetters(settings, self.serde, outputs, self._landed)
        self.raw_feed = (
            RawFeed(
                outputs,
                inputs_topic=self.attribution_inputs_topic,
                conversion_events=conversion_names(settings.conversion_event_names()),
            )
            if settings.attribution
            else None
        )
        self.raw = RawPath(
            settings,
            engine,
            self.serde,
            outputs,
            self.dedupe,
            positioning,
            dead_letters,
            self.stats_partitions,
            floors,
            vendor_of_topic=self.vendor_of_topic,
            ready=self.ready,
            attribution=self.raw_feed.send if self.raw_feed is not None else None,
        )
        self.stats_path = StatsPath(
            engine,
            self.stats,
            outputs,
            positioning,
            dead_letters,
            stats_updates_topic=self.stats_updates_topic,
            ready=self.ready,
            start_outputs=self.start_outputs,
            clock=self.clock,
        )
        self.attribution: AttributionTable | None = None
        self.feed: FeedPath | None = None
        self.attribution_path: AttributionPath | None = None
        if settings.attribution:
            self._build_attribution(dead_letters)
        engine.set_positions(positioning)
        self._outputs_started = False
        self._heartbeat = time.monotonic()

    def _build_attribution(self, dead_letters: DeadLetters) -> None:
        """The attribution agents and table (:mod:`processors.attribution_path`)."""
        settings = self.settings
        windows = windows_of(*settings.attribution_windows())
        self.attribution = AttributionTable(
            WindowedTable(
                self.engine.table("attribution"),
                size_ms=ATTRIBUTION_BUCKET_MS,
                keep_ms=int(settings.attribution_retention_s * 1000),
            ),
            windows,
            self.serde,
            settings.topic("attributions"),
        )
        self.feed = FeedPath(
            self.serde,
            self.outputs,
            self.positioning,
            dead_letters,
            conversions_topic=settings.topic("conversions"),
            inputs_topic=self.attribution_inputs_topic,
            ready=self.ready,
        )
        self.attribution_path = AttributionPath(
            self.attribution, self.outputs, self.positioning, dead_letters, ready=self.ready
        )

    def wire(self) -> None:
        """The agents and timers, on the engine."""
        engine, settings = self.engine, self.settings
        engine.agent(
            list(self.vendor_of_topic),
            "normalize",
            self.raw.process,
            size=settings.worker_batch_size,
            within=settings.worker_batch_within_s,
            what="processing a raw batch",
            stopping=self.raw.stopping,
        )
        # Every window touched in a batch costs one table write, one changelog record and one
        # upsert, so larger batches cost less per increment (CRM_STATS_BATCH_SIZE). Batches of
        # 5000 within 1 s stalled the restart test on Tansu; the default stays at 500.
        engine.agent(
            [self.stats_updates_topic],
            "stats",
            self.stats_path.process,
            size=settings.stats_batch_size,
            within=settings.stats_batch_within_s,
            what="processing a stats batch",
            stopping=self.stats_path.stopping,
        )
        if self.feed is not None and self.attribution_path is not None:
            engine.agent(
                [settings.topic("conversions")],
                "attribution-feed",
                self.feed.process,
                size=settings.stats_batch_size,
                within=settings.stats_batch_within_s,
                what="processing an attribution feed batch",
            )
            engine.agent(
                [self.attribution_inputs_topic],
                "attribution",
                self.attribution_path.process,
                size=settings.stats_batch_size,
                within=settings.stats_batch_within_s,
                what="processing an attribution batch",
            )
            engine.timer(60.0, "attribution-expire", self._expire_attribution)
        engine.timer(10.0, "observe", self._observe)
        engine.timer(5.0, "positions", self.positioning.watch)
        if settings.positions_interval_s > 0:
            # The raw positions still pending (CRM_POSITIONS_INTERVAL) of a quiet partition.
            engine.timer(settings.positions_interval_s, "checkpoint", self.raw.checkpoint)
        engine.timer(self.DEDUPE_EXPIRY_S, "expire", self._expire)
        engine.timer(
            expiry_interval_s(settings.stats_retention_seconds().values()),
            "stats-expire",
            self.stats_path.expire,
        )
        if settings.stats_flush_interval_s > 0:
            # The windows due in memory when no stats batch comes (CRM_STATS_FLUSH_INTERVAL).
            engine.timer(
                max(0.05, settings.stats_flush_interval_s / 4), "stats-flush", self.stats_path.flush
            )
        engine.timer(HEARTBEAT_S, "heartbeat", self._beat)

    # -- shared by the parts ---------------------------------------------------------------

    async def start_outputs(self) -> None:
        if not self._outputs_started:
            await self.outputs.start()
            self.stats_partitions.learn(self.outputs.partitions(self.stats_updates_topic))
            self._outputs_started = True

    async def ready(self) -> None:
        """Before a batch: the outputs started, the schemas registered."""
        await self.start_outputs()
        await self.schemas.wait()

    def _placing(self) -> None:
        self.stats_path.placing()

    async def _raw_written(self) -> None:
        await self.raw.written()

    def _busy(self, stream: str) -> bool:
        if stream == ATTRIBUTION:
            return bool(
                (self.feed is not None and self.feed.busy)
                or (self.attribution_path is not None and self.attribution_path.busy)
            )
        return bool(self.raw.busy if stream == "raw" else self.stats_path.busy)

    def _landed(self, pos: RawPosition) -> bool:
        return self.positioning.landed(TopicPartition(pos.topic, pos.partition), pos.offset)

    # -- timers ----------------------------------------------------------------------------

    async def _expire(self) -> None:
        """Dedupe windows expire by their start (range deletes); stats windows by their last
        update (:meth:`StatsPath.expire`)."""
        self.dedupe.expire(self.clock())

    def attribution_partitions(self) -> set[int] | None:
        """The ``attribution-inputs`` partitions this worker is active for; None while the
        group moves (the API then answers 503)."""
        if not self.engine.settled()[0]:
            return None
        topic = self.attribution_inputs_topic
        return {tp.partition for tp in self.engine.assignment() if tp.topic == topic}

    async def _expire_attribution(self) -> None:
        partitions = self.attribution_partitions()
        if self.attribution is None or partitions is None:
            return
        await self.attribution.expire(partitions, time.time_ns() // 1_000_000)

    async def _observe(self) -> None:
        """Gauges that are read, not counted: raw-topic lag and the tables' key counts."""
        for vendor, records in self.positioning.lag(self.vendor_of_topic).items():
            metrics.RAW_LAG.labels(vendor).set(records)
        tables = {"dedupe": self.dedupe, **{f"stats-{k}": t for k, t in self.stats_tables.items()}}
        if self.attribution is not None:
            tables["attribution"] = self.attribution.table
        for name, table in tables.items():
            metrics.TABLE_KEYS.labels(name).set(table.estimated_keys())

    async def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> metrics.Health:
        """``/livez`` and ``/readyz`` of the worker (on its metrics port; the chart's probes)."""
        return metrics.Health(
            live={"event_loop": self._loop_alive, "outputs": self.outputs.alive},
            ready={
                "group": self._in_group,
                "kafka": self.outputs.reachable,
                "schemas": self.schemas.ready,
            },
        )

    def _loop_alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        if age > STUCK_LOOP_S:
            return False, f"the event loop ran no timer for {age:.0f}s"
        return True, f"timer ran {age:.0f}s ago"

    def _in_group(self) -> tuple[bool, str]:
        settled, why = self.engine.settled()
        if not settled:
            return False, why
        return True, f"in the group, {len(self.positioning.tracker.tracked())} partitions assigned"

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run the engine until it stops (a signal: the engine's clean stop; it leaves by
        ``SystemExit``), then flush and close the outputs.

        The close comes after the engine has stopped the agents and made its last commit, so no
        agent sends after it, and a batch it cuts short was never committed: only positions
        whose outputs Kafka acknowledged are committable (:mod:`processors.positioning`). A
        record still unacknowledged after the flush is purged (the next start processes it
        again, and reads it back if it landed). Without the close, records in the producers'
        queues at exit were dropped unsent, and librdkafka's threads were still running while
        the interpreter shut down.
        """
        try:
            self.engine.run(self.services())
        finally:
            left = self.outputs.close()
            if left:
                log.warning(
                    "outputs closed with %d records unacknowledged (their batches were not "
                    "committed: the next start processes them again)",
                    left,
                )
            else:
                log.info("outputs flushed and closed: every record sent was acknowledged")

    # -- services --------------------------------------------------------------------------

    def services(self) -> list[Startable]:
        """What runs next to the agents: the schema registration, and the query API and web
        view over the stats (``CRM_API_PORT``; none when 0)."""
        services: list[Startable] = [self.schemas]
        if self.settings.api_port:
            first = next(iter(self.stats_tables.values()))
            routing = self.engine.routing(
                first.changelog_topic, self.stats_updates_topic, lambda: self.stats_partitions.count
            )
            attribution = (
                AttributionSource(self.attribution, routing, self.attribution_partitions)
                if self.attribution is not None
                else None
            )
            services.append(
                ApiServer(self.settings, WorkerSource(self.stats, routing), attribution)
            )
        return services


def use_event_loop(name: str) -> None:
    """Make ``name`` (``CRM_EVENT_LOOP``) the event loop of this process's new loops: the
    worker's, and those of Faust's consumer thread.

    Faust hands every record to its agent through the loop (an ``await sleep(0)`` per event), so
    the loop's cost per iteration is the worker's floor: the benchmark's Faust floor ran ~25%
    faster on uvloop (bench/README.md).
    """
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError(
                "CRM_EVENT_LOOP", "uvloop is not installed (install it, or set asyncio)"
            ) from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)


def tune_gc(threshold: int) -> None:
    """``CRM_GC_THRESHOLD``: collect the young generation every ``threshold`` allocations, not
    every 700, and keep what start-up built (modules, the app, its parts) out of every
    collection. Counted objects are mostly short-lived and acyclic (records, increments, window
    values), so collecting them less often frees the same memory: reference counting frees them,
    the collector only looks for cycles."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)


def run_worker(settings: Settings) -> int:
    """``crm-stream worker``: create missing topics, serve metrics and the query API, run until
    signalled."""
    use_event_loop(settings.event_loop)
    create_topics(settings, extra=changelog_specs(settings))
    (settings.data_path / "faust").mkdir(parents=True, exist_ok=True)
    quarantine_corrupt_stores(settings.data_path / "faust")
    worker = Worker(settings)
    worker.wire()
    tune_gc(settings.gc_threshold)
    # /metrics, /livez and /readyz (the chart's probes).
    metrics.serve(settings.metrics_port, worker.health())
    log.info("worker starting on the %s event loop", settings.event_loop)
    worker.run()
    return 0
