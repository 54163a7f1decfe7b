"""Amazon Pinpoint event stream on Kinesis Data Streams: ``crm-stream connect pinpoint-kinesis``.

Pinpoint writes one JSON object per Kinesis record (TAXONOMY §6.2, seed 001). Each record goes to
the raw topic unchanged, keyed by the synthetic event id of [A-10]
(:func:`processors.normalize.pinpoint.vendor_event_id`); a record that is not a JSON object, or
has no ``client.client_id``, is still published, with key None, so the worker dead-letters it.

"Nothing is lost" (connectors/base.py) on Kinesis means:

* a shard's sequence number is checkpointed in ``connect-offsets`` only after Kafka acknowledged
  every record up to it; a restart resumes with ``AFTER_SEQUENCE_NUMBER`` (at least once);
* after a reshard, a child shard is read only once each parent is drained: SHARD_END reached
  and checkpointed. Records of one partition key then reach Kafka in the order Kinesis holds
  them, parent first;
* shards are rediscovered with ListShards on an interval (and at once when a shard ends), and
  a shard that appears after the first start is read from TRIM_HORIZON, because everything in
  it was written after the reshard and has not been read;
* ``LATEST`` and ``AT_TIMESTAMP`` apply to the shards of the very first start only; the start
  time is checkpointed before reading, so a restart before the first record resumes from it.

AWS credentials and region come from boto3's own chain (``AWS_*`` variables, shared files,
instance roles), never from the command line.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaException

from connectors.base import (
    CheckpointStore,
    KafkaWatch,
    KeyFunction,
    RawPublisher,
    connector_health,
    ensure_topics,
    now_ms,
    settings_from_env,
)
from connectors.runtime.stop import PROCESS_STOP
from crmstream import metrics
from crmstream.errors import BrokerError, ConfigError, CrmStreamError
from crmstream.settings import Settings, choice, parse_duration, parse_int, positive, setting

log = logging.getLogger(__name__)

CONNECTOR = "pinpoint-kinesis"
VENDOR = "pinpoint"
START_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
MAX_GET_RECORDS_LIMIT = 10000  # Kinesis GetRecords API limit

_start = choice(*START_POSITIONS)


def parse_timestamp(text: str) -> int:
    """ISO-8601 with a zone (``2026-11-25T10:00:00Z``) or epoch milliseconds -> epoch ms."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 time or epoch ms: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no zone designator (add Z or +00:00)")
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class KinesisSettings:
    """The connector's own settings (``CRM_PINPOINT_KINESIS_*``); Kafka comes from Settings."""

    stream: str = setting(
        "PINPOINT_KINESIS_STREAM", "", None, "Kinesis stream Pinpoint writes to (or --stream)"
    )
    region: str = setting(
        "PINPOINT_KINESIS_REGION",
        "",
        None,
        "AWS region; empty uses boto3's chain (AWS_REGION, AWS_DEFAULT_REGION, config file)",
    )
    endpoint_url: str = setting(
        "PINPOINT_KINESIS_ENDPOINT_URL",
        "",
        None,
        "Kinesis endpoint override (VPC endpoint, moto, LocalStack); empty for AWS",
    )
    start: str = setting(
        "PINPOINT_KINESIS_START",
        "TRIM_HORIZON",
        _start,
        "Where a first start reads from: TRIM_HORIZON, LATEST or AT_TIMESTAMP",
    )
    start_timestamp_ms: int | None = setting(
        "PINPOINT_KINESIS_START_TIMESTAMP",
        None,
        parse_timestamp,
        "With AT_TIMESTAMP: ISO-8601 time with zone, or epoch ms",
    )
    discovery_interval_s: float = setting(
        "PINPOINT_KINESIS_DISCOVERY_INTERVAL",
        30.0,
        parse_duration,
        "How often ListShards looks for new shards (reshards)",
    )
    poll_interval_s: float = setting(
        "PINPOINT_KINESIS_POLL_INTERVAL",
        1.0,
        parse_duration,
        "Wait between GetRecords rounds that returned nothing (Kinesis allows 5 calls/s/shard)",
    )
    batch_limit: int = setting(
        "PINPOINT_KINESIS_BATCH_LIMIT",
        1000,
        positive(parse_int),
        "GetRecords Limit: records per call and per checkpoint (at most 10000)",
    )
    max_backoff_s: float = setting(
        "PINPOINT_KINESIS_MAX_BACKOFF",
        30.0,
        parse_duration,
        "Longest wait between retries after throttling or a connection error",
    )
    app_id: str = setting(
        "PINPOINT_KINESIS_APP_ID",
        "",
        None,
        "app_id header of the raw records (the payload's application.app_id wins downstream)",
    )

    def __post_init__(self) -> None:
        if not self.stream.strip():
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_STREAM", "required: the stream name (or --stream NAME)"
            )
        if self.start not in START_POSITIONS:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_START", f"{self.start!r} is not one of {START_POSITIONS}"
            )
        if self.start == "AT_TIMESTAMP" and self.start_timestamp_ms is None:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_START_TIMESTAMP", "required when the start is AT_TIMESTAMP"
            )
        if self.start != "AT_TIMESTAMP" and self.start_timestamp_ms is not None:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_START_TIMESTAMP", "only valid with start AT_TIMESTAMP"
            )
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_ENDPOINT_URL", f"not an http(s) URL: {self.endpoint_url!r}"
            )
        if not 1 <= self.batch_limit <= MAX_GET_RECORDS_LIMIT:
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_BATCH_LIMIT", f"must be 1..{MAX_GET_RECORDS_LIMIT}"
            )
        for var, value in (
            ("CRM_PINPOINT_KINESIS_DISCOVERY_INTERVAL", self.discovery_interval_s),
            ("CRM_PINPOINT_KINESIS_POLL_INTERVAL", self.poll_interval_s),
            ("CRM_PINPOINT_KINESIS_MAX_BACKOFF", self.max_backoff_s),
        ):
            if value <= 0:
                raise ConfigError(var, "must be greater than 0")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> KinesisSettings:
        return settings_from_env(cls, environ, **overrides)


