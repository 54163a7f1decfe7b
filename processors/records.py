"""Pure builders of the worker's output records: canonical events, dead letters, stats.

Kept apart from the Faust agents so that what the worker writes can be tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from connectors.base import H_APP_ID, H_INGESTED_AT, H_SOURCE
from processors.normalize.model import CanonicalEvent, Channel, EventType

SCHEMA_VERSION = 1


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
    raw_key: bytes | None,
    vendor: str | None,
    reason: str,
    detail: str,
    pos: RawPosition,
    now_ms: int,
) -> dict[str, Any]:
    return {
        "raw": raw,
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
        "schema_version": SCHEMA_VERSION,
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


def stats_increment(event: CanonicalEvent) -> tuple[int, str, str]:
    """What the stats agent needs of one canonical event: (occurred_at, event type, channel)."""
    return (event.occurred_at, event.event_type.value, event.channel.value)


def stats_updates_value(by_campaign: Mapping[str, list[tuple[int, str, str]]]) -> bytes:
    """One ``stats-updates`` record: the increments of every campaign bound for one partition
    from one worker batch, ``{campaign key: [[occurred_at ms, event_type, channel], ...]}``."""
    return orjson.dumps(by_campaign)


def parse_stats_updates(key: bytes | None, value: bytes) -> list[tuple[str, list[Any]]]:
    """``[(campaign key, [[occurred_at ms, event_type, channel], ...]), ...]``.

    Also reads the earlier format (one campaign per record, keyed by it, a list of increments),
    so that records written before an upgrade are still counted.
    """
    data = orjson.loads(value)
    if isinstance(data, list):
        return [((key or b"").decode(), data)]
    return list(data.items())


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


def stats_upsert_key(campaign: str, window_label: str, start_ms: int) -> bytes:
    return f"{campaign}|{window_label}|{start_ms}".encode()


@dataclass(slots=True)
class WindowCounts:
    """Counts of one campaign in one window. Stored in the stats table as JSON."""

    total: int = 0
    by_type: dict[str, int] | None = None
    by_channel: dict[str, int] | None = None

    @classmethod
    def load(cls, value: Any) -> WindowCounts:
        if not value:
            return cls(0, {}, {})
        return cls(int(value["n"]), dict(value["t"]), dict(value["c"]))

    def add(self, event_type: str, channel: str) -> None:
        assert self.by_type is not None and self.by_channel is not None
        self.total += 1
        self.by_type[event_type] = self.by_type.get(event_type, 0) + 1
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1

    def merge(self, other: WindowCounts) -> None:
        assert self.by_type is not None and self.by_channel is not None
        self.total += other.total
        for event_type, n in (other.by_type or {}).items():
            self.by_type[event_type] = self.by_type.get(event_type, 0) + n
        for channel, n in (other.by_channel or {}).items():
            self.by_channel[channel] = self.by_channel.get(channel, 0) + n

    def dump(self) -> dict[str, Any]:
        return {"n": self.total, "t": self.by_type or {}, "c": self.by_channel or {}}


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
