"""A campaign's figures over a range of windows, as the query API shows them: pure (no Faust, no
I/O), from the windows a stats table holds (:class:`processors.records.WindowCounts`).

Counts are summed over the windows; unique recipients are the union of the windows' sketches (a
recipient seen in two windows counts once), never a sum of estimates; unattributed events are
summed. See ``processors/api/openapi.yaml`` (``Figures``, ``Uniques``) for the shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from processors.records import (
    ALL_RECIPIENTS,
    BREAKDOWN_RULES,
    CONTROL_GROUP,
    DEFAULT_MAX_KEYS,
    GROUP_BUCKET,
    KEPT_BUCKET,
    MISSING_BUCKET,
    NO_RULE,
    OVERFLOW_BUCKET,
    Breakdown,
    Bucket,
    Named,
    WindowCounts,
    bound_of,
    value_known,
)
from processors.uniques import DEFAULT_LG_K, Union, error_bound, estimate, is_exact, lg_k_of


@dataclass(slots=True)
class HeldWindow:
    """One window of a campaign as read from its table."""

    start: int
    counts: WindowCounts
    updated_ms: int | None


def window_figures(counts: WindowCounts, lg_k: int) -> dict[str, Any]:
    """One window's figures (a point of the series)."""
    images = {key: sketch.image() for key, sketch in counts.sketches.items()}
    window_lg_k = counts.lg_k or lg_k
    return {
        "total": counts.total,
        "event_type_counts": dict(sorted(counts.by_type.items())),
        "channel_counts": dict(sorted(counts.by_channel.items())),
        "uniques": {
            "recipients": estimate(images[ALL_RECIPIENTS]) if ALL_RECIPIENTS in images else 0,
            "by_event_type": {
                key: estimate(image) for key, image in sorted(images.items()) if key != "*"
            },
            "unattributed": counts.unattributed,
            "error_bound": error_bound(window_lg_k),
            "lg_k": window_lg_k,
        },
    }


