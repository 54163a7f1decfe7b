"""The query API's pure half: parameter validation, campaign ids, rate formulas."""

from __future__ import annotations

import pytest

from processors.api.query import (
    MAX_WINDOWS,
    RATES,
    TIME_END_MS,
    CampaignKey,
    ListQuery,
    QueryError,
    TimeRange,
    decode_id,
    encode_id,
    formula,
    parse_campaign_query,
    parse_list_query,
    rates,
)
from processors.normalize.model import CanonicalEvent, Channel, EventType, Vendor
from processors.records import campaign_key

NOW = 1_796_034_645_123  # 2026-11-30T10:30:45.123Z
HOUR = 3_600_000
MINUTE = 60_000


def error_of(params: list[tuple[str, str]]) -> dict[str, str]:
    with pytest.raises(QueryError) as info:
        parse_list_query(params, NOW)
    return info.value.body()


# --- parameters ----------------------------------------------------------------------------


def test_list_defaults_are_the_longest_range_ending_with_the_current_window() -> None:
    q = parse_list_query([], NOW)
    assert q.range.window == "1h"
    assert q.range.to_ms == NOW - NOW % HOUR + HOUR
    assert q.range.windows == MAX_WINDOWS
    assert (q.vendor, q.app_id, q.q, q.limit) == (None, None, None, 100)
    one_minute = parse_list_query([("window", "1m")], NOW).range
    assert one_minute.to_ms == NOW - NOW % MINUTE + MINUTE
    assert one_minute.windows == MAX_WINDOWS


def test_list_parameters_parsed() -> None:
    q = parse_list_query(
        [
            ("vendor", "AIRSHIP"),
            ("app_id", "app 1"),
            ("from", str(NOW - 2 * HOUR)),
            ("to", str(NOW)),
            ("window", "1m"),
            ("q", "Sale"),
            ("limit", "1000"),
        ],
        NOW,
    )
    assert q == ListQuery(
        range=TimeRange("1m", NOW - NOW % MINUTE - 2 * HOUR, NOW - NOW % MINUTE + MINUTE),
        vendor="AIRSHIP",
        app_id="app 1",
        q="Sale",
        limit=1000,
    )


def test_bounds_widen_to_whole_windows() -> None:
    r = parse_list_query([("from", str(HOUR + 1)), ("to", str(2 * HOUR + 1))], NOW).range
    assert (r.from_ms, r.to_ms, r.windows) == (HOUR, 3 * HOUR, 2)
    assert HOUR in r and 2 * HOUR in r and 3 * HOUR not in r and HOUR - 1 not in r
    assert list(r.starts()) == [HOUR, 2 * HOUR]
    # Only `from`: to is the end of the current window; only `to`: from is MAX_WINDOWS before.
    assert parse_list_query([("from", str(NOW - 1))], NOW).range.windows == 1
    r = parse_list_query([("to", str(MAX_WINDOWS * HOUR * 3))], NOW).range
    assert (r.from_ms, r.windows) == (2 * MAX_WINDOWS * HOUR, MAX_WINDOWS)
    assert parse_list_query([("to", "1")], NOW).range == TimeRange("1h", 0, HOUR)
    assert parse_list_query([("to", str(TIME_END_MS))], NOW).range.to_ms == TIME_END_MS


