"""Airship Real-Time Data Streaming (RTDS) source connector: ``crm-stream connect airship``.

RTDS is one endless NDJSON response to a ``POST`` (TAXONOMY §7, seed 004). Nothing may be lost
across disconnects, restarts or bad requests, so the connector:

* publishes every non-empty line, unchanged, to ``raw.airship`` keyed by the event ``id``;
* checkpoints, in ``connect-offsets``, only the highest offset that Kafka acknowledged together
  with every event before it in stream order, and resumes from it with ``resume_offset``;
* closes and reconnects from that checkpoint after any disconnect, and after ``idle_timeout``
  (90 s, "If you receive no data or new line characters for ninety seconds, close the connection
  and reconnect"), with exponential back-off and jitter;
* re-POSTs the same body with the 307 response's cookies instead of following ``Location``, as
  Airship's own client does ([X8]);
* stops with a clear error on 400/401/403, which retrying cannot fix.

The configuration is validated before the first connection (an empty filter array, an unknown
field or a PARTITION selection not below its count would only earn a 400 later).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from connectors.base import CheckpointStore, RawPublisher
from crmstream import metrics
from crmstream.errors import BrokerError, ConfigError, CrmStreamError
from crmstream.settings import (
    Secret,
    Settings,
    choice,
    lower_choice,
    parse_bool,
    parse_duration,
    parse_field,
    parse_int,
    positive,
    read_secret,
    setting,
)

log = logging.getLogger(__name__)

CONNECTOR = "airship"
VENDOR = "airship"
ENV_PREFIX = "CRM_AIRSHIP_"

# TAXONOMY §7 "Endpoints / data centres"; the Python library's `url` option takes US, EU or a URL.
BASE_URLS = {"US": "https://connect.urbanairship.com", "EU": "https://connect.asnapieu.com"}
STREAM_PATHS = {"events": "/api/events", "compliance": "/api/events/general"}
ACCEPT = "application/vnd.urbanairship+x-ndjson; version=3;"

# Seed 004 "Request filters": the only attributes a filter object may have ("If an unexpected
# attribute appears ..., a status code 400 response will be returned").
FILTER_FIELDS = frozenset(
    {"device_types", "devices", "latency", "notifications", "types", "users", "predicates"}
)
DEVICE_TYPES = frozenset({"android", "ios", "amazon", "web", "email", "sms", "open"})
# Seed 004 "Compliance request filters": device_types (email, sms) and latency only.
COMPLIANCE_FILTER_FIELDS = frozenset({"device_types", "latency"})
COMPLIANCE_DEVICE_TYPES = frozenset({"email", "sms"})
MATCHERS = frozenset(
    {"equals", "array_contains", "index", "at_least", "at_most", "is_present", "version_matches"}
)


# --- configuration -----------------------------------------------------------------------------


class AirshipError(CrmStreamError):
    """Airship refused the stream in a way that retrying cannot fix (400, 401, 403, other 4xx)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status


def parse_base_url(text: str) -> str:
    """``US``/``EU`` -> the data centre's base URL; anything else must be an http(s) URL."""
    value = text.strip()
    if value.upper() in BASE_URLS:
        return BASE_URLS[value.upper()]
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{text!r} is neither US, EU nor an http(s)://host[:port] URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a base URL has no query or fragment")
    return value.rstrip("/")


_stream = lower_choice(*STREAM_PATHS)
_positive_duration = positive(parse_duration)
_positive_int = positive(parse_int)


def _duration_or_zero(text: str) -> float:
    return parse_duration(text)


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def _text(text: str) -> str:
    return text.strip()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonempty_array(value: Any, where: str) -> list[Any]:
    # Seed 004: "An empty array results in a 400 response."
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a JSON array")
    if not value:
        raise ValueError(f"{where} is an empty array (Airship answers 400 to an empty array)")
    return value


def _string_array(value: Any, where: str, allowed: frozenset[str] | None = None) -> None:
    for i, item in enumerate(_nonempty_array(value, where)):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{where}[{i}] must be a non-empty string")
        if allowed is not None and item not in allowed:
            raise ValueError(f"{where}[{i}] = {item!r} is not one of {', '.join(sorted(allowed))}")


def _id_objects(value: Any, where: str, keys: frozenset[str]) -> None:
    for i, item in enumerate(_nonempty_array(value, where)):
        if not isinstance(item, dict) or not item:
            raise ValueError(f"{where}[{i}] must be an object with {' or '.join(sorted(keys))}")
        unknown = set(item) - keys
        if unknown:
            raise ValueError(f"{where}[{i}] has unknown field(s) {', '.join(sorted(unknown))}")
        for k, v in item.items():
            if not isinstance(v, str) or not v:
                raise ValueError(f"{where}[{i}].{k} must be a non-empty string")


