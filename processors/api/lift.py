"""A campaign's variants as the API shows them: rates, conversion rate, and lift against the
control group with its 95% confidence interval. Pure (no aiohttp, no I/O).

**Conversion rate** of a variant: its converted recipients / its received recipients
(:mod:`processors.figures`: received = unique SEND, DELIVERY or IMPRESSION recipients of the
variant; the control group's = its unique CONTROL recipients; converted = how many of them
converted in the campaign over the range).

**With attribution on** (``CRM_ATTRIBUTION``), converted comes from the attribution instead
(:func:`attributed_converted`, ``converted_source: attributed``): a variant's converted users are
the unique users with a conversion (any name: the ``conversions`` topic, vendors' CONVERSION
events, Leanplum's single-goal CAMPAIGN_EXIT, listed Segment events) in the range's hours whose
credit (:mod:`processors.attribution`, last touch) went to a message of the campaign carrying
that variant id; the control group's, to the campaign's CONTROL event (whatever variant id it
carries, as its stats row); the ``none`` row's, to a message without a variant id; the overflow
row's, to the variants beyond the bound. Each user counts once per row however many conversions
and names. So a conversion counts for the campaign that won its credit: a vendor's own
conversion event credited to another vendor's later message counts there, not here. The
vendor-reported overlap stays beside it (``converted_by_source.vendor``). The counts are
sketches of user ids (exact up to a few hundred per row, ``converted_exact``); a credit's user is
counted in the variant whose touch won even when that touch lies before the range (the range is
the conversions').

**Lift** of a variant against the control group, p1 = its conversion rate (n1 recipients, x1
converted), p0 = the control group's (n0, x0):

* absolute: d = p1 - p0, with the Wald 95% interval d +- 1.96 * sqrt(p1(1-p1)/n1 + p0(1-p0)/n0);
* relative: p1 / p0 - 1, with the 95% interval of the ratio on the log scale (Katz):
  exp(ln(p1/p0) +- 1.96 * sqrt(1/x1 - 1/n1 + 1/x0 - 1/n0)) - 1;
* ``z`` = d / that same standard error and its two-sided ``p_value``; ``significant`` when
  |z| > 1.96, which is exactly when the absolute interval leaves out 0 (the page never shows an
  interval that contradicts its verdict).

**Too small to say** (:data:`MIN_OUTCOMES`): lift is null, and ``significant`` null, unless each
side has at least 5 recipients who converted and 5 who did not (n*p >= 5 and n*(1-p) >= 5, the
usual condition for the normal approximation both intervals rest on). Also null for a row that
is no single variant (the overflow, the events without a variant, those not broken down), and
without a control group.

The counts are HyperLogLog estimates (exact while small; ``converted_exact`` says whether they
are): the intervals treat them as exact counts and leave out the sketches' error. Each variant is
compared with the control group on its own (no correction for several comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from processors.api.query import rates
from processors.attribution import CONTROL_KEY, NO_VARIANT_KEY
from processors.figures import KEPT, MISSING, OVERFLOW
from processors.records import CONTROL_GROUP
from processors.uniques import Union, estimate, is_exact

Z_95 = 1.959963984540054
"""The standard normal's 97.5th percentile: a two-sided 95% interval."""

MIN_OUTCOMES = 5
"""Lift needs at least this many converted and this many not converted recipients each side."""

VENDOR_SOURCE, ATTRIBUTED_SOURCE = "vendor", "attributed"
"""The sources of ``converted`` (``converted_source``)."""

ATTRIBUTED_CONVERSION_RATE_FORMULA = (
    "attributed converted users / received recipients (users with a conversion in the range, "
    "any name, credited by last touch to a message of this variant; of the control group: to "
    "the campaign's CONTROL event; each user once)"
)

CONVERSION_RATE_FORMULA = (
    "converted recipients / received recipients (unique SEND, DELIVERY or IMPRESSION "
    "recipients of the variant; of the control group: unique CONTROL recipients)"
)

LIFT_RULE = (
    f"Wald 95% interval of p_variant - p_control; relative lift p_variant / p_control - 1 "
    f"with the Katz log interval; null unless each side has >= {MIN_OUTCOMES} converted and "
    f">= {MIN_OUTCOMES} not converted recipients; significant when |z| > 1.96 (the interval "
    "excludes 0)"
)


def conversion_rate(converted: int | None, received: int | None) -> float | None:
    """converted / received; None without received recipients. Not clamped: a sketch estimate
    of the intersection may exceed the one of the received recipients."""
    if not received or converted is None:
        return None
    return converted / received


