"""Every Prometheus metric crm-stream exports, declared in this one module.

Names follow ``crm_<what>_<unit>``; labels are vendors, event types, reasons, connectors and
error kinds, never an unbounded value (no ids, keys, URLs or campaign ids).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# --- worker -------------------------------------------------------------------------------
RECORDS_IN = Counter("crm_worker_records_in_total", "Raw records consumed", ["vendor"])
EVENTS_OUT = Counter(
    "crm_worker_events_out_total", "Canonical events produced", ["vendor", "event_type"]
)
DUPLICATES = Counter("crm_worker_duplicates_total", "Records dropped as duplicates", ["vendor"])
DEAD_LETTERS = Counter(
    "crm_worker_dead_letters_total", "Records sent to the dead-letter topic", ["vendor", "reason"]
)
SKIPPED = Counter("crm_worker_skipped_total", "Records that are not events", ["vendor", "reason"])
PROCESSING_SECONDS = Histogram(
    "crm_worker_processing_seconds",
    "Time from a batch's arrival at the worker to its outputs being acknowledged, per record",
    ["vendor"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "crm_worker_end_to_end_seconds",
    "Time from the connector's ingest timestamp to the canonical event being acknowledged",
    ["vendor"],
    buckets=E2E_BUCKETS,
)
STAGE_CPU_SECONDS = Counter(
    "crm_worker_stage_cpu_seconds_total",
    "CPU time of the worker's event-loop thread by stage: normalize, dedupe (mark look-ups, "
    "planning, mark writes), encode (canonical records to Avro), produce (handing records to the "
    "producer), stats (the stats agent's batches). The process's CPU time less their sum is "
    "the consume path (Faust, the event loop, the consumer and delivery-report threads)",
    ["stage"],
)
STATS_UPSERTS = Counter(
    "crm_worker_stats_upserts_total", "Campaign-stats upserts produced", ["window"]
)
STATS_REPLAYED = Counter(
    "crm_worker_stats_replayed_total",
    "Stats increments a window had counted already (sent again after a restart): not recounted",
)
STATS_INVALID = Counter(
    "crm_worker_stats_invalid_total",
    "stats-updates records that could not be read, dead-lettered with reason invalid_stats_update",
)
STATS_LATE = Counter(
    "crm_worker_stats_late_total",
    "Stats increments refused because their window expired (idle for CRM_STATS_RETENTION): "
    "its last upsert keeps the complete count",
)
STATS_EXPIRED = Counter(
    "crm_worker_stats_windows_expired_total",
    "Stats windows deleted after their size's CRM_STATS_RETENTION without an update (each one "
    "tombstoned on campaign-stats)",
    ["window"],
)
STATS_CAMPAIGNS_FORGOTTEN = Counter(
    "crm_worker_stats_campaigns_forgotten_total",
    "Campaign entries deleted from a stats table: the campaign held no window for its size's "
    "CRM_STATS_RETENTION",
    ["window"],
)
# Write-behind (CRM_STATS_FLUSH_INTERVAL, processors/stats.py): read from the stats tables at
# each scrape.
STATS_HELD_WINDOWS = Gauge(
    "crm_worker_stats_held_windows",
    "Stats windows counted in memory and not yet written (CRM_STATS_FLUSH_INTERVAL; at most "
    "20,000)",
)
STATS_HELD_BYTES = Gauge(
    "crm_worker_stats_held_bytes",
    "Estimated memory of the stats windows held in memory (bounded by CRM_STATS_FLUSH_MAX_MB)",
)
STATS_HOLD_NEW = Gauge(
    "crm_worker_stats_hold_new_windows",
    "1 while write-behind holds new stats windows in memory too (a quarter of the last "
    "interval's window touches were of windows held or written lately), 0 while it writes "
    "them at once and holds only those (a worker starts at 0)",
)
# Attribution (processors/attribution.py): `outcome` and `source` are fixed words.
ATTRIBUTION_INPUTS = Counter(
    "crm_worker_attribution_inputs_total",
    "Touches and conversions forwarded to the attribution table, by kind (touch, conversion) "
    "and source (events, conversions)",
    ["kind", "source"],
)
ATTRIBUTION_CONVERSIONS = Counter(
    "crm_worker_attribution_conversions_total",
    "Conversions processed by the attribution table, by outcome: attributed, unattributed "
    "(no touch within the window), repeat (the campaign already credited for the user and "
    "name), replayed (the conversion id was processed before)",
    ["outcome"],
)
ATTRIBUTION_TOUCHES_DROPPED = Counter(
    "crm_worker_attribution_touches_dropped_total",
    "Touches a user's state let go beyond the 200 newest held within the window",
)
ATTRIBUTION_EXPIRED = Counter(
    "crm_worker_attribution_expired_total",
    "Attribution table keys deleted: idle users (the longest window after their last write) "
    "and hourly totals older than CRM_ATTRIBUTION_RETENTION",
    ["kind"],
)
TABLE_KEYS = Gauge("crm_worker_table_keys", "Keys held in a local table", ["table"])
RAW_LAG = Gauge(
    "crm_worker_raw_topic_lag_records", "Records of a raw topic not yet processed", ["vendor"]
)
# Positions (processors/positions.py): `stream` is raw, stats or attribution, never a topic name.
STALE_RECORDS = Counter(
    "crm_worker_stale_records_total",
    "Records handed over again below the position or after a seek, dropped unprocessed",
    ["stream"],
)
REWINDS = Counter(
    "crm_worker_rewinds_total",
    "Partitions sought back because records were not handed over (a hole or a stall)",
    ["stream", "cause"],
)
GAPS_ACCEPTED = Counter(
    "crm_worker_offset_gaps_total",
    "Offset gaps with no record in them (transaction markers, retention), passed over",
    ["stream"],
)
RECORDS_LOST_TO_RETENTION = Counter(
    "crm_worker_records_lost_to_retention_total",
    "Offsets below a partition's start when it was read: deleted before being processed",
    ["stream"],
)
OUTPUTS_READ_BACK = Counter(
    "crm_worker_outputs_read_back_total",
    "Outputs found already written after a restart, for raw records processed again: not "
    "written twice",
    ["vendor", "kind"],
)
TOO_LARGE = Counter(
    "crm_worker_too_large_total",
    "Outputs over CRM_MAX_MESSAGE_BYTES, dead-lettered with reason too_large",
    ["vendor"],
)

# --- source connectors (label `connector` is a registry name; `kind` a fixed error class) -----
CONNECTOR_RECORDS = Counter(
    "crm_connector_records_total", "Raw records published to the raw topic", ["connector"]
)
CONNECTOR_BYTES = Counter(
    "crm_connector_bytes_total", "Payload bytes received from the vendor", ["connector"]
)
CONNECTOR_RECONNECTS = Counter(
    "crm_connector_reconnects_total", "Reconnections after a disconnect", ["connector"]
)
CONNECTOR_ERRORS = Counter(
    "crm_connector_errors_total",
    "Errors by kind (http_4xx, http_5xx, connection, idle_timeout, kafka, invalid_json, ...)",
    ["connector", "kind"],
)
CONNECTOR_CHECKPOINT_AGE = Gauge(
    "crm_connector_checkpoint_age_seconds",
    "Seconds since the last checkpoint write while newer acknowledged data is not checkpointed",
    ["connector"],
)
CONNECTOR_KEEPALIVES = Counter(
    "crm_connector_keepalives_total",
    "Stream-control lines that are not events (blank keep-alive, OFFSET_UPDATE)",
    ["connector", "kind"],
)
CONNECTOR_IDLE_TIMEOUTS = Counter(
    "crm_connector_idle_timeouts_total",
    "Connections closed because nothing arrived within the idle timeout",
    ["connector"],
)

# --- connectors: object store (S3 / local-folder feeds; records, bytes, errors above) ---------
OBJECTSTORE_OBJECTS_LISTED = Counter(
    "crm_objectstore_objects_listed_total",
    "Feed objects seen by listing passes (re-listed objects count again)",
    ["connector"],
)
OBJECTSTORE_OBJECTS_INGESTED = Counter(
    "crm_objectstore_objects_ingested_total",
    "Objects read to their end (outcome=done) or parked as unreadable (outcome=failed)",
    ["connector", "outcome"],
)
CHECKPOINTS_FORGOTTEN = Counter(
    "crm_connector_checkpoints_forgotten_total",
    "Positions tombstoned in connect-offsets: objects behind the listing horizon (late_days "
    "before the newest date partition), never listed again",
    ["connector"],
)
OBJECTSTORE_SOURCE_LAG = Gauge(
    "crm_objectstore_source_lag_seconds",
    "Age of the oldest listed object not yet ingested (0 when caught up)",
    ["connector"],
)

# --- connectors: Segment webhook receiver and Kinesis (records, bytes, errors above) ----------
CONNECTOR_HTTP_REQUESTS = Counter(
    "crm_connector_http_requests_total",
    "Requests answered by a receiving connector, by HTTP status code (a fixed set)",
    ["connector", "status"],
)
KINESIS_OPEN_SHARDS = Gauge(
    "crm_kinesis_shards", "Shards the Kinesis connector tracks, by state", ["connector", "state"]
)
KINESIS_MILLIS_BEHIND = Gauge(
    "crm_kinesis_behind_latest_seconds",
    "Largest MillisBehindLatest of the last GetRecords per shard, in seconds",
    ["connector"],
)

AIRSHIP_BEHIND = Gauge(
    "crm_airship_behind_seconds",
    "Age of the newest event read from the Airship stream, from its processed time",
    ["connector"],
)


Check = Callable[[], tuple[bool, str]]
"""A health check: ``(ok, detail)``. Called on the HTTP server's thread: it must be cheap and
must not touch state another thread mutates without care."""


class Children:
    """A labelled metric's children, each looked up once: ``labels()`` checks and converts its
    values and takes the metric's lock on every call, which a per-batch path paid for every
    vendor and event type of every batch."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


