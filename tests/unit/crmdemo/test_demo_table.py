"""The demo's terminal table (rich): full headers, ids never cut, and unique opens merged from
the ``CampaignStats`` sketches of a campaign's windows (a union, not a sum)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from crmdemo.demo import StatsView, VendorAccount, render
from processors.records import WindowCounts, stats_record

LONG_ID = "spring-sale-2026-reactivation-cohort-b-with-a-very-long-campaign-identifier"


def _view(records: list[dict[str, Any]]) -> StatsView:
    view = StatsView.__new__(StatsView)  # no Kafka: the records the consumer would have read
    view.latest = {f"{i}".encode(): r for i, r in enumerate(records)}
    return view


def _window(start: int, openers: list[str]) -> dict[str, Any]:
    counts = WindowCounts(lg_k=12)
    for offset, who in enumerate(openers):
        counts.apply("raw/0", offset, "OPEN", "PUSH", who)
    counts.named((start, "Spring sale"))
    return stats_record(f"LEANPLUM|app|{LONG_ID}", "1h", start, 3600, counts, start)


def test_unique_opens_are_the_union_of_the_windows_sketches() -> None:
    # u:1 opened in both windows: 3 opens, 2 unique openers in the first hour, 3 in the second.
    view = _view([_window(0, ["u:1", "u:2", "u:1"]), _window(3_600_000, ["u:1", "u:3", "u:4"])])
    (row,) = view.totals("1h")
    assert row.total == 6
    assert row.counts == {"OPEN": 6}
    assert row.unique_opens == 4  # not 2 + 3
    assert row.named[1] == "Spring sale"


def test_the_table_has_full_headers_and_whole_ids() -> None:
    view = _view([_window(0, ["u:1", "u:2"])])
    accounts = {"leanplum": VendorAccount(raw_in=3, canonical_out=2, duplicates=1)}
    console = Console(width=120, record=True)
    console.print(render(accounts, view, "1h", 10, "http://127.0.0.1:8080/"))
    text = console.export_text()
    for header in ("duplicates", "dead letters", "unique OPEN", "DELIVERY", "UNSUBSCRIBE"):
        assert f" {header} " in text, header  # whole, on one line
    # Nothing is cropped at 120 columns, and the long id folds onto several lines, whole.
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 120
    head = next(i for i, line in enumerate(lines) if " campaign " in line and " total " in line)
    start, end = lines[head].index(" campaign "), lines[head].index(" name ")
    flat = "".join(line[start:end].strip() for line in lines[head + 2 :] if line.strip())
    assert flat.startswith(LONG_ID)
    assert "web view: http://127.0.0.1:8080/" in text
    assert "campaigns with stats: 1" in text


def test_a_row_adds_up_with_the_other_column() -> None:
    """Events of types without a column (SEND_REQUESTED, OTHER, ...) are in "other", so the
    event-type columns of a row sum to its total (issue 22 item 3)."""
    counts = WindowCounts(lg_k=12)
    for offset, event_type in enumerate(["OPEN", "OTHER", "SEND_REQUESTED", "OTHER", "SEND"]):
        counts.apply("raw/0", offset, event_type, "PUSH", f"u:{offset}")
    view = _view([stats_record("AIRSHIP|app|c-1", "1h", 0, 3600, counts, 0)])
    console = Console(width=160, record=True)
    console.print(render({}, view, "1h", 10))
    lines = console.export_text().splitlines()
    head = next(line for line in lines if " total " in line and " other" in line)
    headers = head.replace("unique OPEN", "unique_OPEN").split()[-9:]
    row = next(line for line in lines if "c-1" in line).split()[-9:]
    cells = dict(zip(headers, row, strict=True))
    assert cells["total"] == "5" and cells["other"] == "3"
    shown = ("SEND", "DELIVERY", "OPEN", "CLICK", "BOUNCE", "UNSUBSCRIBE", "other")
    assert sum(int(cells[h]) for h in shown) == int(cells["total"])


def test_traffic_of_no_campaign_is_named() -> None:
    """Events without a campaign id are a row labelled "(no campaign)", not a blank id (issue 22
    item 3)."""
    counts = WindowCounts(lg_k=12)
    counts.apply("raw/0", 0, "OPEN", "PUSH", "u:0")
    view = _view([stats_record("AIRSHIP|app|", "1h", 0, 3600, counts, 0)])
    console = Console(width=160, record=True)
    console.print(render({}, view, "1h", 10))
    row = next(line for line in console.export_text().splitlines() if "AIRSHIP" in line)
    assert row.split()[:4] == ["AIRSHIP", "app", "(no", "campaign)"], row