def record_key(data: bytes, key_of: KeyFunction) -> str | None:
    """The raw-topic key of one Kinesis record: its event id (the [A-10] synthetic id for
    Pinpoint, by ``key_of``), or None when it is not a JSON object."""
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    return key_of(record)


@dataclass
class ShardState:
    """One shard as the connector tracks it.

    ``sequence_number`` / ``at_timestamp_ms`` are the *checkpointed* position; ``pending`` is
    the last sequence number published in the current round and not yet checkpointed.
    """

    shard_id: str
    parents: tuple[str, ...]
    closed: bool = False
    sequence_number: str | None = None
    at_timestamp_ms: int | None = None
    start: str = "TRIM_HORIZON"
    finished: bool = False
    iterator: str | None = None
    pending: str | None = None
    caught_up: bool = False
    failures: int = 0
    retry_at: float = 0.0

    def checkpoint(self, stream: str) -> dict[str, Any]:
        return {
            "stream": stream,
            "shard_id": self.shard_id,
            "sequence_number": self.sequence_number,
            "at_timestamp_ms": self.at_timestamp_ms,
            "shard_end": self.finished,
            "updated_at_ms": now_ms(),
        }


@dataclass
class RunStats:
    rounds: int = 0
    records: int = 0
    checkpoints: int = 0
    shards_finished: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class KinesisSource:
    """Reads every shard of one stream in parent-before-child order and publishes the records.

    One thread, shards served round-robin: each round calls GetRecords once per readable shard,
    flushes the producer once, and checkpoints every shard that moved. That keeps the
    ack-then-checkpoint rule in one place and bounds the records at risk to one round.
    """

    def __init__(
        self,
        config: KinesisSettings,
        settings: Settings,
        *,
        client: Any | None = None,
        publisher: RawPublisher | None = None,
        checkpoints: CheckpointStore | None = None,
        sleep: Callable[[float], None] | None = None,
        key_of: KeyFunction,
    ) -> None:
        self.key_of = key_of
        self.config = config
        self.settings = settings
        self.client = client if client is not None else make_client(config)
        self.publisher = publisher or RawPublisher(settings, VENDOR, app_id=config.app_id or None)
        self.checkpoints = checkpoints or CheckpointStore(settings, CONNECTOR)
        self.shards: dict[str, ShardState] = {}
        self.stats = RunStats()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._next_discovery = 0.0
        self._first_start = False
        self._loaded: dict[str, dict[str, Any]] = {}
        self._last_checkpoint = time.monotonic()
        self._rng = random.Random()

    # --- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, once: bool = False) -> RunStats:
        """Read until :meth:`stop`; with ``once``, until every shard is caught up and
        checkpointed (the demo's bounded mode)."""
        self._load_checkpoints()
        while not self._stop.is_set():
            if time.monotonic() >= self._next_discovery:
                self._discover()
            published = self._round()
            self._update_gauges()
            if once and self._all_caught_up():
                break
            if self._stop.is_set():
                break
            wait = 0.2 if published else self.config.poll_interval_s
            retry_at = min((s.retry_at for s in self._readable()), default=0.0)
            if not published and retry_at > time.monotonic():
                wait = min(wait, max(0.0, retry_at - time.monotonic()))
            self._sleep(wait)
        return self.stats

    # --- checkpoints --------------------------------------------------------------------------
    def _key(self, shard_id: str) -> str:
        return f"{self.config.stream}/{shard_id}"

    def _load_checkpoints(self) -> None:
        prefix = f"{self.config.stream}/"
        loaded = self.checkpoints.load()
        self._loaded = {k[len(prefix) :]: v for k, v in loaded.items() if k.startswith(prefix)}
        self._first_start = not self._loaded
        log.info(
            "loaded %d shard checkpoints of stream %s",
            len(self._loaded),
            self.config.stream,
            extra={"connector": CONNECTOR},
        )

    def _commit(self, shards: list[ShardState]) -> None:
        if not shards:
            return
        self.checkpoints.commit_many(
            {self._key(s.shard_id): s.checkpoint(self.config.stream) for s in shards}
        )
        self.stats.checkpoints += len(shards)
        self._last_checkpoint = time.monotonic()

    # --- discovery ----------------------------------------------------------------------------
    def _list_shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamName": self.config.stream}
        while True:
            resp = self.client.list_shards(**kwargs)
            shards.extend(resp.get("Shards", []))
            token = resp.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}  # ListShards refuses StreamName with NextToken

    def _discover(self) -> None:
        try:
            listed = self._list_shards()
        except Exception as exc:
            kind = self._classify(exc)
            self._error(kind)
            if kind in {"fatal", "not_found"}:
                raise CrmStreamError(f"ListShards on {self.config.stream}: {exc}") from exc
            if kind == "connection":
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
            log.warning("ListShards failed (%s): %s", kind, exc, extra={"connector": CONNECTOR})
            self._next_discovery = time.monotonic() + min(5.0, self.config.discovery_interval_s)
            return
        self._next_discovery = time.monotonic() + self.config.discovery_interval_s
        initial = not self.shards and self._first_start
        new_pending: list[ShardState] = []
        listed_ids = set()
        for desc in listed:
            shard_id = desc["ShardId"]
            listed_ids.add(shard_id)
            closed = "EndingSequenceNumber" in desc.get("SequenceNumberRange", {})
            known = self.shards.get(shard_id)
            if known is not None:
                known.closed = closed
                continue
            parents = tuple(
                p for p in (desc.get("ParentShardId"), desc.get("AdjacentParentShardId")) if p
            )
            state = ShardState(shard_id=shard_id, parents=parents, closed=closed)
            saved = self._loaded.get(shard_id)
            if saved is not None:
                state.sequence_number = saved.get("sequence_number")
                state.at_timestamp_ms = saved.get("at_timestamp_ms")
                state.finished = bool(saved.get("shard_end"))
            elif initial and self.config.start != "TRIM_HORIZON":
                # The start position is checkpointed before reading: a restart before the
                # first record must not jump to a later LATEST and skip what came between.
                state.at_timestamp_ms = (
                    self.config.start_timestamp_ms
                    if self.config.start == "AT_TIMESTAMP"
                    else now_ms()
                )
                state.start = self.config.start
                new_pending.append(state)
            # Otherwise TRIM_HORIZON: a shard born after the first start holds only records
            # written since the reshard, none of them read yet.
            self.shards[shard_id] = state
            log.info(
                "shard %s (parents %s, %s) from %s",
                shard_id,
                ",".join(parents) or "-",
                "closed" if closed else "open",
                "checkpoint" if saved else state.start,
                extra={"connector": CONNECTOR},
            )
        for shard_id in [s for s in self.shards if s not in listed_ids]:
            # Past the retention period: nothing left to read, and its children may go on.
            log.info("shard %s is no longer listed", shard_id, extra={"connector": CONNECTOR})
            del self.shards[shard_id]
        self._commit(new_pending)

    def _readable(self) -> list[ShardState]:
        """Unfinished shards whose parents are drained (or gone past retention)."""
        out = []
        for state in self.shards.values():
            if state.finished:
                continue
            parents = (self.shards.get(p) for p in state.parents)
            if all(p is None or p.finished for p in parents):
                out.append(state)
        return out

    def _all_caught_up(self) -> bool:
        """Every shard drained, or readable and read to its tip (a blocked child is not)."""
        if not self.shards:
            return False
        readable = {s.shard_id for s in self._readable()}
        return all(
            s.finished or (s.caught_up and s.shard_id in readable) for s in self.shards.values()
        )

    # --- reading ------------------------------------------------------------------------------
    def _iterator(self, state: ShardState) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.config.stream, "ShardId": state.shard_id}
        if state.sequence_number is not None:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = state.sequence_number
        elif state.start == "LATEST":
            # Only for the first iterator: a re-acquired one (expired, Kafka failure) must not
            # jump ahead, so it falls back to the checkpointed start time.
            kwargs["ShardIteratorType"] = "LATEST"
            state.start = "AT_TIMESTAMP"
        elif state.at_timestamp_ms is not None:
            kwargs["ShardIteratorType"] = "AT_TIMESTAMP"
            kwargs["Timestamp"] = datetime.fromtimestamp(state.at_timestamp_ms / 1000, tz=UTC)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return str(self.client.get_shard_iterator(**kwargs)["ShardIterator"])

    def _round(self) -> int:
        """One GetRecords per readable shard, then flush, then checkpoint. Returns records."""
        self.stats.rounds += 1
        now = time.monotonic()
        moved: list[ShardState] = []
        published = 0
        for state in self._readable():
            if state.retry_at > now or self._stop.is_set():
                continue
            count = self._read_shard(state)
            if count is None:
                continue
            published += count
            if state.pending is not None or state.finished:
                moved.append(state)
        if not moved:
            return published
        try:
            self.publisher.flush()
        except BrokerError as exc:
            # Nothing of this round is checkpointed: every shard re-reads from its checkpoint.
            self._error("kafka")
            log.error("Kafka did not acknowledge: %s", exc, extra={"connector": CONNECTOR})
            self.publisher.renew_if_broken()
            for state in moved:
                state.pending = None
                state.iterator = None
                state.finished = False
                self._backoff(state)
            return 0
        for state in moved:
            if state.pending is not None:
                state.sequence_number = state.pending
                state.pending = None
        try:
            self._commit(moved)
        except BrokerError as exc:
            # The records are in Kafka; only the position is not. A restart re-reads them.
            self._error("checkpoint")
            log.error("checkpoint failed: %s", exc, extra={"connector": CONNECTOR})
        metrics.CONNECTOR_RECORDS.labels(CONNECTOR).inc(published)
        self.stats.records += published
        for state in moved:
            if state.finished:
                self.stats.shards_finished += 1
                log.info(
                    "shard %s drained (SHARD_END) and checkpointed",
                    state.shard_id,
                    extra={"connector": CONNECTOR},
                )
                self._next_discovery = 0.0  # its children are due now
        return published

    def _read_shard(self, state: ShardState) -> int | None:
        """GetRecords once and publish; None when the call failed (the shard backs off)."""
        try:
            if state.iterator is None:
                state.iterator = self._iterator(state)
            resp = self.client.get_records(
                ShardIterator=state.iterator, Limit=self.config.batch_limit
            )
        except Exception as exc:
            kind = self._classify(exc)
            self._error(kind)
            if kind == "expired_iterator":
                # Iterators live 5 minutes; take a new one from the checkpoint.
                state.iterator = None
                return None
            if kind == "fatal":
                raise CrmStreamError(f"GetRecords on {state.shard_id}: {exc}") from exc
            if kind == "not_found":
                # The shard expired or the stream is gone: discovery decides which.
                self._next_discovery = 0.0
            if kind == "connection":
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
            log.warning(
                "GetRecords on %s failed (%s): %s",
                state.shard_id,
                kind,
                exc,
                extra={"connector": CONNECTOR},
            )
            self._backoff(state)
            return None
        state.failures = 0
        records = resp.get("Records", [])
        behind = resp.get("MillisBehindLatest")
        if behind is not None:
            metrics.KINESIS_MILLIS_BEHIND.labels(CONNECTOR).set(behind / 1000)
        for record in records:
            data: bytes = record["Data"]
            seq = str(record["SequenceNumber"])
            metrics.CONNECTOR_BYTES.labels(CONNECTOR).inc(len(data))
            self.publisher.publish(
                record_key(data, self.key_of),
                data,
                source=f"kinesis:{self.config.stream}/{state.shard_id}#{seq}",
                fmt="json",
            )
            state.pending = seq
        next_iterator = resp.get("NextShardIterator")
        state.iterator = next_iterator
        state.caught_up = not records and (behind in (None, 0))
        # SHARD_END: Kinesis ends a closed shard with a null NextShardIterator. moto never does,
        # so a shard ListShards shows closed, read to the tip with nothing left, counts too.
        if next_iterator is None or (state.closed and state.caught_up):
            state.finished = True
            state.caught_up = True
        return len(records)

    # --- errors -------------------------------------------------------------------------------
    @staticmethod
    def _classify(exc: Exception) -> str:
        """A bounded error kind for metrics and for what to do next."""
        from botocore import exceptions as bx

        if isinstance(exc, bx.ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {
                "ProvisionedThroughputExceededException",
                "LimitExceededException",
                "ThrottlingException",
                "KMSThrottlingException",
            }:
                return "throttled"
            if code == "ExpiredIteratorException":
                return "expired_iterator"
            if code == "ResourceNotFoundException":
                return "not_found"
            if code in {
                "AccessDeniedException",
                "UnrecognizedClientException",
                "InvalidSignatureException",
                "ExpiredTokenException",
                "KMSAccessDeniedException",
                "KMSDisabledException",
                "KMSNotFoundException",
                "KMSInvalidStateException",
            }:
                return "fatal"
            return "aws"
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.NoRegionError):
            return "fatal"
        if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
            return "connection"
        return "aws"

    def _error(self, kind: str) -> None:
        metrics.CONNECTOR_ERRORS.labels(CONNECTOR, kind).inc()
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1

    def _backoff(self, state: ShardState) -> None:
        """Exponential back-off with full jitter, per shard."""
        state.failures += 1
        ceiling = min(self.config.max_backoff_s, 0.2 * 2 ** min(state.failures, 16))
        state.retry_at = time.monotonic() + self._rng.uniform(ceiling / 2, ceiling)

    def _update_gauges(self) -> None:
        readable = {s.shard_id for s in self._readable()}
        counts = {"reading": 0, "blocked": 0, "finished": 0}
        for state in self.shards.values():
            if state.finished:
                counts["finished"] += 1
            elif state.shard_id in readable:
                counts["reading"] += 1
            else:
                counts["blocked"] += 1
        for name, value in counts.items():
            metrics.KINESIS_OPEN_SHARDS.labels(CONNECTOR, name).set(value)
        behind = any(not (s.finished or s.caught_up) for s in self.shards.values())
        age = time.monotonic() - self._last_checkpoint if behind else 0.0
        metrics.CONNECTOR_CHECKPOINT_AGE.labels(CONNECTOR).set(age)


