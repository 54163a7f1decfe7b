"""The local store: changed files, listing after a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.objectstore.errors import (
    ObjectChangedError,
)
from connectors.objectstore.reader import ObjectReader
from connectors.objectstore.stores import LocalStore, ObjectInfo


def test_local_store_reports_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_bytes(b'{"a": 1}\n')
    store = LocalStore(tmp_path)
    (obj,) = store.list_objects("")
    (tmp_path / "f.json").write_bytes(b'{"a": 1}\n{"a": 2}\n')
    with pytest.raises(ObjectChangedError):
        list(ObjectReader(store, obj))
    stale = ObjectInfo(key="gone.json", etag="x", size=3, last_modified=0.0)
    with pytest.raises(ObjectChangedError):
        list(ObjectReader(store, stale))


def test_local_store_lists_after_start_key(tmp_path: Path) -> None:
    for name in ("dt=2024-03-01/a", "dt=2024-03-03/b", "dt=2024-03-04/c", "x/d"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"{}")
    store = LocalStore(tmp_path)
    assert [o.key for o in store.list_objects("dt=", "dt=2024-03-03")] == [
        "dt=2024-03-03/b",
        "dt=2024-03-04/c",
    ]
    assert store.list_dirs("") == ["dt=2024-03-01/", "dt=2024-03-03/", "dt=2024-03-04/", "x/"]
