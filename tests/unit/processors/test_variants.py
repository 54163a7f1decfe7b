"""A campaign's figures per variant (processors/records.py ``BREAKDOWNS["variant"]``,
``BREAKDOWN_RULES``; processors/figures.py), its control group, and the lift against it
(processors/api/lift.py), checked against references computed here from the generated events
themselves (counters, sets, the textbook formulas), not from the code under test."""

from __future__ import annotations

import math
import random
from collections import Counter
from statistics import NormalDist

import pytest

from processors.api.lift import MIN_OUTCOMES, Z_95, lift, present_variants
from processors.figures import HeldWindow, campaign_figures
from processors.records import (
    CONTROL_GROUP,
    WindowCounts,
    load_window,
    stats_record,
    window_value,
)

VENDOR = {"vendor": "LEANPLUM", "app_id": "app", "campaign_id": "c1"}
RECEIVED = {"SEND", "DELIVERY", "IMPRESSION"}
CONVERTED = {"CONVERSION", "CAMPAIGN_EXIT"}  # Leanplum: CAMPAIGN_EXIT too (TAXONOMY A-4)

Event = tuple[int, str, str | None, str | None]  # window, event type, recipient, variant id


def _generate(seed: int, n: int = 2500) -> list[Event]:
    """Events of one campaign in three windows: each of 600 recipients in one arm, three
    variants (one an id no one declared), a holdout group whose CONTROL events carry the
    treatment id "0" (as Pinpoint's do), conversions without a variant id (as Leanplum's),
    events without a recipient, and a rare fourth variant that comes after the other three in
    every window (a bound of three: its events are the overflow). Few enough recipients per
    variant for exact sketches."""
    rng = random.Random(seed)
    arms = ["A", "B", "ünknown-→-variant"]

    def arm(who: int) -> str | None:  # None: held out
        share = random.Random(f"{seed}:{who}").random()
        if share < 0.15:
            return None
        return "rare" if share > 0.99 else arms[int(share * 100) % 3]

    out: list[Event] = [
        (window, "SEND", f"u:{who}", arm(who))
        for window in range(3)
        for who in range(600)
        if arm(who) in arms and who < 30
    ]
    for _ in range(n):
        window = rng.randrange(3)
        number = rng.randrange(600)
        who = f"u:{number}" if rng.random() > 0.02 else None
        variant = arm(number)
        if variant is None:
            out.append((window, "CONTROL", who, "0"))
            if rng.random() < 0.1:
                out.append((window, "CONVERSION", who, None))
            continue
        out.append((window, "SEND", who, variant))
        if rng.random() < 0.9:
            out.append((window, "DELIVERY", who, variant))
            if rng.random() < 0.4:
                out.append((window, "OPEN", who, variant))
                if rng.random() < 0.3:
                    out.append((window, "CLICK", who, variant))
        if rng.random() < (0.2 if variant == "B" else 0.08):
            out.append((window, rng.choice(["CONVERSION", "CAMPAIGN_EXIT"]), who, None))
        if rng.random() < 0.05:
            out.append((window, "SEND", who, None))  # a send outside the experiment
    return out


def _count(events: list[Event], max_variants: int = 3) -> list[HeldWindow]:
    windows = [WindowCounts(lg_k=12, max_keys={"variant": max_variants}) for _ in range(3)]
    for offset, (window, event_type, who, variant) in enumerate(events):
        windows[window].apply("raw/0", offset, event_type, "PUSH", who, {"variant": variant})
    # Stored and loaded again, as the worker does between batches.
    return [
        HeldWindow(i * 60_000, load_window(window_value(w, 1), 12), 1)
        for i, w in enumerate(windows)
    ]


