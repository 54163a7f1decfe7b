"""OffsetTracker: the checkpointable offset is the acknowledged prefix's last."""

from __future__ import annotations

from connectors.airship.offsets import OffsetTracker

# --- offsets ---------------------------------------------------------------------------------


def test_tracker_advances_over_the_acknowledged_prefix_only() -> None:
    t = OffsetTracker("start")
    a, b, c = t.add("A"), t.add("B"), t.add("C")
    t.ack(c)
    assert t.position == "start", "C acked but A, B are not"
    t.ack(a)
    assert t.position == "A"
    t.ack(b)
    assert t.position == "C" and t.in_flight == 0


def test_tracker_offsets_are_opaque_stream_order() -> None:
    t = OffsetTracker()
    # Base64-like, negative and numeric offsets (TAXONOMY §4): order is read order.
    slots = [t.add(o) for o in ("MTIzNQ", "-1099401623", "1000001778910")]
    for slot in reversed(slots):
        t.ack(slot)
    assert t.position == "1000001778910"


def test_offset_update_waits_for_earlier_records() -> None:
    t = OffsetTracker("0")
    a = t.add("1")
    t.mark("9")  # OFFSET_UPDATE: nothing to publish
    assert t.position == "0"
    t.ack(a)
    assert t.position == "9"
    t.mark("12")
    assert t.position == "12"


def test_unknown_offset_neither_blocks_nor_moves() -> None:
    t = OffsetTracker("0")
    bad = t.add(None)  # invalid JSON line
    good = t.add("2")
    t.ack(good)
    assert t.position == "0"
    t.ack(bad)
    assert t.position == "2"


def test_reset_forgets_unacknowledged_records() -> None:
    t = OffsetTracker("0")
    a, b = t.add("1"), t.add("2")
    t.ack(a)
    assert t.reset() == 1
    t.ack(b)  # a late ack of a forgotten record moves nothing
    assert t.position == "1" and t.in_flight == 0