def lift(x1: int, n1: int, x0: int, n0: int) -> dict[str, Any] | None:
    """The lift of a variant (``x1`` of ``n1`` recipients converted) over the control group
    (``x0`` of ``n0``), or None when a side is too small to say (module docstring)."""
    if min(x1, n1 - x1, x0, n0 - x0) < MIN_OUTCOMES:
        return None
    p1, p0 = x1 / n1, x0 / n0
    d = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    z = d / se
    log_se = math.sqrt(1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)
    ratio = p1 / p0
    return {
        "variant_rate": p1,
        "control_rate": p0,
        "absolute": d,
        "absolute_ci95": [d - Z_95 * se, d + Z_95 * se],
        "relative": ratio - 1,
        "relative_ci95": [
            ratio * math.exp(-Z_95 * log_se) - 1,
            ratio * math.exp(Z_95 * log_se) - 1,
        ],
        "z": z,
        "p_value": math.erfc(abs(z) / math.sqrt(2)),
        "significant": abs(z) > Z_95,
    }


def attributed_converted(
    rows: Sequence[Mapping[str, Any]], converted: Mapping[str, bytes]
) -> list[tuple[int, bool] | None]:
    """Per row, the users whose conversions were credited to the row's variant (module
    docstring), and whether that count is exact; None for the row of events counted before
    windows kept variants. ``converted``: :func:`processors.attribution.converted_of`."""
    kept = {"v:" + str(r["variant_id"]) for r in rows if r["kind"] == KEPT}
    out: list[tuple[int, bool] | None] = []
    for row in rows:
        kind = row["kind"]
        if kind == KEPT:
            keys = ["v:" + str(row["variant_id"])]
        elif kind == CONTROL_GROUP:
            keys = [CONTROL_KEY]
        elif kind == MISSING:
            keys = [NO_VARIANT_KEY]
        elif kind == OVERFLOW:
            keys = [k for k in converted if k.startswith("v:") and k not in kept]
        else:
            out.append(None)
            continue
        images = [converted[k] for k in keys if k in converted]
        if not images:
            out.append((0, True))
            continue
        union = Union()
        union.add_all(images)
        image = union.image() or images[0]
        out.append((estimate(image), is_exact(image)))
    return out


def present_variants(
    rows: Sequence[Mapping[str, Any]], converted: Mapping[str, bytes] | None = None
) -> list[dict[str, Any]]:
    """The source's variant rows (:func:`processors.figures.merged_breakdown`) with, in each,
    its ``rates`` (:func:`processors.api.query.rates`), ``conversion_rate``, and for a variant
    (kind ``value``) its ``lift`` against the control group and ``significant`` (both null when
    there is nothing to say: no control group, a side too small).

    ``converted``: with attribution on, the users credited to the campaign per variant
    (:func:`processors.attribution.converted_of`): each row's ``converted`` is then theirs
    (:func:`attributed_converted`), ``converted_by_source`` has them as ``attributed`` beside
    ``vendor``, and ``converted_source`` says which one the rate and the lift use."""
    if converted is not None:
        credited = attributed_converted(rows, converted)
        rows = [_attributed(row, found) for row, found in zip(rows, credited, strict=True)]
    else:
        rows = [{**row, "converted_source": VENDOR_SOURCE} for row in rows]
    control = next((r for r in rows if r["kind"] == CONTROL_GROUP), None)
    out: list[dict[str, Any]] = []
    for row in rows:
        shown = dict(row)
        figures = {
            "event_type_counts": row["event_type_counts"],
            "uniques": row.get("uniques") or {"by_event_type": {}},
        }
        shown["rates"] = rates(figures)
        shown["conversion_rate"] = conversion_rate(row.get("converted"), row.get("received"))
        found = None
        if row["kind"] == KEPT and control is not None:
            found = _lift_of(row, control)
        shown["lift"] = found
        shown["significant"] = found["significant"] if found is not None else None
        out.append(shown)
    return out


def _attributed(row: Mapping[str, Any], found: tuple[int, bool] | None) -> dict[str, Any]:
    out = {**row, "converted_source": ATTRIBUTED_SOURCE}
    by_source = row.get("converted_by_source")
    if found is None or by_source is None:
        # Counted before windows kept variants: nothing to compare with.
        out.update(converted=None, converted_exact=None)
        return out
    n, exact = found
    out["converted_by_source"] = {**by_source, ATTRIBUTED_SOURCE: n}
    out["converted"] = n
    out["converted_exact"] = exact
    return out


def _lift_of(row: Mapping[str, Any], control: Mapping[str, Any]) -> dict[str, Any] | None:
    x1, n1 = row.get("converted"), row.get("received")
    x0, n0 = control.get("converted"), control.get("received")
    if x1 is None or n1 is None or x0 is None or n0 is None:
        return None
    # An estimate of the converted may exceed the received (sketches): too uncertain to say.
    if x1 > n1 or x0 > n0:
        return None
    return lift(int(x1), int(n1), int(x0), int(n0))
