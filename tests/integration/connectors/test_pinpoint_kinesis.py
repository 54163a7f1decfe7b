"""The Pinpoint Kinesis connector against moto's Kinesis in server mode and a real broker.

moto 5.2 differs from Kinesis in two ways that matter for resharding, so :func:`real_resharding`
patches its in-process backend to behave like the service: a put goes to the *open* shard whose
hash range holds the key (moto also picks closed parents, and excludes the range's last key),
and SplitShard leaves the parent's records in the parent (moto re-puts them, emptying it).
Everything else (ListShards parent ids, AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP, LATEST) is moto's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from hashlib import md5
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from botocore.exceptions import ClientError
from confluent_kafka import Consumer, TopicPartition
from moto.kinesis import models as moto_kinesis
from moto.server import ThreadedMotoServer

from connectors import pinpoint_kinesis
from connectors.pinpoint_kinesis import CONNECTOR, KinesisSettings
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.kafka import RawPublisher
from crmstream.broker import free_port
from crmstream.errors import BrokerError
from crmstream.kafka import consumer_config
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.normalize import EVENT_IDS
from processors.normalize.pinpoint import vendor_event_id
from tests.kafka_helpers import read_topic

# The source with the key function the CLI gives it.
KinesisSource = partial(pinpoint_kinesis.KinesisSource, key_of=EVENT_IDS["pinpoint"])

pytestmark = pytest.mark.integration

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def real_resharding(monkeypatch: pytest.MonkeyPatch) -> None:
    def shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
        if explicit_hash_key:
            key = int(explicit_hash_key)
        else:
            key = int(md5(partition_key.encode()).hexdigest(), 16)
        for shard in self.shards.values():
            if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
                return shard
        return None

    def split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
        parent = self.shards[shard_to_split]
        middle = int(new_starting_hash_key)
        assert parent.is_open and parent.starting_hash < middle < parent.ending_hash
        last = max(s._shard_id for s in self.shards.values())
        for index, (start, end) in enumerate(
            ((parent.starting_hash, middle - 1), (middle, parent.ending_hash)), start=1
        ):
            child = moto_kinesis.Shard(last + index, start, end, parent=parent.shard_id)
            child.records = OrderedDict()
            self.shards[child.shard_id] = child
        parent.is_open = False

    monkeypatch.setattr(moto_kinesis.Stream, "get_shard_for_key", shard_for_key)
    monkeypatch.setattr(moto_kinesis.Stream, "split_shard", split_shard)


@pytest.fixture
def kinesis(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return boto3.client("kinesis", endpoint_url=moto_url, region_name="us-east-1")


def _stream(kinesis: Any, shards: int) -> str:
    name = f"pinpoint-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    return name


def _event(n: int, pk: str) -> dict[str, Any]:
    """A Pinpoint campaign event (TAXONOMY §6.2 shape), with test markers n and pk."""
    return {
        "event_type": "_campaign.send",
        "event_timestamp": 1764064800000 + n,
        "arrival_timestamp": 1764064800100 + n,
        "event_version": "3.1",
        "application": {"app_id": "app-1", "sdk": {}},
        "client": {"client_id": f"endpoint-{pk}"},
        "attributes": {
            "campaign_activity_id": f"activity-{n}",
            "campaign_id": "campaign-1",
            "delivery_type": "GCM",
            "campaign_send_status": "SUCCESS",
            "treatment_id": "0",
        },
        "test_n": n,
        "test_pk": pk,
    }


def _put(kinesis: Any, stream: str, numbers: range, pks: int = 4) -> list[dict[str, Any]]:
    events = []
    for n in numbers:
        pk = f"pk-{n % pks}"
        event = _event(n, pk)
        kinesis.put_record(StreamName=stream, Data=orjson.dumps(event), PartitionKey=pk)
        events.append(event)
    return events


def _config(moto_url: str, stream: str, **extra: Any) -> KinesisSettings:
    values: dict[str, Any] = {
        "stream": stream,
        "region": "us-east-1",
        "endpoint_url": moto_url,
        "poll_interval_s": 0.05,
        "discovery_interval_s": 1.0,
        "max_backoff_s": 0.5,
    }
    values.update(extra)
    return KinesisSettings(**values)


def _markers(records: list[Any]) -> list[int]:
    out = []
    for record in records:
        try:
            out.append(int(orjson.loads(record.value())["test_n"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def _raw(settings: Settings, expected: int, timeout: float = 30.0) -> list[Any]:
    return read_topic(
        settings,
        settings.topic("raw.pinpoint"),
        until=lambda recs: len(recs) >= expected,
        timeout=timeout,
        idle=1.0,
    )


def test_publishes_every_record_keyed_and_checkpoints_after_acks(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 2)
    events = _put(kinesis, stream, range(40))
    kinesis.put_record(StreamName=stream, Data=b"{not json", PartitionKey="bad")
    no_client = _event(999, "x")
    del no_client["client"]
    kinesis.put_record(StreamName=stream, Data=orjson.dumps(no_client), PartitionKey="bad")

    stats = KinesisSource(_config(moto_url, stream, batch_limit=7), settings).run(once=True)

    assert stats.records == 42
    records = _raw(settings, 42)
    assert len(records) == 42
    keys = {r.key() for r in records}
    assert {vendor_event_id(e).encode() for e in events} <= keys  # type: ignore[union-attr]
    assert sum(1 for r in records if r.key() is None) == 2
    bad = next(r for r in records if r.value() == b"{not json")
    source = dict(bad.headers() or [])["source"].decode()
    assert source.startswith(f"kinesis:{stream}/shardId-")

    # The checkpoint of each shard is the last sequence number Kafka acknowledged.
    last_seq: dict[str, int] = {}
    for r in records:
        shard, seq = dict(r.headers() or [])["source"].decode().split("/", 1)[1].split("#")
        last_seq[shard] = max(last_seq.get(shard, 0), int(seq))
    saved = CheckpointStore(settings, CONNECTOR).load()
    assert {k.split("/", 1)[1]: int(v["sequence_number"]) for k, v in saved.items()} == last_seq

    # A second run resumes after the checkpoints: nothing is published again.
    again = KinesisSource(_config(moto_url, stream), settings).run(once=True)
    assert again.records == 0
    assert len(_raw(settings, 42)) == 42


def test_reshard_reads_parents_before_children(
    kinesis: Any,
    moto_url: str,
    settings_factory: Callable[..., Settings],
    real_resharding: None,
) -> None:
    # One Kafka partition, so Kafka's order is the connector's publish order.
    settings = settings_factory(CRM_PARTITIONS="1")
    create_topics(settings)
    stream = _stream(kinesis, 1)
    _put(kinesis, stream, range(0, 24))
    kinesis.split_shard(
        StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127)
    )
    _put(kinesis, stream, range(24, 48))
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    assert {s.get("ParentShardId") for s in shards} == {None, "shardId-000000000000"}
    children = [s for s in shards if s.get("ParentShardId")]
    assert all(
        kinesis.get_records(
            ShardIterator=kinesis.get_shard_iterator(
                StreamName=stream, ShardId=c["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        )["Records"]
        for c in children
    ), "the children must hold records when the connector first sees them"

    first = KinesisSource(_config(moto_url, stream, batch_limit=5), settings).run(once=True)
    assert first.records == 48
    assert first.shards_finished == 1

    # A second reshard of a child while the connector is stopped, then more records.
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=children[1]["ShardId"], NewStartingHashKey=str(3 * 2**126)
    )
    _put(kinesis, stream, range(48, 64))
    second = KinesisSource(_config(moto_url, stream, batch_limit=5), settings).run(once=True)
    assert second.records == 16

    records = _raw(settings, 64)
    order = _markers(records)
    assert sorted(order) == list(range(64)), "every record exactly once, nothing lost"
    per_pk: dict[str, list[int]] = {}
    for r in records:
        body = orjson.loads(r.value())
        per_pk.setdefault(body["test_pk"], []).append(body["test_n"])
    for pk, numbers in per_pk.items():
        assert numbers == sorted(numbers), f"{pk} out of order: {numbers}"
    saved = CheckpointStore(settings, CONNECTOR).load()
    assert saved[f"{stream}/shardId-000000000000"]["shard_end"] is True
    assert saved[f"{stream}/{children[1]['ShardId']}"]["shard_end"] is True
    assert saved[f"{stream}/{children[0]['ShardId']}"]["shard_end"] is False


def test_latest_and_at_timestamp_start_positions(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 2)
    _put(kinesis, stream, range(0, 10))

    # LATEST: the first start reads nothing old, and checkpoints its start time, so records
    # put while it is stopped are read by the next start.
    latest = KinesisSource(_config(moto_url, stream, start="LATEST"), settings).run(once=True)
    assert latest.records == 0
    time.sleep(0.05)
    _put(kinesis, stream, range(10, 16))
    resumed = KinesisSource(_config(moto_url, stream, start="LATEST"), settings).run(once=True)
    assert resumed.records == 6
    assert sorted(_markers(_raw(settings, 6))) == list(range(10, 16))

    # AT_TIMESTAMP on another stream and topic prefix.
    settings2 = settings_factory()
    create_topics(settings2)
    stream2 = _stream(kinesis, 1)
    _put(kinesis, stream2, range(100, 105))
    time.sleep(0.2)
    at = int(time.time() * 1000)
    time.sleep(0.05)
    _put(kinesis, stream2, range(105, 108))
    config = _config(moto_url, stream2, start="AT_TIMESTAMP", start_timestamp_ms=at)
    assert KinesisSource(config, settings2).run(once=True).records == 3
    assert sorted(_markers(_raw(settings2, 3))) == [105, 106, 107]


class _Expired:
    """The real (moto) client whose ListShards no longer lists some shards, as Kinesis stops
    listing a closed shard once the stream's retention has passed."""

    def __init__(self, client: Any, expired: set[str]) -> None:
        self._client = client
        self.expired = expired

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def list_shards(self, **kwargs: Any) -> Any:
        resp = dict(self._client.list_shards(**kwargs))
        resp["Shards"] = [s for s in resp["Shards"] if s["ShardId"] not in self.expired]
        return resp


