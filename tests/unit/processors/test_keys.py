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
    for expired in keys.expiry_ranges(oldest):
        for key in RESERVED:
            assert key not in expired
            assert key not in keys.WINDOWS
            assert key not in keys.MARKS
            assert key.startswith(keys.RESERVED_PREFIX)
    windows, marks = keys.expiry_ranges(oldest)
    assert windows == keys.expiry_range(oldest)
    # ... while every window and mark that started before ``oldest`` is in it.
    if oldest:
        assert keys.window_key(oldest - 1, b"\xff" * 8) in windows
        assert keys.mark_key(oldest - 1, b"\xff" * keys.MARK_ID_BYTES) in marks
    assert keys.window_key(oldest, b"") not in windows
    assert keys.mark_key(oldest, b"\x00" * keys.MARK_ID_BYTES) not in marks


def test_marks_sort_by_start_in_their_own_range_apart_from_the_window_keys() -> None:
    digest = keys.id_digest(b"airship:evt-1")
    assert len(digest) == keys.MARK_ID_BYTES
    for start in (0, 999, 1_780_000_000_000, LATEST_START):
        key = keys.mark_key(start, digest)
        assert len(key) == keys.MARK_KEY_BYTES == 23
        assert key in keys.MARKS and key not in keys.WINDOWS and key not in keys.CAMPAIGNS
        assert keys.mark_start(key) == start
        # A stats window scan never meets a mark, an expiry of marks never a window key.
        assert keys.window_key(start, b"x") not in keys.MARKS
    assert keys.mark_key(999, b"\xff" * 16) < keys.mark_key(1000, b"\x00" * 16)


def test_a_mark_value_is_the_raw_offset_in_as_few_bytes_as_it_takes() -> None:
    assert keys.mark_value(0) == b"\x00"
    assert keys.mark_value(255) == b"\xff"
    assert keys.mark_value(256) == b"\x01\x00"
    assert keys.mark_value(10**9) == (10**9).to_bytes(4, "big")
    # Only the value of offset 0 starts with a zero byte.
    assert all(keys.mark_value(o)[:1] != b"\x00" for o in range(1, 70_000))


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
    # #, the start (6 bytes big-endian), blake2b-128 of the id
    assert keys.mark_key(1_764_000_000_000, keys.id_digest(b"id-1")) == (
        b"#\x01\x9a\xb6\x97\xe8\x00" + bytes.fromhex("53c507d05b826bcc0ef01e54799aca72")
    )
    assert keys.position_key("crm.raw.airship") == b"__crm/position/crm.raw.airship"
    assert keys.durable_key("crm.raw.airship") == b"__crm/durable/crm.raw.airship"
    assert keys.campaign_entry_key("A|b|c") == b"__crm/campaign/A|b|c"


def test_a_mark_of_the_earlier_layout_is_upgraded_to_the_same_mark_of_this_one() -> None:
    """Versions before issue 23 marked ``<13 digits>:<event id>`` = ``b"@<raw offset>"`` (and
    before that ``b"1"``). Upgraded, each is the key the current version looks up, with the value
    it compares to its own mark's."""
    start, event_id = 1_764_000_000_000, b"segment:app:m-1"
    old = keys.window_key(start, event_id)
    assert keys.upgrade_mark(old, b"@1234") == (
        keys.mark_key(start, keys.id_digest(event_id)),
        keys.mark_value(1234),
    )
    # A tombstone stays one, of the new key.
    assert keys.upgrade_mark(old, None) == (keys.mark_key(start, keys.id_digest(event_id)), None)
    # b"1" is the value of offset 49 today: upgraded, it equals no mark value.
    new_key, value = keys.upgrade_mark(old, b"1")
    assert value == b"\x001" and value != keys.mark_value(49)
    # Records already in the current layout and reserved keys are left as they are.
    for key, kept in [
        (new_key, keys.mark_value(7)),
        (keys.position_key("crm.raw.segment"), b"{}"),
        (FAUST_OFFSET_KEY, b"12"),
        (b"1764000000000-not-a-window-key", b"@1"),
    ]:
        assert keys.upgrade_mark(key, kept) == (key, kept)
