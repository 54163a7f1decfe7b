"""The replay server's pure parts: resume positions, subsets/filters, command-line options."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from crmcli import build_parser
from crmdemo.airship_replay import _Line, _passes, _start_index, options_from_args
from crmstream.errors import ConfigError


def lines(*offsets: str | None) -> list[_Line]:
    return [_Line(b"{}", o, {"id": f"e{i}", "offset": o}) for i, o in enumerate(offsets)]


def test_resume_after_the_line_with_that_offset() -> None:
    stream = lines("MTIzNQ", "NTIxMDM1", None, "QUJD")
    assert _start_index(stream, "MTIzNQ") == 1
    assert _start_index(stream, "QUJD") == 4  # at the end: only keep-alives follow
    assert _start_index(stream, "nope") is None  # unknown opaque offset: the server says 400


def test_numeric_offsets_also_resume_by_value() -> None:
    stream = lines("1000001215643", "1000001215650", "1000001215700")
    assert _start_index(stream, "1000001215645") == 1
    assert _start_index(stream, "2000000000000") == 3


def test_partitions_are_disjoint_and_cover_the_stream() -> None:
    records = [{"id": f"evt-{i}", "type": "SEND"} for i in range(200)]
    parts = [
        {
            r["id"]
            for r in records
            if _passes(r, {"subset": {"type": "PARTITION", "count": 3, "selection": k}})
        }
        for k in range(3)
    ]
    assert set().union(*parts) == {r["id"] for r in records}
    assert sum(len(p) for p in parts) == 200 and all(parts)
    assert all(zlib.crc32(i.encode()) % 3 == 1 for i in parts[1])


def test_types_and_device_types_filters_are_ored_objects() -> None:
    ios_send = {"id": "a", "type": "SEND", "device": {"device_type": "IOS"}}
    sms_open = {"id": "b", "type": "OPEN", "device": {"device_type": "SMS"}}
    body = {"filters": [{"types": ["SEND"], "device_types": ["ios"]}, {"device_types": ["sms"]}]}
    assert _passes(ios_send, body) and _passes(sms_open, body)
    assert not _passes(ios_send, {"filters": [{"types": ["OPEN"]}]})


def test_command_line_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed = tmp_path / "feed.ndjson"
    feed.write_text("{}\n")
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    monkeypatch.delenv("CRM_AIRSHIP_TOKEN", raising=False)
    monkeypatch.setenv("CRM_AIRSHIP_TOKEN_FILE", str(token_file))
    parser = build_parser()
    args = parser.parse_args(
        ["airship-replay", str(feed), "--fail", "402,500", "--stall-after", "5", "--stall", "2"]
    )
    options = options_from_args(args)
    assert options.fail == (402, 500) and options.stall_after == 5 and options.stall_s == 2.0
    assert options.token == "file-token" and options.redirect == "first" and options.gzip
    for bad in (["--fail", "x"], ["--fail", "200"], ["--redirect", "sometimes"]):
        with pytest.raises(ConfigError):
            options_from_args(parser.parse_args(["airship-replay", str(feed), *bad]))
    with pytest.raises(ConfigError):
        options_from_args(parser.parse_args(["airship-replay", str(tmp_path / "missing")]))
