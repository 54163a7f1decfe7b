"""The connector's pure parts: reconnect back-off, the lag gauge's processed time."""

from __future__ import annotations

import random

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
