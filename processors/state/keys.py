"""Every key the worker writes to its RocksDB tables, and every range it scans or deletes.

The layout is on disk and in the changelog topics: a restarted worker reads what an earlier
version wrote, so nothing here may change without a migration.

* **Window keys** ``<window start, 13-digit epoch ms>:<key>`` (:func:`window_key`): the dedupe
  marks (key: the canonical event id) and the stats windows (key: the campaign key). Windows are
  contiguous in key order, so a window range is one scan and an expiry one range delete.
* **Reserved keys** ``__crm/...``: a raw partition's saved position (:func:`position_key`) and
  the same once durable (:func:`durable_key`) in the dedupe table; a campaign's entry
  (:func:`campaign_entry_key`) in a stats table. Faust keeps its own persisted changelog offset
  under ``__faust...``.

What keeps them apart: every window key starts with a digit, and ``_`` (0x5F) sorts after every
digit and after ``:``. So :data:`WINDOWS` (``[b"0", b":")``, where :func:`expiry_range` and the
window scans stay) never holds a reserved key. ``tests/unit/processors/test_keys.py`` states it.
"""

from __future__ import annotations

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
"""A stats table keeps, next to a campaign's windows, one entry per campaign: that it was seen,
and the start of the latest of its windows that expired (:class:`processors.state.codecs.
CampaignEntry`)."""


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
