"""The second peer: crm-stream's pipeline written with Bytewax, so that only the engine differs.

Bytewax is a dataflow engine in Rust (Timely Dataflow) with a Python API; its Kafka source and
sink are confluent-kafka (librdkafka). Same normalizers (:data:`processors.normalize.NORMALIZERS`),
same output record builders (:mod:`processors.records`), same Avro encoding
(:class:`crmstream.serde.AvroSerde`) and the same producer settings
(:func:`crmstream.kafka.producer_config`: idempotent, acks=all, lz4) as crm-stream and the Quix
Streams peer; the same work: normalize, dead-letter the rejects, drop duplicates by ``event_id``,
write the canonical event keyed by ``event_id``, count per campaign in the configured tumbling
windows (1m and 1h by default) and upsert each window's totals.

Written the Bytewax way: one ``KafkaSource`` over the five raw topics (Bytewax reads each
partition with its own assigned consumer and keeps the offsets in its recovery store, not in a
consumer group), ``branch`` for dead letters, ``key_on`` + ``stateful_flat_map`` keyed by
``event_id`` for dedupe and keyed by campaign for the stats (Bytewax routes each key to one
worker), one ``KafkaSink`` for the three output topics (each message names its topic: one
producer, one flush per batch instead of three).

State is durable, as in crm-stream (RocksDB + changelog) and Quix (RocksDB + changelog): with
``--state-dir`` Bytewax's recovery store (SQLite) snapshots every changed key and the input
offsets at the end of every epoch (``--snapshot-interval``, default 1 s like the Quix peer's
commit interval). Like Quix, Bytewax emits per record, so each event yields one upsert per window.

Runs in its own virtualenv (``.venv-bytewax``, created by ``bench.run``) with the repository on
``PYTHONPATH``: it imports only crm-stream's pure modules (no Faust, no aiokafka).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from bench.progress import Reporter
from crmstream.kafka import client_config, producer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import VENDORS, raw_topic
from processors.normalize import NORMALIZERS
from processors.normalize.model import CanonicalEvent, NormalizeContext, Rejected
from processors.records import (
    RawPosition,
    WindowCounts,
    campaign_key,
    canonical_record,
    dead_letter_record,
    headers_dict,
    stats_record,
    stats_upsert_key,
    window_start,
)

# (outcome, position, raw value, raw key, vendor)
Item = tuple[Any, RawPosition, bytes, bytes | None, str]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Counter:
    """Raw records accounted for (dead-lettered, skipped, or passed through dedupe). Bytewax
    workers are threads of one process (``--workers``), hence the lock."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


