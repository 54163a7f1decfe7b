"""Pure builders of the worker's output records: canonical events, dead letters, stats.

Kept apart from the Faust agents so that what the worker writes can be tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from crmstream.topics import H_APP_ID, H_INGESTED_AT, H_SOURCE
from processors.normalize.model import CanonicalEvent, Channel, EventType

SCHEMA_VERSION = 1  # CanonicalEvent and CampaignStats
DEAD_LETTER_VERSION = 2  # 2: raw_size (the raw value was cut to fit)
# 9999-12-31T23:59:59.999Z: the latest occurred_at a normalizer lets through, so that a window's
# end (start + size) still fits an Avro long.
MAX_TIMESTAMP_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class RawPosition:
    """Where a raw record came from: its Kafka position and the connector's headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: Mapping[str, bytes]

    @property
    def kafka_position(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def source(self) -> str | None:
        raw = self.headers.get(H_SOURCE)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def app_id(self) -> str | None:
        raw = self.headers.get(H_APP_ID)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def ingested_at(self) -> int:
        """The connector's ingest time, else the raw record's Kafka timestamp."""
        raw = self.headers.get(H_INGESTED_AT)
        if raw:
            try:
                return int(raw)
            except ValueError:
                pass
        return self.timestamp_ms


def headers_dict(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> dict:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: v for k, v in items if v is not None}


def canonical_record(event: CanonicalEvent, pos: RawPosition, processed_at: int) -> dict[str, Any]:
    record = event.to_record()
    record["ingested_at"] = pos.ingested_at
    record["processed_at"] = processed_at
    record["source_position"] = pos.source or pos.kafka_position
    record["raw_topic"] = pos.topic
    record["raw_partition"] = pos.partition
    record["raw_offset"] = pos.offset
    record["schema_version"] = SCHEMA_VERSION
    return record


def dead_letter_record(
    *,
    raw: bytes,
    raw_size: int | None = None,
    raw_key: bytes | None,
    vendor: str | None,
    reason: str,
    detail: str,
    pos: RawPosition,
    now_ms: int,
) -> dict[str, Any]:
    return {
        "raw": raw,
        "raw_size": raw_size,
        "raw_key": raw_key,
        "vendor": vendor,
        "reason": reason,
        "detail": detail,
        "source_topic": pos.topic,
        "source_partition": pos.partition,
        "source_offset": pos.offset,
        "source_position": pos.source,
        "headers": {k: v.decode("utf-8", "replace") for k, v in pos.headers.items()},
        "dead_lettered_at": now_ms,
        "schema_version": DEAD_LETTER_VERSION,
    }


# --- campaign stats -------------------------------------------------------------------------


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


def campaign_key(event: CanonicalEvent) -> str:
    """Stats are per (vendor, app_id, campaign_id); a missing part is an empty string.

    ``|`` separates the parts (and the window and start in the upsert key), so a ``|`` inside an
    id is written ``%7C`` (and ``%`` as ``%25``): two campaigns never share a key.
    """
    return "|".join(
        (event.vendor.value, _escape(event.app_id or ""), _escape(event.campaign_id or ""))
    )


Increment = list[Any]
"""One canonical event as the stats agent counts it: ``[raw offset, occurred_at ms, event_type,
channel]``. The raw offset (with the raw partition the increment is filed under) makes a replayed
increment recognisable: see :meth:`WindowCounts.apply`."""


def stats_increment(event: CanonicalEvent, raw_offset: int) -> Increment:
    return [raw_offset, event.occurred_at, event.event_type.value, event.channel.value]


def raw_source(topic: str, partition: int) -> str:
    """The raw partition an increment came from, as stats windows remember it."""
    return f"{topic}/{partition}"


STATS_UPDATES_VERSION = 2


def stats_updates_value(by_campaign: Mapping[str, Mapping[str, list[Increment]]]) -> bytes:
    """One ``stats-updates`` record: the increments of every campaign bound for one partition
    from one worker batch, by the raw partition they came from, in raw-offset order:
    ``{"v": 2, "c": {campaign key: {"<raw topic>/<partition>": [increment, ...]}}}``."""
    return orjson.dumps({"v": STATS_UPDATES_VERSION, "c": by_campaign})


def parse_stats_updates(
    key: bytes | None, value: bytes
) -> list[tuple[str, str | None, list[Increment]]]:
    """``[(campaign key, raw source or None, [increment, ...]), ...]``.

    Also reads the two earlier formats (one campaign per record keyed by it, with a list of
    ``[occurred_at, event_type, channel]``; then a dict of campaign -> that list), whose
    increments carry no raw position and are counted as they come. Raises ``ValueError`` on a
    record that is none of these.
    """
    data = orjson.loads(value)
    if isinstance(data, list):
        return [((key or b"").decode(), None, [[None, *_old(i)] for i in data])]
    if not isinstance(data, dict):
        raise ValueError(f"a stats-updates value is a JSON object, not {type(data).__name__}")
    if data.get("v") == STATS_UPDATES_VERSION:
        out: list[tuple[str, str | None, list[Increment]]] = []
        for campaign, by_source in data["c"].items():
            for source, increments in by_source.items():
                for inc in increments:
                    _check(inc[1:], inc[0])
                out.append((campaign, source, increments))
        return out
    # Campaign keys always hold '|' (campaign_key), so "v" above cannot be one.
    return [(campaign, None, [[None, *_old(i)] for i in incs]) for campaign, incs in data.items()]


def _old(increment: Any) -> list[Any]:
    _check(increment, None)
    return list(increment)


def _check(fields: Any, raw_offset: Any) -> None:
    occurred, event_type, channel = fields
    if (
        type(occurred) is not int
        or not 0 <= occurred <= MAX_TIMESTAMP_MS
        or not isinstance(event_type, str)
        or not isinstance(channel, str)
    ):
        raise ValueError(f"not an increment: {fields!r}")
    if raw_offset is not None and type(raw_offset) is not int:
        raise ValueError(f"not a raw offset: {raw_offset!r}")


def stats_partition(campaign_key: bytes, partitions: int) -> int:
    """The ``stats-updates`` (and stats table) partition of a campaign: the Java client's
    murmur2 partitioner, so every worker sends a campaign's increments to the same partition."""
    # Imported here: the benchmark's Quix peer imports this module in an environment without
    # aiokafka.
    from aiokafka.partitioner import murmur2

    return (murmur2(campaign_key) & 0x7FFFFFFF) % partitions


def window_start(occurred_at_ms: int, size_s: int) -> int:
    size_ms = size_s * 1000
    return occurred_at_ms - occurred_at_ms % size_ms


def window_key(start_ms: int, key: bytes) -> bytes:
    """A table key: ``<window start, 13-digit epoch ms>:<key>``, so windows sort together."""
    return b"%013d:%s" % (start_ms, key)


def stats_upsert_key(campaign: str, window_label: str, start_ms: int) -> bytes:
    return f"{campaign}|{window_label}|{start_ms}".encode()


@dataclass(slots=True)
class WindowCounts:
    """Counts of one campaign in one window, and the raw records they include.

    ``applied`` maps each raw partition (``raw_source``) to the highest raw offset counted here.
    A campaign's increments from one raw partition reach its stats partition in raw-offset order
    (one producer per raw partition at a time, idempotent, so ordered and without gaps; a
    restart re-sends from an earlier position, after what it sent before). So an increment at or
    below that offset was counted already: a replay after a crash, of the worker or of the
    stats agent itself. Stored with the counts in one value, it is saved (locally and in the
    changelog) atomically with them.
    """

    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, value: Any) -> WindowCounts:
        if not value:
            return cls()
        return cls(int(value["n"]), dict(value["t"]), dict(value["c"]), dict(value.get("w", {})))

    def apply(
        self, source: str | None, raw_offset: int | None, event_type: str, channel: str
    ) -> bool:
        """Count one event unless this window has counted its raw record already."""
        if source is not None and raw_offset is not None:
            if raw_offset <= self.applied.get(source, -1):
                return False
            self.applied[source] = raw_offset
        self.add(event_type, channel)
        return True

    def add(self, event_type: str, channel: str) -> None:
        self.total += 1
        self.by_type[event_type] = self.by_type.get(event_type, 0) + 1
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1

    def dump(self) -> dict[str, Any]:
        return {"n": self.total, "t": self.by_type, "c": self.by_channel, "w": self.applied}


def stats_record(
    campaign: str,
    window_label: str,
    start_ms: int,
    size_s: int,
    counts: WindowCounts,
    now_ms: int,
) -> dict[str, Any]:
    vendor, app_id, campaign_id = (_unescape(part) for part in campaign.split("|"))
    return {
        "vendor": vendor,
        "app_id": app_id or None,
        "campaign_id": campaign_id or None,
        "window": window_label,
        "window_start": start_ms,
        "window_end": start_ms + size_s * 1000,
        "total": counts.total,
        "event_type_counts": dict(counts.by_type or {}),
        "channel_counts": dict(counts.by_channel or {}),
        "updated_at": now_ms,
        "schema_version": SCHEMA_VERSION,
    }


KNOWN_EVENT_TYPES = frozenset(e.value for e in EventType)
KNOWN_CHANNELS = frozenset(c.value for c in Channel)
