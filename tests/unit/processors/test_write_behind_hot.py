"""Write-behind holds only hot windows (CRM_STATS_FLUSH_INTERVAL, issue 21): once an interval's
touches are mostly of windows neither held nor written lately, a batch writes such a window at
once, with the bytes interval 0 writes, and holds only the windows touched again soon; and the
windows held are bounded by their estimated bytes (CRM_STATS_FLUSH_MAX_MB)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from crmstream.errors import ConfigError
from crmstream.settings import Settings
from processors import stats as stats_module
from tests.unit.processors.fake_engine import FakeEvent, Parts
from tests.unit.processors.test_write_behind import Clock, behind, record, stored_total, upserts

NOW_MS = 1_780_000_100_000  # the windows' update clock (epoch ms), fixed: bytes comparable
WIDE = 300  # campaigns of the first batch: 600 window touches (1m, 1h), >= HOT_MIN_TOUCHES


def wide(parts: Parts, offset: int, name: str = "w") -> FakeEvent:
    """One record counting an event into each of :data:`WIDE` campaigns (raw offsets 0..)."""
    return record(parts, offset, {f"SEGMENT|{name}|{i}": [i] for i in range(WIDE)})


def fixed(parts: Parts) -> Parts:
    parts.stats_path.clock = lambda: NOW_MS
    return parts


async def cold(parts: Parts, clock: Clock) -> None:
    """A worker holding new windows (``behind``: its feed was hot) gets an interval of cold
    touches (600 windows, each touched once), all written by the timer: from the next batch
    on, new windows are not held."""
    assert parts.stats.hot.hold_new
    await parts.stats_path.process([wide(parts, 0)])
    assert upserts(parts) == []  # held
    clock.now += 1.5
    await parts.stats_path.flush()
    assert parts.stats.dirty_count == 0
    assert len(upserts(parts)) == 2 * WIDE


def test_a_new_window_is_written_at_once_with_interval_0_s_bytes_once_touches_are_cold(
    tmp_path: Path,
) -> None:
    parts, clock = behind(tmp_path / "behind")
    zero, _ = behind(tmp_path / "zero", "0")
    fixed(parts)
    fixed(zero)
    batch2 = {"SEGMENT|b|1": [1000, 1001], "SEGMENT|b|2": [1002]}

    async def scenario() -> None:
        await cold(parts, clock)
        await parts.stats_path.process([record(parts, 1, batch2)])

    async def at_zero() -> None:
        await zero.stats_path.process([wide(zero, 0)])
        await zero.stats_path.process([record(zero, 1, batch2)])

    n_changelog = 2 * WIDE
    run(scenario())
    run(at_zero())
    assert parts.stats.dirty_count == 0
    assert stored_total(parts, "SEGMENT|b|1") == 2 and stored_total(parts, "SEGMENT|b|2") == 1
    assert parts.positioning.committable(parts.stats_tp()) == 2
    # The same records, byte for byte, in the same order, as interval 0's second batch.
    assert upserts(parts)[2 * WIDE :] == upserts(zero)[2 * WIDE :]
    assert len(upserts(parts)) == 2 * WIDE + 4
    assert parts.outputs.changelog[n_changelog:] == zero.outputs.changelog[n_changelog:]


def test_a_window_written_within_the_interval_is_held_when_touched_again(tmp_path: Path) -> None:
    parts, clock = behind(tmp_path)
    fixed(parts)
    tp = parts.stats_tp()

    async def scenario() -> None:
        await cold(parts, clock)
        await parts.stats_path.process([record(parts, 1, {"SEGMENT|b|1": [1000]})])
        assert stored_total(parts, "SEGMENT|b|1") == 1  # new: written at once
        assert parts.positioning.committable(tp) == 2
        clock.now += 0.1
        await parts.stats_path.process(
            [record(parts, 2, {"SEGMENT|b|1": [1001], "SEGMENT|b|2": [1002]})]
        )
        # b|1 was written 0.1 s ago: held (its two windows); b|2 is new: written at once.
        assert parts.stats.dirty_count == 2
        assert stored_total(parts, "SEGMENT|b|1") == 1
        assert stored_total(parts, "SEGMENT|b|2") == 1
        assert parts.positioning.committable(tp) == 2  # batch 2 holds its position back
        clock.now += 0.5
        await parts.stats_path.process([record(parts, 3, {"SEGMENT|b|1": [1003]})])
        assert parts.stats.dirty_count == 2  # counted into memory, not due yet
        clock.now += 0.6
        await parts.stats_path.process([record(parts, 4, {"SEGMENT|b|3": [1004]})])
        assert parts.stats.dirty_count == 0  # due: written with batch 4
        assert parts.positioning.committable(tp) == 5

    run(scenario())
    assert stored_total(parts, "SEGMENT|b|1") == 3
    b1 = [key for key, _ in upserts(parts) if key and key.startswith(b"SEGMENT|b|1|")]
    assert len(b1) == 2 * 2  # once at once, once from memory: three events, two writes


def test_new_windows_are_held_again_once_most_touches_are_hot(tmp_path: Path) -> None:
    parts, clock = behind(tmp_path)
    fixed(parts)

    async def scenario() -> None:
        await cold(parts, clock)
        # The same 300 campaigns again: written by the timer just now, so hot (held), and
        # this interval's touches are all hot.
        await parts.stats_path.process([record(parts, 1, {"SEGMENT|b|1": [1000]})])
        assert parts.stats.dirty_count == 0  # still cold: written at once
        await parts.stats_path.process(
            [record(parts, 2, {f"SEGMENT|w|{i}": [WIDE + i] for i in range(WIDE)})]
        )
        assert parts.stats.dirty_count == 2 * WIDE
        clock.now += 1.1
        written = len(upserts(parts))
        await parts.stats_path.process([record(parts, 3, {"SEGMENT|b|9": [2000]})])
        # The interval was hot: the new window is held (and the batch writes its share of
        # the due ones, oldest first).
        assert stored_total(parts, "SEGMENT|b|9") == -1
        due = stats_module.flush_limit(2)
        assert len(upserts(parts)) - written == due
        assert parts.stats.dirty_count == 2 * WIDE - due + 2

    run(scenario())


def test_the_windows_in_memory_are_bounded_by_their_bytes(tmp_path: Path) -> None:
    parts = Parts(tmp_path, {"CRM_STATS_FLUSH_INTERVAL": "1h", "CRM_STATS_FLUSH_MAX_MB": "1"})
    parts.stats.hot.hold_new = True  # its feed was hot: new windows held
    clock = Clock()
    parts.stats.monotonic = clock
    parts.engine.assigned.add(parts.stats_tp())
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    n = 200  # 400 windows
    size = stats_module.held_bytes(None, 1)  # a new window with one event

    async def scenario() -> None:
        await parts.stats_path.process(
            [record(parts, 0, {f"SEGMENT|a|{i}": [i] for i in range(n)})]
        )

    run(scenario())
    assert 400 * size > 1 << 20
    assert parts.stats.dirty_bytes <= 1 << 20
    over = -(-(400 * size - (1 << 20)) // size)  # the oldest, written early
    assert len(upserts(parts)) == over
    assert parts.stats.dirty_count == 400 - over
    assert parts.stats.dirty_bytes == (400 - over) * size


def test_the_bytes_bound_is_a_validated_setting(tmp_path: Path) -> None:
    assert Settings.from_env({}).stats_flush_max_mb == 32
    with pytest.raises(ConfigError, match="CRM_STATS_FLUSH_MAX_MB"):
        Settings.from_env({"CRM_STATS_FLUSH_MAX_MB": "0"})
    with pytest.raises(ConfigError, match="CRM_STATS_FLUSH_MAX_MB"):
        Settings.from_env({"CRM_STATS_FLUSH_MAX_MB": "lots"})


@pytest.mark.parametrize("hot", [True, False], ids=["holding", "as-started"])
def test_a_quiet_worker_keeps_its_choice(tmp_path: Path, hot: bool) -> None:
    """An interval with fewer than HOT_MIN_TOUCHES touches decides nothing: a worker holding
    new windows that then sees a few cold windows only still holds new ones (the tests of
    test_write_behind.py), and a worker just started still writes them at once."""
    parts, clock = behind(tmp_path, hot=hot)

    async def scenario() -> None:
        for i in range(5):
            await parts.stats_path.process([record(parts, i, {f"SEGMENT|a|{i}": [i]})])
            clock.now += 1.5

    run(scenario())
    assert parts.stats.hot.hold_new is hot
    # holding: the last batch's, held (the others written when due); as started: all at once
    assert parts.stats.dirty_count == (2 if hot else 0)
    assert len(upserts(parts)) == (8 if hot else 10)


# -- a worker starts cold ------------------------------------------------------------------------


def started(tmp_path: Path, **env: str) -> tuple[Parts, Clock]:
    """A worker as it starts, writing behind by 1 s (its hold mode left as the tables made it)."""
    parts = Parts(tmp_path, {"CRM_STATS_FLUSH_INTERVAL": "1s", **env})
    clock = Clock()
    parts.stats.monotonic = clock
    parts.engine.assigned.add(parts.stats_tp())
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    return fixed(parts), clock


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_a_worker_starts_writing_new_windows_at_once_and_holds_none_of_a_sparse_feed(
    tmp_path: Path,
) -> None:
    """Many sparse campaigns from the start (each batch 300 new ones, 600 windows: 1.8 MB
    estimated, were they held): nothing is held, not even in the first interval, so the byte
    bound (1 MB here) is never reached; every record is interval 0's, byte for byte, and the
    worker stays cold once an interval has decided."""
    zero, _ = behind(tmp_path / "zero", "0")
    fixed(zero)
    parts, clock = started(tmp_path / "started", CRM_STATS_FLUSH_MAX_MB="1")
    assert 2 * WIDE * stats_module.held_bytes(None, 1) > 1 << 20

    def batch(target: Parts, k: int) -> FakeEvent:
        return record(target, k, {f"SEGMENT|s{k}|{i}": [k * WIDE + i] for i in range(WIDE)})

    async def scenario() -> None:
        for k in range(5):  # 0.3 s apart: the fourth batch starts the second interval
            await parts.stats_path.process([batch(parts, k)])
            assert parts.stats.dirty_count == 0 and parts.stats.dirty_bytes == 0
            assert gauge("crm_worker_stats_held_windows") == 0
            clock.now += 0.3

    async def at_zero() -> None:
        for k in range(5):
            await zero.stats_path.process([batch(zero, k)])

    run(scenario())
    assert not parts.stats.hot.hold_new
    assert gauge("crm_worker_stats_hold_new_windows") == 0
    run(at_zero())
    assert len(upserts(parts)) == 5 * 2 * WIDE
    assert upserts(parts) == upserts(zero)
    assert parts.outputs.changelog == zero.outputs.changelog
    assert parts.positioning.committable(parts.stats_tp()) == 5


def test_a_hot_feed_switches_to_holding_new_windows_after_its_first_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same 300 campaigns every 0.1 s: the first batch writes its windows at once, the
    next ones hold them (written just now: hot), and at the end of the first second, its
    touches 90% hot, the worker holds new windows too: logged once, and on the gauges."""
    caplog.set_level("INFO", logger="crmstream.worker")
    parts, clock = started(tmp_path)

    def batch(k: int, extra: dict[str, list[int]] | None = None) -> FakeEvent:
        increments = {f"SEGMENT|w|{i}": [k * WIDE + i] for i in range(WIDE)}
        return record(parts, k, {**increments, **(extra or {})})

    async def scenario() -> None:
        assert gauge("crm_worker_stats_hold_new_windows") == 0
        await parts.stats_path.process([batch(0)])
        assert len(upserts(parts)) == 2 * WIDE  # new, the worker cold: written at once
        assert parts.stats.dirty_count == 0
        for k in range(1, 10):
            clock.now += 0.1
            await parts.stats_path.process([batch(k)])
            assert parts.stats.dirty_count == 2 * WIDE  # written 0.1-0.9 s ago: held
        assert not parts.stats.hot.hold_new
        assert "new windows now held" not in caplog.text
        clock.now += 0.15  # the first interval is over
        await parts.stats_path.process([batch(10, {"SEGMENT|b|1": [100_000]})])
        assert parts.stats.hot.hold_new
        assert stored_total(parts, "SEGMENT|b|1") == -1  # a new window, held
        assert gauge("crm_worker_stats_hold_new_windows") == 1
        assert gauge("crm_worker_stats_held_windows") == parts.stats.dirty_count
        assert gauge("crm_worker_stats_held_bytes") == parts.stats.dirty_bytes > 0
        await parts.stats_path.stopping()

    run(scenario())
    switched = [r for r in caplog.records if "new windows now held" in r.getMessage()]
    assert len(switched) == 1 and switched[0].levelname == "INFO"
    assert "5400 of 6000 window touches hot" in switched[0].getMessage()
    assert stored_total(parts, "SEGMENT|w|7") == 11 and stored_total(parts, "SEGMENT|b|1") == 1
    assert gauge("crm_worker_stats_held_windows") == 0