def test_empty_values_are_absent_parameters() -> None:
    assert parse_list_query([("q", ""), ("vendor", ""), ("window", "")], NOW) == parse_list_query(
        [], NOW
    )


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ([("window", "5m")], "window"),
        ([("window", "1H")], "window"),
        ([("from", "10"), ("to", "10")], "from"),
        ([("from", "20"), ("to", "10")], "from"),
        ([("from", str(NOW + HOUR))], "from"),  # after the default `to`
        ([("to", "0")], "to"),
        ([("from", "-1")], "from"),
        ([("from", "1e3")], "from"),
        ([("to", " 5")], "to"),
        ([("to", str(TIME_END_MS + 1))], "to"),
        ([("to", "9" * 40)], "to"),
        ([("vendor", "BRAZE")], "vendor"),
        ([("limit", "0")], "limit"),
        ([("limit", "1001")], "limit"),
        ([("limit", "ten")], "limit"),
        ([("q", "x" * 1001)], "q"),
        ([("app_id", "x" * 1001)], "app_id"),
        ([("vendors", "AIRSHIP")], "vendors"),
        ([("vendor", "AIRSHIP"), ("vendor", "SEGMENT")], "vendor"),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(
    params: list[tuple[str, str]], parameter: str
) -> None:
    body = error_of(params)
    assert body["parameter"] == parameter
    assert set(body) == {"error", "parameter"} and body["error"]


def test_a_vendor_in_either_case() -> None:
    """The CLI and the settings name vendors in lower case; the API takes either (issue 22
    item 9). Formerly ``leanplum`` was a 400."""
    for given in ("leanplum", "LEANPLUM", "Leanplum"):
        assert parse_list_query([("vendor", given)], NOW).vendor == "LEANPLUM"
    assert error_of([("vendor", "braze")])["parameter"] == "vendor"


def test_ten_years_of_minutes_is_refused() -> None:
    ten_years = 10 * 365 * 24 * HOUR
    body = error_of([("window", "1m"), ("from", str(NOW - ten_years)), ("to", str(NOW))])
    assert body["parameter"] == "from"
    assert "10000" in body["error"]
    # The same range in hours is fine up to MAX_WINDOWS, and one window more is not.
    start = NOW - NOW % HOUR
    ok = [("from", str(start - MAX_WINDOWS * HOUR)), ("to", str(start))]
    assert parse_list_query(ok, NOW).range.windows == MAX_WINDOWS
    too_long = [("from", str(start - (MAX_WINDOWS + 1) * HOUR)), ("to", str(start))]
    assert error_of(too_long)["parameter"] == "from"


def test_campaign_query() -> None:
    key = CampaignKey("SEGMENT", "app", "c/1")
    q = parse_campaign_query(key.id, [("window", "1m"), ("from", "0"), ("to", "60000")], NOW)
    assert (q.key, q.range) == (key, TimeRange("1m", 0, MINUTE))
    with pytest.raises(QueryError) as info:
        parse_campaign_query(key.id, [("limit", "5")], NOW)  # a list parameter
    assert info.value.parameter == "limit"
    with pytest.raises(QueryError) as info:
        parse_campaign_query(key.id, [("window", "1d")], NOW)
    assert info.value.parameter == "window"


def test_filters() -> None:
    r = TimeRange("1h", 0, HOUR)
    key = CampaignKey("AIRSHIP", "App-7", "Spring|Sale")
    assert ListQuery(r).matches(key, None)
    assert ListQuery(r, vendor="AIRSHIP", app_id="App-7").matches(key, "x")
    assert not ListQuery(r, vendor="SEGMENT").matches(key, "x")
    assert not ListQuery(r, app_id="app-7").matches(key, "x")  # app_id is exact
    for text in ("spring|s", "APP-7", "winter"):  # q: id, app id or name, any case
        assert ListQuery(r, q=text).matches(key, "Winter push")
    assert not ListQuery(r, q="autumn").matches(key, "Winter push")
    assert not ListQuery(r, q="winter").matches(key, None)