def _bucket(event_type: str, variant: str | None) -> str | None:
    return CONTROL_GROUP if event_type == "CONTROL" else variant


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_per_variant_counts_uniques_and_conversions_are_exact(seed: int) -> None:
    events = _generate(seed)
    held = _count(events)
    figures = campaign_figures(VENDOR, held, 60_000, 12, series=True, max_keys={"variant": 3})
    rows = figures["variants"]
    by_kind = {(r["kind"], r["variant_id"]): r for r in rows}

    # The reference: counters and sets from the events, by the documented rule.
    counts: dict[str | None, Counter[str]] = {}
    people: dict[str | None, dict[str, set[str]]] = {}
    converted = {who for _, t, who, _ in events if t in CONVERTED and who}
    for _, event_type, who, variant in events:
        bucket = _bucket(event_type, variant)
        counts.setdefault(bucket, Counter())[event_type] += 1
        if who is not None:
            of = people.setdefault(bucket, {})
            of.setdefault("*", set()).add(who)
            of.setdefault(event_type, set()).add(who)
    # Each window keeps the first three variant ids it sees; a range lists the three largest.
    assert {v for k, v in by_kind if k == "value"} == {"A", "B", "ünknown-→-variant"}
    for variant in ("A", "B", "ünknown-→-variant", CONTROL_GROUP):
        kind = CONTROL_GROUP if variant == CONTROL_GROUP else "value"
        row = by_kind[(kind, None if kind == CONTROL_GROUP else variant)]
        assert row["event_type_counts"] == dict(counts[variant]), variant
        of = people[variant]
        received_types = {"CONTROL"} if variant == CONTROL_GROUP else RECEIVED
        received = set().union(*(of.get(t, set()) for t in received_types))
        assert row["uniques"]["recipients"] == len(of["*"])
        for t in ("SEND", "DELIVERY", "OPEN", "CLICK", "CONTROL"):
            assert row["uniques"]["by_event_type"].get(t, 0) == len(of.get(t, set())), (variant, t)
        assert row["received"] == len(received)
        assert row["converted_exact"] is True, "the test's sets must be small enough"
        assert row["converted"] == len(received & converted), variant
        assert row["converted_by_source"] == {"vendor": len(received & converted)}
        assert row["converted_exact"] is True
    # The control group: every CONTROL event, never the variant "0" they carry.
    assert ("value", "0") not in by_kind
    # The rare variant came after three others in every window: the overflow.
    assert by_kind[("overflow", None)]["event_type_counts"] == dict(counts["rare"])
    assert by_kind[("none", None)]["event_type_counts"] == dict(counts[None])
    assert by_kind[("none", None)]["uniques"] is None  # no sketches for them
    # The rows add up to the totals per event type.
    summed: Counter[str] = Counter()
    for row in rows:
        summed.update(row["event_type_counts"])
    assert dict(summed) == figures["totals"]["event_type_counts"]
    # The vendor-reported conversions: events and converted recipients.
    conv = figures["conversions"]
    assert conv["events"] == sum(1 for _, t, _, _ in events if t in CONVERTED)
    assert conv["converted"] == len(converted)
    assert conv["by_source"]["vendor"]["event_type_counts"] == dict(
        Counter(t for _, t, _, _ in events if t in CONVERTED)
    )


def test_campaign_exit_is_a_conversion_for_leanplum_only() -> None:
    w = WindowCounts(lg_k=12)
    w.apply("raw/0", 1, "SEND", "PUSH", "u:1", {"variant": "A"})
    w.apply("raw/0", 2, "CAMPAIGN_EXIT", "NONE", "u:1", {"variant": None})
    held = [HeldWindow(0, w, 1)]
    for vendor, want in [("LEANPLUM", 1), ("SEGMENT", 0)]:
        f = campaign_figures({**VENDOR, "vendor": vendor}, held, 60_000, 12, series=True)
        assert f["conversions"]["converted"] == want
        assert next(r for r in f["variants"] if r["kind"] == "value")["converted"] == want


def test_a_replay_changes_no_variant_figure_and_the_value_round_trips() -> None:
    events = _generate(7, 400)
    w = WindowCounts(lg_k=12, max_keys={"variant": 2})
    for offset, (_, t, who, variant) in enumerate(events):
        w.apply("raw/0", offset, t, "PUSH", who, {"variant": variant})
    value = window_value(w, 5)
    loaded = load_window(value, 12, {"variant": 2})
    for offset, (_, t, who, variant) in enumerate(events):
        assert not loaded.apply("raw/0", offset, t, "PUSH", who, {"variant": variant})
    assert window_value(loaded, 5) == value


def test_a_window_stored_before_variants_loads_with_its_events_not_broken_down() -> None:
    old = WindowCounts(lg_k=12)
    old.apply("raw/0", 1, "SEND", "PUSH", "u:1", {"message": "m"})
    value = window_value(old, 1)
    assert b'"bs"' not in value
    loaded = load_window(value, 12)
    loaded.apply("raw/0", 2, "SEND", "PUSH", "u:2", {"message": "m", "variant": "A"})
    f = campaign_figures(VENDOR, [HeldWindow(0, loaded, 1)], 60_000, 12, series=True)
    kinds = {r["kind"]: r for r in f["variants"]}
    assert kinds["not_broken_down"]["event_type_counts"] == {"SEND": 1}
    assert kinds["not_broken_down"]["uniques"] is None
    assert kinds["value"]["uniques"]["recipients"] == 1


def test_the_stats_record_carries_the_variants() -> None:
    w = WindowCounts(lg_k=12, max_keys={"variant": 1})
    w.apply("raw/0", 1, "SEND", "PUSH", "u:1", {"variant": "A"})
    w.apply("raw/0", 2, "SEND", "PUSH", "u:2", {"variant": "B"})
    w.apply("raw/0", 3, "CONTROL", "PUSH", "u:3", {"variant": "A"})
    w.apply("raw/0", 4, "CONVERSION", "NONE", "u:1", {"variant": None})
    record = stats_record("LEANPLUM|app|c1", "1m", 0, 60, w, 9)
    got = [(v["kind"], v["variant_id"], v["event_type_counts"]) for v in record["variants"]]
    assert got == [
        ("value", "A", {"SEND": 1}),
        ("control", None, {"CONTROL": 1}),
        ("overflow", None, {"SEND": 1}),
        ("none", None, {"CONVERSION": 1}),
    ]
    assert record["variants"][0]["event_type_sketches"].keys() == {"SEND"}
    assert record["variants"][3]["recipients_sketch"] is None
    # A window without any variant or control event has no variant rows in its upsert.
    plain = WindowCounts(lg_k=12)
    plain.apply("raw/0", 1, "SEND", "PUSH", "u:1", {"variant": None})
    assert "variants" not in stats_record("LEANPLUM|app|c1", "1m", 0, 60, plain, 9)


