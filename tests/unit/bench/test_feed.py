"""The latency feed publishes on the producer it is given (the preload's, which has its producer
id already): a new idempotent producer holds its first records until the broker gave it one,
and those records, stamped ``ingested_at`` at send time, would carry that wait as latency."""

from __future__ import annotations

from typing import Any

import pytest

from bench import run as bench_run
from bench.generate import generate
from crmstream.topics import H_INGESTED_AT


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict[str, bytes]]] = []
        self.flushed = 0

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.sent.append((topic, value, key, dict(headers)))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        return 0


@pytest.fixture
def no_new_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench step that makes a producer of its own (not the one it is given) fails."""

    def refuse(bootstrap: str) -> Any:
        raise AssertionError("a producer of its own was made")

    monkeypatch.setattr(bench_run, "_producer", refuse)


@pytest.mark.usefixtures("no_new_producer")
def test_the_feed_uses_the_producer_it_is_given() -> None:
    data = generate(200, seed=1, campaigns=10)
    producer = RecordingProducer()
    before = bench_run.now_ms()
    fed = bench_run.feed("unused:9092", "p.", data, rate=100_000, producer=producer)  # type: ignore[arg-type]
    assert fed["records"] == 200
    assert len(producer.sent) == 200
    assert producer.flushed == 1
    assert {topic for topic, *_ in producer.sent} <= {f"p.raw.{v}" for v in data.records}
    stamps = [int(headers[H_INGESTED_AT]) for *_, headers in producer.sent]
    assert min(stamps) >= before
    assert stamps == sorted(stamps)


@pytest.mark.usefixtures("no_new_producer")
def test_the_preload_uses_the_producer_it_is_given() -> None:
    data = generate(100, seed=2, campaigns=10)
    producer = RecordingProducer()
    bench_run.preload("unused:9092", "p.", data, producer)  # type: ignore[arg-type]
    assert len(producer.sent) == 100
