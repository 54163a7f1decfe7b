"""The Kinesis source: shards in parent-before-child order, one GetRecords per readable shard
per batch (a :class:`connectors.runtime.runner.Source`)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from connectors.aws import error_code, error_kind
from connectors.pinpoint_kinesis.settings import CONNECTOR, VENDOR, KinesisSettings
from connectors.runtime.backoff import Backoff
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.errors import FatalSourceError
from connectors.runtime.kafka import KeyFunction, RawPublisher, now_ms
from connectors.runtime.runner import Batch, Runner, SourceRecord
from crmstream import metrics
from crmstream.errors import BrokerError, ConfigError
from crmstream.settings import Settings

log = logging.getLogger("connectors.pinpoint_kinesis")

BUSY_WAIT_S = 0.2  # between batches that read something: Kinesis allows 5 calls/s/shard
RETRY_BACKOFF_LOW_S = 0.4  # first wait after a failed GetRecords (then doubling, jittered)


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
    the last sequence number handed to the runner and not yet checkpointed.
    """

    shard_id: str
    parents: tuple[str, ...]
    backoff: Backoff
    closed: bool = False
    sequence_number: str | None = None
    at_timestamp_ms: int | None = None
    start: str = "TRIM_HORIZON"
    finished: bool = False
    iterator: str | None = None
    pending: str | None = None
    caught_up: bool = False

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
    """Reads every shard of one stream in parent-before-child order.

    Each :meth:`next_batch` calls GetRecords once per readable shard; the runner flushes once
    and then takes the :meth:`snapshot` of every shard that moved. That bounds the records at
    risk to one batch. A shard whose GetRecords fails backs off on its own; the others go on.
    """

    connector = CONNECTOR

    def __init__(
        self,
        config: KinesisSettings,
        settings: Settings,
        *,
        client: Any | None = None,
        publisher: RawPublisher | None = None,
        checkpoints: CheckpointStore | None = None,
        sleep: Callable[[float], object] | None = None,
        key_of: KeyFunction,
    ) -> None:
        self.key_of = key_of
        self.config = config
        self.settings = settings
        self.client = client if client is not None else make_client(config)
        self.publisher = publisher or RawPublisher(settings, VENDOR, app_id=config.app_id or None)
        self.checkpoints = checkpoints or CheckpointStore(settings, CONNECTOR)
        self.shards: dict[str, ShardState] = {}
        self.errors: dict[str, int] = {}
        self.shards_finished = 0
        self._sleep = sleep
        self._stop = threading.Event()
        self._runner: Runner | None = None
        self._next_discovery = 0.0
        self._first_start = False
        self._loaded: dict[str, dict[str, Any]] = {}
        self._checkpointed: set[str] = set()  # shard ids with a checkpoint key (to forget)
        self._moved: list[ShardState] = []
        self._starts: list[ShardState] = []
        self._rng = random.Random()
        self._source = f"kinesis:{config.stream}/"

    # --- running (the runner does the work) ---------------------------------------------------
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = Runner(self, self.publisher, self.checkpoints, sleep=self._sleep)
        return self._runner

    def stop(self) -> None:
        self._stop.set()
        self.runner().stop()

    def run(self, once: bool = False) -> RunStats:
        """Read until :meth:`stop`; with ``once``, until every shard is caught up and
        checkpointed (the demo's bounded mode)."""
        done = self.runner().run(once=once)
        errors = dict(self.errors)
        for kind, n in done.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        return RunStats(
            rounds=done.batches,
            records=done.records,
            checkpoints=done.checkpoints,
            shards_finished=self.shards_finished,
            errors=errors,
        )

    # --- the Source protocol ------------------------------------------------------------------
    def open(self, checkpoints: dict[str, dict[str, Any]]) -> None:
        prefix = f"{self.config.stream}/"
        self._loaded = {k[len(prefix) :]: v for k, v in checkpoints.items() if k.startswith(prefix)}
        self._first_start = not self._loaded
        self._checkpointed = set(self._loaded)
        log.info(
            "loaded %d shard checkpoints of stream %s",
            len(self._loaded),
            self.config.stream,
            extra={"connector": CONNECTOR},
        )

    def next_batch(self) -> Batch:
        if time.monotonic() >= self._next_discovery:
            self._discover()
        now = time.monotonic()
        records: list[SourceRecord] = []
        for state in self._readable():
            if not state.backoff.due(now) or self._stop.is_set():
                continue
            read = self._read_shard(state)
            if read is None:
                continue
            records.extend(read)
            if (state.pending is not None or state.finished) and state not in self._moved:
                self._moved.append(state)
        self._update_gauges()
        return Batch(records=records, checkpoint=bool(self._moved or self._starts))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        moved, self._moved = self._moved, []
        starts, self._starts = self._starts, []
        for state in moved:
            if state.pending is not None:
                state.sequence_number = state.pending
                state.pending = None
            if state.finished:
                self.shards_finished += 1
                log.info(
                    "shard %s drained (SHARD_END) and checkpointed",
                    state.shard_id,
                    extra={"connector": CONNECTOR},
                )
                self._next_discovery = 0.0  # its children are due now
        self._checkpointed.update(s.shard_id for s in starts + moved)
        return {self._key(s.shard_id): s.checkpoint(self.config.stream) for s in starts + moved}

    def rewind(self) -> None:
        """Nothing handed out since the last snapshot is checkpointed: every shard that moved
        re-reads from its checkpoint, after a back-off."""
        moved, self._moved = self._moved, []
        for state in moved:
            state.pending = None
            state.iterator = None
            state.finished = False
            self._backoff(state)

    def caught_up(self) -> bool:
        """Every shard drained, or readable and read to its tip (a blocked child is not)."""
        if not self.shards:
            return False
        readable = {s.shard_id for s in self._readable()}
        return all(
            s.finished or (s.caught_up and s.shard_id in readable) for s in self.shards.values()
        )

    def pause(self, published: int) -> float:
        if published:
            return BUSY_WAIT_S
        wait = self.config.poll_interval_s
        retry_at = min((s.backoff.retry_at for s in self._readable()), default=0.0)
        if retry_at > time.monotonic():
            wait = min(wait, max(0.0, retry_at - time.monotonic()))
        return wait

    # --- discovery ----------------------------------------------------------------------------
    def _key(self, shard_id: str) -> str:
        return f"{self.config.stream}/{shard_id}"

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
            kind = error_kind(exc)
            self._error(kind)
            if kind in {"fatal", "not_found"}:
                raise FatalSourceError(f"ListShards on {self.config.stream}: {exc}") from exc
            if kind == "connection":
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
            log.warning("ListShards failed (%s): %s", kind, exc, extra={"connector": CONNECTOR})
            self._next_discovery = time.monotonic() + min(5.0, self.config.discovery_interval_s)
            return
        self._next_discovery = time.monotonic() + self.config.discovery_interval_s
        initial = not self.shards and self._first_start
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
            state = ShardState(
                shard_id=shard_id,
                parents=parents,
                closed=closed,
                backoff=Backoff(RETRY_BACKOFF_LOW_S, self.config.max_backoff_s, rng=self._rng),
            )
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
                self._starts.append(state)
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
        self._forget_unlisted(listed_ids)

    def _forget_unlisted(self, listed_ids: set[str]) -> None:
        """Tombstone the checkpoints of shards ListShards no longer lists (past the stream's
        retention: never read again), so the compacted ``connect-offsets`` topic does not keep
        a key for every shard a stream ever had across its reshards. A shard whose records are
        handed out and not yet checkpointed waits for the next discovery (its checkpoint would
        otherwise land after the tombstone); a Kafka failure leaves the keys for the next one."""
        pending = {s.shard_id for s in self._moved}
        gone = [
            shard_id
            for shard_id in sorted(self._checkpointed)
            if shard_id not in listed_ids and shard_id not in pending
        ]
        if not gone:
            return
        try:
            self.checkpoints.forget(self._key(shard_id) for shard_id in gone)
        except BrokerError as exc:
            log.warning(
                "checkpoints of %d unlisted shards not deleted (%s); the next discovery retries",
                len(gone),
                exc,
                extra={"connector": CONNECTOR},
            )
            return
        self._checkpointed.difference_update(gone)
        for shard_id in gone:
            self._loaded.pop(shard_id, None)
        log.info(
            "deleted the checkpoints of %d shards no longer listed: %s",
            len(gone),
            ",".join(gone),
            extra={"connector": CONNECTOR},
        )

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

    def _read_shard(self, state: ShardState) -> list[SourceRecord] | None:
        """GetRecords once; None when the call failed (the shard backs off)."""
        try:
            if state.iterator is None:
                state.iterator = self._iterator(state)
            resp = self.client.get_records(
                ShardIterator=state.iterator, Limit=self.config.batch_limit
            )
        except Exception as exc:
            kind = error_kind(exc)
            self._error(kind)
            if kind == "expired_iterator":
                # Iterators live 5 minutes; take a new one from the checkpoint.
                state.iterator = None
                return None
            if kind == "fatal":
                raise FatalSourceError(f"GetRecords on {state.shard_id}: {exc}") from exc
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
        state.backoff.succeeded()
        records = resp.get("Records", [])
        behind = resp.get("MillisBehindLatest")
        if behind is not None:
            metrics.KINESIS_MILLIS_BEHIND.labels(CONNECTOR).set(behind / 1000)
        out: list[SourceRecord] = []
        for record in records:
            data: bytes = record["Data"]
            seq = str(record["SequenceNumber"])
            metrics.CONNECTOR_BYTES.labels(CONNECTOR).inc(len(data))
            out.append(
                SourceRecord(
                    record_key(data, self.key_of),
                    data,
                    source=f"{self._source}{state.shard_id}#{seq}",
                    fmt="json",
                )
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
        return out

    # --- errors and gauges --------------------------------------------------------------------
    def _error(self, kind: str) -> None:
        metrics.CONNECTOR_ERRORS.labels(CONNECTOR, kind).inc()
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _backoff(self, state: ShardState) -> None:
        state.backoff.failed()

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
                    raise FatalSourceError(
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
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            raise ConfigError(
                "CRM_PINPOINT_KINESIS_STREAM", f"stream {source.config.stream!r} not found"
            ) from exc
        if error_kind(exc) == "fatal":
            raise FatalSourceError(f"Kinesis refused the connector: {code}: {exc}") from exc
        raise