def test_checkpoints_of_shards_past_retention_are_deleted(
    kinesis: Any,
    moto_url: str,
    settings_factory: Callable[..., Settings],
    real_resharding: None,
) -> None:
    """A drained parent that ListShards stops listing loses its connect-offsets key (a
    tombstone), and nothing is read again; the children keep theirs."""
    settings = settings_factory(CRM_PARTITIONS="1")
    create_topics(settings)
    stream = _stream(kinesis, 1)
    _put(kinesis, stream, range(0, 12))
    parent = "shardId-000000000000"
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    _put(kinesis, stream, range(12, 24))
    first = KinesisSource(_config(moto_url, stream, batch_limit=5), settings).run(once=True)
    assert first.records == 24
    saved = CheckpointStore(settings, CONNECTOR).load()
    assert saved[f"{stream}/{parent}"]["shard_end"] is True
    children = sorted(k for k in saved if k != f"{stream}/{parent}")
    assert len(children) == 2

    # The parent passes retention while the connector is stopped; one more record arrives.
    _put(kinesis, stream, range(24, 25))
    client = _Expired(kinesis, {parent})
    again = KinesisSource(_config(moto_url, stream), settings, client=client).run(once=True)
    assert again.records == 1, "only the new record: nothing of the parent or children again"
    saved = CheckpointStore(settings, CONNECTOR).load()
    assert f"{stream}/{parent}" not in saved, "the unlisted shard's checkpoint is deleted"
    assert sorted(saved) == children
    assert sorted(_markers(_raw(settings, 25))) == list(range(25))


