"""``CRM_GC_THRESHOLD``: the worker's garbage-collector tuning (issue 21)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from crmstream.settings import Settings
from processors.app import tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_default_raises_the_first_threshold_and_freezes_start_up(restored_gc: None) -> None:
    settings = Settings.from_env({})
    _, middle, old = gc.get_threshold()
    built_at_start_up: list[object] = [object()]

    tune_gc(settings.gc_threshold)

    assert gc.get_threshold() == (50_000, middle, old)
    assert gc.get_freeze_count() > 0
    # Frozen: in no generation a collection scans any more.
    assert not any(built_at_start_up is o for o in gc.get_objects())


def test_zero_leaves_pythons_defaults(restored_gc: None) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()

    tune_gc(Settings.from_env({"CRM_GC_THRESHOLD": "0"}).gc_threshold)

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen
