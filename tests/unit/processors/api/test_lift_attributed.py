"""Lift from attributed conversions (issue 24): with attribution on, a variant's converted users
are the unique users whose conversions were credited (last touch) to the campaign's messages
carrying that variant; the control group's, to its CONTROL events. Checked exactly against a
reference computed here with plain sets, over hourly totals split between two workers'
partitions, with repeats, several names, another campaign, a variant beyond the bound and touches
without a variant."""

from __future__ import annotations

import random
from typing import Any

import pytest

from processors.api.lift import (
    ATTRIBUTED_SOURCE,
    VENDOR_SOURCE,
    conversion_rate,
    lift,
    present_variants,
)
from processors.attribution import (
    Attribution,
    Conversion,
    Tally,
    Touch,
    bucket_of,
    converted_of,
)

H = 3_600_000
T0 = 1_780_000_000_000
CAMPAIGN = Touch("x", 0, "AIRSHIP", "app", "spring", "SEND").campaign


def _row(kind: str, variant: str | None, received: int | None, vendor: int) -> dict[str, Any]:
    known = received is not None
    return {
        "variant_id": variant,
        "kind": kind,
        "total": 10,
        "event_type_counts": {"SEND": 10},
        "uniques": {"recipients": received, "by_event_type": {}} if known else None,
        "received": received,
        "converted": vendor if known else None,
        "converted_by_source": {"vendor": vendor} if known else None,
        "converted_exact": True if known else None,
    }


@pytest.mark.parametrize("seed", range(6))
def test_attributed_converted_users_per_variant_against_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    # Who received what: the received counts are the stats' (given); who converted is ours.
    users = [f"user-{i}" for i in range(300)]
    group = {u: rng.choice(["A", "A", "B", "C", None, "control"]) for u in users}
    credited: dict[str, set[str]] = {}  # row key -> users (the reference)
    partitions: list[list[tuple[str, str, Tally]]] = [[], []]
    tallies: dict[tuple[int, int, str, str], Tally] = {}
    for n in range(900):
        user = rng.choice(users)
        variant = group[user]
        other = rng.random() < 0.15  # credited to another campaign: not this one's
        kind = "CONTROL" if variant == "control" else rng.choice(["SEND", "DELIVERY"])
        touch = Touch(
            f"AIRSHIP:{n}",
            T0 + rng.randint(0, 48) * H,
            "AIRSHIP",
            "app",
            "autumn" if other else "spring",
            kind,
            variant_id=None if variant == "control" and rng.random() < 0.5 else variant,
        )
        if variant == "control":
            touch = Touch(
                touch.event_id,
                touch.at,
                "AIRSHIP",
                "app",
                touch.campaign_id,
                "CONTROL",
                variant_id=rng.choice([None, "A"]),  # a holdout carries any variant id
            )
        at = touch.at + rng.randint(0, 5 * H)
        name = rng.choice(["Order Completed", "Signed Up"])
        a = Attribution(f"a{n}", Conversion(f"c{n}", user, name, at, "conversions"), touch, 3 * H)
        key = (int(user.split("-")[1]) % 2, bucket_of(at), touch.campaign, name)
        tallies.setdefault(key, Tally()).add(a)
        if not other:
            row = "control" if variant == "control" else ("none" if variant is None else variant)
            credited.setdefault(row, set()).add(user)
    for (partition, _, campaign, name), tally in tallies.items():
        partitions[partition].append((campaign, name, Tally.decode(tally.encode())))
    # Each worker's part, then merged (as GET /api/campaigns/{id} gathers them).
    converted = converted_of([*partitions[0], *partitions[1]], CAMPAIGN)

    received = {"A": 260, "B": 240, "control": 230, "none": 90}
    rows = [
        _row("value", "A", received["A"], 3),
        _row("value", "B", received["B"], 4),
        _row("control", None, received["control"], 2),
        _row("overflow", None, 70, 1),  # C, beyond the bound
        _row("none", None, received["none"], 0),
        _row("not_broken_down", None, None, 0),
    ]
    shown = present_variants(rows, converted)
    want = {
        "A": len(credited.get("A", ())),
        "B": len(credited.get("B", ())),
        "control": len(credited.get("control", ())),
        "overflow": len(credited.get("C", ())),
        "none": len(credited.get("none", ())),
    }
    got = {(r["variant_id"] or r["kind"]): r for r in shown}
    for row, n in want.items():
        assert got[row]["converted"] == n, row
        assert got[row]["converted_by_source"] == {
            "vendor": rows_vendor(rows, row),
            "attributed": n,
        }
        assert got[row]["converted_source"] == ATTRIBUTED_SOURCE
        assert got[row]["converted_exact"] is True
        n_received = 70 if row == "overflow" else received[row]
        assert got[row]["conversion_rate"] == conversion_rate(n, n_received)
    assert got["not_broken_down"]["converted"] is None
    assert got["not_broken_down"]["conversion_rate"] is None
    for variant in ("A", "B"):
        assert got[variant]["lift"] == lift(
            want[variant], received[variant], want["control"], received["control"]
        )
    assert got["A"]["lift"] is not None
    assert got["control"]["lift"] is None and got["overflow"]["lift"] is None


def rows_vendor(rows: list[dict[str, Any]], row: str) -> int:
    for r in rows:
        if (r["variant_id"] or r["kind"]) == row:
            return int(r["converted_by_source"]["vendor"])
    raise KeyError(row)


def test_without_attribution_the_vendors_conversions_stay() -> None:
    rows = [_row("value", "A", 100, 12), _row("control", None, 100, 6)]
    shown = present_variants(rows)
    assert [r["converted"] for r in shown] == [12, 6]
    assert [r["converted_source"] for r in shown] == [VENDOR_SOURCE] * 2
    assert shown[0]["lift"] == lift(12, 100, 6, 100)
    # With attribution on and nothing credited: zero, not the vendor's figure.
    credited = present_variants(rows, {})
    assert [r["converted"] for r in credited] == [0, 0]
    assert credited[0]["converted_by_source"] == {"vendor": 12, "attributed": 0}
