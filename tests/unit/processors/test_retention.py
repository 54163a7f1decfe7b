"""Every stats window size has its own retention (``CRM_STATS_RETENTION``), in the tables and
on ``campaign-stats``: an expired window is deleted with a changelog tombstone and an output
tombstone (issue 23 item 1). On the fake engine: no Kafka, no Faust."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crmstream import metrics
from crmstream.errors import ConfigError
from crmstream.settings import Settings
from processors.api.query import CampaignKey, TimeRange
from processors.records import stats_updates_value
from processors.state.codecs import CampaignEntry
from processors.state.keys import CAMPAIGN_KEY_PREFIX, WINDOWS, campaign_entry_key, window_key
from tests.unit.processors.fake_engine import FakeEvent, FakeMessage, Parts

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
T0 = 1_780_000_000_000 - 1_780_000_000_000 % HOUR_MS


def test_retention_per_window_size_and_its_defaults() -> None:
    assert Settings.from_env({}).stats_retention_seconds() == {"1m": 3 * 86400, "1h": 90 * 86400}
    one = Settings.from_env({"CRM_STATS_RETENTION": "30d"})
    assert one.stats_retention_seconds() == {"1m": 30 * 86400, "1h": 30 * 86400}
    named = Settings.from_env(
        {"CRM_STATS_WINDOWS": "1m,5m,1h,1d", "CRM_STATS_RETENTION": "1m=2d,60m=1w"}
    )
    # A size not named takes the largest named size at or below it.
    assert named.stats_retention_seconds() == {
        "1m": 2 * 86400,
        "5m": 2 * 86400,
        "1h": 7 * 86400,
        "1d": 7 * 86400,
    }
    # The default fits any windows; below every named size: the smallest named one.
    other = Settings.from_env({"CRM_STATS_WINDOWS": "30s,5m,1d"})
    assert other.stats_retention_seconds() == {"30s": 3 * 86400, "5m": 3 * 86400, "1d": 90 * 86400}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("1x=3d", "not a window size"),
        ("1m=3d,1m=4d", "named twice"),
        ("1m=0s", "greater than 0"),
        ("1m:3d", "not a duration"),
        ("1m=3d,1h", "expected <window>=<duration>"),
        ("0", "greater than 0"),
    ],
)
def test_a_bad_retention_stops_start_up_naming_the_variable(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"CRM_STATS_RETENTION": value})
    assert "CRM_STATS_RETENTION" in str(err.value)
    assert why in str(err.value)


def _increment(parts: Parts, offset: int, campaign: str, occurred_ms: int) -> FakeEvent:
    value = stats_updates_value(
        {campaign: {"raw.segment/0": [[offset, occurred_ms, "OPEN", "EMAIL"]]}}, None, None
    )
    return FakeEvent(FakeMessage(parts.stats_topic, 0, offset, b"0", value))


def test_each_size_expires_on_its_own_retention_with_output_tombstones(tmp_path: Path) -> None:
    parts = Parts(tmp_path, {"CRM_STATS_RETENTION": "1m=10m,1h=2h"})
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    now = [T0]
    parts.stats_path.clock = lambda: now[0]
    stats_topic = parts.settings.topic("campaign-stats")

    async def scenario() -> None:
        await parts.stats_path.process([_increment(parts, 0, "SEGMENT|app|a", T0 + 5_000)])
        await parts.stats_path.process([_increment(parts, 1, "SEGMENT|app|b", T0 + 65_000)])
        now[0] = T0 + 11 * MINUTE_MS  # the 1m windows idle for 11 minutes: expired
        assert await parts.stats.expire(parts.outputs, [0], now[0]) == 2
        now[0] = T0 + 2 * HOUR_MS + MINUTE_MS  # the 1h window idle for 2h01
        assert await parts.stats.expire(parts.outputs, [0], now[0]) == 2

    asyncio.run(scenario())
    records = parts.outputs.topics(stats_topic)
    tombstones = [key for key, value in records if value is None]
    assert tombstones == [
        f"SEGMENT|app|a|1m|{T0}".encode(),
        f"SEGMENT|app|b|1m|{T0 + MINUTE_MS}".encode(),
        f"SEGMENT|app|a|1h|{T0}".encode(),
        f"SEGMENT|app|b|1h|{T0}".encode(),
    ]
    # Every key upserted is tombstoned: nothing is live on the output, nor in the tables.
    assert {key for key, value in records if value is not None} == set(tombstones)
    for table in parts.stats_tables.values():
        assert [k for k, _ in table.scan(0, _all()) if not k.startswith(CAMPAIGN_KEY_PREFIX)] == []
    # The changelogs carry the same tombstones.
    changelog = {(t, k): v for t, _, k, v in parts.outputs.changelog}
    assert sum(1 for (t, k), v in changelog.items() if v is None and not k.startswith(b"__")) == 4


def test_a_late_event_for_an_expired_window_is_refused_then_the_entry_goes(tmp_path: Path) -> None:
    parts = Parts(tmp_path, {"CRM_STATS_RETENTION": "10m"})
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    now = [T0]
    parts.stats_path.clock = lambda: now[0]
    stats_topic = parts.settings.topic("campaign-stats")

    async def scenario() -> None:
        await parts.stats_path.process([_increment(parts, 0, "SEGMENT|app|a", T0 + 5_000)])
        now[0] = T0 + 11 * MINUTE_MS
        await parts.stats.expire(parts.outputs, [0], now[0])
        sent = len(parts.outputs.topics(stats_topic))
        await parts.stats_path.process([_increment(parts, 1, "SEGMENT|app|a", T0 + 6_000)])
        assert len(parts.outputs.topics(stats_topic)) == sent  # refused: no partial window
        now[0] = T0 + 22 * MINUTE_MS  # the retention after the last window expired
        await parts.stats.expire(parts.outputs, [0], now[0])

    asyncio.run(scenario())
    for table in parts.stats_tables.values():
        assert list(table.scan(0, _all())) == []  # entry and windows gone: nothing kept


def _late_total() -> float:
    return metrics.STATS_LATE._value.get()


def _known(parts: Parts, label: str, campaign: str, from_ms: int, to_ms: int) -> bool:
    """Whether the query API knows the campaign (figures, maybe of zero) rather than 404."""
    r = TimeRange(label, from_ms, to_ms)
    found = parts.stats.campaign(label, 0, CampaignKey.from_key(campaign), r, series=True)
    return found is not None


def test_a_campaign_gets_its_entry_at_its_first_expiry_and_stays_known(tmp_path: Path) -> None:
    """No entry while nothing of the campaign expired (its windows make it known to the API);
    its first expiry writes the entry, which refuses a late event for the expired window."""
    parts = Parts(tmp_path, {"CRM_STATS_RETENTION": "10m"})
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    now = [T0]
    parts.stats_path.clock = lambda: now[0]
    stats_topic = parts.settings.topic("campaign-stats")
    a, entry = "SEGMENT|app|a", campaign_entry_key("SEGMENT|app|a")
    later = T0 + 3 * HOUR_MS  # a range holding no window of the campaign

    async def scenario() -> None:
        await parts.stats_path.process([_increment(parts, 0, a, T0 + 5_000)])
        now[0] = T0 + 5 * MINUTE_MS
        await parts.stats_path.process([_increment(parts, 1, a, T0 + 65_000)])
        for table in parts.stats_tables.values():
            assert table.get_many(0, [entry]) == [None]
        assert not any(k.startswith(CAMPAIGN_KEY_PREFIX) for _, _, k, _ in parts.outputs.changelog)
        assert _known(parts, "1m", a, later, later + HOUR_MS)
        assert _known(parts, "1h", a, later, later + HOUR_MS)
        assert not _known(parts, "1m", "SEGMENT|app|never", T0, T0 + HOUR_MS)

        # The first 1m window idle for 11 minutes: expired, and the 1m table's entry written
        # with it (after its tombstone, in the changelog); the 1h window is still held.
        now[0] = T0 + 11 * MINUTE_MS
        assert await parts.stats.expire(parts.outputs, [0], now[0]) == 1
        minute, hour = parts.stats_tables["1m"], parts.stats_tables["1h"]
        assert minute.get_many(0, [entry]) == [CampaignEntry(T0, now[0]).encode()]
        assert hour.get_many(0, [entry]) == [None]
        changelog = [(t, k, v) for t, _, k, v in parts.outputs.changelog]
        assert changelog[-2:] == [
            ("stats-1m-changelog", window_key(T0, a.encode()), None),
            ("stats-1m-changelog", entry, CampaignEntry(T0, now[0]).encode()),
        ]
        assert _known(parts, "1m", a, later, later + HOUR_MS)

        sent, late = len(parts.outputs.topics(stats_topic)), _late_total()
        await parts.stats_path.process([_increment(parts, 2, a, T0 + 6_000)])
        # Refused in 1m (expired), counted in the 1h window it still holds.
        assert len(parts.outputs.topics(stats_topic)) == sent + 1
        assert _late_total() == late + 1
        assert minute.get_many(0, [window_key(T0, a.encode())]) == [None]

        # Every window gone, then the retention after that: the entry goes, and the campaign
        # is unknown again.
        now[0] = T0 + 2 * HOUR_MS
        await parts.stats.expire(parts.outputs, [0], now[0])
        assert _known(parts, "1m", a, later, later + HOUR_MS)  # the entry remembers it
        now[0] = T0 + 3 * HOUR_MS
        await parts.stats.expire(parts.outputs, [0], now[0])
        assert not _known(parts, "1m", a, later, later + HOUR_MS)
        assert not _known(parts, "1h", a, later, later + HOUR_MS)

    asyncio.run(scenario())


def test_a_late_event_stays_refused_on_a_store_restored_from_the_changelog(
    tmp_path: Path,
) -> None:
    """A lost disk: the tables restored from their changelogs (records written back byte for
    byte, in order, as the engine's restore does) refuse the late event as the original did."""
    retention = {"CRM_STATS_RETENTION": "1m=10m,1h=2h"}
    active = Parts(tmp_path / "active", retention)
    active.positioning.tracker.start(active.stats_tp(), 0)
    a = "SEGMENT|app|a"

    async def before() -> None:
        active.stats_path.clock = lambda: T0
        await active.stats_path.process([_increment(active, 0, a, T0 + 5_000)])
        await active.stats_path.process([_increment(active, 1, "SEGMENT|app|b", T0 + 65_000)])
        await active.stats.expire(active.outputs, [0], T0 + 11 * MINUTE_MS)

    asyncio.run(before())
    restored = Parts(tmp_path / "restored", retention)
    for name, table in restored.stats_tables.items():
        for topic, partition, key, value in active.outputs.changelog:
            if topic == table.changelog_topic:
                table.write(partition, [(key, value)])
        assert list(table.scan(0, _all())) == list(active.stats_tables[name].scan(0, _all()))
    restored.positioning.tracker.start(restored.stats_tp(), 2)
    restored.stats_path.clock = lambda: T0 + 12 * MINUTE_MS
    stats_topic = restored.settings.topic("campaign-stats")
    late = _late_total()

    async def after() -> None:
        await restored.stats_path.process([_increment(restored, 2, a, T0 + 6_000)])
        await restored.stats_path.process([_increment(restored, 3, "SEGMENT|app|c", T0 + 7_000)])

    asyncio.run(after())
    assert _late_total() == late + 1  # a's 1m window (its 1h window is held; c is new)
    assert sorted(k for k, _ in restored.outputs.topics(stats_topic)) == [
        f"SEGMENT|app|a|1h|{T0}".encode(),
        f"SEGMENT|app|c|1h|{T0}".encode(),
        f"SEGMENT|app|c|1m|{T0}".encode(),
    ]


def test_a_store_of_an_earlier_version_with_an_entry_per_campaign_counts_the_same(
    tmp_path: Path,
) -> None:
    """Earlier versions wrote an entry (-1) for every campaign when first seen: such an entry
    refuses nothing, and the campaign's first expiry records the window it lost in it."""
    parts = Parts(tmp_path, {"CRM_STATS_RETENTION": "10m"})
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    a, b = "SEGMENT|app|a", "SEGMENT|app|b"
    for table in parts.stats_tables.values():
        table.write(0, [(campaign_entry_key(c), CampaignEntry(-1, T0).encode()) for c in (a, b)])
    now = [T0]
    parts.stats_path.clock = lambda: now[0]
    stats_topic = parts.settings.topic("campaign-stats")

    async def scenario() -> None:
        await parts.stats_path.process([_increment(parts, 0, a, T0 + 5_000)])
        assert len(parts.outputs.topics(stats_topic)) == 2  # counted: -1 refuses nothing
        assert _known(parts, "1m", b, T0, T0 + HOUR_MS)  # no window, its old entry
        now[0] = T0 + 11 * MINUTE_MS
        assert await parts.stats.expire(parts.outputs, [0], now[0]) == 2
        minute = parts.stats_tables["1m"]
        assert minute.get_many(0, [campaign_entry_key(a)]) == [CampaignEntry(T0, now[0]).encode()]
        late = _late_total()
        await parts.stats_path.process([_increment(parts, 1, a, T0 + 6_000)])
        assert _late_total() == late + 2  # its 1m and 1h windows expired
        assert len(parts.outputs.topics(stats_topic)) == 4  # the two tombstones only

    asyncio.run(scenario())


def test_the_changelog_forgets_a_window_only_after_its_output_tombstone_is_acknowledged(
    tmp_path: Path,
) -> None:
    """A restart replays the changelog's tail, and a restore reads all of it: a window the
    changelog deleted is never seen again, so its output tombstone must be in Kafka first."""
    parts = Parts(tmp_path, {"CRM_STATS_RETENTION": "10m"})
    parts.positioning.tracker.start(parts.stats_tp(), 0)
    now = [T0]
    parts.stats_path.clock = lambda: now[0]
    stats_topic = parts.settings.topic("campaign-stats")

    def changelog_tombstones() -> int:
        return sum(1 for _, _, k, v in parts.outputs.changelog if v is None and k in WINDOWS)

    async def scenario() -> None:
        await parts.stats_path.process([_increment(parts, 0, "SEGMENT|app|a", T0 + 5_000)])
        parts.outputs.gate.clear()  # Kafka acknowledges nothing for now
        expiry = asyncio.ensure_future(parts.stats.expire(parts.outputs, [0], T0 + 2 * HOUR_MS))
        for _ in range(20):
            await asyncio.sleep(0)
        assert [k for k, v in parts.outputs.topics(stats_topic) if v is None] == [
            f"SEGMENT|app|a|1m|{T0}".encode(),
            f"SEGMENT|app|a|1h|{T0}".encode(),
        ]
        assert changelog_tombstones() == 0  # not before the output tombstones are acked
        parts.outputs.gate.set()
        assert await expiry == 2
        assert changelog_tombstones() == 2

    asyncio.run(scenario())


def _all() -> tuple[bytes, bytes]:
    from processors.state.keys import KeyRange

    return KeyRange(b"0", b"__crm/campaign0")


def test_each_changelog_and_the_output_topic_state_their_rule() -> None:
    from crmstream.topics import topic_specs
    from processors.app import changelog_specs

    settings = Settings.from_env({})
    specs = {s.name: s.configs for s in changelog_specs(settings)}
    day_ms = 86_400_000
    assert specs["crm-stream-stats-1m-changelog"]["retention.ms"] == str(4 * day_ms)
    assert specs["crm-stream-stats-1h-changelog"]["retention.ms"] == str(91 * day_ms)
    topics = {s.name: s.configs for s in topic_specs(settings)}
    # compacted, tombstones kept a day for consumers reading from the start
    assert topics["campaign-stats"]["cleanup.policy"] == "compact"
    assert topics["campaign-stats"]["delete.retention.ms"] == str(day_ms)
    assert topics["connect-offsets"]["delete.retention.ms"] == str(day_ms)
