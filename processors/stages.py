"""The CPU time of the worker's stages, so that a regression shows where it is
(``crm_worker_stage_cpu_seconds_total``; ``make bench`` prints it per event).

Measured with ``time.thread_time`` on the event loop's thread, between two points of one batch
that no ``await`` separates (another task's work would be counted otherwise). What the stages do
not cover, the process's CPU time less their sum, is the consume path: Faust's stream, the event
loop, the consumer thread and the producer's delivery reports.
"""

from __future__ import annotations

import time

from crmstream import metrics

NORMALIZE = "normalize"  # raw records through their vendor's normalizer
DEDUPE = "dedupe"  # mark look-ups, the batch plan, mark and position writes
ENCODE = "encode"  # canonical records to Avro
PRODUCE = "produce"  # events, dead letters and stats increments handed to the producer
STATS = "stats"  # the stats agent: parse, count, window values, upserts, changelog, writes
STAGES = (NORMALIZE, DEDUPE, ENCODE, PRODUCE, STATS)


class Stages:
    """One batch's stage times: :meth:`lap` books the CPU time since the previous lap (or since
    :meth:`resume`) to a stage; :meth:`count` adds them to the metric, once per batch."""

    __slots__ = ("last", "spent")

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.last = time.thread_time()

    def resume(self) -> None:
        """Start timing again after an ``await`` (what ran meanwhile is not this batch's)."""
        self.last = time.thread_time()

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        self.spent[stage] = self.spent.get(stage, 0.0) + now - self.last
        self.last = now

    def split(self, stage: str, other: str, share: float) -> None:
        """Book the time since the previous lap to ``other`` for ``share`` of it (0..1), the
        rest to ``stage``: for work too fine-grained to read the thread's clock around (a
        ``thread_time`` call costs a system call; its share is measured with the wall clock)."""
        now = time.thread_time()
        spent = now - self.last
        share = min(1.0, max(0.0, share))
        self.spent[other] = self.spent.get(other, 0.0) + spent * share
        self.spent[stage] = self.spent.get(stage, 0.0) + spent * (1.0 - share)
        self.last = now

    def count(self) -> None:
        for stage, seconds in self.spent.items():
            _STAGE_CPU(stage).inc(seconds)


_STAGE_CPU = metrics.Children(metrics.STAGE_CPU_SECONDS)
