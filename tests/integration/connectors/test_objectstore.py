"""The object-store feeds against a real S3 API (moto's threaded server) and the session broker.

Every check counts records by consuming the raw topic, never by watermark (Tansu under-reports).
"""

from __future__ import annotations

import bz2
import gzip
import http.client
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Message

from connectors.feeds import FLARELANE, LEANPLUM, PINPOINT_FIREHOSE, FeedProfile
from connectors.objectstore.errors import SourceError
from connectors.objectstore.settings import ObjectStoreSettings
from connectors.objectstore.source import ObjectStoreSource
from connectors.runtime.kafka import RawPublisher
from crmdemo.generators import GENERATORS
from crmdemo.samplefeeds import leanplum_parquet_row, leanplum_parquet_schema
from crmstream.errors import BrokerError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.normalize import EVENT_IDS
from tests.kafka_helpers import read_topic

LEANPLUM_ID = EVENT_IDS["leanplum"]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come from boto3's standard chain; here, the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bucket(moto_endpoint: str) -> tuple[Any, str]:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"feed-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
def kafka(settings_factory: Callable[..., Settings]) -> Settings:
    settings = settings_factory()
    create_topics(settings)
    return settings


def source(
    profile: FeedProfile, settings: Settings, src: str, endpoint: str | None = None, **options: Any
) -> ObjectStoreSource:
    options.setdefault("max_attempts", 3)
    config = ObjectStoreSettings(source=src, endpoint_url=endpoint, once=True, **options)
    return ObjectStoreSource(profile, config, settings, key_of=EVENT_IDS[profile.vendor])


def raw(settings: Settings, vendor: str, expected: int, timeout: float = 60.0) -> list[Message]:
    return read_topic(
        settings,
        settings.topic(f"raw.{vendor}"),
        until=lambda records: len(records) >= expected,
        timeout=timeout,
        idle=1.0,
    )


def headers(msg: Message) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


def lines(docs: list[Any]) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


def lp(event_id: str, day: str = "2024-03-05", **props: Any) -> dict[str, Any]:
    """A Leanplum JSON-feed campaign event (seed 000, "Campaign Enter")."""
    return {
        "event_id": event_id,
        "name": "(Leanplum) Campaign Enter",
        "properties": {
            "user_id": "u1",
            "device_id": "d1",
            "time": f"{day} 10:00:00.000",
            "name": "Spring",
            "campaign_id": 42,
            "event_type": "Enter",
            **props,
        },
    }


def parquet_bytes(path: Path, docs: list[dict[str, Any]], row_group_size: int = 1000) -> bytes:
    rows = [leanplum_parquet_row(d) for d in docs]
    assert all(r is not None for r in rows)
    table = pa.Table.from_pylist(rows, schema=leanplum_parquet_schema())
    pq.write_table(table, path, row_group_size=row_group_size)
    return path.read_bytes()


# --- tests ----------------------------------------------------------------------------------