def test_a_feed_gone_cold_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="crmstream.worker")
    parts, clock = behind(tmp_path)

    async def scenario() -> None:
        await cold(parts, clock)
        await parts.stats_path.process([record(parts, 1, {"SEGMENT|b|1": [1000]})])
        clock.now += 1.1
        await parts.stats_path.process([record(parts, 2, {"SEGMENT|b|2": [1001]})])

    run(scenario())
    switched = [r for r in caplog.records if "new windows now" in r.getMessage()]
    assert [r.getMessage().split(" (")[0] for r in switched] == [
        "stats write-behind: new windows now written at once"
    ]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("crash_at", [5, 17, 29, 40])
def test_a_crash_with_windows_written_at_once_and_held_counts_everything_once(
    tmp_path: Path, crash_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_write_behind.py's replay after a crash, with the worker past its first interval
    deciding not to hold new windows (forced: a share no interval reaches): each batch writes
    its cold windows at once and holds those written within the interval, in the same table
    partitions. The replay from the committable offsets still counts every increment once."""
    from tests.unit.processors import test_write_behind as wb

    monkeypatch.setattr(stats_module, "HOT_MIN_TOUCHES", 1)
    monkeypatch.setattr(stats_module, "HOT_SHARE", 2.0)
    feed = wb._feed(21, 40)
    expected = wb._counted_at_zero(tmp_path / "expected", feed)
    parts, clock = behind(tmp_path / "behind")
    held = at_once = 0
    split = stats_module.HotWindows.split

    def counting(self: stats_module.HotWindows, *args: object) -> tuple[dict, dict]:
        nonlocal held, at_once
        h, a = split(self, *args)  # type: ignore[arg-type]
        held, at_once = held + len(h), at_once + len(a)
        return h, a

    monkeypatch.setattr(stats_module.HotWindows, "split", counting)
    run(wb._replay_after_crash(parts, clock, feed, crash_at))
    assert held and at_once  # both paths taken
    assert wb._totals(parts) == wb._totals(expected)
    assert sum(wb._totals(parts).values()) == 2 * sum(
        len(v) for _, _, inc in feed for v in inc.values()
    )
