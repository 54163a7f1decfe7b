"""The Segment webhook receiver over real HTTP on loopback, publishing to a real broker.

Every 200 must mean "in the raw topic"; every refusal must be a clear status (401, 400, 413,
503) so that Segment either stops or retries, never a silent drop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from connectors.segment import BackgroundReceiver, SegmentSettings, signature
from crmdemo.feeds import post_samples
from crmstream.broker import EmbeddedBroker, free_port, wait_for_port
from crmstream.settings import Secret, Settings
from crmstream.topics import create_topics
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-for-tests"


def _event(message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "event": "Email Opened",
        "timestamp": "2026-11-25T10:00:00.000Z",
        "userId": "u-1",
        "properties": {"campaign_id": "c-1"},
    }
    if message_id is not None:
        event["messageId"] = message_id
    event.update(extra)
    return event


def _post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One real HTTP request with aiohttp's client."""

    async def go() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
            ) as resp,
        ):
            text = await resp.read()
            try:
                payload = orjson.loads(text)
            except orjson.JSONDecodeError:
                payload = {"raw": text.decode(errors="replace")}
            return resp.status, payload

    return asyncio.run(go())


def _raw(settings: Settings, expected: int, timeout: float = 30.0, idle: float = 1.0) -> list[Any]:
    return read_topic(
        settings,
        settings.topic("raw.segment"),
        until=lambda recs: len(recs) >= expected,
        timeout=timeout,
        idle=idle,
    )


@pytest.fixture
def receiver_factory(
    settings_factory: Callable[..., Settings],
) -> Iterator[Callable[..., tuple[BackgroundReceiver, Settings]]]:
    running: list[BackgroundReceiver] = []

    def make(
        settings: Settings | None = None, create: bool = True, **config: Any
    ) -> tuple[BackgroundReceiver, Settings]:
        settings = settings or settings_factory()
        if create:
            create_topics(settings)
        config.setdefault("port", 0)
        config.setdefault("ack_timeout_s", 10.0)
        receiver = BackgroundReceiver(SegmentSettings(**config), settings).start()
        running.append(receiver)
        return receiver, settings

    yield make
    for receiver in running:
        receiver.stop()