def test_leanplum_every_format_from_s3(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    client, name = bucket
    docs = [lp(f"e{i}") for i in range(40)]
    client.put_object(
        Bucket=name, Key="feed/dt=2024-03-04/a.json", Body=lines(docs[:10]) + b"{oops\n"
    )
    client.put_object(Bucket=name, Key="feed/dt=2024-03-05/b.json", Body=orjson.dumps(docs[10:20]))
    client.put_object(
        Bucket=name, Key="feed/dt=2024-03-05/c.json.gz", Body=gzip.compress(lines(docs[20:30]))
    )
    client.put_object(
        Bucket=name,
        Key="feed/dt=2024-03-06/d.parquet",
        Body=parquet_bytes(tmp_path / "d", docs[30:], 4),
    )
    client.put_object(Bucket=name, Key="feed/_SUCCESS", Body=b"")  # not part of the layout
    client.put_object(Bucket=name, Key="elsewhere/dt=2024-03-05/z.json", Body=lines([lp("zz")]))

    stats = source(LEANPLUM, kafka, f"s3://{name}/feed", moto_endpoint, app_id="app-1").run()
    assert (stats.ingested, stats.failed, stats.records) == (4, 0, 41)

    got = raw(kafka, "leanplum", 41)
    assert len(got) == 41
    by_key = {m.key(): m for m in got if m.key() is not None}
    assert sorted(by_key) == sorted(f"e{i}".encode() for i in range(40))
    bad = [m for m in got if m.key() is None]
    assert [m.value() for m in bad] == [b"{oops"]
    assert headers(bad[0])["source"] == f"s3://{name}/feed/dt=2024-03-04/a.json#10"
    h = headers(by_key[b"e35"])
    assert h["vendor"] == "leanplum" and h["format"] == "parquet" and h["app_id"] == "app-1"
    assert h["source"] == f"s3://{name}/feed/dt=2024-03-06/d.parquet#5"
    assert int(h["ingested_at"]) > 1_700_000_000_000
    assert orjson.loads(by_key[b"e35"].value()) == leanplum_parquet_row(docs[35])
    assert orjson.loads(by_key[b"e12"].value()) == docs[12]
    assert headers(by_key[b"e12"])["format"] == "json-array"
    assert headers(by_key[b"e25"])["format"] == "json-lines+gzip"

    # A restart reads the checkpoints and publishes nothing again.
    again = source(LEANPLUM, kafka, f"s3://{name}/feed", moto_endpoint).run()
    assert (again.ingested, again.records) == (0, 0)
    assert len(raw(kafka, "leanplum", 41)) == 41


def test_more_than_1000_keys_are_paginated(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str
) -> None:
    client, name = bucket
    n = 1050

    def put(i: int) -> None:
        doc = {"event_type": "_campaign.send", "client": {"client_id": f"c{i}"}, "n": i}
        key = f"2024/03/05/{i % 24:02d}/stream-{i:05d}"
        client.put_object(Bucket=name, Key=key, Body=lines([doc]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    stats = source(PINPOINT_FIREHOSE, kafka, f"s3://{name}", moto_endpoint).run()
    assert stats.ingested == n
    got = raw(kafka, "pinpoint", n, timeout=90)
    assert sorted(orjson.loads(m.value())["n"] for m in got) == list(range(n))
    assert all(m.key() for m in got)  # the synthetic Pinpoint key


def test_flarelane_projects_are_discovered(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    client, name = bucket
    ev = [
        {"id": f"01HX{i:04d}", "type": "push.sent", "time": "2024-03-05T10:00:00Z", "projectid": p}
        for i, p in enumerate(["p1", "p1", "p2", "p2"])
    ]
    table = pa.Table.from_pylist(ev[2:])
    pq.write_table(table, tmp_path / "f.parquet")
    client.put_object(
        Bucket=name,
        Key="x/projectid=p1/date=2024-03-05/a.json.gz",
        Body=gzip.compress(lines(ev[:2])),
    )
    client.put_object(
        Bucket=name,
        Key="x/projectid=p2/date=2024-03-05/b.parquet",
        Body=(tmp_path / "f.parquet").read_bytes(),
    )
    stats = source(FLARELANE, kafka, f"s3://{name}/x/", moto_endpoint).run()
    assert stats.records == 4
    got = raw(kafka, "flarelane", 4)
    assert sorted(m.key() for m in got) == [e["id"].encode() for e in ev]
    assert sorted(orjson.loads(m.value())["projectid"] for m in got) == ["p1", "p1", "p2", "p2"]

    only = settings_for_project(kafka)
    stats = source(FLARELANE, only, f"s3://{name}/x/", moto_endpoint, project_id="p2").run()
    assert stats.records == 2


def settings_for_project(settings: Settings) -> Settings:
    """Same broker, fresh topics: a second connector instance with its own checkpoints."""
    fresh = Settings.from_env(
        {
            "CRM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CRM_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
            "CRM_PARTITIONS": "2",
            "CRM_REPLICATION_FACTOR": "1",
        }
    )
    create_topics(fresh)
    return fresh


def test_late_files_and_changed_etags(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str
) -> None:
    client, name = bucket
    put = lambda key, docs: client.put_object(Bucket=name, Key=key, Body=lines(docs))  # noqa: E731
    put("dt=2024-03-01/a.json", [lp("a1", "2024-03-01")])
    put("dt=2024-03-10/b.json", [lp("b1", "2024-03-10")])
    src = source(LEANPLUM, kafka, f"s3://{name}", moto_endpoint, late_days=3)
    assert src.poll().records == 2
    assert src.poll().records == 0

    put("dt=2024-03-08/late.json", [lp("late1", "2024-03-08")])  # 2 days before the newest
    put("dt=2024-03-11/new.json", [lp("new1", "2024-03-11")])  # a new partition
    put("dt=2024-03-10/b.json", [lp("b1", "2024-03-10"), lp("b2", "2024-03-10")])  # new ETag
    third = src.poll()
    assert third.records == 4  # late1, new1 and both rows of the rewritten b.json
    # Re-listing is bounded: dt=2024-03-01 is outside the late window of the newest (03-11).
    assert third.listed == 3
    got = raw(kafka, "leanplum", 6)
    assert sorted(m.key() for m in got) == [b"a1", b"b1", b"b1", b"b2", b"late1", b"new1"]


def test_empty_truncated_and_corrupt_objects_never_crash_loop(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    client, name = bucket
    good = lines([lp(f"g{i}") for i in range(300)])
    packed = gzip.compress(good)
    client.put_object(Bucket=name, Key="dt=2024-03-05/empty.json.gz", Body=b"")
    client.put_object(
        Bucket=name, Key="dt=2024-03-05/cut.json.gz", Body=packed[: len(packed) * 2 // 3]
    )
    client.put_object(Bucket=name, Key="dt=2024-03-05/bad.parquet", Body=b"PAR1" + b"\x00" * 64)
    client.put_object(Bucket=name, Key="dt=2024-03-05/ok.json", Body=lines([lp("ok")]))

    stats = source(LEANPLUM, kafka, f"s3://{name}", moto_endpoint).run()
    assert stats.failed == 2 and stats.ingested == 2
    assert stats.errors == {"truncated_gzip": 1, "corrupt_parquet": 1}
    readable = stats.records - 1
    assert 0 < readable < 300

    # Parked objects are not retried on restart (no crash loop) until their ETag changes.
    again = source(LEANPLUM, kafka, f"s3://{name}", moto_endpoint).run()
    assert (again.records, again.failed, again.errors) == (0, 0, {})
    client.put_object(
        Bucket=name, Key="dt=2024-03-05/bad.parquet", Body=parquet_bytes(tmp_path / "p", [lp("pq")])
    )
    fixed = source(LEANPLUM, kafka, f"s3://{name}", moto_endpoint).run()
    assert (fixed.records, fixed.failed) == (1, 0)

    got = raw(kafka, "leanplum", readable + 2)
    assert len(got) == readable + 2
    expected = {f"g{i}".encode() for i in range(readable)} | {b"ok", b"pq"}
    assert {m.key() for m in got} == expected

    serde = AvroSerde(kafka)
    dead = read_topic(
        kafka, kafka.topic("dead-letter"), until=lambda r: len(r) >= 2, timeout=30, idle=1.0
    )
    letters = {m.key(): serde.decode(m.value())[1] for m in dead}
    assert len(dead) == 2  # one per parked object, none for the retry that succeeded
    cut = letters[f"s3://{name}/dt=2024-03-05/cut.json.gz".encode()]
    assert cut["reason"] == "unreadable_object:truncated_gzip"
    assert cut["vendor"] == "leanplum" and cut["source_topic"] == kafka.topic("raw.leanplum")
    assert cut["source_position"] == f"s3://{name}/dt=2024-03-05/cut.json.gz#{readable}"
    bad = letters[f"s3://{name}/dt=2024-03-05/bad.parquet".encode()]
    assert bad["reason"] == "unreadable_object:corrupt_parquet" and bad["raw"] == b""


def test_firehose_zip_snappy_and_hadoop_snappy_objects(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str
) -> None:
    """Issue 14: every compression Firehose writes is read (no extension: sniffed); an object in
    none of them is one ``unreadable_object`` dead letter and a counted failure, never binary
    "records" on the raw topic."""
    import io
    import zipfile

    import snappy  # python-snappy writes the objects: an implementation independent of ours

    client, name = bucket

    def doc(codec: str, i: int) -> dict[str, Any]:
        return {"event_type": "_campaign.send", "client": {"client_id": f"{codec}{i}"}, "n": i}

    def body(codec: str) -> bytes:
        return lines([doc(codec, i) for i in range(1000)])

    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("records", body("zip"))
    objects = {
        "zip": packed.getvalue(),
        "snappy": bytes(snappy.StreamCompressor().add_chunk(body("snappy"))),
        "hadoop": bytes(snappy.HadoopStreamCompressor().add_chunk(body("hadoop"))),
        "bzip2": bz2.compress(body("bzip2")),
    }
    for codec, content in objects.items():
        client.put_object(Bucket=name, Key=f"2024/03/05/10/stream-{codec}", Body=content)
    failed_before = _metric(
        "crm_objectstore_objects_ingested_total", connector="pinpoint-firehose", outcome="failed"
    )

    stats = source(PINPOINT_FIREHOSE, kafka, f"s3://{name}", moto_endpoint).run()

    assert (stats.ingested, stats.failed, stats.records) == (3, 1, 3000)
    assert stats.errors == {"unknown_format": 1}
    failed_after = _metric(
        "crm_objectstore_objects_ingested_total", connector="pinpoint-firehose", outcome="failed"
    )
    assert failed_after - failed_before == 1
    got = raw(kafka, "pinpoint", 3000, timeout=90)
    clients = sorted(orjson.loads(m.value())["client"]["client_id"] for m in got)
    assert clients == sorted(f"{c}{i}" for c in ("zip", "snappy", "hadoop") for i in range(1000))
    assert {headers(m)["format"] for m in got} == {
        "json-lines+zip",
        "json-lines+snappy",
        "json-lines+hadoop-snappy",
    }
    dead = read_topic(
        kafka, kafka.topic("dead-letter"), until=lambda r: len(r) >= 1, timeout=30, idle=1.0
    )
    assert len(dead) == 1
    letter = AvroSerde(kafka).decode(dead[0].value())[1]
    assert letter["reason"] == "unreadable_object:unknown_format"
    assert dead[0].key() == f"s3://{name}/2024/03/05/10/stream-bzip2".encode()


def _metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_missing_bucket_is_a_clear_error_not_a_retry(kafka: Settings, moto_endpoint: str) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match="NoSuchBucket"):
        source(LEANPLUM, kafka, "s3://no-such-bucket-here/feed", moto_endpoint).run()
    assert time.monotonic() - started < 10


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers 503 SlowDown to every other request, and proxies the rest to moto."""

    upstream: tuple[str, int]
    throttled = 0
    lock = threading.Lock()
    count = 0

    def _handle(self) -> None:
        with self.lock:
            type(self).count += 1
            throttle = self.count % 2 == 1
            if throttle:
                type(self).throttled += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if throttle:
            payload = b"<Error><Code>SlowDown</Code><Message>Reduce your rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in {
                "content-length",
                "transfer-encoding",
                "connection",
                "server",
                "date",
            }:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = _handle

    def log_message(self, *args: Any) -> None:
        pass


def test_throttling_is_retried_with_backoff(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="dt=2024-03-05/a.json", Body=lines([lp("t1"), lp("t2")]))
    client.put_object(
        Bucket=name, Key="dt=2024-03-05/b.parquet", Body=parquet_bytes(tmp_path / "b", [lp("t3")])
    )
    host, port = moto_endpoint.removeprefix("http://").split(":")
    handler = type(
        "Handler", (_Throttling,), {"upstream": (host, int(port)), "count": 0, "throttled": 0}
    )
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
        stats = source(
            LEANPLUM, kafka, f"s3://{name}", endpoint, retry_mode="standard", max_attempts=4
        ).run()
    finally:
        proxy.shutdown()
    assert stats.records == 3 and stats.failed == 0
    assert handler.throttled >= 4
    assert sorted(m.key() for m in raw(kafka, "leanplum", 3)) == [b"t1", b"t2", b"t3"]


class _CrashingPublisher(RawPublisher):
    """Dies like a killed process after ``limit`` records: nothing after it is flushed."""

    def __init__(self, settings: Settings, limit: int) -> None:
        super().__init__(settings, "leanplum")
        self.limit = limit
        self.published = 0

    def publish(self, *args: Any, **kwargs: Any) -> None:
        if self.published >= self.limit:
            raise KeyboardInterrupt("simulated kill")
        self.published += 1
        super().publish(*args, **kwargs)


def test_connector_killed_mid_file_resumes_without_loss(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    client, name = bucket
    docs = [lp(f"k{i:05d}") for i in range(5000)]
    client.put_object(
        Bucket=name,
        Key="dt=2024-03-05/a.parquet",
        Body=parquet_bytes(tmp_path / "a", docs[:3000], 700),
    )
    client.put_object(
        Bucket=name, Key="dt=2024-03-05/b.json.gz", Body=gzip.compress(lines(docs[3000:]))
    )
    config = ObjectStoreSettings(
        source=f"s3://{name}", endpoint_url=moto_endpoint, once=True, checkpoint_every=500
    )
    crashing = _CrashingPublisher(kafka, limit=1800)
    with pytest.raises(KeyboardInterrupt):
        ObjectStoreSource(LEANPLUM, config, kafka, publisher=crashing, key_of=LEANPLUM_ID).run()
    crashing._producer.flush(10)  # what a real kill may or may not have sent: either is fine

    stats = ObjectStoreSource(LEANPLUM, config, kafka, key_of=LEANPLUM_ID).run()
    assert stats.ingested == 2
    assert stats.records <= 5000 - 1500  # resumed at the checkpoint of row 1500, not at 0

    got = raw(kafka, "leanplum", 5000, timeout=90)
    keys = [m.key() for m in got]
    assert set(keys) == {d["event_id"].encode() for d in docs}  # none missing
    assert len(keys) - len(set(keys)) <= 500  # repeats only since the last checkpoint


def _big_leanplum_cli(
    kafka: Settings, tmp_path: Path, prefix: str, n: int, checkpoint_every: int
) -> tuple[list[str], dict[str, str]]:
    """A one-file Leanplum feed of ``n`` rows (ids ``<prefix>000000``...) and the
    ``crm-stream connect leanplum`` command and environment that ingest it."""
    feed = tmp_path / "feed" / "dt=2024-03-05"
    feed.mkdir(parents=True)
    (feed / "big.json").write_bytes(lines([lp(f"{prefix}{i:06d}") for i in range(n)]))
    env = {
        **os.environ,
        "CRM_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CRM_TOPIC_PREFIX": kafka.topic_prefix,
        "CRM_PARTITIONS": str(kafka.partitions),
        "CRM_REPLICATION_FACTOR": str(kafka.replication_factor),
        "CRM_METRICS_PORT": "0",
        "CRM_LOG_LEVEL": "WARNING",
    }
    cmd = [
        sys.executable, "-m", "crmcli", "connect", "leanplum",
        "--source", f"file://{tmp_path / 'feed'}", "--once",
        "--checkpoint-every", str(checkpoint_every),
    ]  # fmt: skip
    return cmd, env


def test_cli_killed_with_sigkill_and_restarted(kafka: Settings, tmp_path: Path) -> None:
    """The real thing: ``crm-stream connect leanplum`` in a child process, SIGKILLed mid-file."""
    n = 100_000
    cmd, env = _big_leanplum_cli(kafka, tmp_path, "s", n, checkpoint_every=2000)
    child = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_topic(
            kafka, kafka.topic("raw.leanplum"), until=lambda r: len(r) >= 5000, timeout=60, idle=0
        )
        assert child.poll() is None, "the connector finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout.splitlines()[-1])
    assert 0 < summary["records"] < n  # resumed mid-file
    keys = {m.key() for m in raw(kafka, "leanplum", n, timeout=120)}
    assert keys == {f"s{i:06d}".encode() for i in range(n)}


def test_cli_sigterm_checkpoints_and_a_restart_republishes_nothing(
    kafka: Settings, tmp_path: Path
) -> None:
    """SIGTERM mid-file (no mid-file checkpoint configured): exit 0 with the acknowledged rows
    checkpointed, so the restart publishes exactly the rest: every id once (issue 14)."""
    n = 100_000
    cmd, env = _big_leanplum_cli(kafka, tmp_path, "t", n, checkpoint_every=10_000_000)
    child = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_topic(
            kafka, kafka.topic("raw.leanplum"), until=lambda r: len(r) >= 5000, timeout=60, idle=0
        )
        assert child.poll() is None, "the connector finished before it could be stopped"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err.decode()[-2000:]
    first = orjson.loads(out.splitlines()[-1])["records"]
    assert 0 < first < n, "stopped mid-file"
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert orjson.loads(done.stdout.splitlines()[-1])["records"] == n - first
    keys = [m.key() for m in raw(kafka, "leanplum", n, timeout=120)]
    assert sorted(keys) == [f"t{i:06d}".encode() for i in range(n)]  # each exactly once


def test_broker_down_is_not_checkpointed(bucket: tuple[Any, str], moto_endpoint: str) -> None:
    """With no broker to acknowledge, flush fails and no checkpoint is written past it."""
    client, name = bucket
    client.put_object(Bucket=name, Key="dt=2024-03-05/a.json", Body=lines([lp("x")]))
    settings = Settings.from_env({"CRM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CRM_METRICS_PORT": "0"})

    class NoCheckpoints:
        commits: list[Any] = []

        def load(self) -> dict[str, Any]:
            return {}

        def commit(self, key: str, value: Any) -> None:
            self.commits.append((key, value))

    publisher = RawPublisher(settings, "leanplum", producer=None)
    store = NoCheckpoints()
    src = ObjectStoreSource(
        LEANPLUM,
        ObjectStoreSettings(source=f"s3://{name}", endpoint_url=moto_endpoint, once=True),
        settings,
        publisher=publisher,
        checkpoints=store,  # type: ignore[arg-type]
        key_of=LEANPLUM_ID,
    )
    publisher.flush = lambda timeout=60.0: RawPublisher.flush(publisher, 2.0)  # type: ignore[method-assign]
    with pytest.raises(BrokerError):
        src.poll()
    assert store.commits == []


@pytest.mark.parametrize(
    ("vendor", "connector"),
    [("leanplum", "leanplum"), ("flarelane", "flarelane"), ("pinpoint", "pinpoint-firehose")],
)
def test_sample_feed_folder_through_the_connector(
    kafka: Settings, tmp_path: Path, vendor: str, connector: str
) -> None:
    """What the demo does: lay the samples out as the vendor's bucket, run the connector once."""
    import random
    from collections import Counter

    from connectors.objectstore.cli import run_feed
    from crmdemo.samplefeeds import write_sample_feed
    from crmdemo.samples import campaigns

    rng = random.Random(5)
    sample = GENERATORS[vendor](rng, 400, campaigns(rng))
    write_sample_feed(connector, sample, tmp_path / "feed", random.Random(5))
    stats = run_feed(
        connector, kafka, f"file://{tmp_path / 'feed'}", key_of=EVENT_IDS[vendor], app_id="app-1"
    )
    assert stats.records == len(sample.records) and stats.failed == 0
    got = raw(kafka, vendor, len(sample.records))
    assert Counter(m.key() for m in got) == Counter(k for k, _ in sample.records)


def test_positions_behind_the_listing_horizon_are_forgotten_and_never_read_again(
    kafka: Settings, bucket: tuple[Any, str], moto_endpoint: str
) -> None:
    """connect-offsets does not keep a key per object ever seen (issue 23 item 1): once a pass
    saw a newer partition, the objects more than ``late_days`` before it are tombstoned, after
    the listing horizon is checkpointed; a restart lists from the horizon and reads none of them
    again, while a late file within the window is still found."""
    client, name = bucket
    put = lambda key, docs: client.put_object(Bucket=name, Key=key, Body=lines(docs))  # noqa: E731
    put("dt=2024-03-01/a.json", [lp("a1", "2024-03-01")])
    put("dt=2024-03-02/b.json", [lp("b1", "2024-03-02")])
    put("dt=2024-03-10/c.json", [lp("c1", "2024-03-10")])
    src = source(LEANPLUM, kafka, f"s3://{name}", moto_endpoint, late_days=3)
    assert src.poll().records == 3
    assert src.poll().records == 0  # this pass starts by forgetting a.json and b.json
    topic = kafka.topic("connect-offsets")
    latest = {m.key(): m.value() for m in read_topic(kafka, topic)}
    prefix = f"leanplum/{name}/".encode()
    assert latest[prefix + b"dt=2024-03-01/a.json"] is None
    assert latest[prefix + b"dt=2024-03-02/b.json"] is None
    assert orjson.loads(latest[prefix + b"dt=2024-03-10/c.json"] or b"{}")["done"] is True
    assert orjson.loads(latest[b"leanplum/__horizon/"] or b"{}")["horizon"] == ("2024-03-07")
    live = sorted(k for k, v in latest.items() if v is not None)
    assert live == [b"leanplum/__horizon/", prefix + b"dt=2024-03-10/c.json"]

    # A restart: the forgotten objects are behind the horizon, never listed nor read again;
    # a late file in the window (03-08) is found.
    put("dt=2024-03-08/late.json", [lp("late1", "2024-03-08")])
    again = source(LEANPLUM, kafka, f"s3://{name}", moto_endpoint, late_days=3)
    first = again.poll()
    assert (first.records, first.listed) == (1, 2)  # late.json and c.json listed, late read
    got = raw(kafka, "leanplum", 4)
    assert sorted(m.key() for m in got) == [b"a1", b"b1", b"c1", b"late1"]
