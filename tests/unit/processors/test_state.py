"""WindowedTable on a real RocksDB (rocksdict), over a table store reduced to what it uses
(:class:`processors.engine.TableStore`; Faust keeps its persisted offset under ``__faust``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rocksdict

from processors.state.keys import window_key
from processors.state.table import WindowedTable

OFFSET_KEY = b"__faust\x00offset__"


class Store:
    """A :class:`processors.engine.TableStore` on real databases, keeping its persisted offset
    where Faust does."""

    changelog_topic = "app-dedupe-changelog"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dbs: dict[int, rocksdict.Rdict] = {}
        self.persisted: dict[Any, int] = {}

    def db(self, partition: int) -> rocksdict.Rdict:
        if partition not in self._dbs:
            self._dbs[partition] = rocksdict.Rdict(
                str(self.root / f"p{partition}"), options=rocksdict.Options(raw_mode=True)
            )
        return self._dbs[partition]

    def open_partitions(self) -> dict[int, rocksdict.Rdict]:
        return dict(self._dbs)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.persisted[partition] = offset
        self.db(partition).put(OFFSET_KEY, str(offset).encode())


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes, bytes]] = []

    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        self.sent.append((topic, partition, key, value))


@pytest.fixture
def table(tmp_path: Path) -> WindowedTable:
    return WindowedTable(Store(tmp_path), size_ms=1000, keep_ms=3000)


def test_window_key_sorts_by_window_start() -> None:
    assert window_key(999, b"z") < window_key(1000, b"a") < window_key(10_000, b"a")
    assert window_key(1_764_000_000_000, b"id-1") == b"1764000000000:id-1"


def test_put_many_writes_rocksdb_and_the_changelog(table: WindowedTable) -> None:
    sink = Sink()
    items = [(window_key(2000, b"a"), b"1"), (window_key(2000, b"b"), b"1")]
    assert table.put_many(1, items, sink) == 2
    assert sink.sent == [("app-dedupe-changelog", 1, k, v) for k, v in items]
    keys = [window_key(2000, b"a"), window_key(2000, b"c"), window_key(2000, b"b")]
    assert table.get_many(1, keys) == [b"1", None, b"1"]
    # Partitions are separate databases.
    assert table.get_many(0, keys) == [None, None, None]
    assert table.get_many(1, []) == []


def test_window_start(table: WindowedTable) -> None:
    assert table.window_start(0) == 0
    assert table.window_start(1999) == 1000
    assert table.window_start(2000) == 2000


def test_expire_deletes_old_windows_only(table: WindowedTable) -> None:
    sink = Sink()
    for start in (1000, 2000, 3000, 4000, 5000):
        table.put_many(0, [(window_key(start, b"x"), b"1")], sink)
    table.set_persisted_offsets({("app-dedupe-changelog", 0): 41, ("other-topic", 0): 7})
    # now 6500, keep 3000 ms: windows starting before 3000 go.
    assert table.expire(6500) == 1
    left = table.get_many(0, [window_key(s, b"x") for s in (1000, 2000, 3000, 4000, 5000)])
    assert left == [None, None, b"1", b"1", b"1"]
    # Faust's persisted offset survives, and only the table's own changelog offsets are set.
    db = table.store.db(0)
    assert db[OFFSET_KEY] == b"41"
    assert list(table.store.persisted.values()) == [41]  # type: ignore[attr-defined]


def test_window_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        WindowedTable(Store(tmp_path), size_ms=0, keep_ms=1)


def test_holds_window_of_finds_a_key_at_any_start_and_nothing_else(table: WindowedTable) -> None:
    """The query API's "known campaign" without an entry: a window of the key at any start."""
    sink = Sink()
    items = [
        (window_key(1000, b"a|10"), b"1"),
        (window_key(1000, b"b"), b"1"),
        (window_key(5000, b"a|1x"), b"1"),
        (window_key(9000, b"c"), b"1"),
        (window_key(9000, b"a|1"), b"1"),
        (b"__crm/campaign/z", b"{}"),  # reserved keys sort after every window: never a window
    ]
    table.put_many(0, items, sink)
    for key in (b"a|10", b"b", b"a|1x", b"c", b"a|1"):
        assert table.holds_window_of(0, key), key
    for key in (b"a", b"a|", b"a|100", b"d", b"", b"z", b"__crm/campaign/z"):
        assert not table.holds_window_of(0, key), key
    assert not table.holds_window_of(1, b"a|1")  # another partition: empty


def test_holds_any_says_whether_a_range_has_a_key(table: WindowedTable) -> None:
    from processors.state.keys import CAMPAIGNS, WINDOWS

    assert not table.holds_any(0, CAMPAIGNS) and not table.holds_any(0, WINDOWS)
    table.put_many(0, [(window_key(1000, b"a"), b"1"), (b"__crm/position/x", b"{}")], Sink())
    assert table.holds_any(0, WINDOWS)
    assert not table.holds_any(0, CAMPAIGNS)  # a reserved key, not a campaign entry
    table.put_many(0, [(b"__crm/campaign/a", b"{}")], Sink())
    assert table.holds_any(0, CAMPAIGNS) and not table.holds_any(1, CAMPAIGNS)
