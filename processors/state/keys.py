"""Every key the worker writes to its RocksDB tables, and every range it scans or deletes.

The layout is on disk and in the changelog topics: a restarted worker reads what an earlier
version wrote, so nothing here may change without a migration.

* **Window keys** ``<window start, 13-digit epoch ms>:<key>`` (:func:`window_key`): the dedupe
  marks (key: the canonical event id) and the stats windows (key: the campaign key). Windows are
  contiguous in key order, so a window range is one scan and an expiry one range delete.
* **Dedupe marks** ``#<window start, 6-byte big-endian epoch ms><16-byte blake2b of the event
  id>`` (:func:`mark_key`, 23 bytes, since issue 23): fixed width whatever the id, and sorted by
  window start like the window keys, in their own range :data:`MARKS`. Earlier versions wrote
  marks as window keys (``<13 digits>:<event id>``, value ``b"@<raw offset>"``);
  :func:`upgrade_mark` rewrites such a mark into this layout, and the engine applies it to every
  dedupe record it restores from the changelog and, once, to a local store an earlier version
  wrote (:mod:`processors.faust_engine`), so a mark of the old layout is found under the new key.
* **Reserved keys** ``__crm/...``: a raw partition's saved position (:func:`position_key`) and
  the same once durable (:func:`durable_key`) in the dedupe table; a campaign's entry
  (:func:`campaign_entry_key`) in a stats table. Faust keeps its own persisted changelog offset
  under ``__faust...``.

What keeps them apart: every window key starts with a digit, every mark with ``#`` (0x23), and
``_`` (0x5F) sorts after every digit, ``#`` and ``:``. So neither :data:`WINDOWS` (``[b"0",
b":")``, where :func:`expiry_range` and the window scans stay) nor :data:`MARKS` (``[b"#",
b"$")``, where :func:`mark_expiry_range` stays) ever holds a reserved key, and neither holds a key
of the other. ``tests/unit/processors/test_keys.py`` states it.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import NamedTuple


class KeyRange(NamedTuple):
    """Keys ``lower <= key < upper``."""

    lower: bytes
    upper: bytes

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.lower <= key < self.upper


START_DIGITS = 13
"""A window key's start: epoch milliseconds, 13 digits (up to the year 2286)."""

WINDOWS = KeyRange(b"0", b":")
"""Every window key: 13 digits, then ``:`` (``b":"`` sorts right after ``b"9"``)."""

RESERVED_PREFIX = b"__"
"""The prefix of every key that is not a window key (ours ``__crm/``, Faust's ``__faust``)."""

POSITION_KEY_PREFIX = b"__crm/position/"
"""A raw partition's saved position, in its dedupe table partition next to the marks."""

DURABLE_KEY_PREFIX = b"__crm/durable/"
"""The same, once its changelog records are acknowledged: local only. A restarted worker resumes
from it, not from the local position, which can be ahead of the changelog (the killed run's last
changelog records may never have landed): processing the records in between again re-sends their
marks and positions, so the changelog has no hole for a later restore."""

CAMPAIGN_KEY_PREFIX = b"__crm/campaign/"
"""A stats table keeps, next to a campaign's windows, one entry per campaign that lost a window
to expiry: the start of the latest of its windows that expired (:class:`processors.state.codecs.
CampaignEntry`). It is written at the campaign's first expiry, not when the campaign is first
seen (earlier versions wrote one then, ``expired_through`` -1: still read the same)."""


MARK_PREFIX = b"#"
"""The first byte of every dedupe mark key (0x23: below the digits, ``:`` and ``_``)."""

MARKS = KeyRange(MARK_PREFIX, b"$")
"""Every dedupe mark key (:func:`mark_key`)."""

MARK_START_BYTES = 6
"""A mark key's window start: epoch milliseconds, 6 bytes big-endian (up to the year 10889)."""

MARK_ID_BYTES = 16
"""A mark key's event id: its 16-byte blake2b digest. At 350 million ids in a window, the
chance that two share a digest is below 1e-21."""

MARK_KEY_BYTES = len(MARK_PREFIX) + MARK_START_BYTES + MARK_ID_BYTES


def id_digest(event_id: bytes) -> bytes:
    """What a mark key holds of an event id."""
    return blake2b(event_id, digest_size=MARK_ID_BYTES).digest()


def mark_key(start_ms: int, digest: bytes) -> bytes:
    """A dedupe mark's key: ``#``, the window start (6 bytes, big-endian: sorts by start), the
    id's :func:`id_digest`."""
    return MARK_PREFIX + start_ms.to_bytes(MARK_START_BYTES, "big") + digest


def mark_start(key: bytes) -> int:
    """The window start of a :func:`mark_key`."""
    return int.from_bytes(key[len(MARK_PREFIX) : len(MARK_PREFIX) + MARK_START_BYTES], "big")