class _FlakyKinesis:
    """The real (moto) client, with Kinesis errors injected into GetRecords."""

    def __init__(self, client: Any, errors: list[str]) -> None:
        self._client = client
        self._errors = list(errors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_records(self, **kwargs: Any) -> Any:
        if self._errors:
            code = self._errors.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, "GetRecords")
        return self._client.get_records(**kwargs)


def test_throttling_backs_off_and_expired_iterators_are_reacquired(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 1)
    _put(kinesis, stream, range(30))
    config = _config(moto_url, stream, batch_limit=10)
    flaky = _FlakyKinesis(
        kinesis,
        [
            "ProvisionedThroughputExceededException",
            "ExpiredIteratorException",
            "ProvisionedThroughputExceededException",
        ],
    )
    stats = KinesisSource(config, settings, client=flaky).run(once=True)
    assert stats.errors == {"throttled": 2, "expired_iterator": 1}
    assert stats.records == 30
    assert sorted(_markers(_raw(settings, 30))) == list(range(30))


def test_access_denied_stops_with_a_clear_error(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings]
) -> None:
    from crmstream.errors import CrmStreamError

    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 1)
    _put(kinesis, stream, range(2))
    flaky = _FlakyKinesis(kinesis, ["AccessDeniedException"])
    with pytest.raises(CrmStreamError, match="AccessDeniedException"):
        KinesisSource(_config(moto_url, stream), settings, client=flaky).run(once=True)


def _cli_env(settings: Settings, moto_url: str, stream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "AWS_"))}
    env.update(AWS_ENV)
    env.update(
        {
            "CRM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CRM_TOPIC_PREFIX": settings.topic_prefix,
            "CRM_PARTITIONS": str(settings.partitions),
            "CRM_REPLICATION_FACTOR": str(settings.replication_factor),
            "CRM_METRICS_PORT": "0",
            "CRM_PINPOINT_KINESIS_ENDPOINT_URL": moto_url,
            "CRM_PINPOINT_KINESIS_BATCH_LIMIT": "10",
            "CRM_PINPOINT_KINESIS_POLL_INTERVAL": "50ms",
        }
    )
    return env


def _count_until(settings: Settings, topic: str, at_least: int, timeout: float) -> int:
    consumer = Consumer(consumer_config(settings, group_id=f"t-{uuid.uuid4().hex}"))
    try:
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < at_least and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                seen += 1
        return seen
    finally:
        consumer.close()


