"""The passthrough limit: read the raw topics, produce the bytes unchanged to one output topic.

No parsing, no state, the same producer settings as every crm-stream connector
(:func:`crmstream.kafka.producer_config`: idempotent, acks=all, lz4). Whatever this reaches is
what the broker and librdkafka allow on this machine: the ceiling for any Python stream processor
reading and writing the same records. Partitions are assigned manually (no group join, no
commits), which only makes the limit higher.

``python -m bench.passthrough --bootstrap-servers H:P --input a,b --output out --progress f``
runs until SIGTERM; the orchestrator polls the progress file for acknowledged records.
"""

from __future__ import annotations

import argparse
import signal
import sys
import uuid
from pathlib import Path
from types import FrameType

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from bench.progress import Reporter
from crmstream.kafka import consumer_config, producer_config
from crmstream.settings import Settings

BATCH = 2000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True, help="comma-separated raw topics")
    parser.add_argument("--output", required=True)
    parser.add_argument("--progress", required=True, type=Path)
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=500,
        help="fetch.wait.max.ms (librdkafka's default 500): how long the broker may hold a fetch",
    )
    args = parser.parse_args(argv)

    settings = Settings.from_env({}, bootstrap_servers=args.bootstrap_servers)
    consumer = Consumer(
        consumer_config(
            settings,
            group_id=f"bench-passthrough-{uuid.uuid4().hex[:8]}",
            **{
                "fetch.max.bytes": 8 << 20,
                "queued.min.messages": 50_000,
                "fetch.wait.max.ms": args.fetch_wait_ms,
            },
        )
    )
    producer = Producer(producer_config(settings))
    topics = [t for t in args.input.split(",") if t]
    meta = consumer.list_topics(timeout=10)
    consumer.assign(
        [TopicPartition(t, p, 0) for t in topics for p in sorted(meta.topics[t].partitions)]
    )

    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    produced = 0
    # Acknowledged = produced minus what is still queued in librdkafka (no per-record callback,
    # which would cost more than the copy itself).
    reporter = Reporter(args.progress, lambda: max(0, produced - len(producer))).start()
    output = args.output
    try:
        while not stopping:
            for msg in consumer.consume(BATCH, 0.1):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    print(f"passthrough: consume error {error.str()}", file=sys.stderr)
                    return 1
                while True:
                    try:
                        producer.produce(output, msg.value(), msg.key(), headers=msg.headers())
                        break
                    except BufferError:
                        producer.poll(0.05)
                produced += 1
            producer.poll(0)
        producer.flush(30)
    finally:
        reporter.stop()
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
