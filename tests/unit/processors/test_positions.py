"""The position bookkeeping that decides which records the agents process (issue 11)."""

from __future__ import annotations

import pytest

from processors.positions import Checkpoints, PositionTracker, TopicPartition, Verdict

TP = TopicPartition("crm.raw.airship", 3)


def test_records_are_processed_once_each_and_in_order() -> None:
    tracker = PositionTracker()
    tracker.start(TP, 10)
    verdicts = [tracker.admit(TP, o) for o in (10, 11, 11, 9, 12)]
    assert verdicts == [
        Verdict.PROCESS,
        Verdict.PROCESS,
        Verdict.STALE,  # handed over twice
        Verdict.STALE,  # below the position
        Verdict.PROCESS,
    ]
    assert tracker.expected(TP) == 13


def test_a_hole_is_a_gap_until_the_broker_says_what_is_in_it() -> None:
    tracker = PositionTracker()
    tracker.start(TP, 0)
    assert tracker.admit(TP, 0) is Verdict.PROCESS
    assert tracker.admit(TP, 5) is Verdict.GAP
    # The broker holds records at 1-4 (Faust dropped them): the consumer is sought back to 1,
    # and the leftovers of the old fetch (above 1) are dropped until 1 comes again.
    tracker.rewind(TP, 1)
    assert [tracker.admit(TP, o) for o in (6, 7, 1, 2)] == [
        Verdict.STALE,
        Verdict.STALE,
        Verdict.PROCESS,
        Verdict.PROCESS,
    ]
    # A real gap (a transaction marker at 3): passed over once the broker confirms it.
    assert tracker.admit(TP, 4) is Verdict.GAP
    tracker.accept_gap(TP, 4)
    assert tracker.admit(TP, 4) is Verdict.PROCESS
    assert tracker.expected(TP) == 5


def test_after_a_seek_only_the_expected_record_resumes_processing() -> None:
    tracker = PositionTracker()
    tracker.start(TP, 100)  # just sought there: records of the earlier fetch may still come
    assert tracker.admit(TP, 140) is Verdict.STALE
    assert tracker.admit(TP, 100) is Verdict.PROCESS
    assert tracker.admit(TP, 102) is Verdict.GAP  # now a hole means something


def test_only_durable_positions_are_committable_and_never_go_back() -> None:
    tracker = PositionTracker()
    tracker.start(TP, 0, committed=None)
    for offset in range(10):
        tracker.admit(TP, offset)
    assert tracker.committable(TP) is None  # processed, not yet acknowledged
    tracker.durable(TP, 6)
    tracker.durable(TP, 4)  # an older batch's acknowledgement arriving late
    assert tracker.committable(TP) == 6
    assert tracker.committable(TopicPartition("other", 0)) is None
    tracker.forget(TP)
    assert tracker.committable(TP) is None
    assert tracker.admit(TP, 10) is Verdict.STALE  # not assigned here any more


def test_outputs_read_back_are_reported_once() -> None:
    tracker = PositionTracker()
    tracker.start(TP, 50, landed=[48, 50, 53])  # 48 is below the position: ignored
    assert not tracker.take_landed(TP, 48)
    assert tracker.take_landed(TP, 50)
    assert not tracker.take_landed(TP, 50)
    assert not tracker.take_landed(TP, 51)
    assert tracker.take_landed(TP, 53)


def test_a_partition_that_stops_moving_below_its_high_watermark_is_stalled() -> None:
    tracker = PositionTracker()
    tracker.start(TP, 0)
    assert not tracker.stalled(TP, 10)  # first look: no earlier reading to compare with
    assert not tracker.stalled(TP, 10)  # idle once: it may be waiting its turn
    assert not tracker.stalled(TP, 10)
    assert tracker.stalled(TP, 10)  # idle at three checks in a row, records there
    assert not tracker.stalled(TP, 10)  # counting starts again after a report
    tracker.admit(TP, 0)
    assert not tracker.stalled(TP, 10)  # it moved
    for _ in range(5):
        assert not tracker.stalled(TP, 1)  # nothing beyond the position
        assert not tracker.stalled(TP, None)  # no fetch yet


def test_saved_floors_stay_below_an_earlier_runs_outputs_until_the_position_passes_them() -> None:
    """Read-back found outputs of an earlier run for offsets 55 and 60, after floors 100/200.
    This run's floors (1000/2000) are past them: a position saved before 61 must keep the
    read-back's floors, or a second read-back (after a rebalance) would not find them."""
    out0, out1 = TopicPartition("events", 0), TopicPartition("events", 1)
    origin = {out0: 100, out1: 200}
    current = {out0: 1000, out1: 150}
    tracker = PositionTracker()
    tracker.start(TP, 50, landed=[55, 60], floors=origin)
    assert tracker.floors_for(TP, 56, current) == {out0: 100, out1: 150}
    assert tracker.floors_for(TP, 60, current) == {out0: 100, out1: 150}
    assert tracker.floors_for(TP, 61, current) is None  # passed: this run's floors hold
    plain = PositionTracker()
    plain.start(TP, 50, floors=origin)  # nothing read back: this run's floors hold at once
    assert plain.floors_for(TP, 51, current) is None


# -- checkpoints (CRM_POSITIONS_INTERVAL) ------------------------------------------------------

OTHER = TopicPartition("crm.raw.airship", 4)


def test_with_no_interval_every_batch_saves_every_position() -> None:
    checkpoints = Checkpoints(0)
    assert checkpoints.due({TP: 5, OTHER: 9}, 0.0) == {TP: 5, OTHER: 9}
    assert checkpoints.due({TP: 6}, 0.0) == {TP: 6}
    assert checkpoints.pending == {}
    assert checkpoints.flush(0.0) == {}


def test_a_position_is_saved_at_most_once_per_interval_and_the_latest_one_waits() -> None:
    checkpoints = Checkpoints(1.0)
    # A partition's first batch saves its position at once.
    assert checkpoints.due({TP: 5, OTHER: 9}, 10.0) == {TP: 5, OTHER: 9}
    assert checkpoints.due({TP: 6}, 10.4) == {}
    assert checkpoints.due({TP: 7, OTHER: 11}, 10.9) == {}
    assert checkpoints.pending == {TP: 7, OTHER: 11}
    # One interval after its last save, the partition's next batch saves its end.
    assert checkpoints.due({TP: 8}, 11.0) == {TP: 8}
    assert checkpoints.pending == {OTHER: 11}
    assert checkpoints.due({TP: 9}, 11.5) == {}
    # A rebalance waiting for the batch: saved whatever the interval.
    assert checkpoints.due({TP: 10}, 11.6, force=True) == {TP: 10}
    assert checkpoints.pending == {OTHER: 11}


def test_a_flush_saves_what_is_pending_of_the_partitions_kept_and_drops_the_rest() -> None:
    checkpoints = Checkpoints(1.0)
    checkpoints.due({TP: 5, OTHER: 9}, 10.0)
    checkpoints.due({TP: 6, OTHER: 10}, 10.2)
    assert checkpoints.flush(10.3, keep=lambda tp: tp == TP) == {TP: 6}
    assert checkpoints.pending == {}  # OTHER's end dropped: no longer this worker's
    # Flushed counts as saved: the next save is one interval after it.
    assert checkpoints.due({TP: 7}, 11.2) == {}
    assert checkpoints.due({TP: 8}, 11.3) == {TP: 8}
    checkpoints.forget()
    assert checkpoints.due({TP: 9}, 11.4) == {TP: 9}  # placed again: saved at once


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        Checkpoints(-1)
