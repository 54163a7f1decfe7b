"""One settings object for every crm-stream process, read from ``CRM_*`` environment variables.

Each field declares its own variable, type, default and description next to it (the Redpanda
Connect config-spec idea), so ``crm-stream settings`` can print the whole reference and a bad
value stops startup with a message that names the variable.

Secrets are typed :class:`Secret` and never appear in ``repr`` or logs. A secret may also be
given as ``<VAR>_FILE`` pointing at a file (Kubernetes Secret volumes, Docker secrets).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from crmstream.errors import ConfigError

ENV_PREFIX = "CRM_"


MASK = "***"  # how every secret shows, set: `crm-stream settings`, logs, reprs


class Secret:
    """A string that does not print itself: it shows as :data:`MASK` when set, as nothing
    when empty."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK if self._value else ""

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")
"""An API bearer token: RFC 6750's b64token, at least 16 characters."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``"7d"``, ``"90s"``, ``"250ms"`` or a bare number of seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def parse_attribution_windows(text: str) -> tuple[float, dict[str, float]]:
    """``CRM_ATTRIBUTION_WINDOW``: ``"3d"`` or ``"3d,Order Completed=7d,Signed Up=1h"`` (the
    default first or anywhere, then ``name=duration`` overrides) -> (default seconds, seconds
    per conversion name). Without a default entry the default is 3 days."""
    default: float | None = None
    by_name: dict[str, float] = {}
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise ValueError("an empty entry")
        name, sep, duration = item.rpartition("=")
        seconds = parse_duration(duration if sep else item)
        if seconds < 1:
            raise ValueError(f"{item!r}: a window must be at least 1s")
        if not sep:
            if default is not None:
                raise ValueError("two default windows (name the others: 'Order Completed=7d')")
            default = seconds
        elif not name.strip():
            raise ValueError(f"{item!r}: the name before '=' is empty")
        elif name.strip() in by_name:
            raise ValueError(f"{name.strip()!r} has two windows")
        else:
            by_name[name.strip()] = seconds
    return (3 * 86400.0 if default is None else default), by_name


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (``CRM_CONVERSION_EVENTS``), blanks dropped."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if len(name) > 200:
            raise ValueError(f"{name[:40]!r}...: longer than 200 characters")
    return names


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_int(text: str) -> int:
    return int(text.strip())


def parse_port(text: str) -> int:
    port = int(text.strip())
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def _one_of(allowed: tuple[str, ...], fold: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = fold(text.strip())
        if value not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return value

    parse.__name__ = "choice"  # argparse: "invalid choice value: ..."
    return parse


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser that accepts one of ``allowed`` (upper case), in any case."""
    return _one_of(allowed, str.upper)


def lower_choice(*allowed: str) -> Callable[[str], str]:
    """A parser that accepts one of ``allowed`` (lower case), in any case."""
    return _one_of(allowed, str.lower)


def _topic_prefix(text: str) -> str:
    if text and not re.fullmatch(r"[A-Za-z0-9._-]*", text):
        raise ValueError("may contain only letters, digits, '.', '_' and '-'")
    return text


def nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def positive(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, and the value must be greater than 0: ``positive(parse_int)``."""

    def wrapped(text: str) -> Any:
        value = parse(text)
        if value <= 0:
            raise ValueError(f"must be greater than 0, got {text!r}")
        return value

    return wrapped


def setting(
    env: str,
    default: Any,
    parse: Callable[[str], Any] | None,
    doc: str,
    *,
    secret: bool = False,
    **extra: Any,
) -> Any:
    """A dataclass field that declares its variable (``CRM_<env>``), parser and description.

    With ``secret=True`` the value is a :class:`Secret` read from the variable or from the file
    named by ``<VAR>_FILE``. ``extra`` goes into the field's metadata for a reader of its own
    (e.g. the Airship connector's JSON settings).
    """
    return field(
        default=default,
        metadata={"env": env, "parse": parse, "doc": doc, "secret": secret, **extra},
    )


def read_secret(environ: Mapping[str, str], var: str) -> Secret | None:
    """``var``, else the stripped content of the file ``<var>_FILE`` names; None if neither."""
    raw = environ.get(var)
    file_var = var + "_FILE"
    if raw is None and environ.get(file_var):
        try:
            raw = Path(environ[file_var]).read_text().strip()
        except OSError as exc:
            raise ConfigError(file_var, f"cannot read secret file: {exc}") from exc
    return None if raw is None else Secret(raw)


def parse_field(f: Field[Any], var: str, raw: str) -> Any:
    """Parse ``raw`` with the field's parser; a bad value raises ConfigError naming ``var``."""
    parse = f.metadata["parse"]
    try:
        return parse(raw) if parse else raw
    except ValueError as exc:
        raise ConfigError(var, str(exc)) from exc


def values_from_env(
    cls: type[Any],
    environ: Mapping[str, str] | None = None,
    skip: Container[str] = (),
    prefix: str = ENV_PREFIX,
) -> dict[str, Any]:
    """The parsed value of every :func:`setting` field of ``cls`` whose variable is set.

    Fields named in ``skip`` (given some other way) are not read. A bad value raises
    :class:`ConfigError` naming the variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        var = prefix + f.metadata["env"]
        if f.metadata["secret"]:
            secret = read_secret(env, var)
            if secret is not None:
                values[f.name] = secret
        elif (raw := env.get(var)) is not None:
            values[f.name] = parse_field(f, var, raw)
    return values


def describe_fields(instance: Any, prefix: str = ENV_PREFIX) -> list[tuple[str, str, str]]:
    """(variable, current value, description) rows of a settings object; secrets masked."""
    return [
        (prefix + f.metadata["env"], str(getattr(instance, f.name)), f.metadata["doc"])
        for f in fields(instance)
    ]


@dataclass(frozen=True)
class Settings:
    """Everything a worker, connector or CLI command needs to reach Kafka and behave."""

    bootstrap_servers: str = setting(
        "BOOTSTRAP_SERVERS", "localhost:9092", nonempty, "Kafka bootstrap servers, host:port,..."
    )
    kafka_wait_s: float = setting(
        "KAFKA_WAIT",
        60.0,
        parse_duration,
        "How long the worker and `topics create` retry at start while no Kafka broker answers; "
        "then they stop with exit code 69 (0: one attempt)",
    )
    stop_timeout_s: float = setting(
        "STOP_TIMEOUT",
        45.0,
        positive(parse_duration),
        "After SIGINT/SIGTERM, how long the worker's clean stop may take; while Kafka does not "
        "answer it stops at once, without the final commit (safe: as after a kill -9)",
    )
    security_protocol: str = setting(
        "SECURITY_PROTOCOL",
        "PLAINTEXT",
        choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "Kafka security protocol, passed to confluent-kafka and aiokafka (Faust)",
    )
    sasl_mechanism: str = setting(
        "SASL_MECHANISM",
        "PLAIN",
        choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        "SASL mechanism when the protocol is SASL_*",
    )
    sasl_username: str = setting("SASL_USERNAME", "", None, "SASL username")
    sasl_password: Secret = setting(
        "SASL_PASSWORD", Secret(""), None, "SASL password (or CRM_SASL_PASSWORD_FILE)", secret=True
    )
    ssl_ca_location: str = setting("SSL_CA_LOCATION", "", None, "CA bundle file for TLS")
    ssl_cert_location: str = setting(
        "SSL_CERT_LOCATION", "", None, "Client certificate (PEM) for mutual TLS"
    )
    ssl_key_location: str = setting("SSL_KEY_LOCATION", "", None, "Client key (PEM) for mTLS")
    ssl_key_password: Secret = setting(
        "SSL_KEY_PASSWORD", Secret(""), None, "Password of the client key", secret=True
    )
    topic_prefix: str = setting(
        "TOPIC_PREFIX", "crm.", _topic_prefix, "Prefix of every topic crm-stream reads or writes"
    )
    partitions: int = setting(
        "PARTITIONS",
        6,
        positive(parse_int),
        "Partitions of every topic crm-stream creates; also the Faust worker's partition count",
    )
    replication_factor: int = setting(
        "REPLICATION_FACTOR",
        -1,
        parse_int,
        "Replication factor of created topics; -1 takes the broker's default.replication.factor",
    )
    schema_registry_url: str = setting(
        "SCHEMA_REGISTRY_URL",
        "",
        None,
        "Confluent Schema Registry URL; empty means Avro single-object encoding without a registry",
    )
    schema_registry_auth: Secret = setting(
        "SCHEMA_REGISTRY_AUTH",
        Secret(""),
        None,
        "user:password for the Schema Registry (or CRM_SCHEMA_REGISTRY_AUTH_FILE)",
        secret=True,
    )
    dedupe_window_s: float = setting(
        "DEDUPE_WINDOW",
        7 * 86400.0,
        positive(parse_duration),
        "How long an event id is remembered (>= 7d: Airship replays up to a week; docs/events.md)",
    )
    data_dir: str = setting(
        "DATA_DIR", "./var/crm-stream", nonempty, "Local state: RocksDB tables, demo files"
    )
    metrics_port: int = setting(
        "METRICS_PORT", 9108, parse_port, "Prometheus metrics port of this process; 0 disables"
    )
    app_id: str = setting(
        "APP_ID", "crm-stream", nonempty, "Faust application id (consumer group, state names)"
    )
    worker_batch_size: int = setting(
        "WORKER_BATCH_SIZE", 500, positive(parse_int), "Raw records per worker batch"
    )
    worker_batch_within_s: float = setting(
        "WORKER_BATCH_WITHIN",
        0.05,
        positive(parse_duration),
        "Longest wait to fill a worker batch",
    )
    worker_max_inflight: int = setting(
        "WORKER_MAX_INFLIGHT",
        4,
        positive(parse_int),
        "Raw batches whose outputs may await Kafka's acknowledgement while the next is processed "
        "(at 2, a batch waited for an earlier one's acknowledgement up to 0.27 s on a loaded "
        "machine: bench/README.md, issue 21)",
    )
    positions_interval_s: float = setting(
        "POSITIONS_INTERVAL",
        1.0,
        parse_duration,
        "How often at most a raw partition's position is saved (its key and changelog record in "
        "the dedupe table, its durable copy, the persisted changelog offset; then it may be "
        "committed), instead of with every raw batch; 0: with every batch. A live feed's batch "
        "spans 20-30 raw partitions for ~50 records, so a position per batch cost as many "
        "writes and changelog records again as the batch's marks. A restart resumes from a "
        "position up to this old: the records after it have their marks and outputs, found "
        "again (their own marks, the read-back), so nothing is written or counted twice, but "
        "they are read and processed again. Always saved with the last batch before a stop, "
        "and before the partitions are placed after a rebalance (at most 1h)",
    )
    stats_batch_size: int = setting(
        "STATS_BATCH_SIZE",
        500,
        positive(parse_int),
        "stats-updates records per stats batch; a window is written and upserted once per batch",
    )
    stats_batch_within_s: float = setting(
        "STATS_BATCH_WITHIN",
        0.05,
        positive(parse_duration),
        "Longest wait to gather a stats batch (also the attribution batches'); campaign-stats "
        "and the query API lag the events by about this much. A batch reads, counts, writes and "
        "upserts each window it touches once, so a longer wait costs less CPU where windows are "
        "touched often, and makes the stats work come in bursts: 1s against 50ms took two "
        "workers at 2,000 events/s (300 campaigns) from ~390 to ~318 CPU s per million, and "
        "doubled one worker's half-rate p99 at 50,000 campaigns (~180 to ~340 ms), where a "
        "second's batch touches thousands of windows once each (bench/README.md, issue 21)",
    )
    stats_flush_interval_s: float = setting(
        "STATS_FLUSH_INTERVAL",
        0.0,
        parse_duration,
        "How long a stats window counted in memory may wait before it is written (its changelog "
        "record, its campaign-stats upsert, then RocksDB once Kafka acknowledged them), oldest "
        "first and spread over the batches; 0 (the default): every stats batch writes each "
        "window it touched. Only hot windows are held: one held already or written within the "
        "last interval or two; a batch writes the others at once, as at 0, unless a quarter of "
        "the worker's touches were hot the interval before (then new windows are held too; a "
        "worker starts writing them at once, and a hot feed switches after an interval). So a "
        "window touched by many batches is written once per interval instead of "
        "once per batch (few, busy campaigns: the bench's 300), and many sparse ones (50,000), "
        "where nothing coalesces, are written as at 0 (bench/README.md, issue 21). "
        "campaign-stats lags the events by up to this much more (the query API reads the "
        "windows in memory). A stats partition's position is committed only up to the oldest "
        "batch not yet written, so a crash recounts what was only in memory. At most 1h; the "
        "windows in memory are bounded by CRM_STATS_FLUSH_MAX_MB and 20,000 windows",
    )
    stats_flush_max_mb: int = setting(
        "STATS_FLUSH_MAX_MB",
        32,
        positive(parse_int),
        "Memory the stats windows held by CRM_STATS_FLUSH_INTERVAL may take, in MB (estimated "
        "per window: ~3 KB, twice its stored value, 64 bytes per event counted into it while "
        "held); beyond it the oldest are written early, as beyond 20,000 windows",
    )
    stats_windows: str = setting(
        "STATS_WINDOWS",
        "1m,1h",
        nonempty,
        "Tumbling windows of the campaign stats, on occurred_at",
    )
    stats_retention: str = setting(
        "STATS_RETENTION",
        "1m=3d,1h=90d",
        nonempty,
        "How long a stats window is kept after its last update, whatever its start (backfills "
        "included), by window size: `1m=3d,1h=90d` keeps windows from 1m three days and from 1h "
        "90 days (a size of CRM_STATS_WINDOWS takes the largest named size at or below it), or "
        "one duration for every size. An expired window is deleted from its table and "
        "tombstoned on campaign-stats; an event for it is refused, never counted afresh",
    )
    stats_hll_lg_k: int = setting(
        "STATS_HLL_LG_K",
        12,
        parse_int,
        "log2 of the HyperLogLog buckets of the unique-recipient sketches (4..21): 12 gives "
        "~1.6% relative standard error, at most ~2 KB per sketch, exact below 385 recipients",
    )
    stats_max_messages: int = setting(
        "STATS_MAX_MESSAGES",
        100,
        parse_int,
        "Message ids a campaign window keeps counts of its own for (1..10000); the events of "
        "any further message id are counted in the window's overflow bucket",
    )
    attribution: bool = setting(
        "ATTRIBUTION",
        False,
        parse_bool,
        "Attribute conversions to campaigns by last touch (the `conversions` topic, vendor "
        "CONVERSION events, CRM_CONVERSION_EVENTS): two more agents reading `events` and "
        "`conversions`, the `attributions` topic and GET /api/attribution",
    )
    attribution_window: str = setting(
        "ATTRIBUTION_WINDOW",
        "3d",
        nonempty,
        "How long after a touch a conversion is credited to it: a default, then optional "
        "per-conversion-name windows, e.g. '3d,Order Completed=7d' (without a default: 3d)",
    )
    conversion_events: str = setting(
        "CONVERSION_EVENTS",
        "",
        None,
        "Segment track event names that are conversions, comma-separated, e.g. 'Order "
        "Completed,Signed Up' (matched case-insensitively)",
    )
    attribution_retention_s: float = setting(
        "ATTRIBUTION_RETENTION",
        30 * 86400.0,
        positive(parse_duration),
        "How long the per-hour attribution totals of GET /api/attribution are kept (by the "
        "conversion's hour); the attributions topic keeps every attribution two weeks",
    )
    stats_max_variants: int = setting(
        "STATS_MAX_VARIANTS",
        20,
        parse_int,
        "Variant ids a campaign window keeps counts and unique-recipient sketches of its own for "
        "(1..1000); the events of any further variant id are counted in the window's overflow "
        "bucket (the control group never is)",
    )
    api_port: int = setting(
        "API_PORT",
        8080,
        parse_port,
        "Port of the worker's query API and web view; 0 disables them",
    )
    api_host: str = setting(
        "API_HOST", "0.0.0.0", nonempty, "Address the worker's query API listens on"
    )
    api_url: str = setting(
        "API_URL",
        "",
        None,
        "URL other workers reach this worker's API at (advertised to the consumer group); "
        "default http://<hostname>:<CRM_API_PORT>",
    )
    api_token: Secret = setting(
        "API_TOKEN",
        Secret(""),
        None,
        "Bearer token(s) the query API and web view require (or CRM_API_TOKEN_FILE); empty: no "
        "authentication. One token per line, at least 16 characters of A-Z a-z 0-9 - . _ ~ + / "
        "(trailing = allowed); a line 'TOKEN app_1,app_2' lets that token read only those apps",
        secret=True,
    )
    consumer_session_timeout_s: float = setting(
        "CONSUMER_SESSION_TIMEOUT",
        45.0,
        positive(parse_duration),
        "Consumer group session timeout (Tansu dev profile: 2s)",
    )
    consumer_heartbeat_interval_s: float = setting(
        "CONSUMER_HEARTBEAT_INTERVAL",
        3.0,
        positive(parse_duration),
        "Consumer group heartbeat interval (Tansu dev profile: 0.5s)",
    )
    consumer_rebalance_timeout_s: float = setting(
        "CONSUMER_REBALANCE_TIMEOUT",
        60.0,
        positive(parse_duration),
        "Consumer group rebalance timeout (Tansu dev profile: 2s)",
    )
    consumer_fetch_max_wait_s: float = setting(
        "CONSUMER_FETCH_MAX_WAIT",
        1.5,
        positive(parse_duration),
        "Longest a worker fetch waits on the broker for new records (Faust's 1.5s; also the "
        "stream readers' fetch.wait.max.ms; Tansu dev profile: 50ms, as Tansu holds a fetch for "
        "the whole wait)",
    )
    stream_reader: str = setting(
        "STREAM_READER",
        "librdkafka",
        lower_choice("librdkafka", "faust"),
        "What reads the worker's stream topics (raw, stats-updates, attribution): librdkafka (a "
        "consumer per agent, whole batches to the agents, Faust keeping the group, the tables "
        "and the commits; about a third of the consume CPU per record, issue 21) or faust "
        "(Faust's own consumer, record by record: the path before issue 21)",
    )
    changelog_max_batch_bytes: int = setting(
        "CHANGELOG_MAX_BATCH_BYTES",
        1_000_000,
        positive(parse_int),
        "Max bytes of one partition's batch of table changelog records (librdkafka's own "
        "default). At Faust's 16,384 the changelog producer sent a request per partition every "
        "few records' worth: ~2.5x the requests of the outputs producer, its librdkafka thread "
        "spinning at the in-flight limit and the broker's CPU with it (bench/README.md, issue 21)",
    )
    output_linger_s: float = setting(
        "OUTPUT_LINGER",
        0.02,
        positive(parse_duration),
        "How long the worker's producers (outputs, table changelogs) gather records before "
        "sending them: longer means fuller requests and less CPU per event, but every batch's "
        "acknowledgement, and a downstream consumer's view of its records, waits that much "
        "longer. At 5ms a live feed woke the producers' librdkafka threads for a few records "
        "at a time: 20ms took ~15% off the worker's CPU per event at 3,500 records/s and its "
        "half-rate p99 from 0.6-0.8 s to 0.26-0.43 s (bench/README.md, issue 21). Keep it "
        "above the broker's produce round trip: librdkafka's idempotent producer otherwise "
        "spins until the response (Tansu dev profile: 50ms, config/tansu-dev.env)",
    )
    changelog_linger_s: float = setting(
        "CHANGELOG_LINGER",
        0.1,
        positive(parse_duration),
        "How long the worker's table changelog producer gathers records before sending them "
        "(librdkafka sends one partition per produce request: each changelog partition costs up "
        "to a request per linger, paid by the producer's thread and the broker). A changelog "
        "record's acknowledgement delays no output record: it gates a raw batch's positions "
        "becoming committable and a stats batch's table write (so the next stats batch)",
    )
    fast_restore: bool = setting(
        "FAST_RESTORE",
        True,
        parse_bool,
        "Restore a table partition that is behind its changelog (a lost disk, a new worker) with "
        "the worker's own changelog reader (librdkafka, RocksDB write batches) before Faust's "
        "recovery, which applies records one by one (~5x slower; bench/README.md, restore); "
        "false leaves all of it to Faust",
    )
    changelog_end_from_fetch: bool = setting(
        "CHANGELOG_END_FROM_FETCH",
        False,
        parse_bool,
        "Take the end of each table changelog a restore reads up to from a fetch's high watermark, "
        "not from ListOffsets alone (Tansu dev profile: true; Tansu's ListOffsets ends at the base "
        "offset of a partition's newest batch + 1, so a restore would miss the rest of that batch)",
    )
    table_standby_replicas: int = setting(
        "TABLE_STANDBY_REPLICAS",
        1,
        parse_int,
        "Standby copies of each table partition kept warm on other workers (Faust's "
        "table_standby_replicas): a partition moving to a worker that holds one restores only "
        "the tail of its changelog. 0 saves CPU and disk with a single worker",
    )
    standby_follower: bool = setting(
        "STANDBY_FOLLOWER",
        True,
        parse_bool,
        "Follow the standby table partitions with the worker's own changelog reader (librdkafka, "
        "RocksDB write batches, on its own thread) instead of Faust's recovery, which applies "
        "them record by record on the event loop (~90 us of CPU each: with two workers, the "
        "half-rate p50 went from 0.15 s to 2.2 s); false leaves them to Faust",
    )
    standby_apply_interval_s: float = setting(
        "STANDBY_APPLY_INTERVAL",
        0.5,
        positive(parse_duration),
        "How often the standby follower (CRM_STANDBY_FOLLOWER) applies what it fetched, and how "
        "long one of its fetches waits on the broker when there is nothing new: a standby lags "
        "its changelog by up to about twice this (a takeover restores that tail); a longer one "
        "makes fewer, fuller write batches (a key written several times meanwhile is written "
        "once)",
    )
    rocksdb_memory_mb: int = setting(
        "ROCKSDB_MEMORY_MB",
        128,
        positive(parse_int),
        "Memory all table partitions of a worker share, in MB: half a RocksDB block cache, half "
        "their memtables (a write buffer manager), however many partitions and standbys the "
        "worker holds. Less flushes smaller files more often (more compaction CPU)",
    )
    allow_state_reset: bool = setting(
        "ALLOW_STATE_RESET",
        False,
        parse_bool,
        "Go on when a raw partition's dedupe state is lost (changelog deleted or expired) from "
        "the group's committed offsets; by default the worker stops (exit 78) and says so",
    )
    max_message_bytes: int = setting(
        "MAX_MESSAGE_BYTES",
        1_000_000,
        positive(parse_int),
        "Largest output record (key, value and headers) the worker writes; a larger canonical "
        "event becomes a too_large dead letter. At most the topics' max.message.bytes",
    )
    event_loop: str = setting(
        "EVENT_LOOP",
        "uvloop",
        lower_choice("uvloop", "asyncio"),
        "The worker's event loop: uvloop (libuv; Faust runs ~25% faster on it) or asyncio",
    )
    gc_threshold: int = setting(
        "GC_THRESHOLD",
        50_000,
        parse_int,
        "The worker's first garbage-collector threshold (allocations between two young "
        "collections; Python's default is 700), and what start-up built is frozen out of every "
        "collection. The stats path builds and drops many small objects per event, few of them "
        "in cycles: Python's collector took 11-20% of its CPU samples (issue 21). 0 leaves "
        "Python's defaults",
    )
    log_level: str = setting(
        "LOG_LEVEL", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level"
    )
    log_format: str = setting(
        "LOG_FORMAT", "text", lower_choice("text", "json"), "text or json (one object a line)"
    )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def topic(self, name: str) -> str:
        """Full name of one of crm-stream's topics, e.g. ``topic("events")``."""
        return f"{self.topic_prefix}{name}"

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, current value, description) rows; secrets masked."""
        return describe_fields(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``CRM_*`` variable; raise :class:`ConfigError` naming the bad one."""
        values = values_from_env(cls, environ, skip=overrides)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Cross-field checks that a single variable cannot express."""
        self._validate_kafka_security()
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ConfigError("CRM_REPLICATION_FACTOR", "must be -1 (broker default) or >= 1")
        if self.table_standby_replicas < 0:
            raise ConfigError("CRM_TABLE_STANDBY_REPLICAS", "must be 0 or more")
        if self.stats_flush_interval_s > 3600:
            raise ConfigError(
                "CRM_STATS_FLUSH_INTERVAL",
                "must be at most 1h (a restart recounts up to this much of every stats "
                f"partition), got {self.stats_flush_interval_s}s",
            )
        if self.positions_interval_s > 3600:
            raise ConfigError(
                "CRM_POSITIONS_INTERVAL",
                "must be at most 1h (a restart processes up to this much of every raw partition "
                "again)",
            )
        if self.dedupe_window_s < 86400:
            raise ConfigError(
                "CRM_DEDUPE_WINDOW",
                "must be at least 1d; docs/events.md asks for >= 7d (Airship replays a week)",
            )
        try:
            self.stats_window_seconds()
        except ValueError as exc:
            raise ConfigError("CRM_STATS_WINDOWS", str(exc)) from exc
        try:
            self.stats_retention_seconds()
        except ValueError as exc:
            raise ConfigError("CRM_STATS_RETENTION", str(exc)) from exc
        if self.consumer_heartbeat_interval_s >= self.consumer_session_timeout_s:
            raise ConfigError(
                "CRM_CONSUMER_HEARTBEAT_INTERVAL", "must be below CRM_CONSUMER_SESSION_TIMEOUT"
            )
        if not 4 <= self.stats_hll_lg_k <= 21:
            raise ConfigError("CRM_STATS_HLL_LG_K", "must be in 4..21")
        if not 1 <= self.stats_max_messages <= 10000:
            raise ConfigError("CRM_STATS_MAX_MESSAGES", "must be in 1..10000")
        if not 1 <= self.stats_max_variants <= 1000:
            raise ConfigError("CRM_STATS_MAX_VARIANTS", "must be in 1..1000")
        if self.api_url and not re.fullmatch(r"https?://[^/\s]+/?", self.api_url):
            raise ConfigError("CRM_API_URL", f"must be http(s)://host:port, got {self.api_url!r}")
        self.api_grants()
        try:
            self.attribution_windows()
        except ValueError as exc:
            raise ConfigError("CRM_ATTRIBUTION_WINDOW", str(exc)) from exc
        try:
            self.conversion_event_names()
        except ValueError as exc:
            raise ConfigError("CRM_CONVERSION_EVENTS", str(exc)) from exc

    def _validate_kafka_security(self) -> None:
        """SASL credentials and TLS files, checked at startup the way both Kafka clients will
        use them, so a mistake names its variable instead of surfacing as a connection error."""
        protocol = self.security_protocol
        if protocol.startswith("SASL"):
            for var, value in (
                ("CRM_SASL_USERNAME", self.sasl_username),
                ("CRM_SASL_PASSWORD", self.sasl_password.get()),
            ):
                if not value:
                    raise ConfigError(var, f"required when CRM_SECURITY_PROTOCOL={protocol}")
        for var, path, other in (
            ("CRM_SSL_KEY_LOCATION", self.ssl_key_location, self.ssl_cert_location),
            ("CRM_SSL_CERT_LOCATION", self.ssl_cert_location, self.ssl_key_location),
        ):
            if other and not path:
                raise ConfigError(
                    var, "CRM_SSL_CERT_LOCATION and CRM_SSL_KEY_LOCATION must be set together"
                )
        if self.ssl_key_password and not self.ssl_key_location:
            raise ConfigError(
                "CRM_SSL_KEY_PASSWORD", "only applies with CRM_SSL_CERT_LOCATION and _KEY_LOCATION"
            )
        for var, path in (
            ("CRM_SSL_CA_LOCATION", self.ssl_ca_location),
            ("CRM_SSL_CERT_LOCATION", self.ssl_cert_location),
            ("CRM_SSL_KEY_LOCATION", self.ssl_key_location),
        ):
            if not path:
                continue
            if not Path(path).is_file():
                raise ConfigError(var, f"file not found: {path}")
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError as exc:
                raise ConfigError(var, f"cannot read {path}: {exc.strerror}") from exc
        if protocol in {"SSL", "SASL_SSL"}:
            self._check_tls_files()

    def _check_tls_files(self) -> None:
        """Load the CA and the client certificate and key as the TLS clients will: a file that
        is not PEM, a key that does not match its certificate or a wrong key password stops
        startup here, naming the variable."""
        import ssl

        context = ssl.create_default_context()
        if self.ssl_ca_location:
            try:
                context.load_verify_locations(cafile=self.ssl_ca_location)
            except ssl.SSLError as exc:
                raise ConfigError(
                    "CRM_SSL_CA_LOCATION",
                    f"no PEM CA certificate in {self.ssl_ca_location}: {exc.reason or exc}",
                ) from exc
        if self.ssl_cert_location:
            try:
                context.load_cert_chain(
                    self.ssl_cert_location,
                    self.ssl_key_location,
                    password=self.ssl_key_password.get() or None,
                )
            except ssl.SSLError as exc:
                raise ConfigError(
                    "CRM_SSL_CERT_LOCATION",
                    "cannot load the client certificate with CRM_SSL_KEY_LOCATION (and "
                    f"CRM_SSL_KEY_PASSWORD): {exc.reason or exc}",
                ) from exc

    @property
    def advertised_api_url(self) -> str:
        """The URL this worker's API is reached at by the other workers (CRM_API_URL)."""
        if self.api_url:
            return self.api_url.rstrip("/")
        import socket

        return f"http://{socket.gethostname()}:{self.api_port}"

    def api_grants(self) -> list[tuple[Secret, frozenset[str] | None]]:
        """``CRM_API_TOKEN`` as (token, the app ids it may read, None for every app) pairs; no
        pair: the API is open. A malformed line is a ConfigError naming the line, never the
        token."""
        out: list[tuple[Secret, frozenset[str] | None]] = []
        for number, line in enumerate(self.api_token.get().splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            token, _, apps = text.replace("\t", " ").partition(" ")
            if not _TOKEN.fullmatch(token):
                raise ConfigError(
                    "CRM_API_TOKEN",
                    f"line {number}: a token is at least 16 characters of A-Z a-z 0-9 - . _ ~ + / "
                    "(trailing = allowed), then optionally a space and app ids separated by commas",
                )
            app_ids = None
            if apps.strip():
                app_ids = frozenset(a.strip() for a in apps.split(","))
                if "" in app_ids:
                    raise ConfigError("CRM_API_TOKEN", f"line {number}: an empty app id")
            out.append((Secret(token), app_ids))
        return out

    def conversion_event_names(self) -> tuple[str, ...]:
        """``CRM_CONVERSION_EVENTS`` as names."""
        return parse_names(self.conversion_events)

    def attribution_windows(self) -> tuple[float, dict[str, float]]:
        """``CRM_ATTRIBUTION_WINDOW`` as (default seconds, seconds per conversion name)."""
        return parse_attribution_windows(self.attribution_window)

    def stats_window_seconds(self) -> list[tuple[str, int]]:
        """``"1m,1h"`` -> ``[("1m", 60), ("1h", 3600)]``."""
        out = []
        for part in self.stats_windows.split(","):
            label = part.strip()
            seconds = parse_duration(label)
            if seconds < 1 or seconds != int(seconds):
                raise ValueError(f"window {label!r} must be a whole number of seconds >= 1")
            out.append((label, int(seconds)))
        if not out or len({s for _, s in out}) != len(out):
            raise ValueError("windows must be distinct")
        return out

    def stats_retention_seconds(self) -> dict[str, float]:
        """``CRM_STATS_RETENTION`` per window size of ``CRM_STATS_WINDOWS``: ``"1m=3d,1h=90d"``
        reads "windows from 1m: 3 days, from 1h: 90 days", so ``{"1m": 259200.0, "1h":
        7776000.0}``, and a size not named takes the retention of the largest named size at or
        below it (of the smallest named one below them all): with windows ``5m,1d`` it gives
        5m three days and 1d ninety. A bare ``"30d"`` gives every size 30 days."""
        windows = self.stats_window_seconds()
        text = self.stats_retention.strip()
        if "=" not in text:
            seconds = parse_duration(text)
            if seconds <= 0:
                raise ValueError(f"must be greater than 0, got {text!r}")
            return {label: seconds for label, _ in windows}
        named: dict[float, float] = {}
        for part in text.split(","):
            size_text, sep, duration = part.partition("=")
            if not sep:
                raise ValueError(f"{part.strip()!r}: expected <window>=<duration>, e.g. 1m=3d")
            try:
                size = parse_duration(size_text)
            except ValueError as exc:
                raise ValueError(f"{size_text.strip()!r} is not a window size") from exc
            if size in named:
                raise ValueError(f"window {size_text.strip()} named twice")
            seconds = parse_duration(duration)
            if seconds <= 0:
                raise ValueError(f"{size_text.strip()}: the retention must be greater than 0")
            named[size] = seconds
        out = {}
        for label, size in windows:
            at_or_below = [s for s in named if s <= size]
            out[label] = named[max(at_or_below) if at_or_below else min(named)]
        return out
