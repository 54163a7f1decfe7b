"""Last-touch attribution, the pure rule (processors/attribution.py): exact cases, and generated
histories against a reference written here from the rule's words."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from crmstream.errors import ConfigError
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.attribution import (
    BUCKET_MS,
    MAX_TOUCHES,
    NO_EXPOSURE,
    OUTSIDE_WINDOW,
    RECENT_CONVERSIONS,
    UNATTRIBUTED,
    Conversion,
    Outcome,
    Tally,
    Touch,
    UserState,
    Windows,
    apply,
    attribution_id,
    confirm,
    conversion_from_fields,
    conversion_names,
    decode_items,
    encode_items,
    from_canonical,
    parse_conversion_json,
    rows,
    unattributed_rows,
    windows_of,
)
from processors.attribution_path import AttributionTable
from processors.campaigns import campaign_key
from processors.normalize.common import RecordError
from processors.outputs import Offsets
from processors.state import keys
from processors.state.table import WindowedTable
from processors.uniques import estimate
from tests.unit.processors.fake_engine import FakeOutputs, FakeStore

H = 3_600_000
D = 24 * H
T0 = 1_780_000_000_000
W = Windows(3 * D)


def touch(eid: str, at: int, vendor: str = "LEANPLUM", campaign: str = "c1", **kw: Any) -> Touch:
    return Touch(eid, at, vendor, kw.pop("app", "app"), campaign, kw.pop("type", "DELIVERY"), **kw)


def conv(
    cid: str, at: int, name: str = "Order Completed", value: float | None = None
) -> Conversion:
    return Conversion(cid, "u1", name, at, "conversions", value, "USD" if value else None)


def run(items: list[Any], windows: Windows = W, state: UserState | None = None) -> tuple:
    state = state or UserState()
    outcome = Outcome()
    made = apply(state, items, windows, outcome)
    # Whatever the state holds survives its encoding.
    assert UserState.decode(state.encode()) == state
    return made, outcome, state


def credited(made: list[Any]) -> list[tuple[str, str]]:
    return [(a.conversion.conversion_id, a.touch.campaign) for a in made]


def test_a_user_touched_by_two_vendors_credits_the_last_touch_across_vendors() -> None:
    lp = touch("LEANPLUM:1", T0, "LEANPLUM", "spring")
    air = touch("AIRSHIP:9", T0 + H, "AIRSHIP", "push-1", type="SEND")
    made, outcome, _ = run([lp, air, conv("o1", T0 + 2 * H, value=30.0)])
    assert credited(made) == [("o1", campaign_key("AIRSHIP", "app", "push-1"))]
    assert made[0].attribution_id == attribution_id("o1", air.campaign)
    assert outcome.attributed == 1
    # A late conversion (before the Airship push) goes to the touch before its own time.
    made, _, _ = run([lp, air, conv("o2", T0 + 30 * 60_000)])
    assert credited(made) == [("o2", lp.campaign)]


def test_a_conversion_after_the_window_is_not_attributed() -> None:
    t = touch("LEANPLUM:1", T0)
    made, outcome, _ = run([t, conv("o1", T0 + 3 * D + 1)])
    assert made == [] and outcome.unattributed == 1
    # At the window's very end it still is.
    made, _, _ = run([t, conv("o1", T0 + 3 * D)])
    assert credited(made) == [("o1", t.campaign)]


def test_a_conversion_before_any_exposure_stays_unattributed_whatever_arrives_later() -> None:
    made, outcome, state = run([conv("o1", T0)])
    assert made == [] and outcome.unattributed == 1
    # The touch arrives late but happened before the conversion: no re-attribution (rule 3).
    made, outcome, state = run([touch("LEANPLUM:1", T0 - H)], state=state)
    assert made == []
    # A touch after the conversion never counts for it either; the same conversion id again is a
    # replay (rule 4), ignored however many touches arrived.
    made, outcome, _ = run([touch("LEANPLUM:2", T0 + H), conv("o1", T0)], state=state)
    assert made == [] and outcome.replayed == 1


def test_repeats_count_once_per_user_campaign_and_name() -> None:
    t = touch("LEANPLUM:1", T0)
    made, outcome, state = run(
        [t, conv("o1", T0 + H), conv("o2", T0 + 2 * H), conv("s1", T0 + 2 * H, "Signed Up")]
    )
    assert credited(made) == [("o1", t.campaign), ("s1", t.campaign)]
    assert outcome.repeats == 1
    # Another campaign's touch: the next order is its own credit.
    t2 = touch("PINPOINT:7", T0 + 3 * H, "PINPOINT", "c2")
    made, _, _ = run([t2, conv("o3", T0 + 4 * H)], state=state)
    assert credited(made) == [("o3", t2.campaign)]


def test_duplicate_touches_and_replayed_batches_decide_the_same() -> None:
    items = [touch("LEANPLUM:1", T0), conv("o1", T0 + H), touch("LEANPLUM:1", T0)]
    made, _, state = run(items)
    assert len(state.touches) == 1
    again, outcome, _ = run(items, state=state)  # the feed sent the batch again
    assert again == [] and outcome.replayed == 1
    # Its attribution is sent again, the same (the first may never have reached Kafka)...
    assert outcome.resend == made
    # ... until Kafka acknowledged it; and never twice within one batch.
    assert confirm(state) and not confirm(state)
    again, outcome, _ = run(items, state=state)
    assert again == [] and outcome.resend == []
    fresh: set[str] = set()
    state, outcome = UserState(), Outcome()
    assert apply(state, items, W, outcome, fresh) == made
    apply(state, items[1:2], W, outcome, fresh)
    assert outcome.resend == [] and outcome.replayed == 1
    assert credited(made) == [("o1", touch("LEANPLUM:1", T0).campaign)]


def test_ties_go_to_the_larger_event_id_whatever_the_arrival_order() -> None:
    a, b = touch("AIRSHIP:a", T0, "AIRSHIP", "x"), touch("SEGMENT:b", T0, "SEGMENT", "y")
    for order in ([a, b], [b, a]):
        made, _, _ = run([*order, conv("o1", T0)])
        assert credited(made) == [("o1", b.campaign)]


def test_control_touches_credit_the_campaign_as_control() -> None:
    made, _, _ = run([touch("PINPOINT:h", T0, "PINPOINT", "c", type="CONTROL"), conv("o", T0 + 1)])
    assert made[0].control
    record = made[0].record(T0)
    assert record["control"] is True and record["touch_event_type"] == "CONTROL"


def test_windows_per_conversion_name() -> None:
    windows = windows_of(
        *Settings(attribution_window="1d,Order Completed=7d").attribution_windows()
    )
    assert windows.of("Order Completed") == 7 * D and windows.of("Signed Up") == D
    assert windows.longest_ms == 7 * D
    t = touch("LEANPLUM:1", T0)
    made, _, _ = run([t, conv("o", T0 + 5 * D), conv("s", T0 + 5 * D, "Signed Up")], windows)
    assert credited(made) == [("o", t.campaign)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("3d,3d", "two default"),
        ("3d,=1h", "empty"),
        ("a=1h,a=2h", "two windows"),
        ("3 weeks", "not a duration"),
        ("0s", "at least 1s"),
        ("3d,,", "empty entry"),
    ],
)
def test_a_bad_window_setting_stops_start_up_naming_the_variable(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"CRM_ATTRIBUTION_WINDOW": text})
    assert "CRM_ATTRIBUTION_WINDOW" in str(err.value) and problem in str(err.value)


def test_the_state_holds_at_most_the_newest_touches_within_the_window() -> None:
    items = [touch(f"LEANPLUM:{i:04d}", T0 + i * 1000) for i in range(MAX_TOUCHES + 5)]
    _, outcome, state = run(items)
    assert len(state.touches) == MAX_TOUCHES and outcome.touches_dropped == 5
    assert state.touches[0].event_id == "LEANPLUM:0005"
    # Everything older than the longest window before the newest item goes.
    _, _, state = run([touch("LEANPLUM:late", T0 + 10 * D), conv("o", T0 + 10 * D)], state=state)
    assert [t.event_id for t in state.touches] == ["LEANPLUM:late"]
    assert list(state.seen) == ["o"]


# --- generated histories against a reference ---------------------------------------------


def reference(
    items: list[Any], windows: Windows, misses: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """The rule, brute force: every touch that arrived before, no pruning. ``misses`` gets the
    unattributed conversions (id, why)."""
    arrived: list[Touch] = []
    seen: dict[str, int] = {}
    credits: dict[tuple[str, str], int] = {}
    out = []
    for n, item in enumerate(items):
        if isinstance(item, Touch):
            arrived.append(item)
            continue
        w = windows.of(item.name)
        newest = max(i.at for i in items[: n + 1])
        held = newest - windows.longest_ms  # older than this is not held
        order = list(seen)
        if seen.get(item.conversion_id, held - 1) >= held or (
            item.conversion_id in seen
            and order.index(item.conversion_id) >= len(order) - RECENT_CONVERSIONS
        ):
            continue
        seen.pop(item.conversion_id, None)
        seen[item.conversion_id] = newest
        fits = [t for t in arrived if max(item.at - w, held) <= t.at <= item.at]
        if not fits:
            if misses is not None:
                exposed = any(t.at <= item.at for t in arrived)
                misses.append((item.conversion_id, OUTSIDE_WINDOW if exposed else NO_EXPOSURE))
            continue
        last = max(fits, key=lambda t: (t.at, t.event_id))
        key = (last.campaign, item.name)
        if key in credits and credits[key] >= held:
            continue
        credits[key] = item.at
        out.append((item.conversion_id, last.campaign))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_generated_histories_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    windows = Windows(2 * D, {"Signed Up": 6 * H})
    items: list[Any] = []
    for i in range(rng.randint(5, 60) if seed % 4 else rng.randint(150, 300)):
        at = T0 + rng.randint(0, 5 * D)
        if rng.random() < 0.6:
            vendor = rng.choice(["LEANPLUM", "AIRSHIP", "PINPOINT", "SEGMENT", "FLARELANE"])
            items.append(touch(f"{vendor}:{i}", at, vendor, f"c{rng.randint(1, 3)}"))
        else:
            cid = f"o{rng.randint(0, 15)}"  # some ids repeat: replays
            if rng.random() < 0.5:
                cid = f"n{i}"  # ... many do not: more than RECENT_CONVERSIONS of them
            items.append(conv(cid, at, rng.choice(["Order Completed", "Signed Up"])))
    # In one batch or split at random: the state carries over.
    state = UserState()
    made = []
    outcome = Outcome()
    cut = rng.randint(0, len(items))
    for part in (items[:cut], items[cut:]):
        state = UserState.decode(state.encode())
        made += apply(state, part, windows, outcome)
    misses: list[tuple[str, str]] = []
    assert credited(made) == reference(items, windows, misses)
    assert [(c.conversion_id, why) for c, why in outcome.misses] == misses


@pytest.mark.parametrize("seed", range(40))
def test_a_replay_from_any_point_counts_nothing_twice(seed: int) -> None:
    """A crash replays a user's items from the committed position onto the state after them
    (restored from the changelog): nothing is attributed or missed a second time, late
    conversions (older than what is held) included."""
    rng = random.Random(seed)
    windows = Windows(2 * D, {"Signed Up": 6 * H})
    items: list[Any] = []
    for i in range(rng.randint(5, 40)):
        at = T0 + rng.randint(0, 8 * D)
        if rng.random() < 0.5:
            items.append(touch(f"AIRSHIP:{i}", at, "AIRSHIP", f"c{rng.randint(1, 3)}"))
        else:
            items.append(conv(f"o{i}", at, rng.choice(["Order Completed", "Signed Up"])))
    state, outcome = UserState(), Outcome()
    apply(state, items, windows, outcome)
    # A replay covers the batches not yet committed: what the user's newest time was when they
    # were decided is within the longest window of the newest now (the limit of rule 4).
    newest = [max(i.at for i in items[: n + 1]) for n in range(len(items))]
    first = min(n for n in range(len(items)) if newest[n] >= newest[-1] - windows.longest_ms)
    cut = rng.randint(first, len(items))
    replayed = Outcome()
    assert apply(UserState.decode(state.encode()), items[cut:], windows, replayed) == []
    assert replayed.misses == [] and replayed.attributed == 0
    # Known as a replay (by its input offset), any part of the history decides nothing again,
    # however far the user's time moved since.
    again = Outcome()
    restored = UserState.decode(state.encode())
    assert apply(restored, items[rng.randint(0, len(items)) :], windows, again, replay=True) == []
    assert again.misses == [] and again.attributed == again.unattributed == again.repeats == 0


# --- reading the inputs -------------------------------------------------------------------


def canonical(**kw: Any) -> dict[str, Any]:
    event = {
        "event_id": "LEANPLUM:1",
        "vendor": "LEANPLUM",
        "vendor_event_type": "Email Delivered",
        "event_type": "DELIVERY",
        "occurred_at": T0,
        "user_id": "u1",
        "campaign_id": "c1",
        "app_id": "a",
        "campaign_name": "Spring",
        "message_id": "m1",
        "variant_id": None,
    }
    event.update(kw)
    return event


def test_which_canonical_events_are_touches_and_conversions() -> None:
    names = conversion_names(["Order Completed"])
    user, item = from_canonical(canonical(), names) or ("", None)
    assert user == "u1" and isinstance(item, Touch) and item.campaign_name == "Spring"
    for kind in ("SEND", "IMPRESSION", "CONTROL"):
        assert isinstance(from_canonical(canonical(event_type=kind), names)[1], Touch)  # type: ignore[index]
    for kind in ("OPEN", "CLICK", "SEND_REQUESTED", "CAMPAIGN_ENTER", "OTHER"):
        assert from_canonical(canonical(event_type=kind), names) is None
    assert from_canonical(canonical(user_id=None), names) is None
    assert from_canonical(canonical(campaign_id=None), names) is None
    convert = from_canonical(
        canonical(event_type="CONVERSION", vendor_event_type="Campaign Convert"), names
    )
    assert convert is not None and isinstance(convert[1], Conversion)
    assert convert[1].name == "Campaign Convert" and convert[1].source == "LEANPLUM"
    # TAXONOMY A-4: Leanplum's single-goal exit is a conversion; another vendor's exit is not.
    exit_ = from_canonical(canonical(event_type="CAMPAIGN_EXIT", vendor_event_type="Exit"), names)
    assert exit_ is not None and isinstance(exit_[1], Conversion)
    assert from_canonical(canonical(event_type="CAMPAIGN_EXIT", vendor="AIRSHIP"), names) is None
    # Segment track names listed in CRM_CONVERSION_EVENTS, case-insensitively, as listed.
    seg = from_canonical(
        canonical(vendor="SEGMENT", event_type="OTHER", vendor_event_type="order completed"), names
    )
    assert seg is not None and isinstance(seg[1], Conversion) and seg[1].name == "Order Completed"
    assert (
        from_canonical(
            canonical(vendor="LEANPLUM", event_type="OTHER", vendor_event_type="Order Completed"),
            names,
        )
        is None
    )


def test_conversion_records_and_their_dead_letter_reasons() -> None:
    ok = parse_conversion_json(
        b'{"user_id":"u1","name":"Order Completed","occurred_at":"2026-05-28T10:00:00Z",'
        b'"value":19.5,"currency":"eur"}',
        "conversions/0/7",
    )
    assert ok == Conversion(
        "conversions/0/7", "u1", "Order Completed", 1_779_962_400_000, "conversions", 19.5, "EUR"
    )
    by_id = conversion_from_fields(
        {"user_id": "u1", "name": "x", "occurred_at": T0, "conversion_id": "ord-1"}, "p"
    )
    assert by_id.conversion_id == "ord-1" and by_id.at == T0
    bad = {
        b"not json": "invalid_json",
        b"[1]": "invalid_json",
        b'{"name":"x","occurred_at":1}': "missing_user_id",
        b'{"user_id":"","name":"x","occurred_at":1}': "missing_user_id",
        b'{"user_id":"u","occurred_at":1}': "missing_event_type",
        b'{"user_id":"u","name":"x","occurred_at":"yesterday"}': "invalid_timestamp",
        b'{"user_id":"u","name":"x"}': "invalid_timestamp",
        b'{"user_id":"u","name":"x","occurred_at":-5}': "invalid_timestamp",
        b'{"user_id":"u","name":"x","occurred_at":1,"value":"9"}': "invalid_conversion",
        b'{"user_id":"u","name":"x","occurred_at":1,"currency":"euro"}': "invalid_conversion",
        b'{"user_id":"u","name":"x","occurred_at":1,"price":3}': "invalid_conversion",
    }
    for raw, reason in bad.items():
        with pytest.raises(RecordError) as err:
            parse_conversion_json(raw, "p")
        assert err.value.reason.value == reason, raw


def test_items_travel_as_json() -> None:
    items = [touch("LEANPLUM:1", T0, variant_id="B"), conv("o1", T0, value=2.5)]
    assert decode_items("u1", encode_items(items)) == items
    with pytest.raises(ValueError):
        decode_items("u1", b'{"k":"t"}')


def test_rows_sum_per_vendor_and_campaign() -> None:
    lp, air = touch("LEANPLUM:1", T0), touch("AIRSHIP:1", T0, "AIRSHIP", "p", type="CONTROL")
    tallies: list[tuple[str, str, Tally]] = []
    for t, c in (
        (lp, conv("a", T0, value=10.0)),
        (lp, conv("b", T0, "Signed Up")),
        (air, conv("c", T0, value=1.0)),
    ):
        tally = Tally()
        made, _, _ = run([t, c])
        tally.add(made[0])
        tallies.append((t.campaign, c.name, tally))
    out = rows(tallies)
    assert [(r["vendor"], r["conversions"], r["control_conversions"]) for r in out] == [
        ("LEANPLUM", 2, 0),
        ("AIRSHIP", 0, 1),
    ]
    assert out[0]["value"] == {"USD": 10.0} and out[1]["control_value"] == {"USD": 1.0}
    assert out[0]["names"] == {
        "Order Completed": {"conversions": 1, "control_conversions": 0},
        "Signed Up": {"conversions": 1, "control_conversions": 0},
    }


# --- GET /api/attribution's parameters ----------------------------------------------------


def test_the_attribution_query_defaults_and_refusals() -> None:
    from processors.api.query import QueryError
    from processors.attribution_api import parse_query

    now = T0 + 25 * 60_000
    q = parse_query([], now, None)
    assert q.to_ms == T0 - T0 % H + H and q.from_ms == q.to_ms - 30 * D
    q = parse_query([("from", "5"), ("to", "9"), ("vendor", "airship"), ("name", "x")], now, None)
    assert (q.from_ms, q.to_ms, q.vendor, q.name) == (5, 9, "AIRSHIP", "x")
    assert q.params() == {"from": "5", "to": "9", "name": "x", "vendor": "AIRSHIP"}
    limited = parse_query([], now, frozenset({"a"}))
    assert limited.matches("LEANPLUM|a|c") and not limited.matches("LEANPLUM|b|c")
    for params, name in (
        ([("from", "9"), ("to", "5")], "from"),
        ([("to", "soon")], "to"),
        ([("vendor", "mailchimp")], "vendor"),
        ([("window", "1h")], "window"),
        ([("name", "a"), ("name", "b")], "name"),
    ):
        with pytest.raises(QueryError) as err:
            parse_query(params, now, None)
        assert err.value.parameter == name


def test_the_raw_path_reads_what_a_full_decode_of_events_reads() -> None:
    """The raw path's reading of its canonical events (:func:`from_event`) against what reading
    them back from ``events`` gives (:func:`from_canonical` of fastavro's decode), on events of
    every type and vendor, with and without the optional fields."""
    from crmstream.serde import AvroSerde
    from processors.attribution import from_event
    from processors.normalize.model import Channel, EventType, Vendor, make
    from processors.records import RawPosition, canonical_record

    serde = AvroSerde(Settings())
    names = conversion_names(["Order Completed"])
    rng = random.Random(5)
    pos = RawPosition("raw.x", 0, 0, T0, {})
    vendors = [v for v in Vendor if v.value != "UNKNOWN"]
    checked = 0
    for i in range(600):
        maybe = lambda text: text if rng.random() < 0.7 else None  # noqa: E731
        event = make(
            rng.choice(vendors),
            f"v{i}é",
            vendor_event_type=rng.choice(["Order Completed", "Email Delivered", "Convert", "x"]),
            event_type=rng.choice(list(EventType)),
            channel=rng.choice(list(Channel)),
            occurred_at=rng.randint(0, 2**41),
            user_id=maybe(f"user-{rng.randint(0, 9)}"),
            device_id=maybe("d"),
            campaign_id=maybe(f"c{i}"),
            campaign_name=maybe("Spring ☀"),
            message_id=maybe("m"),
            message_name=maybe("n"),
            experiment_id=maybe("e"),
            variant_id=maybe("B"),
            link_url=maybe("https://x"),
            error=maybe("err"),
            app_id=maybe("app"),
            attributes={"k": "v"} if rng.random() < 0.5 else {},
        )
        data = serde.encode("CanonicalEvent", canonical_record(event, pos, T0), "events")
        _, record = serde.decode(data, "events")
        assert from_event(event, names) == from_canonical(record, names), record
        checked += from_event(event, names) is not None
    assert checked > 50


def test_input_records_are_one_per_partition_with_each_users_items_in_order() -> None:
    from processors.attribution import decode_record, input_records

    t1 = Touch("AIRSHIP:1", T0, "AIRSHIP", "a", "c1", "SEND", variant_id="2")
    t2 = Touch("SEGMENT:2", T0 + 1, "SEGMENT", "", "c2", "DELIVERY")
    c1 = Conversion("SEGMENT:3", "u1", "Order Completed", T0 + 2, "SEGMENT")
    found = [("u1", t1), ("u2", t2), ("u1", c1), ("u3", t2)]
    records = input_records(found, lambda key: {b"u1": 0, b"u2": 1, b"u3": 0}[key])
    assert sorted(records) == [0, 1]
    assert decode_record(b"0", records[0]) == [("u1", [t1, c1]), ("u3", [t2])]
    assert decode_record(b"1", records[1]) == [("u2", [t2])]
    # A record written before (one user's items, keyed by the user) still reads.
    assert decode_record(b"u1", encode_items([t1, c1])) == [("u1", [t1, c1])]
    for key, value in ((b"", encode_items([t1])), (b"0", b'{"u":[]}'), (b"0", b'{"u":{"":[]}}')):
        with pytest.raises((ValueError, KeyError, TypeError)):
            decode_record(key, value)


def test_conversion_event_names_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {"CRM_CONVERSION_EVENTS": " Order Completed,,signed up ,Order Completed"}
    )
    assert settings.conversion_event_names() == ("Order Completed", "signed up")
    assert conversion_names(settings.conversion_event_names()) == {
        "order completed": "Order Completed",
        "signed up": "signed up",
    }
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"CRM_CONVERSION_EVENTS": "x" * 201})
    assert "CRM_CONVERSION_EVENTS" in str(err.value)


# --- the attribution table through a partial changelog ------------------------------------
#
# A kill -9 during a batch's seal can leave any prefix of the batch's changelog records on the
# changelog (the user states land, the hourly totals after them do not, or part of either). A
# restore then starts from that prefix and the batch is processed again from the committed
# position: the totals must come out exactly as without the crash.

W2 = Windows(2 * D, {"Signed Up": 6 * H})
NOW = 1_790_000_000_000


class SealedOutputs(FakeOutputs):
    """The fake outputs, noting where each seal ends in the changelog."""

    def __init__(self) -> None:
        super().__init__(partitions=1)
        self.seals: list[int] = []

    def seal(self) -> asyncio.Future[Offsets]:
        self.seals.append(len(self.changelog))
        return super().seal()


Records = list[list[tuple[str, list[Any]]]]
"""Per ``attribution-inputs`` offset (partition 0), the record's users and their items."""


def generated_records(rng: random.Random, n: int = 14) -> Records:
    records: Records = []
    decided: dict[str, list[str]] = {}
    for offset in range(n):
        record = []
        for user in rng.sample([f"u{i}" for i in range(6)], rng.randint(1, 4)):
            items: list[Any] = []
            for _ in range(rng.randint(1, 3)):
                at = T0 + rng.randint(0, 4 * D)
                if rng.random() < 0.45:
                    vendor = rng.choice(["AIRSHIP", "SEGMENT"])
                    kind = "CONTROL" if vendor == "AIRSHIP" and rng.random() < 0.3 else "SEND"
                    eid = f"{vendor}:{offset}:{len(items)}:{user}"
                    items.append(
                        Touch(eid, at, vendor, "app", f"c{rng.randint(1, 2)}", kind, None, None,
                              rng.choice([None, "1", "2"]))
                    )  # fmt: skip
                    continue
                mine = decided.setdefault(user, [])
                if mine and rng.random() < 0.15:
                    cid = rng.choice(mine)  # the raw path or the feed sending it again
                else:
                    cid = f"{user}-o{offset}-{len(items)}"
                    mine.append(cid)
                value = rng.choice([None, 10.5, 3.25])
                name = rng.choice(["Order Completed", "Signed Up"])
                items.append(Conversion(cid, user, name, at, "conversions", value, value and "USD"))
            record.append((user, items))
        records.append(record)
    return records


def split(rng: random.Random, offsets: range) -> list[range]:
    """``offsets`` as consecutive batches of random sizes (several records in most)."""
    out: list[range] = []
    start = offsets.start
    while start < offsets.stop:
        end = min(offsets.stop, start + rng.randint(1, 4))
        out.append(range(start, end))
        start = end
    return out


def table_of(root: Path, changelog: list[tuple[str, int, bytes, bytes | None]]) -> WindowedTable:
    """A table restored from ``changelog`` into an empty store (the local state wiped)."""
    table = WindowedTable(FakeStore(root, "attribution-changelog"), BUCKET_MS, 365 * D)
    table.write(0, [(key, value) for _, _, key, value in changelog])
    return table


def attribution_of(table: WindowedTable) -> AttributionTable:
    return AttributionTable(table, W2, AvroSerde(Settings.from_env({})), "attributions")


def process(table: WindowedTable, records: Records, batches: list[range]) -> SealedOutputs:
    outputs = SealedOutputs()
    attribution = attribution_of(table)

    async def run() -> None:
        for batch in batches:
            parsed = [(0, u, items, offset) for offset in batch for u, items in records[offset]]
            await attribution.apply(parsed, outputs, NOW)

    asyncio.run(run())
    return outputs


def totals(table: WindowedTable) -> dict[bytes, tuple[Any, ...]]:
    """Every hourly total of the table as the API reads it."""
    out: dict[bytes, tuple[Any, ...]] = {}
    for key, value in table.scan(0, keys.WINDOWS):
        t = Tally.decode(value)
        converted = {k: estimate(v) for k, v in t.converted.items()}
        rounded = [{c: round(v, 6) for c, v in s.items()} for s in (t.value, t.control_value)]
        out[key] = (t.conversions, t.control_conversions, *rounded, t.missed, converted)
    return out


def pure_rows(records: Records) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The API's rows of the rule applied to each user's items in order, without a table."""
    per_user: dict[str, list[Any]] = {}
    for record in records:
        for user, items in record:
            per_user.setdefault(user, []).extend(items)
    found: list[tuple[str, str, Tally]] = []
    for items in per_user.values():
        outcome = Outcome()
        for a in apply(UserState(), items, W2, outcome):
            tally = Tally()
            tally.add(a)
            found.append((a.touch.campaign, a.conversion.name, tally))
        for c, why in outcome.misses:
            tally = Tally()
            tally.miss(why)
            found.append((UNATTRIBUTED, c.name, tally))
    return rows(found), unattributed_rows(found)


@pytest.mark.parametrize("seed", range(8))
def test_a_restore_from_any_prefix_of_a_batchs_changelog_counts_the_totals_exactly(
    seed: int, tmp_path: Path
) -> None:
    """Kill -9 during any batch's seal, leaving any prefix of its changelog records (users
    without totals, part of the totals, ...): the restored table, given the batch again from
    the committed position (and what follows, batched differently), ends with exactly the
    totals of a run without the crash. The same when only the totals landed."""
    rng = random.Random(seed)
    records = generated_records(rng)
    everything = range(len(records))
    batches = split(rng, everything)
    clean = table_of(tmp_path / "clean", [])
    first = process(clean, records, batches)
    want = totals(clean)
    found = attribution_of(clean).tallies([0], 0, NOW, None)
    assert (rows(found), unattributed_rows(found)) == pure_rows(records)
    assert any(t[4] for t in want.values()) and any(t[0] for t in want.values())

    n = 0
    for k, batch in enumerate(batches):
        start = first.seals[k - 1] if k else 0
        end = first.seals[k]
        landed = [first.changelog[:j] for j in range(start, end + 1)]
        # Not a prefix, but what writing the totals first would leave: the totals without users.
        landed.append(
            first.changelog[:start]
            + [r for r in first.changelog[start:end] if not r[2].startswith(keys.USER_KEY_PREFIX)]
        )
        for changelog in landed:
            n += 1
            restored = table_of(tmp_path / f"r{n}", changelog)
            again = process(restored, records, split(rng, range(batch.start, len(records))))
            assert totals(restored) == want, (seed, k, len(changelog) - start, end - start)
            # ... and a second crash while the replay's first batch is sealed.
            cut = rng.randint(0, again.seals[0])
            twice = table_of(tmp_path / f"r{n}b", changelog + again.changelog[:cut])
            process(twice, records, split(rng, range(batch.start, len(records))))
            assert totals(twice) == want, (seed, k, len(changelog) - start, cut)


def test_a_batch_whose_user_states_landed_without_its_totals_is_counted_once(
    tmp_path: Path,
) -> None:
    """The case a kill -9 left behind: one batch of two input records (u1 and u2 in both), its
    user states on the changelog, its hourly totals not. Given the batch again, the totals count
    its attribution and its two misses once; and once, too, when only the totals landed."""
    t1 = Touch("AIRSHIP:1", T0, "AIRSHIP", "app", "c1", "SEND")
    records: Records = [
        [("u1", [t1]), ("u2", [Conversion("o1", "u2", "Signed Up", T0, "conversions")])],
        [
            ("u1", [Conversion("c1", "u1", "Order Completed", T0 + H, "conversions", 5.0, "USD")]),
            ("u2", [Conversion("o2", "u2", "Signed Up", T0 + 2 * H, "conversions")]),
        ],
    ]
    first = process(table_of(tmp_path / "clean", []), records, [range(2)])
    sealed = first.changelog[: first.seals[0]]
    users = [r for r in sealed if r[2].startswith(keys.USER_KEY_PREFIX)]
    assert sealed[: len(users)] == users and len(users) == 2 < len(sealed)
    for n, landed in enumerate([users, sealed[len(users) :]]):
        for batches in ([range(2)], [range(1), range(1, 2)]):
            restored = table_of(tmp_path / f"r{n}-{len(batches)}", landed)
            process(restored, records, batches)
            found = attribution_of(restored).tallies([0], 0, NOW, None)
            assert unattributed_rows(found) == [
                {"name": "Signed Up", "conversions": 2, NO_EXPOSURE: 2, OUTSIDE_WINDOW: 0}
            ]
            assert [(r["campaign_id"], r["conversions"], r["value"]) for r in rows(found)] == [
                ("c1", 1, {"USD": 5.0})
            ]