def _notification(value: Any, where: str) -> None:
    # Seed 004: "you should only specify one of push_id or group_id".
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"{where} must be an object with exactly one of push_id, group_id")
    (k, v), *_ = value.items()
    if k not in {"push_id", "group_id"}:
        raise ValueError(f"{where} has unknown field {k!r} (push_id or group_id)")
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}.{k} must be a non-empty string")


def _matcher(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where} must be a matcher object ({', '.join(sorted(MATCHERS))})")
    unknown = set(value) - MATCHERS
    if unknown:
        raise ValueError(f"{where} has unknown matcher(s) {', '.join(sorted(unknown))}")
    if "array_contains" in value:
        inner = value["array_contains"]
        if not isinstance(inner, dict) or "value" not in inner:
            raise ValueError(f"{where}.array_contains must be an object with a value matcher")
        _matcher(inner["value"], f"{where}.array_contains.value")
    for k in ("at_least", "at_most"):
        if k in value and (isinstance(value[k], bool) or not isinstance(value[k], int | float)):
            raise ValueError(f"{where}.{k} must be a number")
    if "is_present" in value and not isinstance(value["is_present"], bool):
        raise ValueError(f"{where}.is_present must be true or false")
    if "version_matches" in value and not isinstance(value["version_matches"], str):
        raise ValueError(f"{where}.version_matches must be a string")


