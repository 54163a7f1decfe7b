"""A campaign's key and its stats partition, declared once for the worker's stats and the query
API (which names campaigns by these keys).

Stats are per (vendor, app_id, campaign_id); a missing part is an empty string. ``|`` separates
the parts (and the window and start in the upsert key), so a ``|`` inside an id is written
``%7C`` (and ``%`` as ``%25``): two campaigns never share a key.
"""

from __future__ import annotations

import struct

SEPARATOR = "|"


def escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


def campaign_key(vendor: str, app_id: str, campaign_id: str) -> str:
    """``VENDOR|app_id|campaign_id``, escaped: the stats tables' key of a campaign."""
    return SEPARATOR.join((vendor, escape(app_id), escape(campaign_id)))


def split_campaign_key(key: str) -> tuple[str, str, str]:
    """The (vendor, app_id, campaign_id) of a :func:`campaign_key`; ``ValueError`` for a string
    no :func:`campaign_key` returns."""
    parts = key.split(SEPARATOR)
    if len(parts) != 3:
        raise ValueError("a campaign key has three parts")
    vendor, app_id, campaign_id = parts[0], unescape(parts[1]), unescape(parts[2])
    if campaign_key(vendor, app_id, campaign_id) != key:
        # '%' not followed by 25/7C: no campaign_key() writes that, so it names none.
        raise ValueError("not an escaped campaign key")
    return vendor, app_id, campaign_id


def murmur2(data: bytes) -> int:
    """The Java Kafka client's murmur2 hash (its default partitioner's), as an unsigned 32-bit
    int (as aiokafka's ``murmur2``, which it replaces here: the worker's parts do not import the
    engine's client). The 4-byte words are read with one ``struct`` call, not byte by byte (a
    raw event at 50,000 campaigns meets a campaign its partition cache dropped: issue 21)."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for k in _WORDS[end >> 2].unpack_from(data) if end < _MAX_WORDS_AT_ONCE else _words(data, end):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


_MAX_WORDS_AT_ONCE = 1024
"""Keys shorter than this many bytes are read with one of :data:`_WORDS`."""

_WORDS = [struct.Struct(f"<{n}I") for n in range(_MAX_WORDS_AT_ONCE // 4)]
"""Unpackers of n little-endian 32-bit words, by n."""


def _words(data: bytes, end: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{end >> 2}I", data)


def stats_partition(campaign_key: bytes, partitions: int) -> int:
    """The ``stats-updates`` (and stats table) partition of a campaign: the Java client's
    murmur2 partitioner, so every worker sends a campaign's increments to the same partition."""
    return (murmur2(campaign_key) & 0x7FFFFFFF) % partitions
