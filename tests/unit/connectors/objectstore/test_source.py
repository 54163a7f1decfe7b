"""Listing passes without Kafka: a recording publisher and in-memory checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from connectors.feeds import FLARELANE, LEANPLUM
from connectors.objectstore.settings import ObjectStoreSettings
from connectors.objectstore.stores import LocalStore

# --- listing passes (no Kafka: a recording publisher and in-memory checkpoints) --------------


class _Publisher:
    topic = "raw.test"

    def __init__(self) -> None:
        self.records: list[tuple[Any, bytes, str]] = []

    def publish(self, key: Any, value: bytes, *, source: str, fmt: str, **_: Any) -> None:
        self.records.append((key, value, source))

    def flush(self, timeout: float = 60.0) -> None:
        pass


class _Checkpoints:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        return dict(self.values)

    def commit_many(self, values: dict[str, dict[str, Any]], timeout: float = 30.0) -> None:
        self.values.update(values)

    def forget(
        self,
        position_keys: Any,
        *,
        after: dict[str, dict[str, Any]] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.commit_many(after or {})
        for key in position_keys:
            self.values.pop(key, None)


def _put(root: Path, key: str, *ids: str) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in ids))


def _source(root: Path, profile: Any = LEANPLUM, **options: Any) -> tuple[Any, _Publisher]:
    from connectors.objectstore.source import ObjectStoreSource
    from crmstream.settings import Settings

    publisher = _Publisher()
    config = ObjectStoreSettings(source=f"file://{root}", once=True, **options)
    src = ObjectStoreSource(
        profile,
        config,
        Settings(),
        store=LocalStore(root),
        publisher=publisher,  # type: ignore[arg-type]
        checkpoints=_Checkpoints(),  # type: ignore[arg-type]
        key_of=lambda doc: doc.get("id"),
    )
    return src, publisher


def test_a_bogus_future_partition_does_not_hide_late_files(tmp_path: Path) -> None:
    _put(tmp_path, "dt=2024-03-01/a.json", "a")
    _put(tmp_path, "dt=2024-03-10/b.json", "b")
    _put(tmp_path, "dt=2999-01-01/x.json", "x")
    src, publisher = _source(tmp_path, late_days=2)
    assert src.poll().records == 3
    _put(tmp_path, "dt=2024-03-09/late.json", "late")  # within 2 days of 03-10
    _put(tmp_path, "dt=2024-03-02/old.json", "old")  # outside the window: not re-listed
    second = src.poll()
    assert second.records == 1 and second.listed == 3  # late.json, b.json and x.json
    assert [k for k, _, _ in publisher.records] == ["a", "b", "x", "late"]


def test_flarelane_projects_keep_their_own_late_window(tmp_path: Path) -> None:
    _put(tmp_path, "projectid=p1/date=2024-03-20/a.json", "a")
    _put(tmp_path, "projectid=p2/date=2024-03-01/b.json", "b")
    src, publisher = _source(tmp_path, FLARELANE, late_days=1)
    assert src.poll().records == 2
    _put(tmp_path, "projectid=p2/date=2024-03-01/c.json", "c")  # p2's newest day, not p1's
    assert src.poll().records == 1
    assert src.poll().records == 0
    assert sorted(k for k, _, _ in publisher.records) == ["a", "b", "c"]


def test_resume_mid_file_from_checkpoint(tmp_path: Path) -> None:
    _put(tmp_path, "dt=2024-03-01/a.json", *[f"r{i}" for i in range(10)])
    src, publisher = _source(tmp_path, checkpoint_every=4)
    store = src.checkpoints
    (obj,) = src.store.list_objects("")
    # What a crashed run left: rows 0-5 published, a checkpoint at row 4.
    store.values[src.position_key(obj)] = {"etag": obj.etag, "rows_done": 4, "done": False}
    fresh, publisher = _source(tmp_path)
    fresh.checkpoints = store
    stats = fresh.run()
    assert [k for k, _, _ in publisher.records] == [f"r{i}" for i in range(4, 10)]
    assert publisher.records[0][2].endswith("/dt=2024-03-01/a.json#4")
    assert stats.ingested == 1 and store.values[fresh.position_key(obj)]["done"] is True


def test_positions_behind_the_listing_horizon_are_forgotten_and_a_restart_starts_there(
    tmp_path: Path,
) -> None:
    _put(tmp_path, "dt=2024-03-01/a.json", "a")
    _put(tmp_path, "dt=2024-03-05/b.json", "b")
    _put(tmp_path, "dt=2024-03-10/c.json", "c")
    src, _ = _source(tmp_path, late_days=2)
    assert src.poll().records == 3
    store = src.checkpoints
    assert src.poll().records == 0  # starts by forgetting a.json and b.json (before 03-08)
    kept = {"__horizon/", str((tmp_path / "dt=2024-03-10/c.json").resolve())}
    assert set(store.values) == kept
    assert store.values["__horizon/"]["horizon"] == "2024-03-08"

    # A restart lists from the horizon: the forgotten objects are never read again, even
    # rewritten (a new ETag); a late file within the window is read.
    _put(tmp_path, "dt=2024-03-01/a.json", "a", "a2")
    _put(tmp_path, "dt=2024-03-09/late.json", "late")
    fresh, again = _source(tmp_path, late_days=2)
    fresh.checkpoints = store
    first = fresh.poll()
    assert (first.records, first.listed) == (1, 2)
    assert [k for k, _, _ in again.records] == ["late"]


def test_a_larger_late_days_never_lists_behind_the_horizon(tmp_path: Path) -> None:
    _put(tmp_path, "dt=2024-03-04/a.json", "a")
    _put(tmp_path, "dt=2024-03-10/b.json", "b")
    src, _ = _source(tmp_path, late_days=2)
    assert src.poll().records == 2
    assert src.poll().records == 0  # a.json forgotten: before the horizon 03-08
    wider, again = _source(tmp_path, late_days=9)  # would list from 03-01
    wider.checkpoints = src.checkpoints
    assert wider.poll().records == 0
    assert wider.poll().records == 0
    assert again.records == []