def make_client(config: KinesisSettings) -> Any:
    """A boto3 Kinesis client; a missing region or credentials is a startup error."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    # botocore's own retries stay short: the connector backs off per shard and counts it.
    boto_config = Config(
        retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=15
    )
    try:
        return boto3.client(
            "kinesis",
            region_name=config.region or None,
            endpoint_url=config.endpoint_url or None,
            config=boto_config,
        )
    except NoRegionError as exc:
        raise ConfigError(
            "CRM_PINPOINT_KINESIS_REGION", "no AWS region: set it, or AWS_REGION"
        ) from exc


def check_stream(source: KinesisSource, attempts: int = 5) -> None:
    """Fail fast with a clear message on what a retry cannot fix; retry the network a little."""
    from botocore import exceptions as bx

    try:
        for attempt in range(attempts):
            try:
                source.client.list_shards(StreamName=source.config.stream, MaxResults=1)
                return
            except (bx.ConnectionError, bx.HTTPClientError) as exc:
                if attempt == attempts - 1:
                    raise CrmStreamError(
                        f"cannot reach Kinesis ({source.config.endpoint_url or 'AWS'}): {exc}"
                    ) from exc
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
                time.sleep(min(0.5 * 2**attempt, 5.0))
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise ConfigError(
            "AWS_ACCESS_KEY_ID",
            f"no usable AWS credentials ({exc}); use the AWS_* variables, "
            "a shared credentials file or an instance role",
        ) from exc
    except bx.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_STREAM", f"stream {source.config.stream!r} not found"
            ) from exc
        if KinesisSource._classify(exc) == "fatal":
            raise CrmStreamError(f"Kinesis refused the connector: {code}: {exc}") from exc
        raise


# --- command line -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No credential options: AWS credentials come from the environment or files."""
    parser.add_argument("--stream", default=None, help="stream name (CRM_PINPOINT_KINESIS_STREAM)")
    parser.add_argument(
        "--start",
        type=_start,
        default=None,
        help="TRIM_HORIZON, LATEST or AT_TIMESTAMP, for a first start (CRM_PINPOINT_KINESIS_START)",
    )
    parser.add_argument(
        "--start-timestamp",
        type=parse_timestamp,
        default=None,
        help="with AT_TIMESTAMP: ISO-8601 with zone or epoch ms",
    )
    parser.add_argument("--region", default=None, help="AWS region (CRM_PINPOINT_KINESIS_REGION)")
    parser.add_argument(
        "--endpoint-url", default=None, help="endpoint override (CRM_PINPOINT_KINESIS_ENDPOINT_URL)"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="exit once every shard is caught up and checkpointed (demo, backfills)",
    )


def config_from_args(args: argparse.Namespace) -> KinesisSettings:
    return KinesisSettings.from_env(
        stream=getattr(args, "stream", None),
        start=getattr(args, "start", None),
        start_timestamp_ms=getattr(args, "start_timestamp", None),
        region=getattr(args, "region", None),
        endpoint_url=getattr(args, "endpoint_url", None),
    )


def run(args: argparse.Namespace, settings: Settings, key_of: KeyFunction) -> int:
    config = config_from_args(args)
    ensure_topics(settings, VENDOR)
    source = KinesisSource(config, settings, key_of=key_of)
    watch = KafkaWatch(lambda: source.publisher).start()
    metrics.serve(settings.metrics_port, connector_health(watch))
    check_stream(source)
    PROCESS_STOP.on_stop(source.stop)
    try:
        stats = source.run(once=bool(getattr(args, "once", False)))
    except KafkaException as exc:
        raise BrokerError(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    log.info(
        "stopped: %d records, %d checkpoints, %d shards drained, errors %s",
        stats.records,
        stats.checkpoints,
        stats.shards_finished,
        stats.errors or "none",
        extra={"connector": CONNECTOR},
    )
    return 0
