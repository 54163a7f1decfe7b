"""The values of the reserved keys (:mod:`processors.state.keys`): a raw partition's saved
position and a campaign's entry. Like the keys they are on disk and in the changelogs, so their
bytes never change without a migration. (The windows' own values are
:func:`processors.records.window_value`; a dedupe mark's is :func:`processors.plan.mark_value`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from processors.positions import TopicPartition


@dataclass(frozen=True, slots=True)
class SavedPosition:
    """A raw partition's saved position: every record below ``next`` is processed, its outputs
    acknowledged and its dedupe marks written. ``floors``: per output partition, an offset after
    which every output of a record at or above ``next`` lands (the newest output offsets
    acknowledged when it was saved), where a read-back after a crash starts."""

    next: int
    floors: dict[TopicPartition, int]

    def encode(self, floors_json: bytes | None = None) -> bytes:
        """``floors_json``: :func:`floors_json` of ``floors``, when the caller has it already
        (every batch saves the same floors)."""
        if floors_json is None:
            floors_json = encode_floors(self.floors)
        return b'{"next":%d,"floors":%s}' % (self.next, floors_json)

    @classmethod
    def decode(cls, value: bytes) -> SavedPosition:
        data = orjson.loads(value)
        floors = {}
        for name, offset in data["floors"].items():
            topic, partition = name.rsplit("/", 1)
            floors[TopicPartition(topic, int(partition))] = int(offset)
        return cls(int(data["next"]), floors)


def encode_floors(floors: dict[TopicPartition, int]) -> bytes:
    return orjson.dumps({f"{tp.topic}/{tp.partition}": offset for tp, offset in floors.items()})


@dataclass(slots=True)
class CampaignEntry:
    """A campaign's entry, written at its first expiry (earlier versions wrote one, -1, when the
    campaign was first seen; read the same as none). ``expired_through``: the latest start of
    the campaign's expired windows (-1: none). A window not held whose start is at or before it
    expired: an event for it is refused, so that its last upsert (the complete count) is never
    replaced by a partial one. ``written_ms``: when the entry was last written (it is written
    again before its changelog record could be deleted by the changelog's retention)."""

    expired_through: int = -1
    written_ms: int = 0

    def encode(self) -> bytes:
        return b'{"x":%d,"at":%d}' % (self.expired_through, self.written_ms)

    @classmethod
    def decode(cls, value: bytes) -> CampaignEntry:
        data = orjson.loads(value)
        return cls(int(data["x"]), int(data["at"]))