# --- lift ------------------------------------------------------------------------------------


def _reference(x1: int, n1: int, x0: int, n0: int) -> dict[str, float]:
    """The two-proportion comparison as a textbook states it, with the normal quantile and CDF
    of the standard library."""
    norm = NormalDist()
    z975 = norm.inv_cdf(0.975)
    p1, p0 = x1 / n1, x0 / n0
    var = p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0
    diff = p1 - p0
    rr = p1 / p0
    se_log_rr = (1 / x1 - 1 / n1 + 1 / x0 - 1 / n0) ** 0.5
    z = diff / var**0.5
    return {
        "low": diff - z975 * var**0.5,
        "high": diff + z975 * var**0.5,
        "rel_low": math.exp(math.log(rr) - z975 * se_log_rr) - 1,
        "rel_high": math.exp(math.log(rr) + z975 * se_log_rr) - 1,
        "p": 2 * (1 - norm.cdf(abs(z))),
        "z": z,
    }


@pytest.mark.parametrize(
    ("x1", "n1", "x0", "n0"),
    [(120, 1000, 80, 1000), (30, 400, 28, 410), (9, 50, 5, 60), (500, 20000, 410, 19000)],
)
def test_lift_and_its_interval_against_the_reference(x1: int, n1: int, x0: int, n0: int) -> None:
    got = lift(x1, n1, x0, n0)
    want = _reference(x1, n1, x0, n0)
    assert got is not None
    assert got["absolute"] == pytest.approx(x1 / n1 - x0 / n0, abs=1e-15)
    assert got["relative"] == pytest.approx((x1 / n1) / (x0 / n0) - 1, rel=1e-12)
    assert got["absolute_ci95"] == pytest.approx([want["low"], want["high"]], rel=1e-9)
    assert got["relative_ci95"] == pytest.approx([want["rel_low"], want["rel_high"]], rel=1e-9)
    assert got["z"] == pytest.approx(want["z"], rel=1e-9)
    assert got["p_value"] == pytest.approx(want["p"], rel=1e-6, abs=1e-12)
    # The verdict is the interval's: significant exactly when it leaves out 0.
    assert got["significant"] is (want["low"] > 0 or want["high"] < 0)
    assert got["significant"] is (want["p"] < 0.05)


def test_lift_is_null_when_a_side_is_too_small() -> None:
    ok = (MIN_OUTCOMES, 100, MIN_OUTCOMES, 100)
    assert lift(*ok) is not None
    for too_small in [
        (MIN_OUTCOMES - 1, 100, 20, 100),  # too few converted
        (20, 100, MIN_OUTCOMES - 1, 100),
        (96, 100, 20, 100),  # too few not converted
        (20, 100, 20, 24),
        (0, 0, 20, 100),
    ]:
        assert lift(*too_small) is None, too_small
    assert pytest.approx(NormalDist().inv_cdf(0.975), rel=1e-12) == Z_95


def test_present_variants_compares_each_variant_with_the_control_group() -> None:
    def row(kind: str, variant: str | None, received: int, converted: int) -> dict[str, object]:
        return {
            "variant_id": variant,
            "kind": kind,
            "total": received,
            "event_type_counts": {"SEND": received},
            "uniques": {"recipients": received, "by_event_type": {"SEND": received}},
            "received": received,
            "converted": converted,
            "converted_by_source": {"vendor": converted},
            "converted_exact": True,
        }

    rows = [
        row("value", "A", 1000, 150),
        row("value", "B", 1000, 92),
        row("value", "tiny", 10, 1),
        row(CONTROL_GROUP, None, 1000, 90),
        row("overflow", None, 500, 60),
    ]
    shown = {(r["kind"], r["variant_id"]): r for r in present_variants(rows)}
    a, b = shown[("value", "A")], shown[("value", "B")]
    assert a["conversion_rate"] == 0.15 and a["significant"] is True
    assert a["lift"]["control_rate"] == 0.09
    assert b["significant"] is False and b["lift"] is not None
    assert shown[("value", "tiny")]["lift"] is None
    assert shown[("value", "tiny")]["significant"] is None
    for key in [(CONTROL_GROUP, None), ("overflow", None)]:
        assert shown[key]["lift"] is None and shown[key]["significant"] is None
    assert a["rates"]["send_open_rate"] == 0.0  # rates per variant, the campaign's formulas
    # Without a control group, no lift at all.
    alone = present_variants([rows[0]])
    assert alone[0]["lift"] is None and alone[0]["significant"] is None