def test_killed_mid_stream_and_restarted_loses_nothing(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 2)
    _put(kinesis, stream, range(400))
    env = _cli_env(settings, moto_url, stream)
    cmd = [sys.executable, "-m", "crmcli", "connect", "pinpoint-kinesis", "--stream", stream]
    log = (tmp_path / "kinesis.log").open("ab")

    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = _count_until(settings, settings.topic("raw.pinpoint"), 60, timeout=60)
        assert seen >= 60, (tmp_path / "kinesis.log").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = CheckpointStore(settings, CONNECTOR).load()
    checkpointed = sum(1 for v in saved.values() if v.get("sequence_number"))
    assert checkpointed >= 1, "the first run should have checkpointed some progress"
    _put(kinesis, stream, range(400, 450))

    done = subprocess.run([*cmd, "--once"], env=env, stdout=log, stderr=subprocess.STDOUT)
    assert done.returncode == 0, (tmp_path / "kinesis.log").read_text()
    numbers = _markers(_raw(settings, 450, timeout=60))
    assert set(numbers) == set(range(450)), "a record is missing after kill and restart"
    # At least once, but a restart re-reads at most the rounds that were not checkpointed.
    assert len(numbers) - 450 < 400


def test_sigterm_checkpoints_and_a_restart_republishes_nothing(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """SIGTERM mid-stream: exit 0 with every acknowledged round checkpointed, so the restart
    reads on from there: every record on the raw topic exactly once (issue 14)."""
    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 2)
    _put(kinesis, stream, range(400))
    env = _cli_env(settings, moto_url, stream)
    cmd = [sys.executable, "-m", "crmcli", "connect", "pinpoint-kinesis", "--stream", stream]
    log_path = tmp_path / "kinesis.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = _count_until(settings, settings.topic("raw.pinpoint"), 60, timeout=60)
        assert seen >= 60, log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    _put(kinesis, stream, range(400, 450))
    done = subprocess.run([*cmd, "--once"], env=env, stdout=log, stderr=subprocess.STDOUT)
    assert done.returncode == 0, log_path.read_text()
    numbers = _markers(_raw(settings, 450, timeout=60))
    assert sorted(numbers) == list(range(450)), "a record is missing or re-published"


def test_cli_unknown_stream_is_a_clear_error(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    create_topics(settings)
    env = _cli_env(settings, moto_url, "missing")
    cmd = [sys.executable, "-m", "crmcli", "connect", "pinpoint-kinesis"]
    done = subprocess.run(
        [*cmd, "--stream", "no-such-stream", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "CRM_PINPOINT_KINESIS_STREAM" in done.stderr
    assert "not found" in done.stderr
    no_stream = subprocess.run(
        [*cmd, "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert no_stream.returncode == 2
    assert "CRM_PINPOINT_KINESIS_STREAM" in no_stream.stderr


def test_demo_feed_runs_the_samples_through_moto(settings_factory: Callable[..., Settings]) -> None:
    import random

    from crmdemo.feeds import kinesis_feed
    from crmdemo.samples import campaigns
    from crmdemo.samples.pinpoint import generate
    from processors.normalize import EVENT_IDS

    settings = settings_factory()
    create_topics(settings)
    sample = generate(random.Random(5), 80, campaigns(random.Random(5)))
    values = [value for _key, value in sample.records]

    stats = kinesis_feed(settings, values, EVENT_IDS["pinpoint"])

    assert stats.records == len(values)
    records = _raw(settings, len(values))
    assert sorted(r.value() for r in records) == sorted(values)
    # The connector's key is the generator's key: the synthetic id, None when invalid.
    assert sorted((r.key() or b"") for r in records) == sorted(
        (k or b"") for k, _v in sample.records
    )


class _FlushFailsOnce(RawPublisher):
    """A real publisher whose first flush reports the acknowledgement as failed."""

    failed = False

    def flush(self, timeout: float = 60.0) -> None:
        super().flush(timeout)
        if not self.failed:
            self.failed = True
            raise BrokerError("injected: acknowledgement lost")


def test_unacknowledged_round_is_not_checkpointed_and_is_read_again(
    kinesis: Any, moto_url: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    create_topics(settings)
    stream = _stream(kinesis, 1)
    _put(kinesis, stream, range(25))
    publisher = _FlushFailsOnce(settings, "pinpoint")
    config = _config(moto_url, stream, batch_limit=10)
    stats = KinesisSource(config, settings, publisher=publisher).run(once=True)

    assert stats.errors == {"kafka": 1}
    numbers = _markers(_raw(settings, 35))
    # The first round (10 records) was published but not checkpointed, so it is read again.
    assert sorted(numbers) == sorted([*range(10), *range(25)])
    saved = CheckpointStore(settings, CONNECTOR).load()
    last = max(
        int(dict(r.headers() or [])["source"].decode().rsplit("#", 1)[1])
        for r in _raw(settings, 35)
    )
    assert int(saved[f"{stream}/shardId-000000000000"]["sequence_number"]) == last
