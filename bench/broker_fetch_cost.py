"""``python -m bench.broker_fetch_cost``: the embedded broker's CPU for the same live load on a
fresh topic and on one already holding many small batches.

Tansu's memory storage makes a fetch that returns records cost more the more batches its
partition holds (README, "About the embedded broker"), so a long run on it slows down as its
topics fill. This measures that on a broker of its own: a producer at ``--rate`` records/s
(``--linger-ms``) and a consumer at the tail of the same 4-partition topic, for ``--seconds``,
first on a fresh topic, then on one preloaded with ``--preload`` records in batches of at most
``--preload-batch``, then on a fresh one again; it prints Tansu's CPU (cores) for each.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from crmstream.broker import EmbeddedBroker

PARTITIONS = 4


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _live(bootstrap: str, pid: int, topic: str, args: argparse.Namespace) -> float:
    """Tansu's cores while a producer feeds ``topic`` and a consumer reads its tail."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": args.linger_ms})
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fetch-cost-{uuid.uuid4().hex[:8]}",
            "fetch.wait.max.ms": 50,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, -1) for p in range(PARTITIONS)])  # the end
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            consumer.consume(500, 0.1)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(1.0)
    cpu0, t0, n = _cpu_s(pid), time.monotonic(), 0
    while time.monotonic() - t0 < args.seconds:
        for _ in range(max(1, int(args.rate / 100))):
            producer.produce(topic, b"x" * 300, key=str(n).encode())
            n += 1
        producer.poll(0)
        time.sleep(0.01)
    producer.flush(30)
    cores = (_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
    stop.set()
    thread.join()
    consumer.close()
    return cores


def _preload(bootstrap: str, topic: str, records: int, batch: int) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": batch}
    )
    for i in range(records):
        producer.produce(topic, b"x" * 300, key=str(i).encode())
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.broker_fetch_cost", description=__doc__)
    p.add_argument("--preload", type=int, default=100_000)
    p.add_argument("--preload-batch", type=int, default=10, help="most records per batch")
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--linger-ms", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    broker = EmbeddedBroker().start()
    try:
        bootstrap = broker.bootstrap_servers
        print(f"fresh topic: {_live(bootstrap, broker.pid, 'fresh-1', args):.3f} cores")
        _preload(bootstrap, "filled", args.preload, args.preload_batch)
        cores = _live(bootstrap, broker.pid, "filled", args)
        print(
            f"after {args.preload} records in batches of <= {args.preload_batch}: {cores:.3f} cores"
        )
        print(f"fresh topic again: {_live(bootstrap, broker.pid, 'fresh-2', args):.3f} cores")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