# --- campaign ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_id", "campaign_id"),
    [
        ("app", "spring-sale"),
        ("", ""),
        ("a|b", "50% off|today"),
        ("%7C", "%25|%"),
        ("앱", "캠페인 🎉 / ?#&="),
        ("x" * 300, "y" * 700),
    ],
)
def test_id_round_trip_and_agreement_with_the_worker_key(app_id: str, campaign_id: str) -> None:
    for vendor in Vendor:
        key = CampaignKey(vendor.value, app_id, campaign_id)
        assert decode_id(key.id) == key
        assert "=" not in key.id and "/" not in key.id and "+" not in key.id
        event = CanonicalEvent(
            event_id="e",
            vendor=vendor,
            vendor_event_id="e",
            vendor_event_type="open",
            event_type=EventType.OPEN,
            occurred_at=0,
            channel=Channel.PUSH,
            app_id=app_id or None,
            campaign_id=campaign_id or None,
        )
        # The API's key is the stats table's key: the worker looks a decoded id up directly.
        assert key.key == campaign_key(event)
        assert CampaignKey.from_key(campaign_key(event)) == key
        fields = key.fields()
        assert fields["app_id"] == (app_id or None)
        assert fields["campaign_id"] == (campaign_id or None)


def test_the_specs_example_id() -> None:
    assert encode_id("LEANPLUM|app-1|spring-sale") == "TEVBTlBMVU18YXBwLTF8c3ByaW5nLXNhbGU"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",  # not UTF-8 once decoded
        "TEVBTlBMVU18YXBwLTF8c3ByaW5nLXNhbGU=",  # padding
        "TEVBTlBMVU18YXBwLTF8c3ByaW5nLXNhbGV",  # non-canonical trailing bits
        encode_id("LEANPLUM|app"),  # two parts
        encode_id("LEANPLUM|a|b|c"),  # four parts
        encode_id("BRAZE|app|c"),  # unknown vendor
        encode_id("leanplum|app|c"),
        encode_id("LEANPLUM|50%|c"),  # '%' not escaped: no worker key looks like this
        encode_id("LEANPLUM|%41|c"),
        "TEVB+TlBM",
        "a" * 5000,
    ],
)
def test_malformed_ids_are_400s_on_id(bad: str) -> None:
    with pytest.raises(QueryError) as info:
        decode_id(bad)
    assert info.value.parameter == "id"


# --- rates ---------------------------------------------------------------------------------


def figures(counts: dict[str, int], uniques: dict[str, int]) -> dict[str, object]:
    return {
        "total": sum(counts.values()),
        "event_type_counts": counts,
        "channel_counts": {},
        "uniques": {"recipients": 0, "by_event_type": uniques, "unattributed": 0},
    }


def test_rates() -> None:
    got = rates(
        figures(
            {"SEND": 200, "DELIVERY": 180, "OPEN": 90, "CLICK": 30, "BOUNCE": 10, "UNSUBSCRIBE": 9},
            {"SEND": 150, "DELIVERY": 120, "OPEN": 60, "CLICK": 15},
        )
    )
    assert got == {
        "delivery_rate": 180 / 200,
        "unique_open_rate": 60 / 120,
        "send_open_rate": 60 / 150,
        "unique_click_rate": 15 / 120,
        "click_to_open_rate": 15 / 60,
        "bounce_rate": 10 / 200,
        "unsubscribe_rate": 9 / 180,
    }


def test_rates_are_null_when_the_denominator_is_zero() -> None:
    assert rates(figures({}, {})) == dict.fromkeys(RATES)
    # Opens without any delivery (a vendor that reports none): the unique rates are null,
    # click-to-open is not.
    got = rates(figures({"OPEN": 5, "CLICK": 1}, {"OPEN": 4, "CLICK": 1}))
    assert got["unique_open_rate"] is None and got["click_to_open_rate"] == 1 / 4
    # Not clamped: late deliveries of earlier sends.
    assert rates(figures({"SEND": 1, "DELIVERY": 3}, {}))["delivery_rate"] == 3


def test_formulas_read_as_documented() -> None:
    assert formula("delivery_rate") == "DELIVERY / SEND"
    assert formula("click_to_open_rate") == "unique CLICK recipients / unique OPEN recipients"
    # The vendors' two conventions of an open rate, side by side (docs/events.md, "Rates").
    assert formula("unique_open_rate") == "unique OPEN recipients / unique DELIVERY recipients"
    assert formula("send_open_rate") == "unique OPEN recipients / unique SEND recipients"