def _predicate(value: Any, where: str) -> None:
    """Seed 004 "JSON Predicate": ``and``/``or`` arrays, ``not``, or ``key`` + ``value``."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where} must be a JSON predicate object")
    unknown = set(value) - {"and", "or", "not", "key", "scope", "value"}
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}")
    forms = [k for k in ("and", "or", "not", "key") if k in value]
    if len(forms) != 1:
        raise ValueError(f"{where} must have exactly one of and, or, not, key")
    form = forms[0]
    if form in {"and", "or"}:
        for i, item in enumerate(_nonempty_array(value[form], f"{where}.{form}")):
            _predicate(item, f"{where}.{form}[{i}]")
    elif form == "not":
        _predicate(value["not"], f"{where}.not")
    else:
        if not isinstance(value["key"], str) or not value["key"]:
            raise ValueError(f"{where}.key must be a non-empty string")
        scope = value.get("scope")
        if scope is not None and not isinstance(scope, str):
            _string_array(scope, f"{where}.scope")
        if "value" not in value:
            raise ValueError(f"{where} needs a value matcher")
        _matcher(value["value"], f"{where}.value")


def validate_filters(filters: Any, stream: str = "events") -> list[dict[str, Any]]:
    """Check ``filters`` as Airship would, so that a mistake is a ConfigError, not a 400 later.

    Raises ValueError naming the offending path (``filters[0].types[2]``).
    """
    compliance = stream == "compliance"
    allowed = COMPLIANCE_FILTER_FIELDS if compliance else FILTER_FIELDS
    device_types = COMPLIANCE_DEVICE_TYPES if compliance else DEVICE_TYPES
    for i, item in enumerate(_nonempty_array(filters, "filters")):
        where = f"filters[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a JSON object")
        unknown = set(item) - allowed
        if unknown:
            raise ValueError(
                f"{where} has unknown field(s) {', '.join(sorted(unknown))}; "
                f"the {stream} stream accepts {', '.join(sorted(allowed))}"
            )
        if "device_types" in item:
            _string_array(item["device_types"], f"{where}.device_types", device_types)
        if "latency" in item and (not _is_int(item["latency"]) or item["latency"] < 0):
            raise ValueError(f"{where}.latency must be a non-negative integer (milliseconds)")
        if "types" in item:
            # Any name is let through: new event types appear (seed 004, forward compatibility).
            _string_array(item["types"], f"{where}.types")
        if "devices" in item:
            _id_objects(
                item["devices"], f"{where}.devices", frozenset({"channel", "named_user_id"})
            )
        if "users" in item:
            _id_objects(item["users"], f"{where}.users", frozenset({"contact_id", "named_user_id"}))
        if "notifications" in item:
            # The schema says object; the seed's own request example sends an array of them.
            notes = item["notifications"]
            if isinstance(notes, list):
                for j, note in enumerate(_nonempty_array(notes, f"{where}.notifications")):
                    _notification(note, f"{where}.notifications[{j}]")
            else:
                _notification(notes, f"{where}.notifications")
        if "predicates" in item:
            # Schema: array; the seed's predicate examples also send a single object.
            preds = item["predicates"]
            if isinstance(preds, list):
                for j, pred in enumerate(_nonempty_array(preds, f"{where}.predicates")):
                    _predicate(pred, f"{where}.predicates[{j}]")
            else:
                _predicate(preds, f"{where}.predicates")
    return list(filters)


def validate_subset(subset: Any) -> dict[str, Any]:
    """Seed 004 "Request subset": SAMPLE with a proportion in [0, 1], or PARTITION with
    ``selection`` below ``count``. Raises ValueError."""
    if not isinstance(subset, dict):
        raise ValueError("subset must be a JSON object")
    kind = subset.get("type")
    if kind == "SAMPLE":
        unknown = set(subset) - {"type", "proportion"}
        proportion = subset.get("proportion")
        if isinstance(proportion, bool) or not isinstance(proportion, int | float):
            raise ValueError("subset SAMPLE needs a numeric proportion")
        if not 0 <= proportion <= 1:
            raise ValueError(f"subset proportion {proportion} is outside 0..1")
    elif kind == "PARTITION":
        unknown = set(subset) - {"type", "count", "selection"}
        count, selection = subset.get("count"), subset.get("selection")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("subset PARTITION needs an integer count >= 1")
        if not isinstance(selection, int) or isinstance(selection, bool) or selection < 0:
            raise ValueError("subset PARTITION needs an integer selection >= 0")
        if selection >= count:
            raise ValueError(
                f"subset selection {selection} must be less than count {count} "
                "(Airship answers 400 otherwise)"
            )
    else:
        raise ValueError(f"subset type must be SAMPLE or PARTITION, got {kind!r}")
    if unknown:
        raise ValueError(f"subset has unknown field(s) {', '.join(sorted(unknown))}")
    return dict(subset)


@dataclass(frozen=True)
class AirshipSettings:
    """One Airship stream connection, validated on construction (see :meth:`validate`)."""

    app_key: str = setting("APP_KEY", "", _text, "Airship app key, sent as X-UA-Appkey")
    token: Secret = setting(
        "TOKEN", Secret(""), None, "RTDS bearer token (or CRM_AIRSHIP_TOKEN_FILE)", secret=True
    )
    master_secret: Secret = setting(
        "MASTER_SECRET",
        Secret(""),
        None,
        "Master secret for the compliance stream's Basic auth (or CRM_AIRSHIP_MASTER_SECRET_FILE)",
        secret=True,
    )
    url: str = setting("URL", BASE_URLS["US"], parse_base_url, "US, EU or a base URL")
    stream: str = setting(
        "STREAM", "events", _stream, "events (/api/events) or compliance (/api/events/general)"
    )
    start: str | None = setting(
        "START",
        None,
        choice("EARLIEST", "LATEST"),
        "EARLIEST or LATEST when there is no checkpoint (default LATEST)",
    )
    resume_offset: str | None = setting(
        "RESUME_OFFSET", None, _text, "Offset to resume after when there is no checkpoint"
    )
    filters: list[dict[str, Any]] | None = setting(
        "FILTERS",
        None,
        _json,
        "JSON array of filter objects (or ..._FILE)",
        json=True,
    )
    subset: dict[str, Any] | None = setting(
        "SUBSET", None, _json, "JSON subset object, SAMPLE or PARTITION (or ..._FILE)", json=True
    )
    enable_offset_updates: bool = setting(
        "OFFSET_UPDATES", True, parse_bool, "Ask for OFFSET_UPDATE events instead of blank lines"
    )
    idle_timeout_s: float = setting(
        "IDLE_TIMEOUT", 90.0, _positive_duration, "Reconnect when no byte arrives for this long"
    )
    connect_timeout_s: float = setting(
        "CONNECT_TIMEOUT", 30.0, _positive_duration, "TCP/TLS connect timeout"
    )
    backoff_min_s: float = setting(
        "BACKOFF_MIN", 1.0, _positive_duration, "First reconnect delay (doubles, with jitter)"
    )
    backoff_max_s: float = setting(
        "BACKOFF_MAX", 60.0, _positive_duration, "Longest reconnect delay"
    )
    not_found_retry_s: float = setting(
        "NOT_FOUND_RETRY", 60.0, _positive_duration, "Delay after a 404 (no data for the app yet)"
    )
    max_redirects: int = setting(
        "MAX_REDIRECTS", 5, _positive_int, "307 re-POSTs allowed per connection attempt"
    )
    checkpoint_interval_s: float = setting(
        "CHECKPOINT_INTERVAL", 1.0, _positive_duration, "How often the checkpoint is written"
    )
    stop_after_idle_s: float = setting(
        "STOP_AFTER_IDLE",
        0.0,
        _duration_or_zero,
        "Exit once no event arrived for this long, everything checkpointed (0: run forever)",
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def endpoint(self) -> str:
        return self.url + STREAM_PATHS[self.stream]

    @property
    def checkpoint_key(self) -> str:
        """One checkpoint per app, stream and subset: PARTITION consumers never share one."""
        subset = self.subset
        if subset is None:
            tag = "all"
        elif subset["type"] == "PARTITION":
            tag = f"partition-{subset['selection']}-of-{subset['count']}"
        else:
            tag = f"sample-{subset['proportion']}"
        return f"{self.app_key}/{self.stream}/{tag}"

    def validate(self) -> None:
        env = ENV_PREFIX
        if not self.app_key:
            raise ConfigError(env + "APP_KEY", "the Airship app key is required (X-UA-Appkey)")
        if self.stream == "events" and not self.token:
            raise ConfigError(
                env + "TOKEN",
                "the events stream needs a bearer token: set CRM_AIRSHIP_TOKEN or "
                "CRM_AIRSHIP_TOKEN_FILE",
            )
        if self.stream == "compliance" and not self.master_secret:
            raise ConfigError(
                env + "MASTER_SECRET",
                "the compliance stream uses Basic auth with the master secret: set "
                "CRM_AIRSHIP_MASTER_SECRET or CRM_AIRSHIP_MASTER_SECRET_FILE",
            )
        if self.start is not None and self.resume_offset is not None:
            # Seed 004 Events request: "Only specify resume_offset if start is absent."
            raise ConfigError(
                env + "RESUME_OFFSET",
                "give start or resume_offset, never both (else HTTP 400)",
            )
        if self.resume_offset == "":
            raise ConfigError(env + "RESUME_OFFSET", "must not be empty")
        if self.filters is not None:
            try:
                validate_filters(self.filters, self.stream)
            except ValueError as exc:
                raise ConfigError(env + "FILTERS", str(exc)) from None
        if self.subset is not None:
            try:
                validate_subset(self.subset)
            except ValueError as exc:
                raise ConfigError(env + "SUBSET", str(exc)) from None
        if self.backoff_min_s > self.backoff_max_s:
            raise ConfigError(env + "BACKOFF_MIN", "must not exceed CRM_AIRSHIP_BACKOFF_MAX")
        if self.stop_after_idle_s < 0:
            raise ConfigError(env + "STOP_AFTER_IDLE", "must be 0 (off) or a positive duration")

    def request_body(self, resume_offset: str | None) -> dict[str, Any]:
        """The request body: documented fields only, ``start`` xor ``resume_offset``."""
        body: dict[str, Any] = {}
        if resume_offset is not None:
            body["resume_offset"] = resume_offset
        else:
            body["start"] = self.start or "LATEST"
        if self.filters is not None:
            body["filters"] = self.filters
        if self.subset is not None:
            body["subset"] = self.subset
        if self.enable_offset_updates:
            # Missing from the Events-request table but shown in the compliance example
            # (TAXONOMY §7): send it and expect OFFSET_UPDATE lines.
            body["enable_offset_updates"] = True
        return body

    def headers(self) -> dict[str, str]:
        if self.stream == "compliance":
            # TAXONOMY §7: the compliance stream takes Basic appKey:masterSecret, never Bearer.
            pair = f"{self.app_key}:{self.master_secret.get()}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        else:
            auth = "Bearer " + self.token.get()
        return {
            "Authorization": auth,
            "X-UA-Appkey": self.app_key,
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        }

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        options: Mapping[str, str | None] | None = None,
    ) -> AirshipSettings:
        """Read ``CRM_AIRSHIP_*``; ``options`` (command-line text by field name, or
        ``<field>_file`` for JSON fields) override them. Secrets come only from the
        environment or a file. Raises :class:`ConfigError` naming the variable or option."""
        env = os.environ if environ is None else environ
        opts = {k: v for k, v in (options or {}).items() if v is not None}
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.metadata["env"]
            is_json = f.metadata.get("json", False)
            raw: str | None = None
            source = var
            if f.metadata["secret"]:
                secret = read_secret(env, var)
                if secret is not None:
                    values[f.name] = Secret(secret.get().strip())
                continue
            if is_json and f.name + "_file" in opts:
                source = f"--{f.name}-file"
                raw = _read_file(source, opts[f.name + "_file"] or "")
            elif f.name in opts:
                source = "--" + f.name.removesuffix("_s").replace("_", "-")
                raw = opts[f.name]
            elif var in env:
                raw = env[var]
            elif is_json and env.get(var + "_FILE"):
                source = var + "_FILE"
                raw = _read_file(source, env[source])
            if raw is None:
                continue
            values[f.name] = parse_field(f, source, raw)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str]]:
        """(variable, description) rows for documentation and ``--help``."""
        return [(ENV_PREFIX + f.metadata["env"], f.metadata["doc"]) for f in fields(cls)]


def _read_file(setting: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc}") from None


# --- offset tracking ---------------------------------------------------------------------------


@dataclass
class _Slot:
    offset: str | None
    acked: bool = False


class OffsetTracker:
    """The highest offset whose own record and every earlier one are acknowledged by Kafka.

    Offsets are opaque strings (TAXONOMY §4: numeric-looking, base64-like, even negative), so
    "highest" means latest in stream order: slots queue in read order and the position advances
    over the acknowledged prefix. Delivery callbacks may run on librdkafka's flush thread, hence
    the lock.
    """

    def __init__(self, position: str | None = None) -> None:
        self.position = position
        self._pending: deque[_Slot] = deque()
        self._lock = threading.Lock()

    def add(self, offset: str | None) -> _Slot:
        """Queue a published record; ``offset`` None for a line whose offset is unknown."""
        slot = _Slot(offset)
        with self._lock:
            self._pending.append(slot)
        return slot

    def ack(self, slot: _Slot) -> None:
        with self._lock:
            slot.acked = True
            self._advance()

    def mark(self, offset: str) -> None:
        """An OFFSET_UPDATE: nothing to publish, so the position may move to it once every
        record before it is acknowledged (TAXONOMY §7: its offset may be checkpointed)."""
        with self._lock:
            self._pending.append(_Slot(offset, acked=True))
            self._advance()

    def _advance(self) -> None:
        while self._pending and self._pending[0].acked:
            slot = self._pending.popleft()
            if slot.offset is not None:
                self.position = slot.offset

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def reset(self) -> int:
        """Forget unacknowledged records (their publish failed); the stream is re-read from
        :attr:`position`. Returns how many were dropped. Late acks land on orphaned slots."""
        with self._lock:
            dropped = len(self._pending)
            self._pending = deque()
        return dropped


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential back-off with jitter: ``low * 2**(attempt-1)`` capped at ``high``, then a
    random point in its upper half, so that many connectors do not reconnect in lockstep."""
    ceiling = min(high, low * math.pow(2, max(0, attempt - 1)))
    return rng.uniform(ceiling / 2, ceiling)


