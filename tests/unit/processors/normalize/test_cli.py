"""``crm-stream normalize``: one JSON line per input line for any input, exit 0.

Each poison record of issue 11 (deep nesting in every vendor, the three huge Pinpoint
timestamps, a 400,000-character field) once made the command exit 1 with a traceback and the
worker exit 70 on every restart. Here each goes through the CLI's own function and must come
out as one line: an event, or a reject with a §5 reason and a short detail.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.normalize import NORMALIZERS
from processors.normalize.cli import normalize_lines
from processors.normalize.common import MAX_DEPTH, MAX_EPOCH_MS
from processors.normalize.model import NormalizeContext

REPO = Path(__file__).resolve().parents[4]
CTX = NormalizeContext(app_id="app-1")
HOLE = "\x01hole\x01"  # where a test puts raw JSON text into a valid record

# One valid record per vendor, with HOLE in a field the normalizer reads (a campaign id).
VALID: dict[str, dict[str, Any]] = {
    "leanplum": {
        "event_id": "x1",
        "name": "(Leanplum) Email Send",
        "properties": {
            "time": "2026-11-29 10:00:00.000",
            "channel": "Email",
            "event_type": "Send",
            "campaign_id": HOLE,
        },
    },
    "pinpoint": {
        "event_type": "_campaign.send",
        "event_timestamp": 1796032800000,
        "arrival_timestamp": 1796032800250,
        "application": {"app_id": "app-1"},
        "client": {"client_id": "endpoint-1"},
        "attributes": {
            "campaign_id": HOLE,
            "campaign_activity_id": "run-1",
            "delivery_type": "GCM",
            "campaign_send_status": "SUCCESS",
        },
    },
    "segment": {
        "type": "track",
        "event": "Email Opened",
        "messageId": "m1",
        "timestamp": "2026-11-29T10:00:00.000Z",
        "properties": {"campaign_id": HOLE},
    },
    "flarelane": {
        "id": "01JDQ7Z8Y0000000000000000",
        "type": "push.sent",
        "time": "2026-11-29T10:00:00Z",
        "projectid": "p1",
        "campaign_id": HOLE,
    },
    "airship": {
        "id": "a1",
        "type": "SEND",
        "offset": "1",
        "occurred": "2026-11-29T10:00:00.000Z",
        "processed": "2026-11-29T10:00:00.100Z",
        "device": {"channel": "c1", "device_type": "IOS"},
        "body": {"push_id": "push-1", "group_id": HOLE},
    },
}
VENDORS = sorted(NORMALIZERS)


def record(vendor: str, value: bytes, **fields: Any) -> bytes:
    """The vendor's valid record with ``value`` (raw JSON text) in the hole."""
    doc = {**VALID[vendor], **fields}
    return orjson.dumps(doc).replace(orjson.dumps(HOLE), value)


def cli(vendor: str, data: bytes) -> list[dict[str, Any]]:
    """``crm-stream normalize VENDOR`` on ``data``: its output lines, parsed."""
    out = io.BytesIO()
    count = normalize_lines(vendor, io.BytesIO(data), out, CTX)
    lines = out.getvalue().split(b"\n")
    assert lines.pop() == b"", "output does not end with a newline"
    assert count == len(lines)
    return [orjson.loads(line) for line in lines]


def one(vendor: str, raw: bytes) -> dict[str, Any]:
    (result,) = cli(vendor, raw + b"\n")
    assert result.get("reject") != "normalizer_error", result
    return result


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_valid_records_are_events(vendor: str) -> None:
    result = one(vendor, record(vendor, b'"c-1"'))
    assert result["campaign_id"] == "c-1"


