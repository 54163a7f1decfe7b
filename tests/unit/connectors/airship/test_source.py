"""The connector's pure parts: reconnect back-off, the lag gauge's processed time."""

from __future__ import annotations

import random
from typing import Any

from connectors.runtime.backoff import backoff_delay


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (20, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len({round(d, 6) for d in delays}) > 100, "jittered"


def test_processed_time_for_the_lag_gauge() -> None:
    from connectors.airship.source import _epoch_s

    assert _epoch_s("2024-05-01T10:00:01.5Z") == 1714557601.5
    assert _epoch_s("2024-05-01T10:00:01+02:00") == 1714550401.0
    # No zone, not a string, not a time: no reading (the worker judges timestamps, not this).
    assert _epoch_s("2024-05-01T10:00:01") is None
    assert _epoch_s(1714557601) is None
    assert _epoch_s("yesterday") is None


def _source(tmp_path: Any) -> Any:
    from connectors.airship.settings import AirshipSettings
    from connectors.airship.source import AirshipConnector
    from crmstream.settings import Secret, Settings

    settings = Settings.from_env(
        {"CRM_BOOTSTRAP_SERVERS": "127.0.0.1:9", "CRM_DATA_DIR": str(tmp_path)}
    )
    config = AirshipSettings(app_key="app", token=Secret("t"), url="http://127.0.0.1:9")
    return AirshipConnector(config, settings)


def test_snapshot_is_the_last_offset_handed_out_and_rewind_goes_back_to_it(
    tmp_path: Any,
) -> None:
    """The runner flushes before it snapshots, so the last offset handed out (an event's or an
    OFFSET_UPDATE's) is the highest contiguous acknowledged one; the value keeps its format."""
    source = _source(tmp_path)
    key = source.config.checkpoint_key
    source.open({key: {"resume_offset": "c0", "app_key": "app"}})
    assert source.position == "c0" and source.snapshot() == {}, "nothing new to checkpoint"
    lines = [
        b'{"id": "e1", "type": "SEND", "offset": "a1"}',
        b"",  # keep-alive
        b'{"id": "e2", "type": "OPEN", "offset": "a2"}\r',
        b"not json",
        b'{"type": "OFFSET_UPDATE", "offset": "a3"}',
    ]
    records = [r for r in map(source._handle_line, lines) if r is not None]
    assert [(r.key, r.source) for r in records] == [
        ("e1", "airship:app#a1"),
        ("e2", "airship:app#a2"),
        (None, "airship:app#?"),
    ]
    assert source.counts.keepalives == 1 and source.counts.offset_updates == 1
    assert not source.caught_up()
    source.rewind()  # Kafka did not acknowledge: read again from the checkpoint
    assert source.position == "c0"
    for line in lines:
        source._handle_line(line)
    (value,) = source.snapshot().values()
    assert list(value) == ["resume_offset", "app_key", "stream", "subset", "committed_at_ms"]
    assert (value["resume_offset"], value["app_key"], value["stream"]) == ("a3", "app", "events")
    source.rewind()  # after a snapshot, a rewind goes back to the snapshot
    assert source.position == "a3"