def test_signed_with_either_header_is_published(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, settings = receiver_factory(shared_secret=Secret(SECRET), app_id="src-1")
    first = orjson.dumps(_event("m-1"))
    second = orjson.dumps(_event("m-2"))

    status1, body1 = _post(receiver.url, first, {"X-Signature": signature(SECRET, first)})
    status2, _ = _post(receiver.url, second, {"X-Segment-Signature": signature(SECRET, second)})

    assert (status1, status2) == (200, 200)
    assert body1["accepted"] == 1
    records = _raw(settings, 2)
    assert sorted(r.key() for r in records) == [b"m-1", b"m-2"]
    by_key = {r.key(): r for r in records}
    # A single-object body is published byte for byte.
    assert by_key[b"m-1"].value() == first
    headers = dict(by_key[b"m-1"].headers() or [])
    assert headers["vendor"] == b"segment"
    assert headers["app_id"] == b"src-1"
    assert headers["source"].decode().startswith("segment:")
    assert headers["source"].decode().endswith("#0")


def test_missing_or_wrong_signature_is_401_and_not_published(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, settings = receiver_factory(shared_secret=Secret(SECRET))
    body = orjson.dumps(_event("bad-1"))
    wrong = signature("another secret", body)
    tampered = orjson.dumps(_event("bad-2"))

    assert _post(receiver.url, body)[0] == 401
    assert _post(receiver.url, body, {"X-Signature": wrong})[0] == 401
    assert _post(receiver.url, body, {"X-Segment-Signature": "zz" + wrong[2:]})[0] == 401
    # A signature of another body does not carry over.
    assert _post(receiver.url, tampered, {"X-Signature": signature(SECRET, body)})[0] == 401
    status, payload = _post(receiver.url, body, {"X-Signature": "not hex at all é"})
    assert status == 401
    assert SECRET not in orjson.dumps(payload).decode()

    good = orjson.dumps(_event("good-1"))
    assert _post(receiver.url, good, {"X-Signature": signature(SECRET, good).upper()})[0] == 200
    records = _raw(settings, 1, idle=1.5)
    assert [r.key() for r in records] == [b"good-1"]


def test_unsigned_is_accepted_without_a_secret(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, settings = receiver_factory()
    assert _post(receiver.url, orjson.dumps(_event("u-1")))[0] == 200
    assert [r.key() for r in _raw(settings, 1)] == [b"u-1"]


def test_batched_array_publishes_each_event(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, settings = receiver_factory(shared_secret=Secret(SECRET))
    events = [_event("b-1"), _event("b-2"), _event(None, event="Email Delivered"), _event("b-3")]
    body = orjson.dumps(events)

    status, payload = _post(receiver.url, body, {"X-Signature": signature(SECRET, body)})

    assert status == 200
    assert payload["accepted"] == 4
    records = _raw(settings, 4)
    assert len(records) == 4
    keys = sorted((r.key() or b"<none>") for r in records)
    assert keys == [b"<none>", b"b-1", b"b-2", b"b-3"]
    # The event without messageId is published (key None) for the worker to dead-letter.
    keyless = next(r for r in records if r.key() is None)
    assert orjson.loads(keyless.value()) == events[2]
    sources = sorted(dict(r.headers() or [])["source"].decode().rsplit("#", 1)[1] for r in records)
    assert sources == ["0", "1", "2", "3"]


def test_oversized_body_is_413(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, settings = receiver_factory(max_body_bytes=2048)
    big = orjson.dumps(_event("big", properties={"pad": "x" * 4096}))
    assert _post(receiver.url, big)[0] == 413

    async def chunked() -> int:
        # No Content-Length: the limit is enforced while reading.
        async def gen() -> Any:
            for _ in range(8):
                yield b" " * 512

        async with (
            aiohttp.ClientSession() as session,
            session.post(receiver.url, data=gen()) as resp,
        ):
            return resp.status

    assert asyncio.run(chunked()) == 413
    small = orjson.dumps(_event("small"))
    assert _post(receiver.url, small)[0] == 200
    assert [r.key() for r in _raw(settings, 1, idle=1.5)] == [b"small"]


def test_a_batch_with_one_record_too_large_is_413_and_nothing_is_published(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    """A signed array [A, B (1.2 MB), C] under the body limit: 413 and none of A, B, C on the
    raw topic (issue 14: a batch is all or nothing). A later good batch lands alone."""
    receiver, settings = receiver_factory(
        max_body_bytes=4 * 1024 * 1024, shared_secret=Secret(SECRET)
    )
    batch = orjson.dumps(
        [_event("A"), _event("B", properties={"pad": "x" * 1_200_000}), _event("C")]
    )
    status, payload = _post(receiver.url, batch, {"X-Signature": signature(SECRET, batch)})
    assert (status, payload["error"]) == (413, "record_too_large")
    good = orjson.dumps([_event("D"), _event("E")])
    assert _post(receiver.url, good, {"X-Signature": signature(SECRET, good)})[0] == 200
    assert sorted(r.key() for r in _raw(settings, 2, idle=2.0)) == [b"D", b"E"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'"a string"', "invalid_shape"),
        (b'[{"messageId": "ok"}, 3]', "invalid_shape"),
    ],
)
def test_not_json_or_not_objects_is_400(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
    body: bytes,
    error: str,
) -> None:
    receiver, _ = receiver_factory(create=False)
    status, payload = _post(receiver.url, body)
    assert status == 400
    assert payload["error"] == error


def test_health_and_metrics(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, _ = receiver_factory()
    base = receiver.url.rsplit("/", 1)[0]
    assert _post(receiver.url, orjson.dumps(_event("m-metrics")))[0] == 200
    for path in ("/livez", "/readyz", "/healthz"):
        deadline = time.monotonic() + 30
        while (health := httpx.get(f"{base}{path}", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, (path, health.text)
            time.sleep(0.2)
        assert health.json()["status"] == "ok"
    assert set(httpx.get(f"{base}/readyz", timeout=10).json()["checks"]) == {
        "producer",
        "acks",
        "kafka",
    }
    text = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'crm_connector_http_requests_total{connector="segment",status="200"}' in text
    assert 'crm_connector_records_total{connector="segment"}' in text


def test_kafka_unreachable_is_not_ready_but_live(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
    settings_factory: Callable[..., Settings],
) -> None:
    dead = settings_factory(CRM_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    receiver, _ = receiver_factory(settings=dead, create=False, ack_timeout_s=2.0)
    base = receiver.url.rsplit("/", 1)[0]
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["kafka"]["ok"] is False
    assert httpx.get(f"{base}/livez", timeout=10).status_code == 200


def test_kafka_unreachable_is_503_within_the_ack_timeout(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
    settings_factory: Callable[..., Settings],
) -> None:
    dead = settings_factory(CRM_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    receiver, _ = receiver_factory(settings=dead, create=False, ack_timeout_s=2.0)
    started = time.monotonic()
    status, payload = _post(receiver.url, orjson.dumps([_event("k-1"), _event("k-2")]))
    elapsed = time.monotonic() - started
    assert status == 503
    assert payload["error"] in {"kafka", "kafka_timeout"}
    assert elapsed < 2.0 + 1.5


def test_kafka_stopped_mid_run_gives_503_and_earlier_200s_are_in_the_topic(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = settings_factory(CRM_BOOTSTRAP_SERVERS=broker.bootstrap_servers)
        receiver, _ = receiver_factory(settings=settings, ack_timeout_s=2.0)
        accepted = [f"before-{i}" for i in range(5)]
        for key in accepted:
            assert _post(receiver.url, orjson.dumps(_event(key)))[0] == 200
        records = _raw(settings, len(accepted))
        assert sorted(r.key() for r in records) == sorted(k.encode() for k in accepted)
    finally:
        broker.stop()
    started = time.monotonic()
    status, _ = _post(receiver.url, orjson.dumps(_event("after-stop")))
    assert status == 503
    assert time.monotonic() - started < 2.0 + 1.5


class _ReceiverProcess:
    """``crm-stream connect segment`` as its own process, so it can be killed with SIGKILL."""

    def __init__(self, settings: Settings, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        self.env.update(
            {
                "CRM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                "CRM_TOPIC_PREFIX": settings.topic_prefix,
                "CRM_PARTITIONS": str(settings.partitions),
                "CRM_REPLICATION_FACTOR": str(settings.replication_factor),
                "CRM_METRICS_PORT": "0",
                "CRM_SEGMENT_SHARED_SECRET": SECRET,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "crmcli", "connect", "segment"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--ack-timeout", "5s"),
            ],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port("127.0.0.1", self.port, 30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def test_killed_mid_stream_and_restarted_loses_nothing(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A sender that retries until 200, as Segment does: after a SIGKILL and a restart, every
    event is in the raw topic (at least once)."""
    settings = settings_factory()
    create_topics(settings)
    port = free_port()
    proc = _ReceiverProcess(settings, port, tmp_path / "segment.log")
    proc.start()
    url = f"http://127.0.0.1:{port}/segment"
    keys = [f"kill-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(120)]
    acked: list[str] = []
    failures: list[str] = []

    def sender() -> None:
        with httpx.Client(timeout=10) as client:
            for key in keys:
                body = orjson.dumps(_event(key))
                deadline = time.monotonic() + 60
                while True:
                    try:
                        resp = client.post(
                            url, content=body, headers={"X-Signature": signature(SECRET, body)}
                        )
                        if resp.status_code == 200:
                            acked.append(key)
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        failures.append(key)
                        return
                    time.sleep(0.1)

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        while len(acked) < 40 and thread.is_alive():
            time.sleep(0.01)
        proc.kill()
        killed_at = len(acked)
        time.sleep(0.5)
        proc.start()
        thread.join(90)
    finally:
        proc.stop()
    assert not failures
    assert 40 <= killed_at < len(keys)
    assert acked == keys
    records = _raw(settings, len(keys), timeout=60)
    published = {r.key().decode() for r in records if r.key() is not None}
    assert set(keys) <= published


def test_sigterm_answers_every_request_and_a_restart_republishes_nothing(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """SIGTERM mid-stream: the receiver answers the requests it holds, exits 0, and a sender
    that retries until 200 (as Segment does) puts every event on the topic exactly once: no
    event was published yet answered with an error (issue 14)."""
    settings = settings_factory()
    create_topics(settings)
    port = free_port()
    proc = _ReceiverProcess(settings, port, tmp_path / "segment.log")
    proc.start()
    url = f"http://127.0.0.1:{port}/segment"
    keys = [f"term-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(120)]
    acked: list[str] = []

    def sender() -> None:
        with httpx.Client(timeout=30) as client:
            for key in keys:
                body = orjson.dumps(_event(key))
                while True:
                    try:
                        resp = client.post(
                            url, content=body, headers={"X-Signature": signature(SECRET, body)}
                        )
                        if resp.status_code == 200:
                            acked.append(key)
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.1)

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        while len(acked) < 40 and thread.is_alive():
            time.sleep(0.01)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0, proc.log.read_text()[-3000:]
        assert len(acked) < len(keys), "stopped mid-stream"
        proc.start()
        thread.join(120)
    finally:
        proc.stop()
    assert acked == keys
    records = _raw(settings, len(keys), timeout=60, idle=2.0)
    assert sorted(r.key().decode() for r in records) == sorted(keys)  # each exactly once


def test_post_samples_signs_batches_and_reports_statuses(
    receiver_factory: Callable[..., tuple[BackgroundReceiver, Settings]],
) -> None:
    receiver, settings = receiver_factory(shared_secret=Secret(SECRET))
    values = [orjson.dumps(_event(f"s-{i}")) for i in range(7)] + [b"{broken"]
    tally = post_samples(receiver.url, values, SECRET, batch_size=3)
    # 7 objects in batches of 3 -> 3 requests; the broken record alone -> one 400.
    assert tally == {200: 3, 400: 1}
    records = _raw(settings, 7)
    assert sorted(r.key() for r in records) == sorted(f"s-{i}".encode() for i in range(7))


def test_demo_feed_posts_the_bundled_samples(settings_factory: Callable[..., Settings]) -> None:
    import random

    from crmdemo.feeds import segment_feed
    from crmdemo.samples import campaigns
    from crmdemo.samples.segment import generate

    settings = settings_factory()
    create_topics(settings)
    sample = generate(random.Random(3), 60, campaigns(random.Random(3)))
    values = [value for _key, value in sample.records]
    objects = [v for v in values if _is_json_object(v)]

    tally = segment_feed(settings, values)

    assert tally[200] == len(objects)
    assert tally[400] == len(values) - len(objects) == sample.expected_rejects["invalid_json"]
    records = _raw(settings, len(objects))
    assert sorted(r.value() for r in records) == sorted(objects)


def _is_json_object(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False
