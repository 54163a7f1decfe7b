"""``crm-stream demo --once``: its summary balances only when every sample record is accounted
for, and its last screen neither claims to be live nor offers a page that is gone (issue 22
items 10 and 13)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from rich.console import Console

from crmdemo.demo import (
    DELIBERATE_HINT,
    DeliberateFaults,
    FeedResult,
    StatsView,
    VendorAccount,
    build_summary,
    render,
)
from crmdemo.samples import SampleSet


class _NoStats:
    def campaigns(self) -> set[tuple[str, str, str]]:
        return set()


def _airship(control_lines: int) -> dict[str, Any]:
    """Airship as the demo ran it: 600 sample lines, 9 of them OFFSET_UPDATE (expected skips),
    591 published; the worker skipped none, since the connector does not publish them."""
    sample = SampleSet(
        "airship",
        records=[(None, b"{}")] * 600,
        expected_events=555,
        expected_duplicates=30,
        expected_rejects={"invalid_json": 2, "missing_event_id": 2, "missing_event_type": 1},
        expected_skips=9,
    )
    sample.expected_rejects["invalid_timestamp"] = 1
    account = VendorAccount(
        raw_in=591,
        canonical_out=555,
        duplicates=30,
        dead_letters={
            "invalid_json": 2,
            "invalid_timestamp": 1,
            "missing_event_id": 2,
            "missing_event_type": 1,
        },
        skipped=0,
    )
    feed = FeedResult(591, control_lines=control_lines)
    view: Any = _NoStats()
    return build_summary({"airship": account}, {"airship": sample}, {"airship": feed}, view)


def test_control_lines_and_skips_add_up_to_the_samples_skips() -> None:
    summary = _airship(control_lines=9)
    row = summary["vendors"]["airship"]
    assert row["skipped"] + row["control_lines_not_published"] == row["expected"]["skipped"]
    assert row["balanced"] is True and row["problems"] == []
    assert summary["balanced"] is True


def test_a_summary_that_does_not_add_up_is_not_balanced() -> None:
    """The issue's run: 0 skipped + 14 control lines against 9 expected skips was 'balanced'
    (the check compared the worker's count with the connector's only)."""
    summary = _airship(control_lines=14)
    row = summary["vendors"]["airship"]
    assert row["balanced"] is False and summary["balanced"] is False
    assert any("control lines 14" in problem for problem in row["problems"]), row["problems"]


def _view() -> StatsView:
    view = StatsView.__new__(StatsView)
    view.latest = {}
    return view


def test_the_once_screen_is_not_live_and_offers_no_page() -> None:
    console = Console(width=160, record=True)
    accounts = {"leanplum": VendorAccount(raw_in=1, canonical_out=1)}
    console.print(render(accounts, _view(), "1h", 10, "http://127.0.0.1:8080/", once=True))
    text = console.export_text()
    assert "Ctrl-C" not in text and "live" not in text
    assert "http://" not in text
    console = Console(width=160, record=True)
    console.print(render(accounts, _view(), "1h", 10, "http://127.0.0.1:8080/"))
    assert "Ctrl-C stops" in console.export_text()


@pytest.mark.parametrize(
    ("logger", "message", "tagged"),
    [
        ("connectors.segment", "segment request 1 answered 400: body is not JSON", True),
        ("connectors.airship", "the stream was cut: ClientPayloadError(...)", True),
        ("connectors.airship", "nothing received for 1s; reconnecting", True),
        ("connectors.airship", "Kafka refused a record", False),
        ("connectors.leanplum", "answered 400", False),
    ],
)
def test_the_demos_deliberate_faults_say_so(logger: str, message: str, tagged: bool) -> None:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, "%s", (message,), None)
    assert DeliberateFaults().filter(record)
    assert (DELIBERATE_HINT in record.getMessage()) is tagged


def test_the_stats_view_drops_a_window_at_its_tombstone() -> None:
    class _Msg:
        def __init__(self, key: bytes, value: bytes | None) -> None:
            self._key, self._value = key, value

        def key(self) -> bytes:
            return self._key

        def value(self) -> bytes | None:
            return self._value

        def error(self) -> None:
            return None

    class _Consumer:
        def __init__(self, messages: list[_Msg]) -> None:
            self.messages = messages

        def poll(self, timeout: float) -> _Msg | None:
            return self.messages.pop(0) if self.messages else None

    view = _view()
    view.latest = {b"SEGMENT|app|c|1m|0": {"total": 3}, b"SEGMENT|app|c|1h|0": {"total": 3}}
    view.consumer = _Consumer([_Msg(b"SEGMENT|app|c|1m|0", None)])  # type: ignore[assignment]
    view.poll(0.2)
    assert view.latest == {b"SEGMENT|app|c|1h|0": {"total": 3}}
