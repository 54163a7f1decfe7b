"""Feed layouts (connectors/feeds.py): partition days and listing bounds per vendor."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from connectors.feeds import FEEDS, FLARELANE, LEANPLUM, PINPOINT_FIREHOSE

# --- layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "key", "day"),
    [
        (LEANPLUM, "dt=2024-03-05/part-0.json", date(2024, 3, 5)),
        (LEANPLUM, "dt=2024-03-05/sub/part-0.parquet", date(2024, 3, 5)),
        (LEANPLUM, "dt=2024-13-05/part-0.json", None),
        (LEANPLUM, "other/part-0.json", None),
        (LEANPLUM, "dt=2024-03-05/", None),
        (FLARELANE, "projectid=p1/date=2024-03-05/x.parquet", date(2024, 3, 5)),
        (FLARELANE, "date=2024-03-05/x.parquet", None),
        (PINPOINT_FIREHOSE, "2024/03/05/23/stream-1-2024-03-05-23-59-59-uuid", date(2024, 3, 5)),
        (PINPOINT_FIREHOSE, "processing-failed/2024/03/05/23/x", None),
        (PINPOINT_FIREHOSE, "2024/03/05/x", None),
    ],
)
def test_layouts_find_the_partition_day(profile: Any, key: str, day: date | None) -> None:
    assert profile.day_of(key) == day


@pytest.mark.parametrize("profile", list(FEEDS.values()))
def test_start_after_partition_sorts_between_days(profile: Any) -> None:
    """The late-file listing starts after ``day_dir(cutoff)`` minus its slash: earlier days must
    sort before it and every key of the cutoff day after it."""
    start_after = profile.day_dir(date(2024, 3, 3)).rstrip("/")
    earlier = profile.day_dir(date(2024, 3, 2)) + "zzz"
    same = profile.day_dir(date(2024, 3, 3)) + "00/a"
    later = profile.day_dir(date(2024, 12, 1)) + "a"
    assert earlier < start_after < same < later
