"""Sample raw vendor events for the demo, the tests and the benchmark.

One module per vendor, each exposing ``generate(rng, n, campaigns) -> SampleSet``. The records
are built from the vendor documents in ``../shared/seeds/`` (realistic shapes, not copies), with
exact duplicates and a few malformed records, and each set states the outcome it expects so a
test can check the pipeline against numbers that were not computed by the pipeline.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Campaign:
    """A campaign shared by every vendor's generator: ids are strings or ints per vendor."""

    index: int
    app_id: str
    name: str


@dataclass
class SampleSet:
    """Raw records of one vendor, as ``(key, value)`` byte pairs in publish order.

    ``key`` is the vendor event id (what a connector keys the raw topic by) or ``None`` when the
    record has none. The expected_* counts describe what a correct pipeline does with them.
    """

    vendor: str
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    expected_events: int = 0  # distinct canonical events
    expected_duplicates: int = 0  # records whose event id was already seen
    expected_rejects: dict[str, int] = field(default_factory=dict)  # reason -> count
    expected_skips: int = 0  # e.g. Airship OFFSET_UPDATE lines


def campaigns(rng: random.Random, count: int = 30, apps: int = 3) -> list[Campaign]:
    return [
        Campaign(index=i, app_id=f"app-{i % apps + 1}", name=f"Campaign {i:02d}")
        for i in range(count)
    ]


Generator = Callable[[random.Random, int, list[Campaign]], SampleSet]