def build(args: argparse.Namespace, counter: Counter) -> Dataflow:
    settings = Settings.from_env({}, bootstrap_servers=args.bootstrap_servers)
    serde = AvroSerde(settings)
    windows = settings.stats_window_seconds()
    ctx = NormalizeContext()
    prefix = args.prefix
    events_topic = f"{prefix}events"
    dead_topic = f"{prefix}dead-letter"
    stats_topic = f"{prefix}campaign-stats"
    vendor_of = {f"{prefix}{raw_topic(v)}": v for v in VENDORS}
    brokers = [b.strip() for b in args.bootstrap_servers.split(",") if b.strip()]
    connection = {k: v for k, v in client_config(settings).items() if k != "bootstrap.servers"}

    flow = Dataflow("crm-stream-bytewax")
    raw = op.input(
        "raw",
        flow,
        KafkaSource(
            brokers,
            list(vendor_of),
            tail=True,
            add_config={**connection, "fetch.wait.max.ms": str(args.fetch_wait_ms)},
            batch_size=args.batch_size,
        ),
    )

    def normalize(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> Item:
        topic = msg.topic or ""
        vendor = vendor_of[topic]
        timestamp = msg.timestamp[1] if msg.timestamp else 0
        pos = RawPosition(
            topic, msg.partition or 0, msg.offset or 0, timestamp, headers_dict(msg.headers)
        )
        value = msg.value or b""
        return NORMALIZERS[vendor](value, ctx), pos, value, msg.key, vendor

    outcomes = op.map("normalize", raw, normalize)
    rejected = op.branch("rejected", outcomes, lambda item: isinstance(item[0], Rejected))

    def dead_letter(item: Item) -> KafkaSinkMessage[bytes, bytes]:
        outcome, pos, value, key, vendor = item
        record = dead_letter_record(
            raw=value,
            raw_key=key,
            vendor=vendor,
            reason=outcome.reason.value,
            detail=outcome.detail,
            pos=pos,
            now_ms=now_ms(),
        )
        counter.add()
        return KafkaSinkMessage(
            key or b"", serde.encode("DeadLetter", record, dead_topic), topic=dead_topic
        )

    dead_letters = op.map("dead_letter", rejected.trues, dead_letter)

    def is_event(item: Item) -> bool:
        if isinstance(item[0], CanonicalEvent):
            return True
        counter.add()  # Skipped: not an event, nothing to write
        return False

    events = op.filter("events", rejected.falses, is_event)
    by_event_id = op.key_on("by_event_id", events, lambda item: item[0].event_id)

    def first_seen(seen: bool | None, item: Item) -> tuple[bool, list[Item]]:
        counter.add()
        return True, [] if seen else [item]

    unique = op.stateful_flat_map("dedupe", by_event_id, first_seen)

    def encoded(kv: tuple[str, Item]) -> KafkaSinkMessage[bytes, bytes]:
        event_id, (event, pos, *_rest) = kv
        record = canonical_record(event, pos, now_ms())
        return KafkaSinkMessage(
            event_id.encode(),
            serde.encode("CanonicalEvent", record, events_topic),
            topic=events_topic,
        )

    canonical = op.map("encode_event", unique, encoded)

    def increment(kv: tuple[str, Item]) -> tuple[str, tuple[int, str, str]]:
        event: CanonicalEvent = kv[1][0]
        return campaign_key(event), (
            event.occurred_at,
            event.event_type.value,
            event.channel.value,
        )

    by_campaign = op.map("by_campaign", unique, increment)

    def counted(
        state: dict[str, Any] | None, inc: tuple[int, str, str]
    ) -> tuple[dict[str, Any], list[tuple[str, int, int, WindowCounts]]]:
        state = {} if state is None else state
        occurred_at, event_type, channel = inc
        changed = []
        for label, size in windows:
            start = window_start(occurred_at, size)
            name = f"{label}|{start}"
            counts = WindowCounts.load(state.get(name))
            counts.add(event_type, channel)
            state[name] = counts.dump()
            changed.append((label, start, size, counts))
        return state, changed

    windows_changed = op.stateful_flat_map("stats", by_campaign, counted)

    def upsert(
        kv: tuple[str, tuple[str, int, int, WindowCounts]],
    ) -> KafkaSinkMessage[bytes, bytes]:
        campaign, (label, start, size, counts) = kv
        record = stats_record(campaign, label, start, size, counts, now_ms())
        return KafkaSinkMessage(
            stats_upsert_key(campaign, label, start),
            serde.encode("CampaignStats", record, stats_topic),
            topic=stats_topic,
        )

    upserts = op.map("encode_stats", windows_changed, upsert)
    # timestamp=0 (KafkaSinkMessage's default): librdkafka stamps the send time, as crm-stream's
    # and the Quix peer's producers do, so the latencies end at the same point.
    op.output(
        "outputs",
        op.merge("all_outputs", dead_letters, canonical, upserts),
        KafkaSink(brokers, None, add_config=producer_config(settings)),
    )
    return flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bytewax_peer")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--prefix", required=True, help="topic prefix of raw and output topics")
    parser.add_argument(
        "--state-dir", type=Path, help="recovery store (SQLite); none: state in memory only"
    )
    parser.add_argument("--snapshot-interval", type=float, default=1.0, help="epoch, seconds")
    parser.add_argument("--workers", type=int, default=1, help="Bytewax worker threads")
    parser.add_argument("--batch-size", type=int, default=1000, help="KafkaSource batch_size")
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=500,
        help="fetch.wait.max.ms (librdkafka's default 500), as the passthrough",
    )
    parser.add_argument("--progress", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    counter = Counter()
    flow = build(args, counter)
    recovery = None
    if args.state_dir is not None:
        if not args.state_dir.exists():
            args.state_dir.mkdir(parents=True)
            init_db_dir(args.state_dir, 1)
        recovery = RecoveryConfig(args.state_dir, timedelta(0))
    reporter = Reporter(args.progress, lambda: counter.value).start()
    try:
        cli_main(
            flow,
            workers_per_process=args.workers,
            epoch_interval=timedelta(seconds=args.snapshot_interval),
            recovery_config=recovery,
        )
    finally:
        reporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
