"""The peer: crm-stream's pipeline written with Quix Streams, so that only the engine differs.

Same normalizers (:data:`processors.normalize.NORMALIZERS`), same output record builders
(:mod:`processors.records`), same Avro encoding (:class:`crmstream.serde.AvroSerde`), same work:
normalize, dead-letter the rejects, drop duplicates by ``event_id`` (RocksDB state), write the
canonical event keyed by ``event_id``, repartition by campaign (``group_by``) and count per
campaign in the configured tumbling windows (1m and 1h by default), upserting each window's totals.

Written the Quix way: one StreamingDataFrame per raw topic (concatenating topics would make Quix
align partition time across them, which crm-stream does not do), branches for dead letters and
events, ``filter(stateful=True)`` for dedupe, ``group_by`` + ``apply(stateful=True)`` for stats.
Quix emits per record, so each event yields one upsert per window; crm-stream coalesces a batch's
upserts per window (a difference of the engines' models, noted in the results).

Runs in its own virtualenv (``.venv-quix``: quixstreams 3.28 pins confluent-kafka below
crm-stream's) with the repository on ``PYTHONPATH``. Known on Tansu: Quix reads ``retention.ms``
and ``retention.bytes`` of every topic back and fails with ``KeyError: 'retention.ms'`` unless
they were set explicitly, so every topic here is declared with both.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.models import TopicConfig
from quixstreams.models.serializers import SerializationContext, Serializer

from bench.progress import Reporter
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

RETENTION = {"retention.ms": str(14 * 86400 * 1000), "retention.bytes": "-1"}


def send_time(_value: Any, _key: Any, _timestamp: int, _headers: Any) -> int:
    return time.time_ns() // 1_000_000


class KeyedBytes(Serializer):
    """Values travel as ``(key, avro bytes)`` so that ``to_topic(key=...)`` can take the key."""

    def __call__(self, value: tuple[bytes, bytes], ctx: SerializationContext) -> bytes:
        return value[1]


def build(args: argparse.Namespace, counter: list[int]) -> Application:
    settings = Settings.from_env({}, bootstrap_servers=args.bootstrap_servers)
    serde = AvroSerde(settings)
    windows = settings.stats_window_seconds()
    ctx = NormalizeContext()
    prefix = args.prefix

    raw_prefix = f"{prefix}raw."

    def on_processed(topic: str, _partition: int, _offset: int) -> None:
        # Raw records only: group_by's repartition topic is processed by the same consumer.
        if topic.startswith(raw_prefix):
            counter[0] += 1

    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval,
        loglevel="WARNING",
        on_message_processed=on_processed,
        # The Tansu dev profile (config/tansu-dev.env): slow group joins otherwise.
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    config = TopicConfig(
        num_partitions=args.partitions, replication_factor=1, extra_config=dict(RETENTION)
    )
    out = {"value_serializer": KeyedBytes(), "key_serializer": "bytes", "config": config}
    events_topic = app.topic(f"{prefix}events", **out)
    dead_topic = app.topic(f"{prefix}dead-letter", **out)
    stats_topic = app.topic(f"{prefix}campaign-stats", **out)

    for vendor in VENDORS:
        topic = app.topic(
            f"{prefix}{raw_topic(vendor)}",
            value_deserializer="bytes",
            key_deserializer="bytes",
            config=config,
        )
        normalize = NORMALIZERS[vendor]

        def normalized(
            value: bytes,
            key: bytes | None,
            timestamp: int,
            headers: Any,
            *,
            _vendor: str = vendor,
            _normalize: Any = normalize,
            _topic: str = topic.name,
        ) -> tuple[Any, RawPosition, bytes, bytes | None]:
            # Quix exposes no partition/offset here; the position keeps the topic and time.
            pos = RawPosition(_topic, -1, -1, timestamp, headers_dict(headers))
            return _normalize(value or b"", ctx), pos, value, key

        sdf = app.dataframe(topic).apply(normalized, metadata=True)

        def dead_letter(item: tuple[Any, RawPosition, bytes, bytes | None], _v: str = vendor):
            outcome, pos, raw, key = item
            record = dead_letter_record(
                raw=raw,
                raw_key=key,
                vendor=_v,
                reason=outcome.reason.value,
                detail=outcome.detail,
                pos=pos,
                now_ms=time.time_ns() // 1_000_000,
            )
            return key or b"", serde.encode("DeadLetter", record, dead_topic.name)

        rejected = sdf.filter(lambda item: isinstance(item[0], Rejected))
        rejected.apply(dead_letter).to_topic(dead_topic, key=lambda kv: kv[0])

        events = sdf.filter(lambda item: isinstance(item[0], CanonicalEvent))

        def first_seen(item: tuple[Any, RawPosition, bytes, bytes | None], state: Any) -> bool:
            event_id = item[0].event_id
            if state.exists(event_id):
                return False
            state.set(event_id, 1)
            return True

        events = events.filter(first_seen, stateful=True)

        def encoded(item: tuple[Any, RawPosition, bytes, bytes | None]) -> tuple[bytes, bytes]:
            event, pos = item[0], item[1]
            record = canonical_record(event, pos, time.time_ns() // 1_000_000)
            return event.event_id.encode(), serde.encode(
                "CanonicalEvent", record, events_topic.name
            )

        # Quix gives an output record the input record's timestamp; crm-stream's producer stamps
        # the send time. Stamp it here too, so both latencies end at "handed to the producer".
        events.apply(encoded).set_timestamp(send_time).to_topic(events_topic, key=lambda kv: kv[0])

        def increment(item: tuple[Any, RawPosition, bytes, bytes | None]) -> dict[str, Any]:
            event: CanonicalEvent = item[0]
            return {
                "k": campaign_key(event),
                "o": event.occurred_at,
                "t": event.event_type.value,
                "c": event.channel.value,
            }

        by_campaign = events.apply(increment).group_by(
            lambda inc: inc["k"], name=f"campaign-{vendor}"
        )

        def counted(inc: dict[str, Any], state: Any) -> list[tuple[bytes, bytes]]:
            now_ms = time.time_ns() // 1_000_000
            out: list[tuple[bytes, bytes]] = []
            for label, size in windows:
                start = window_start(inc["o"], size)
                name = f"{label}|{start}"
                counts = WindowCounts.load(state.get(name))
                counts.add(inc["t"], inc["c"])
                state.set(name, counts.dump())
                record = stats_record(inc["k"], label, start, size, counts, now_ms)
                out.append(
                    (
                        stats_upsert_key(inc["k"], label, start),
                        serde.encode("CampaignStats", record, stats_topic.name),
                    )
                )
            return out

        by_campaign.apply(counted, stateful=True, expand=True).set_timestamp(send_time).to_topic(
            stats_topic, key=lambda kv: kv[0]
        )
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quix_peer")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--prefix", required=True, help="topic prefix of raw and output topics")
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--progress", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    counter = [0]
    app = build(args, counter)
    reporter = Reporter(args.progress, lambda: counter[0]).start()

    try:  # Application.run() stops cleanly on SIGTERM/SIGINT by itself
        app.run()
    finally:
        reporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