# --- deep nesting -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH, 250, 300, 1025, 50_000])
@pytest.mark.parametrize("vendor", VENDORS)
def test_deep_nesting_is_invalid_json_saying_so(vendor: str, depth: int) -> None:
    for deep in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        result = one(vendor, record(vendor, deep))
        assert result["reject"] == "invalid_json"
        assert f"deeper than {MAX_DEPTH} levels" in result["detail"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_nesting_within_the_limit_is_an_event(vendor: str) -> None:
    result = one(vendor, record(vendor, b"[" * 10 + b'"c-9"' + b"]" * 10))
    assert result["campaign_id"] == "c-9"  # arrays are comma-joined (§1)


def test_the_issue_reproduction() -> None:
    """The command from issue 11, verbatim."""
    raw = (
        '{"event_id":"x1","name":"(Leanplum) Email Send","properties":{"time":'
        '"2026-11-29 10:00:00.000","channel":"Email","event_type":"Send","campaign_id":'
        + "[" * 300
        + "]" * 300
        + "}}"
    ).encode()
    assert one("leanplum", raw)["reject"] == "invalid_json"


def test_deep_nesting_inside_pinpoints_endpoint_string_leaves_the_event() -> None:
    """The endpoint is a JSON document in a string [A-12]: its problem is an attribute."""
    endpoint = '{"User":{"UserId":' + "[" * 300 + "]" * 300 + "}}"
    raw = record("pinpoint", b'"c-1"', client_context={"custom": {"endpoint": endpoint}})
    result = one("pinpoint", raw)
    assert result["user_id"] is None
    assert "deeper than" in result["attributes"]["endpoint_problem"]


# --- huge integers ----------------------------------------------------------------------------

ISSUE_TIMESTAMPS = [
    18446744073709551616,  # crashed normalize
    9223372036854775808,  # normalized, then no Avro long
    9223372036854774807,  # normalized, then its window end overflowed
]


@pytest.mark.parametrize("timestamp", [*ISSUE_TIMESTAMPS, MAX_EPOCH_MS + 1, -1])
def test_pinpoint_timestamps_out_of_range_are_invalid_timestamp(timestamp: int) -> None:
    raw = record("pinpoint", b'"c-1"').replace(b"1796032800000", str(timestamp).encode())
    result = one("pinpoint", raw)
    assert result["reject"] == "invalid_timestamp"
    assert str(timestamp) in result["detail"] and "outside" in result["detail"]


@pytest.mark.parametrize("timestamp", ISSUE_TIMESTAMPS)
def test_pinpoint_email_arrival_timestamp_out_of_range_is_invalid(timestamp: int) -> None:
    """Email engagement events take arrival_timestamp [A-11]: same bounds."""
    raw = record("pinpoint", b'"c-1"', event_type="_email.open")
    raw = raw.replace(b"1796032800250", str(timestamp).encode())
    assert one("pinpoint", raw)["reject"] == "invalid_timestamp"


def test_the_latest_time_is_an_event() -> None:
    raw = record("pinpoint", b'"c-1"').replace(b"1796032800000", str(MAX_EPOCH_MS).encode())
    assert one("pinpoint", raw)["occurred_at"] == MAX_EPOCH_MS


@pytest.mark.parametrize("timestamp", ISSUE_TIMESTAMPS)
def test_leanplum_row_time_out_of_range_is_invalid(timestamp: int) -> None:
    """A Parquet row's ``time`` is an epoch-ms long [A-7]: same bounds."""
    row = f'{{"event_id":"x1","name":"(Leanplum) Email Send","time":{timestamp}}}'
    assert one("leanplum", row.encode())["reject"] == "invalid_timestamp"


@pytest.mark.parametrize(
    "literal",
    [*(str(t) for t in ISSUE_TIMESTAMPS), "-9223372036854775809", "1" + "0" * 100],
)
@pytest.mark.parametrize("vendor", VENDORS)
def test_huge_integer_ids_are_formatted_exactly(vendor: str, literal: str) -> None:
    """§1: numeric ids are converted with exact integer formatting, never via a double."""
    assert one(vendor, record(vendor, literal.encode()))["campaign_id"] == literal


@pytest.mark.parametrize("vendor", VENDORS)
def test_nan_and_infinity_are_invalid_json(vendor: str) -> None:
    for poison in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        assert one(vendor, record(vendor, poison))["reject"] == "invalid_json"


# --- huge strings -----------------------------------------------------------------------------


def test_a_400000_character_field_is_one_event_line() -> None:
    """The normalizer's part; an output over the producer's limit is the worker's too_large."""
    huge = "a" * 400_000
    raw = record("pinpoint", b'"c-1"').replace(b'"run-1"', orjson.dumps(huge))
    result = one("pinpoint", raw)
    assert huge in result["event_id"]
    assert result["attributes"]["campaign_activity_id"] == huge


TIME_FIELD = {
    "leanplum": ("properties", "time"),
    "pinpoint": ("event_timestamp",),
    "segment": ("timestamp",),
    "flarelane": ("time",),
    "airship": ("occurred",),
}


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_400000_character_id_is_kept_and_time_rejected_briefly(vendor: str) -> None:
    huge = "9" * 400_000
    assert one(vendor, record(vendor, orjson.dumps(huge)))["campaign_id"] == huge

    doc = orjson.loads(record(vendor, b'"c-1"'))
    *parents, field = TIME_FIELD[vendor]
    target = doc
    for parent in parents:
        target = target[parent]
    target[field] = huge
    result = one(vendor, orjson.dumps(doc))
    assert result["reject"] == "invalid_timestamp"
    assert len(result["detail"]) < 200  # the dead letter keeps the raw record, not the detail


# --- any bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_any_bytes_give_one_line_each_and_the_last_needs_no_newline(vendor: str) -> None:
    data = b"\n".join(
        [
            record(vendor, b'"c-1"'),
            b"\xff\xfe\x00garbage",  # not UTF-8
            b'{"event_id": "\xc3"}',  # invalid UTF-8 inside a string
            b"",  # blank
            b"\r",
            b'{"truncated": ',
            b"[]",
            b"null",
            record(vendor, b'"c-2"'),  # last, without its newline
        ]
    )
    results = cli(vendor, data)
    assert len(results) == 9
    assert results[0]["campaign_id"] == "c-1" and results[-1]["campaign_id"] == "c-2"
    assert all(r.get("reject") != "normalizer_error" for r in results)


def test_the_command_exits_0_on_poison(tmp_path: Path) -> None:
    """The installed command, end to end: every poison kind, invalid UTF-8, no last newline."""
    lines = [record("leanplum", b"[" * 300 + b"]" * 300), b"\xff\xfe", record("leanplum", b"1")]
    path = tmp_path / "poison.ndjson"
    path.write_bytes(b"\n".join(lines))
    result = subprocess.run(
        [sys.executable, "-m", "crmcli", "normalize", "leanplum", str(path)],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("reject") for o in out] == ["invalid_json", "invalid_json", None]