def observe_all(histogram: Any, amounts: Iterable[float]) -> None:
    """Observe every one of ``amounts`` in one histogram (a child, for a labelled one): what
    as many ``observe`` calls record (the same buckets, count and sum), each bucket and the sum
    incremented once. ``observe`` walks the buckets in Python and takes a lock per amount."""
    bounds = histogram._upper_bounds  # ascending, the last one +Inf
    counts = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1  # the first bound >= amount, as observe()
        total += amount
    if not any(counts):
        return
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


def observe_many(histogram: Any, amount: float, n: int) -> None:
    """Observe ``amount`` ``n`` times in one histogram (a child, for a labelled one), as ``n``
    ``observe`` calls would."""
    if n > 0:
        histogram._sum.inc(amount * n)
        histogram._buckets[bisect_left(histogram._upper_bounds, amount)].inc(n)


@dataclass
class Health:
    """What ``/livez`` and ``/readyz`` report.

    *Liveness*: the process can make progress (a stuck event loop, a dead internal thread or a
    producer in a fatal state turn it red, and Kubernetes restarts the pod). *Readiness*: it is
    connected and doing its job (in its consumer group, tables restored, Kafka reachable), so it
    may serve and count as available; red while the broker is away or during a rebalance.
    """

    live: dict[str, Check] = field(default_factory=dict)
    ready: dict[str, Check] = field(default_factory=dict)

    def report(self, which: str) -> tuple[bool, dict[str, Any]]:
        checks = self.live if which == "live" else {**self.live, **self.ready}
        results: dict[str, Any] = {}
        for name, check in checks.items():
            try:
                ok, detail = check()
            except Exception as exc:  # a check that fails to run is a failing check
                ok, detail = False, f"check raised {exc!r}"
            results[name] = {"ok": ok, "detail": detail}
        healthy = all(r["ok"] for r in results.values())
        return healthy, {"status": "ok" if healthy else "failing", "checks": results}


class _Handler(BaseHTTPRequestHandler):
    health: Health | None = None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, kind = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
        elif path in ("/livez", "/readyz") and self.health is not None:
            ok, report = self.health.report("live" if path == "/livez" else "ready")
            body, status, kind = orjson.dumps(report), 200 if ok else 503, "application/json"
        else:
            body, status, kind = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # probes every few seconds: not worth a log line each


def serve(port: int, health: Health | None = None) -> int:
    """Serve ``/metrics`` (and ``/livez``, ``/readyz`` with ``health``) on ``port`` in a
    daemon thread; 0 disables. Returns the port."""
    if not port:
        return 0
    handler = type("HealthHandler", (_Handler,), {"health": health})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return int(server.server_address[1])
