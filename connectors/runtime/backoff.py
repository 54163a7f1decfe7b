"""The connectors' one back-off: exponential, capped, with jitter.

Attempt *n* waits a random time in the upper half of ``min(high, low * 2**(n-1))``, so that
many connectors (or shards) that failed together do not retry in lockstep.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """The wait before retry number ``attempt`` (1 for the first retry)."""
    ceiling = min(high, low * math.pow(2, max(0, attempt - 1)))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass
class Backoff:
    """Failures in a row of one thing (a connection, a shard, a source) and when it may retry."""

    low: float
    high: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    retry_at: float = 0.0

    def failed(self) -> float:
        """Count one more failure; returns the wait before the next attempt."""
        self.failures += 1
        delay = backoff_delay(self.failures, self.low, self.high, self.rng)
        self.retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.retry_at