# --- the connector -----------------------------------------------------------------------------


@dataclass
class RunStats:
    """What one run did; the CLI prints it and the tests assert on it."""

    connections: int = 0
    reconnects: int = 0
    records: int = 0
    bytes: int = 0
    keepalives: int = 0
    offset_updates: int = 0
    idle_timeouts: int = 0
    invalid_lines: int = 0
    redirects: int = 0
    checkpoint: str | None = None
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        metrics.CONNECTOR_ERRORS.labels(CONNECTOR, kind).inc()


class _Retry(Exception):
    """The connection ended in a way that calls for a reconnect; ``kind`` is the metric kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _epoch_s(value: Any) -> float | None:
    """An event's ISO-8601 ``processed`` time in epoch seconds; None if absent or unreadable
    (the worker validates timestamps, the connector only reports lag)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _offset_of(record: dict[str, Any]) -> str | None:
    value = record.get("offset")
    if isinstance(value, str) and value:
        return value
    if _is_int(value):  # offsets are strings (seed 004), but tolerate a numeric one
        return str(value)
    return None


class AirshipConnector:
    """Streams one Airship app (or one PARTITION of it) into ``raw.airship``."""

    def __init__(
        self,
        config: AirshipSettings,
        settings: Settings,
        *,
        store: CheckpointStore | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.publisher = RawPublisher(settings, VENDOR, app_id=config.app_key)
        self.store = store or CheckpointStore(settings, CONNECTOR)
        self.rng = rng or random.Random()
        self.tracker = OffsetTracker()
        self.stats = RunStats()
        self._committed: str | None = None
        self._committed_at = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._last_event = time.monotonic()
        self._attempt = 0
        self._streamed = False  # a 200 stream has been opened in this run
        self._kafka_failure: str | None = None
        self._source_prefix = f"airship:{config.app_key}#"
        # Bound once: labels() per record is measurable at thousands of events a second.
        self._m_records = metrics.CONNECTOR_RECORDS.labels(CONNECTOR)
        self._m_bytes = metrics.CONNECTOR_BYTES.labels(CONNECTOR)
        self._m_behind = metrics.AIRSHIP_BEHIND.labels(CONNECTOR)

    # -- checkpointing --

    async def _load_checkpoint(self) -> str | None:
        saved = (await asyncio.to_thread(self.store.load)).get(self.config.checkpoint_key)
        if saved and isinstance(saved.get("resume_offset"), str):
            self._committed = saved["resume_offset"]
            log.info(
                "resuming %s after offset %s",
                self.config.checkpoint_key,
                self._committed,
                extra={"connector": CONNECTOR},
            )
            return self._committed
        return self.config.resume_offset

    async def _checkpoint(self) -> None:
        """Write the tracker's position if it moved. Never raises: a failed write is retried
        on the next tick and the old checkpoint stays valid (at-least-once)."""
        async with self._commit_lock:
            position = self.tracker.position
            if position is None or position == self._committed:
                return
            value = {
                "resume_offset": position,
                "app_key": self.config.app_key,
                "stream": self.config.stream,
                "subset": self.config.subset,
                "committed_at_ms": time.time_ns() // 1_000_000,
            }
            try:
                await asyncio.to_thread(self.store.commit, self.config.checkpoint_key, value)
            except BrokerError as exc:
                self.stats.error("kafka")
                log.warning("checkpoint not written: %s", exc, extra={"connector": CONNECTOR})
                return
            self._committed = position
            self._committed_at = time.monotonic()
            self.stats.checkpoint = position

    async def _settle(self) -> bool:
        """Wait for every published record's ack, then checkpoint. On a Kafka failure the
        unacknowledged records are forgotten and will be re-read from the checkpoint."""
        try:
            await asyncio.to_thread(self.publisher.flush, 30.0)
            if self._kafka_failure is not None:
                raise BrokerError(self._kafka_failure)
        except BrokerError as exc:
            self._kafka_failure = None
            self.stats.error("kafka")
            dropped = self.tracker.reset()
            log.error(
                "Kafka did not acknowledge records (%s); %d will be re-read from offset %s",
                exc,
                dropped,
                self.tracker.position,
                extra={"connector": CONNECTOR},
            )
            await self._checkpoint()
            return False
        await self._checkpoint()
        return True

    async def _background(self) -> None:
        """Serve delivery callbacks without blocking the loop; checkpoint periodically."""
        interval = self.config.checkpoint_interval_s
        next_commit = time.monotonic() + interval
        age = metrics.CONNECTOR_CHECKPOINT_AGE.labels(CONNECTOR)
        while True:
            await asyncio.sleep(0.05)
            self.publisher.poll(0)
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + interval
                await self._checkpoint()
            behind = self.tracker.position != self._committed or self.tracker.in_flight > 0
            age.set(now - self._committed_at if behind else 0.0)

    # -- the stream --

    def _handle_line(self, line: bytes) -> None:
        payload = line.rstrip(b"\r")
        if not payload.strip():
            # A blank line is a keep-alive (seed 004); it only resets the idle timer.
            self.stats.keepalives += 1
            metrics.CONNECTOR_KEEPALIVES.labels(CONNECTOR, "blank").inc()
            return
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            # Published anyway, key None: the worker dead-letters it as invalid_json (§5).
            self.stats.invalid_lines += 1
            self.stats.error("invalid_json")
            self._publish(None, payload, None)
            return
        offset = _offset_of(record)
        if record.get("type") == "OFFSET_UPDATE":
            # "You should not store these events" (seed 004); the offset may be checkpointed.
            self.stats.offset_updates += 1
            metrics.CONNECTOR_KEEPALIVES.labels(CONNECTOR, "offset_update").inc()
            if offset is not None:
                self.tracker.mark(offset)
            return
        event_id = record.get("id")
        key = event_id if isinstance(event_id, str) and event_id else None
        self._publish(key, payload, offset)
        processed = _epoch_s(record.get("processed"))
        if processed is not None:
            # How far behind Airship the connector reads (a replay from EARLIEST starts days
            # behind and should fall to seconds).
            self._m_behind.set(max(0.0, time.time() - processed))

    def _publish(self, key: str | None, payload: bytes, offset: str | None) -> None:
        slot = self.tracker.add(offset)
        self.publisher.publish(
            key,
            payload,
            source=self._source_prefix + (offset or "?"),
            fmt="json",
            on_ack=lambda: self.tracker.ack(slot),
            on_error=self._delivery_failed,
        )
        self.stats.records += 1
        self._m_records.inc()
        self._last_event = time.monotonic()

    def _delivery_failed(self, problem: str) -> None:
        """A record Kafka gave up on: its slot never acks, so the checkpoint stops short of it.
        The stream is then reconnected from the checkpoint (see :meth:`_read_stream`)."""
        self._kafka_failure = problem

    def _idle_stop_due(self) -> bool:
        """``stop_after_idle``: no event for that long on an open stream. Time spent before
        the first stream opened (404s, back-off) does not count: a bounded run must not stop
        before it has read anything."""
        limit = self.config.stop_after_idle_s
        if not limit or not self._streamed:
            return False
        return time.monotonic() - self._last_event >= limit

    async def _read_stream(self, response: aiohttp.ClientResponse, stop: asyncio.Event) -> str:
        """Read lines until the stream ends; returns "stopped" / "idle_stop" or raises _Retry."""
        idle = self.config.idle_timeout_s
        tick = min(0.25, idle)
        last_byte = time.monotonic()
        buffer = b""
        got_data = False
        if not self._streamed:
            self._streamed = True
            self._last_event = last_byte
        while True:
            if stop.is_set():
                return "stopped"
            if self._idle_stop_due():
                return "idle_stop"
            if self._kafka_failure is not None:
                raise _Retry("kafka", f"Kafka refused a record: {self._kafka_failure}")
            try:
                async with asyncio.timeout(tick):  # no task per read, unlike wait_for
                    chunk = await response.content.readany()
            except TimeoutError:
                if time.monotonic() - last_byte >= idle:
                    # Seed 004: "If you receive no data or new line characters for ninety
                    # seconds, close the connection and reconnect."
                    self.stats.idle_timeouts += 1
                    metrics.CONNECTOR_IDLE_TIMEOUTS.labels(CONNECTOR).inc()
                    raise _Retry("idle_timeout", f"nothing received for {idle:g}s") from None
                continue
            except aiohttp.ClientPayloadError as exc:
                raise _Retry("disconnect", f"the stream was cut: {exc!r}") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise _Retry("connection", f"stream broke: {exc!r}") from None
            if not chunk:
                # A line cut by the disconnect is not published: it is re-read after resume.
                raise _Retry("disconnect", "the server closed the stream")
            if not got_data:
                got_data = True
                self._attempt = 0
            last_byte = time.monotonic()
            self.stats.bytes += len(chunk)
            self._m_bytes.inc(len(chunk))
            buffer += chunk
            if b"\n" not in chunk:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._handle_line(line)

    async def _connect_once(self, resume_offset: str | None, stop: asyncio.Event) -> str:
        """One connection attempt, including the 307 dance. Returns "stopped"/"idle_stop";
        raises _Retry (reconnect) or AirshipError (give up)."""
        config = self.config
        body = orjson.dumps(config.request_body(resume_offset))
        base_headers = config.headers()
        cookies: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_s, sock_connect=config.connect_timeout_s
        )
        # A fresh session per connection: its cookies are this connection's only ([X8]).
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
        ) as session:
            for _hop in range(config.max_redirects + 1):
                headers = dict(base_headers)
                if cookies:
                    headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
                self.stats.connections += 1
                try:
                    response = await asyncio.wait_for(
                        session.post(
                            config.endpoint, data=body, headers=headers, allow_redirects=False
                        ),
                        timeout=config.idle_timeout_s + config.connect_timeout_s,
                    )
                except TimeoutError:
                    raise _Retry("idle_timeout", "no response headers in time") from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise _Retry("connection", f"cannot reach {config.endpoint}: {exc!r}") from None
                try:
                    status = response.status
                    if status == 307:
                        # [X8] uaconnect: re-POST the same body to the same URL with the
                        # cookies of the 307 (load-balancer affinity); never follow Location,
                        # which a generic client would turn into a GET.
                        for name, morsel in response.cookies.items():
                            cookies[name] = morsel.value
                        self.stats.redirects += 1
                        continue
                    if status == 200:
                        return await self._read_stream(response, stop)
                    detail = (await response.text(errors="replace"))[:300].strip()
                    raise self._status_error(status, detail)
                finally:
                    response.close()
            raise _Retry("redirect_loop", f"more than {config.max_redirects} HTTP 307 in a row")

    def _status_error(self, status: int, detail: str) -> Exception:
        where = f"{self.config.endpoint} answered HTTP {status}"
        suffix = f": {detail}" if detail else ""
        if status in (401, 403):
            secret = (
                "CRM_AIRSHIP_MASTER_SECRET"
                if self.config.stream == "compliance"
                else ("CRM_AIRSHIP_TOKEN")
            )
            return AirshipError(
                status,
                f"{where}; the credentials were refused (revoked or wrong {secret}, or wrong "
                f"CRM_AIRSHIP_APP_KEY){suffix}",
            )
        if status == 400:
            return AirshipError(
                status, f"{where}; Airship rejected the request (check filters/subset){suffix}"
            )
        if status == 402:
            return _Retry("http_402", f"{where}: too many simultaneous connections")
        if status == 404:
            return _Retry("http_404", f"{where}: no data for this app key yet")
        if status >= 500 or status in (408, 429):
            return _Retry("http_5xx" if status >= 500 else f"http_{status}", f"{where}{suffix}")
        return AirshipError(status, f"{where}; not retried{suffix}")

    async def run(self, stop: asyncio.Event | None = None) -> RunStats:
        """Stream until ``stop`` is set, ``stop_after_idle`` passes, or a fatal error."""
        stop = stop or asyncio.Event()
        self.tracker = OffsetTracker(await self._load_checkpoint())
        self._last_event = time.monotonic()
        self._attempt = 0
        background = asyncio.create_task(self._background())
        try:
            while True:
                try:
                    outcome = await self._connect_once(self.tracker.position, stop)
                    if outcome in {"stopped", "idle_stop"}:
                        log.info("stopping (%s)", outcome, extra={"connector": CONNECTOR})
                        return self.stats
                    raise _Retry("disconnect", "stream ended")  # pragma: no cover
                except _Retry as retry:
                    self.stats.error(retry.kind)
                    reason = retry
                except AirshipError as fatal:
                    self.stats.error("http_auth" if fatal.status in (401, 403) else "http_4xx")
                    log.error("%s", fatal, extra={"connector": CONNECTOR})
                    raise
                # Reconnect from the checkpoint: settle everything read so far first.
                await self._settle()
                if self._idle_stop_due() or stop.is_set():
                    return self.stats
                self._attempt += 1
                if reason.kind == "http_404":
                    # No data for the app yet: retry slowly, with jitter.
                    delay = self.rng.uniform(0.75, 1.0) * self.config.not_found_retry_s
                else:
                    delay = backoff_delay(
                        self._attempt,
                        self.config.backoff_min_s,
                        self.config.backoff_max_s,
                        self.rng,
                    )
                log.warning(
                    "%s; reconnecting in %.2fs from offset %s",
                    reason,
                    delay,
                    self.tracker.position,
                    extra={"connector": CONNECTOR},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return self.stats
                self.stats.reconnects += 1
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            settled = await self._settle()
            self.stats.checkpoint = self._committed
            if not settled:
                raise BrokerError("Kafka did not acknowledge every record; checkpoint kept back")


# --- command line ------------------------------------------------------------------------------

_OPTIONS: list[tuple[str, str, str]] = [
    # (option, field, help)
    ("--url", "url", "US, EU or a base URL [CRM_AIRSHIP_URL]"),
    ("--app-key", "app_key", "app key, sent as X-UA-Appkey [CRM_AIRSHIP_APP_KEY]"),
    ("--stream", "stream", "events or compliance [CRM_AIRSHIP_STREAM]"),
    ("--start", "start", "EARLIEST or LATEST when there is no checkpoint [CRM_AIRSHIP_START]"),
    ("--resume-offset", "resume_offset", "offset when there is no checkpoint"),
    ("--filters-file", "filters_file", "JSON file with the filters array [CRM_AIRSHIP_FILTERS]"),
    ("--subset-file", "subset_file", "JSON file with the subset object [CRM_AIRSHIP_SUBSET]"),
    ("--idle-timeout", "idle_timeout_s", "reconnect after this long without a byte (90s)"),
    ("--backoff-min", "backoff_min_s", "first reconnect delay (1s)"),
    ("--backoff-max", "backoff_max_s", "longest reconnect delay (60s)"),
    ("--not-found-retry", "not_found_retry_s", "delay after HTTP 404 (60s)"),
    ("--checkpoint-interval", "checkpoint_interval_s", "checkpoint every (1s)"),
    ("--stop-after-idle", "stop_after_idle_s", "exit after no event for this long (0: never)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options override CRM_AIRSHIP_* variables. Secrets are not options: CRM_AIRSHIP_TOKEN(_FILE)
    and CRM_AIRSHIP_MASTER_SECRET(_FILE) only, so they never show in a process list."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "environment (options above override them):\n" + "\n".join(
        f"  {var:<32} {doc}" for var, doc in AirshipSettings.describe()
    )
    for option, dest, help_text in _OPTIONS:
        metavar = "DURATION" if dest.endswith("_s") else option[2:].upper().replace("-", "_")
        parser.add_argument(
            option, dest=f"airship_{dest}", default=None, metavar=metavar, help=help_text
        )
    parser.add_argument(
        "--no-offset-updates",
        dest="airship_enable_offset_updates",
        action="store_const",
        const="false",
        default=None,
        help="ask for blank keep-alive lines instead of OFFSET_UPDATE events",
    )


def options_from_args(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        name.removeprefix("airship_"): value
        for name, value in vars(args).items()
        if name.startswith("airship_")
    }


async def _main(config: AirshipSettings, settings: Settings) -> RunStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    connector = AirshipConnector(config, settings)
    return await connector.run(stop)


def run(args: argparse.Namespace, settings: Settings) -> int:
    config = AirshipSettings.from_env(options=options_from_args(args))
    metrics.serve(settings.metrics_port)
    log.info(
        "streaming %s (%s) into %s",
        config.endpoint,
        config.checkpoint_key,
        settings.topic("raw.airship"),
        extra={"connector": CONNECTOR},
    )
    stats = asyncio.run(_main(config, settings))
    print(
        f"airship: {stats.records} records, {stats.bytes} bytes, {stats.reconnects} reconnects, "
        f"checkpoint {stats.checkpoint}",
        flush=True,
    )
    return 0
