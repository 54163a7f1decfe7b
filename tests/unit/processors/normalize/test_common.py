"""The shared parsing helpers at their limits (issue 11): depth, integer size, time range."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from processors.normalize.common import (
    DETAIL_VALUE_CHARS,
    MAX_DEPTH,
    MAX_EPOCH_MS,
    MAX_INT_DIGITS,
    RecordError,
    epoch_ms,
    iso_to_ms,
    parse_json,
    parse_object,
    shown,
    text,
)
from processors.normalize.model import RejectReason


def error(call: Any, *args: Any, **kwargs: Any) -> RecordError:
    with pytest.raises(RecordError) as caught:
        call(*args, **kwargs)
    return caught.value


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- depth ------------------------------------------------------------------------------------


def test_nesting_up_to_the_limit_is_read() -> None:
    assert parse_json(nested(MAX_DEPTH)) is not None
    assert parse_object(b'{"a":' + nested(MAX_DEPTH - 1) + b"}") == {
        "a": orjson.loads(nested(MAX_DEPTH - 1))
    }


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 1024, 1025, 100_000])
@pytest.mark.parametrize("digits", [False, True])  # the orjson path and the exact parser's
def test_nesting_beyond_the_limit_is_invalid_json_saying_so(depth: int, digits: bool) -> None:
    raw = b'{"n":' + (b"1" * 19 if digits else b"1") + b',"a":' + nested(depth) + b"}"
    exc = error(parse_object, raw)
    assert exc.reason is RejectReason.INVALID_JSON
    assert f"deeper than {MAX_DEPTH} levels" in exc.detail


def test_objects_count_as_levels_too() -> None:
    deep = b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)
    assert "deeper than" in error(parse_json, deep).detail


def test_many_brackets_without_depth_are_fine() -> None:
    """The bracket count only decides whether to walk the tree; breadth is not depth."""
    wide = b"[" + b",".join([b"[]"] * 10_000) + b"]"
    assert len(parse_json(wide)) == 10_000
    assert parse_json(b'["' + b"[" * 500 + b'"]') == ["[" * 500]


def test_text_of_a_value_nested_too_deep_raises_record_error() -> None:
    """Connectors call vendor_event_id on what orjson read (up to 1024 levels)."""
    deep = orjson.loads(nested(1000))
    assert error(text, deep).reason is RejectReason.INVALID_JSON
    assert error(text, {"a": orjson.loads(nested(300))}).reason is RejectReason.INVALID_JSON
    assert text(orjson.loads(nested(MAX_DEPTH))) is None


# --- exact integers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    [
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "9" * MAX_INT_DIGITS,
    ],
)
def test_integers_of_any_size_are_read_and_written_exactly(literal: str) -> None:
    record = parse_object(f'{{"id": {literal}, "ids": [{literal}], "o": {{"x": {literal}}}}}')
    assert text(record["id"]) == literal  # §1: never through a double
    assert text(record["ids"]) == literal
    assert text(record["o"]) == f'{{"x":{literal}}}'


def test_integers_longer_than_the_limit_are_invalid_json() -> None:
    exc = error(parse_json, b"[" + b"1" * (MAX_INT_DIGITS + 1) + b"]")
    assert exc.reason is RejectReason.INVALID_JSON
    assert f"{MAX_INT_DIGITS + 1} digits" in exc.detail


@pytest.mark.parametrize(
    "raw",
    [
        b"[NaN]",
        b"[Infinity]",
        b"[-Infinity]",
        b"[1e400]",
        b'["\\ud800"]',
        b'["\xff"]',
        b'["\xed\xa0\x80"]',  # a surrogate encoded as UTF-8
        b"\xef\xbb\xbf[]",
    ],
)
@pytest.mark.parametrize("digits", [False, True])
def test_what_orjson_refuses_the_exact_parser_refuses(raw: bytes, digits: bool) -> None:
    if digits:  # a run of 20 digits sends the record to the exact parser
        raw = raw.replace(b"[", b'["12345678901234567890",', 1)
    assert error(parse_json, raw).reason is RejectReason.INVALID_JSON


def test_both_parsers_give_the_same_values() -> None:
    doc = {"s": "é\u2028\x00", "f": [0.1, -0.0, 1e308, 5e-324], "n": None, "b": [True, False]}
    raw = json.dumps(doc).encode()
    padded = json.dumps({**doc, "pad": "1" * 20}).encode()
    assert {**parse_json(raw), "pad": "1" * 20} == parse_json(padded)


@pytest.mark.parametrize(
    "literal",
    [
        "9223372036854775807",  # 2**63 - 1
        "9999999999999999999",  # the largest of 19 digits: orjson reads it as an unsigned int
        "18446744073709551615",  # 2**64 - 1
        "18446744073709551616",  # 2**64: beyond orjson, the exact parser's
        "-9223372036854775808",  # -2**63
        "-9223372036854775809",  # below -2**63: the exact parser's
        "-999999999999999999",
        "123456789012345678901234567890",
    ],
)
def test_integers_around_64_bits_are_exact(literal: str) -> None:
    assert parse_json(f'{{"n": {literal}, "id": "{literal}"}}'.encode()) == {
        "n": int(literal),
        "id": literal,
    }
    assert parse_json(f"[{literal}.0]".encode()) == [float(literal)]


def test_integral_floats_keep_their_integer_text() -> None:
    assert text(parse_json(b"[1562109497426.0]")) == "1562109497426"
    assert text(parse_json(b"[1e20]")) == "100000000000000000000"


# --- times ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        2**63,
        9223372036854774807,  # its 1h window end overflowed an Avro long
        MAX_EPOCH_MS + 1,
        -1,
        1e19,
        float("inf"),
        float("nan"),
        1562109497426.5,
    ],
)
def test_epoch_ms_outside_the_range_or_not_integral_is_invalid(value: Any) -> None:
    exc = error(epoch_ms, value, "event_timestamp")
    assert exc.reason is RejectReason.INVALID_TIMESTAMP


def test_epoch_ms_range_is_inclusive() -> None:
    assert epoch_ms(0, "t") == 0
    assert epoch_ms(MAX_EPOCH_MS, "t") == MAX_EPOCH_MS
    assert epoch_ms(float(MAX_EPOCH_MS), "t") == MAX_EPOCH_MS
    assert "outside 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z" in (
        error(epoch_ms, 2**64, "event_timestamp").detail
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970-01-01T00:00:00.000Z", 0),
        ("9999-12-31T23:59:59.999Z", MAX_EPOCH_MS),
        ("9999-12-31T23:59:59.9999999Z", MAX_EPOCH_MS),
        ("2026-11-29T10:00:00+23:59", 1795860060000),  # 2026-11-28T10:01:00Z
    ],
)
def test_iso_range_edges(value: str, expected: int) -> None:
    assert iso_to_ms(value, "t") == expected


@pytest.mark.parametrize(
    "value",
    [
        "1969-12-31T23:59:59.999Z",
        "0001-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999-00:01",  # 10000-01-01 in UTC
        "2026-11-29T10:00:00+24:00",
        "2026-11-29T10:00:00+99:99",
        "2026-11-29T10:00:00-0060",
        "\uff12\uff10\uff12\uff16-11-29T10:00:00Z",  # fullwidth digits
        "\u0662\u0660\u0662\u0666-11-29T10:00:00Z",  # Arabic-Indic digits
    ],
)
def test_iso_outside_the_range_or_not_ascii_is_invalid(value: str) -> None:
    assert error(iso_to_ms, value, "t").reason is RejectReason.INVALID_TIMESTAMP


def test_leanplum_time_before_1970_is_invalid() -> None:
    exc = error(iso_to_ms, "1969-12-31 23:59:59.999", "properties.time", assume_utc=True)
    assert exc.reason is RejectReason.INVALID_TIMESTAMP


# --- details stay short -----------------------------------------------------------------------


def test_a_detail_quotes_a_huge_value_only_in_part() -> None:
    huge = "2026-" + "9" * 400_000
    detail = error(iso_to_ms, huge, "time").detail
    assert len(detail) < 200
    assert "400005 characters" in detail


@pytest.mark.parametrize(
    "value", ["x" * 1000, 10**600, [1] * 1000, {"a": 1}, orjson.loads(nested(900))]
)
def test_shown_is_short_for_any_value(value: Any) -> None:
    assert len(shown(value)) <= DETAIL_VALUE_CHARS + 30
