"""The RocksDB key layout (processors/state/keys.py): the ordering the expiry and the scans rely
on, stated as tests rather than comments."""

from __future__ import annotations

import pytest

from processors.state import keys

# Faust keeps each table partition's persisted changelog offset in the same database.
FAUST_OFFSET_KEY = b"__faust\x00offset__"

RESERVED = [
    keys.position_key("crm.raw.segment"),
    keys.durable_key("crm.raw.segment"),
    keys.campaign_entry_key("SEGMENT|app|c-1"),
    keys.campaign_entry_key(""),
    FAUST_OFFSET_KEY,
]

LATEST_START = 10**keys.START_DIGITS - 1  # the largest 13-digit window start


@pytest.mark.parametrize("oldest", [0, 1, 1_780_000_000_000, LATEST_START])
def test_no_reserved_key_falls_inside_an_expiry_range(oldest: int) -> None:
    expired = keys.expiry_range(oldest)
    for key in RESERVED:
        assert key not in expired
        assert key not in keys.WINDOWS
        assert key.startswith(keys.RESERVED_PREFIX)
    # ... while every window that started before ``oldest`` is in it.
    if oldest:
        assert keys.window_key(oldest - 1, b"\xff" * 8) in expired
    assert keys.window_key(oldest, b"") not in expired


def test_window_keys_sort_by_start_and_stay_in_the_windows_range() -> None:
    for start in (0, 999, 1_780_000_000_000, LATEST_START):
        key = keys.window_key(start, b"SEGMENT|app|c-1")
        assert key in keys.WINDOWS
        assert keys.parse_window_key(key) == ("SEGMENT|app|c-1", start)
    assert keys.window_key(999, b"z") < keys.window_key(1000, b"a")
    in_range = keys.window_range(1000, 3000)
    assert keys.window_key(1000, b"a") in in_range
    assert keys.window_key(2999, b"\xff") in in_range
    assert keys.window_key(3000, b"") not in in_range


def test_the_campaign_range_holds_exactly_the_campaign_entries() -> None:
    entry = keys.campaign_entry_key("SEGMENT|a|b")
    assert entry in keys.CAMPAIGNS
    assert keys.campaign_of_entry(entry) == "SEGMENT|a|b"
    for key in (keys.position_key("t"), keys.durable_key("t"), FAUST_OFFSET_KEY):
        assert key not in keys.CAMPAIGNS
    assert keys.window_key(1, b"x") not in keys.CAMPAIGNS


def test_the_layout_on_disk_is_what_earlier_versions_wrote() -> None:
    # A restarted worker reads state written by earlier versions: these bytes never change.
    assert keys.window_key(1_764_000_000_000, b"id-1") == b"1764000000000:id-1"
    assert keys.position_key("crm.raw.airship") == b"__crm/position/crm.raw.airship"
    assert keys.durable_key("crm.raw.airship") == b"__crm/durable/crm.raw.airship"
    assert keys.campaign_entry_key("A|b|c") == b"__crm/campaign/A|b|c"