def mark_expiry_range(oldest_ms: int) -> KeyRange:
    """The mark keys of every window starting before ``oldest_ms``."""
    return KeyRange(MARKS.lower, MARK_PREFIX + oldest_ms.to_bytes(MARK_START_BYTES, "big"))


def expiry_ranges(oldest_ms: int) -> tuple[KeyRange, KeyRange]:
    """What an expiry deletes: the window keys (:func:`expiry_range`) and the marks
    (:func:`mark_expiry_range`) of every window starting before ``oldest_ms``, marks of the
    earlier layout included (they are window keys)."""
    return expiry_range(oldest_ms), mark_expiry_range(oldest_ms)


def mark_value(raw_offset: int) -> bytes:
    """A dedupe mark's value: the raw offset of the record that wrote it, big-endian in as few
    bytes as it takes (``b"\\x00"`` for 0). Never starts with a zero byte unless it is that one
    byte: :func:`upgrade_mark` keeps what it cannot read of an old value behind one, so an old
    ``b"1"`` mark (before raw offsets were kept) equals no mark value."""
    return raw_offset.to_bytes(max(1, (raw_offset.bit_length() + 7) // 8), "big")


def upgrade_mark(key: bytes, value: bytes | None) -> tuple[bytes, bytes | None]:
    """A dedupe table record in the current layout: a mark of the earlier layout
    (``<13 digits>:<event id>``, ``b"@<raw offset>"``) becomes its :func:`mark_key` and
    :func:`mark_value`; any other record (a mark already in this layout, a reserved key) is
    returned as it is. A tombstone (None) stays a tombstone, of the new key."""
    digits = key[:START_DIGITS]
    if key not in WINDOWS or key[START_DIGITS : START_DIGITS + 1] != b":" or not digits.isdigit():
        return key, value
    event_id, start = key[START_DIGITS + 1 :], int(digits)
    if value is not None:
        if value[:1] == b"@" and value[1:].isdigit():
            value = mark_value(int(value[1:]))
        else:
            value = b"\x00" + value
    return mark_key(start, id_digest(event_id)), value


def _prefix_range(prefix: bytes) -> KeyRange:
    return KeyRange(prefix, prefix[:-1] + bytes([prefix[-1] + 1]))


CAMPAIGNS = _prefix_range(CAMPAIGN_KEY_PREFIX)
"""Every campaign entry of a stats table."""


def window_key(start_ms: int, key: bytes) -> bytes:
    """A table key: ``<window start, 13-digit epoch ms>:<key>``, so windows sort together."""
    return b"%013d:%s" % (start_ms, key)


def parse_window_key(key: bytes) -> tuple[str, int]:
    """(the key after the start, the window start) of a window key."""
    return key[START_DIGITS + 1 :].decode(), int(key[:START_DIGITS])


def window_range(from_ms: int, to_ms: int) -> KeyRange:
    """The window keys of windows starting in ``[from_ms, to_ms)``."""
    return KeyRange(window_key(from_ms, b""), window_key(to_ms, b""))


def expiry_range(oldest_ms: int) -> KeyRange:
    """The window keys of every window starting before ``oldest_ms``: what an expiry deletes.
    Reserved keys sort after every window key, so they are never in it."""
    return KeyRange(WINDOWS.lower, window_key(oldest_ms, b""))


def position_key(raw_topic: str) -> bytes:
    return POSITION_KEY_PREFIX + raw_topic.encode()


def durable_key(raw_topic: str) -> bytes:
    return DURABLE_KEY_PREFIX + raw_topic.encode()


def campaign_entry_key(campaign: str) -> bytes:
    return CAMPAIGN_KEY_PREFIX + campaign.encode()


def campaign_of_entry(key: bytes) -> str:
    """The campaign of a :func:`campaign_entry_key`."""
    return key[len(CAMPAIGN_KEY_PREFIX) :].decode()


# --- the attribution table (processors/attribution_path.py) --------------------------------

USER_KEY_PREFIX = b"__crm/user/"
"""A user's attribution state (touches held, conversions seen, credits): reserved, so never in
an expiry range; idle users are deleted one by one."""

USERS = _prefix_range(USER_KEY_PREFIX)
"""Every user state of an attribution table."""


def user_key(user_id: str) -> bytes:
    return USER_KEY_PREFIX + user_id.encode()


def tally_key(hour_ms: int, campaign: str, name: str) -> bytes:
    """The attributed conversions of a campaign and conversion name in one hour of conversion
    time: a window key (``<hour start>:<campaign key>\\x1f<name>``), so an hour range is one scan
    and the retention one range delete."""
    return window_key(hour_ms, f"{campaign}\x1f{name}".encode())


def parse_tally_key(key: bytes) -> tuple[int, str, str]:
    """(hour start, campaign key, name) of a :func:`tally_key`."""
    rest, start = parse_window_key(key)
    campaign, _, name = rest.partition("\x1f")
    return start, campaign, name