def merged_figures(windows: Iterable[WindowCounts], lg_k: int) -> dict[str, Any]:
    """The figures of several windows: counts summed, sketches united. ``lg_k``: the
    configured precision, stated when no window has a sketch."""
    total = 0
    unattributed = 0
    by_type: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    unions: dict[str, Union] = {}
    for counts in windows:
        total += counts.total
        unattributed += counts.unattributed
        for mine, theirs in ((by_type, counts.by_type), (by_channel, counts.by_channel)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for key, sketch in counts.sketches.items():
            union = unions.get(key)
            if union is None:
                union = unions[key] = Union()
            union.add(sketch.image())
    images = {key: union.image() for key, union in unions.items()}
    merged_lg_k = min((lg_k_of(i) for i in images.values() if i is not None), default=lg_k)
    return {
        "total": total,
        "event_type_counts": dict(sorted(by_type.items())),
        "channel_counts": dict(sorted(by_channel.items())),
        "uniques": {
            "recipients": _estimate(images.get(ALL_RECIPIENTS)),
            "by_event_type": {
                key: _estimate(image) for key, image in sorted(images.items()) if key != "*"
            },
            "unattributed": unattributed,
            "error_bound": error_bound(merged_lg_k),
            "lg_k": merged_lg_k,
        },
    }


BREAKDOWN_FIELDS = {"message": ("messages", "message_id"), "variant": ("variants", "variant_id")}
"""Per dimension of :data:`processors.records.BREAKDOWNS`: the campaign's field that lists its
rows, and the field of a row that holds the dimension's value."""

KEPT, OVERFLOW, MISSING, NOT_BROKEN_DOWN = "value", "overflow", "none", "not_broken_down"
"""A breakdown row's ``kind``: one value of the dimension; the values beyond the bound; the
events without a value; the events counted before windows kept breakdowns. A group of a
:class:`processors.records.BreakdownRule` (the control group) has its name as its kind."""

RECEIVED_TYPES = ("SEND", "DELIVERY", "IMPRESSION")
"""A variant's recipients who received it: those of any of these events (an in-app message has
no send: it is shown)."""
CONTROL_RECEIVED_TYPES = ("CONTROL",)
"""The control group's counterpart: its recipients are those withheld from the message."""


def vendor_conversions(vendor: str | None) -> tuple[str, ...]:
    """The event types that are a vendor-reported conversion: CONVERSION, and for Leanplum also
    CAMPAIGN_EXIT, which it fires on the goal of a single-conversion campaign (TAXONOMY A-4:
    conversion analytics count CONVERSION + CAMPAIGN_EXIT; no other vendor maps to it)."""
    return ("CONVERSION", "CAMPAIGN_EXIT") if vendor == "LEANPLUM" else ("CONVERSION",)


CONVERSION_SOURCES: dict[str, Callable[[str | None], tuple[str, ...]]] = {
    "vendor": vendor_conversions,
}
"""Where a campaign's converted recipients come from, by source name: per vendor, the keys of
the window sketches whose recipients converted. A recipient converted once however many sources
or events say so (``converted`` is the union of them all, ``converted_by_source`` each's).
Conversions attributed to the campaign from the customer's own events are one more entry, with
a sketch of their own in the campaign's windows: the API's shape stays as it is."""


def conversion_images(
    windows: Iterable[WindowCounts], vendor: str | None
) -> dict[str, bytes | None]:
    """Per source of :data:`CONVERSION_SOURCES`, the sketch of the campaign's recipients who
    converted over the windows (whatever their variant: a vendor's conversion event seldom
    carries one); None where none did."""
    wanted = {name: types(vendor) for name, types in CONVERSION_SOURCES.items()}
    unions: dict[str, Union] = {name: Union() for name in wanted}
    for counts in windows:
        for name, types in wanted.items():
            for t in types:
                sketch = counts.sketches.get(t)
                if sketch is not None:
                    unions[name].add(sketch.image())
    return {name: union.image() for name, union in unions.items()}


def merged_breakdown(
    dimension: str,
    windows: Iterable[WindowCounts],
    by_type: dict[str, int],
    max_keys: int | Mapping[str, int] = DEFAULT_MAX_KEYS,
    *,
    lg_k: int = DEFAULT_LG_K,
    converted: Mapping[str, bytes | None] | None = None,
) -> list[dict[str, Any]]:
    """One dimension's rows over several windows: each value's counts summed over the windows
    that kept it, at most the dimension's bound of values (the largest by total; the rest, and
    what a window counted in its own overflow, in one overflow row), a row per group (the
    control group), a row for the events without a value, and one for the events of ``by_type``
    (the summed totals) in no bucket (counted before windows kept breakdowns), so that the rows
    add up to the totals per event type. Rows with no event are left out; sorted by total,
    largest first (then by value).

    A dimension whose windows keep sketches (:class:`processors.records.BreakdownRule`) has
    ``uniques`` in each row (the union of its buckets' sketches over the windows; null in the
    ``none`` and ``not_broken_down`` rows, which keep no sketches), ``received`` (its
    recipients of :data:`RECEIVED_TYPES`; the control group: :data:`CONTROL_RECEIVED_TYPES`),
    and ``converted``: how many of them are in the
    campaign's ``converted`` sketches (:func:`conversion_images`), all sources together and
    ``converted_by_source``, with ``converted_exact`` (see :func:`_joined`)."""
    _, id_field = BREAKDOWN_FIELDS[dimension]
    rule = BREAKDOWN_RULES.get(dimension, NO_RULE)
    bound = bound_of(max_keys, dimension)
    kept: dict[str, dict[str, int]] = {}
    overflow: dict[str, int] = {}
    missing: dict[str, int] = {}
    groups: dict[str, dict[str, int]] = {}
    unions: dict[Bucket, dict[str, Union]] = {}
    for counts in windows:
        b = counts.breakdowns.get(dimension) or Breakdown()
        for value, of_value in b.kept.items():
            _add(kept.setdefault(value, {}), of_value)
        _add(overflow, b.overflow)
        _add(missing, b.missing)
        for group, of_group in b.groups.items():
            _add(groups.setdefault(group, {}), of_group)
        for bucket, sketches in b.sketches.items():
            of_bucket = unions.setdefault(bucket, {})
            for key, sketch in sketches.items():
                of_bucket.setdefault(key, Union()).add(sketch.image())
    ranked = sorted(kept.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    for value, of_value in ranked[bound:]:
        _add(overflow, of_value)
        moved = unions.pop((KEPT_BUCKET, value), {})
        into = unions.setdefault((OVERFLOW_BUCKET, None), {})
        for key, union in moved.items():
            image = union.image()
            if image is not None:
                into.setdefault(key, Union()).add(image)
    rest = dict(by_type)
    rows: list[tuple[str, str | None, Bucket | None, dict[str, int]]] = [
        *((KEPT, v, (KEPT_BUCKET, v), c) for v, c in ranked[:bound]),
        *((g, None, (GROUP_BUCKET, g), c) for g, c in sorted(groups.items())),
        (OVERFLOW, None, (OVERFLOW_BUCKET, None), overflow),
        (MISSING, None, (MISSING_BUCKET, None), missing),
    ]
    for *_, of_row in rows:
        for key, n in of_row.items():
            rest[key] = rest.get(key, 0) - n
    rows.append((NOT_BROKEN_DOWN, None, None, {k: n for k, n in rest.items() if n}))
    out: list[dict[str, Any]] = []
    for kind, row_value, row_bucket, of_row in rows:
        if not any(of_row.values()):
            continue
        row: dict[str, Any] = {
            id_field: row_value,
            "kind": kind,
            "total": sum(of_row.values()),
            "event_type_counts": dict(sorted(of_row.items())),
        }
        if rule.sketches:
            held = unions.get(row_bucket) if row_bucket is not None else None
            images = {key: union.image() for key, union in (held or {}).items()}
            known = row_bucket is not None and value_known(row_bucket)
            row.update(_bucket_uniques(images, kind, lg_k, converted or {}, known=known))
        out.append(row)
    out.sort(key=lambda row: -row["total"])  # stable: values first among equal totals
    return out


def _bucket_uniques(
    images: Mapping[str, bytes | None],
    kind: str,
    lg_k: int,
    converted: Mapping[str, bytes | None],
    *,
    known: bool,
) -> dict[str, Any]:
    """A sketched row's unique figures (see :func:`merged_breakdown`); all null where the events
    were counted before windows kept them (``known`` False)."""
    if not known:
        return {
            "uniques": None,
            "received": None,
            "converted": None,
            "converted_by_source": None,
            "converted_exact": None,
        }
    present = {key: image for key, image in images.items() if image is not None}
    row_lg_k = min((lg_k_of(i) for i in present.values()), default=lg_k)
    received_types = CONTROL_RECEIVED_TYPES if kind == CONTROL_GROUP else RECEIVED_TYPES
    received = _union_image(present[t] for t in received_types if t in present)
    every = _union_image(image for image in converted.values() if image is not None)
    n_converted, exact = _joined(received, every)
    by_source = {name: _joined(received, image)[0] for name, image in converted.items()}
    return {
        "uniques": {
            "recipients": _estimate(present.get(ALL_RECIPIENTS)),
            "by_event_type": {
                key: _estimate(image)
                for key, image in sorted(present.items())
                if key != ALL_RECIPIENTS
            },
            "error_bound": error_bound(row_lg_k),
            "lg_k": row_lg_k,
        },
        "received": _estimate(received),
        "converted": n_converted,
        "converted_by_source": by_source,
        "converted_exact": exact,
    }


def _union_image(images: Iterable[bytes]) -> bytes | None:
    """The sketch of the recipients of any of ``images`` (None: no image)."""
    chosen = list(images)
    if len(chosen) <= 1:
        return chosen[0] if chosen else None
    union = Union()
    union.add_all(chosen)
    return union.image()


def _joined(a: bytes | None, b: bytes | None) -> tuple[int, bool]:
    """How many recipients are in both sketches, and whether that is exact: |A| + |B| - |A u B|
    (inclusion-exclusion), clamped to 0..min(|A|, |B|). Exact while all three sketches are in
    DataSketches' list or set mode (:func:`processors.uniques.is_exact`); beyond, each of the
    three estimates has the relative standard error of ``error_bound``, so the intersection's
    error is up to that share of |A| + |B| + |A u B|: large against a small intersection."""
    if a is None or b is None:
        return 0, True
    union = Union()
    union.add_all([a, b])
    image = union.image() or a  # never None: two images were added
    n_a, n_b, n_union = estimate(a), estimate(b), estimate(image)
    both = max(0, min(n_a, n_b, n_a + n_b - n_union))
    return both, is_exact(a) and is_exact(b) and is_exact(image)


def campaign_conversions(
    windows: Sequence[WindowCounts], vendor: str | None, lg_k: int
) -> dict[str, Any]:
    """The campaign's conversions over the windows, by source (:data:`CONVERSION_SOURCES`): the
    events of each source's types, and the recipients who converted (an estimate, the union of
    the windows' sketches: each recipient once however many sources or events)."""
    wanted = {name: types(vendor) for name, types in CONVERSION_SOURCES.items()}
    counts: dict[str, dict[str, int]] = {name: {} for name in wanted}
    for window in windows:
        for name, types in wanted.items():
            for t in types:
                n = window.by_type.get(t, 0)
                if n:
                    counts[name][t] = counts[name].get(t, 0) + n
    images = conversion_images(windows, vendor)
    every = _union_image(image for image in images.values() if image is not None)
    merged_lg_k = lg_k_of(every) if every is not None else lg_k
    return {
        "events": sum(sum(c.values()) for c in counts.values()),
        "converted": _estimate(every),
        "by_source": {
            name: {
                "events": sum(counts[name].values()),
                "event_type_counts": dict(sorted(counts[name].items())),
                "converted": _estimate(images[name]),
            }
            for name in wanted
        },
        "error_bound": error_bound(merged_lg_k),
        "lg_k": merged_lg_k,
    }


def _add(mine: dict[str, int], theirs: dict[str, int]) -> None:
    for key, n in theirs.items():
        mine[key] = mine.get(key, 0) + n


def _estimate(image: bytes | None) -> int:
    return 0 if image is None else estimate(image)


def campaign_figures(
    key_fields: dict[str, Any],
    windows: Sequence[HeldWindow],
    size_ms: int,
    lg_k: int,
    *,
    series: bool,
    max_keys: int | Mapping[str, int] = DEFAULT_MAX_KEYS,
) -> dict[str, Any]:
    """A campaign as a :class:`processors.api.server.CampaignSource` returns it: ``key_fields``
    (vendor, app_id, campaign_id), its name (the latest among its windows), the range's first
    and last windows with events, when it last changed, the totals and, with ``series``, one
    point per window (in start order), the breakdowns (:func:`merged_breakdown`: ``messages``,
    ``variants``) and the vendor-reported ``conversions`` (:func:`campaign_conversions`)."""
    ordered = sorted(windows, key=lambda w: w.start)
    name: Named | None = None
    for w in ordered:
        if w.counts.name is not None and (name is None or w.counts.name > name):
            name = w.counts.name
    updated = [w.updated_ms for w in ordered if w.updated_ms is not None]
    out: dict[str, Any] = {
        **key_fields,
        "campaign_name": name[1] if name else None,
        "first_window_start": ordered[0].start if ordered else None,
        "last_window_end": ordered[-1].start + size_ms if ordered else None,
        "updated_at": max(updated) if updated else None,
        "totals": merged_figures((w.counts for w in ordered), lg_k),
    }
    if series:
        by_type = out["totals"]["event_type_counts"]
        vendor = key_fields.get("vendor")
        held = [w.counts for w in ordered]
        converted = conversion_images(held, vendor)
        for dimension, (field, _) in BREAKDOWN_FIELDS.items():
            out[field] = merged_breakdown(
                dimension, held, by_type, max_keys, lg_k=lg_k, converted=converted
            )
        out["conversions"] = campaign_conversions(held, vendor, lg_k)
        out["series"] = [
            {
                "window_start": w.start,
                "window_end": w.start + size_ms,
                **window_figures(w.counts, lg_k),
            }
            for w in ordered
        ]
    return out
