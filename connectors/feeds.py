"""What each vendor's file feed *is*: one :class:`FeedProfile` per vendor, declared side by side.

The object-store source (:mod:`connectors.objectstore`) is vendor-agnostic; everything that
differs between vendors (key layout, formats, which normalizer names the event id) is declared
here, so a new vendor that drops files in a bucket is one more entry in :data:`FEEDS`.

Key layouts are matched against the object key *relative to* the configured prefix. A layout's
date partition must sort lexicographically in date order (``dt=2024-03-05`` and ``2024/03/05``
both do): the late-file re-listing uses that to list only the last N days with ``StartAfter``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class FeedProfile:
    """One vendor's file feed.

    ``key_pattern`` must define the groups ``y``, ``m`` and ``d`` (the date partition); keys that
    do not match it are not events (Firehose ``processing-failed/`` output, ``_SUCCESS`` markers)
    and are ignored. ``root_dir`` names one directory level above the date partitions that is
    discovered by listing (FlareLane ``projectid=``); ``None`` when the partitions start at the
    prefix.
    """

    connector: str
    vendor: str
    doc: str
    event_id_field: str
    key_pattern: re.Pattern[str]
    day_format: str
    formats: tuple[str, ...]
    root_dir: str | None = None

    def day_of(self, relative_key: str) -> date | None:
        """The partition date of a key, or ``None`` when the key is not part of the feed."""
        match = self.key_pattern.match(relative_key)
        if match is None:
            return None
        try:
            return date(int(match["y"]), int(match["m"]), int(match["d"]))
        except ValueError:
            return None

    def day_dir(self, day: date) -> str:
        """The partition folder of ``day`` relative to a root, with a trailing ``/``."""
        return day.strftime(self.day_format)


_ANY_FILE = r"(?:[^/]+/)*[^/]+"

LEANPLUM = FeedProfile(
    connector="leanplum",
    vendor="leanplum",
    doc="Leanplum AWS S3 Data Feed: JSON or Parquet files under dt=YYYY-MM-DD/",
    # TAXONOMY §6.1: "event_id (required; the seed says it can be used for deduplication)".
    event_id_field="event_id",
    # Seed 000 "Naming and structure": "The files will be named using a partition key dt=".
    key_pattern=re.compile(rf"^dt=(?P<y>\d{{4}})-(?P<m>\d{{2}})-(?P<d>\d{{2}})/{_ANY_FILE}$"),
    day_format="dt=%Y-%m-%d/",
    # Seed 000 "File formats": JSON and Parquet; the JSON framing is undocumented.
    formats=("json-lines", "json-array", "parquet", "gzip"),
)

FLARELANE = FeedProfile(
    connector="flarelane",
    vendor="flarelane",
    doc="FlareLane CRM event export (S3): projectid=<id>/date=YYYY-MM-DD/ partitions",
    # TAXONOMY §6.4 / seed 003: "id | string | Common | Unique event identifier (ULID)".
    event_id_field="id",
    # Seed 003 lists projectid and date as the "Partition" columns, in that order.
    key_pattern=re.compile(
        rf"^projectid=[^/]+/date=(?P<y>\d{{4}})-(?P<m>\d{{2}})-(?P<d>\d{{2}})/{_ANY_FILE}$"
    ),
    day_format="date=%Y-%m-%d/",
    formats=("json-lines", "json-array", "parquet", "gzip"),
    root_dir="projectid=",
)

PINPOINT_FIREHOSE = FeedProfile(
    connector="pinpoint-firehose",
    vendor="pinpoint",
    doc="Amazon Pinpoint event stream delivered by Kinesis Data Firehose: YYYY/MM/DD/HH/ objects",
    # TAXONOMY §6.2: Pinpoint has no event id; the key is the synthetic one.
    event_id_field="event_type|client_id|K|event_timestamp|arrival_timestamp",
    # Firehose's default S3 key prefix is the UTC arrival hour, YYYY/MM/DD/HH/.
    key_pattern=re.compile(
        rf"^(?P<y>\d{{4}})/(?P<m>\d{{2}})/(?P<d>\d{{2}})/(?P<h>\d{{2}})/{_ANY_FILE}$"
    ),
    day_format="%Y/%m/%d/",
    formats=("json-lines", "gzip", "zip", "snappy", "hadoop-snappy"),
)

FEEDS: dict[str, FeedProfile] = {
    LEANPLUM.connector: LEANPLUM,
    FLARELANE.connector: FLARELANE,
    PINPOINT_FIREHOSE.connector: PINPOINT_FIREHOSE,
}
