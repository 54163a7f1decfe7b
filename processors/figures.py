"""A campaign's figures over a range of windows, as the query API shows them: pure (no Faust, no
I/O), from the windows a stats table holds (:class:`processors.records.WindowCounts`).

Counts are summed over the windows; unique recipients are the union of the windows' sketches (a
recipient seen in two windows counts once), never a sum of estimates; unattributed events are
summed. See ``processors/api/openapi.yaml`` (``Figures``, ``Uniques``) for the shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from processors.records import (
    ALL_RECIPIENTS,
    DEFAULT_MAX_KEYS,
    Breakdown,
    Named,
    WindowCounts,
)
from processors.uniques import Union, error_bound, estimate, lg_k_of


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


BREAKDOWN_FIELDS = {"message": ("messages", "message_id")}
"""Per dimension of :data:`processors.records.BREAKDOWNS`: the campaign's field that lists its
rows, and the field of a row that holds the dimension's value."""

KEPT, OVERFLOW, MISSING, NOT_BROKEN_DOWN = "value", "overflow", "none", "not_broken_down"
"""A breakdown row's ``kind``: one value of the dimension; the values beyond the bound; the
events without a value; the events counted before windows kept breakdowns."""


def merged_breakdown(
    dimension: str,
    windows: Iterable[WindowCounts],
    by_type: dict[str, int],
    max_keys: int = DEFAULT_MAX_KEYS,
) -> list[dict[str, Any]]:
    """One dimension's rows over several windows: each value's counts summed over the windows
    that kept it, at most ``max_keys`` values (the largest by total; the rest, and what a window
    counted in its own overflow, in one overflow row), a row for the events without a value,
    and one for the events of ``by_type`` (the summed totals) in no bucket (counted before
    windows kept breakdowns), so that the rows add up to the totals per event type. Rows with
    no event are left out; sorted by total, largest first (then by value)."""
    _, id_field = BREAKDOWN_FIELDS[dimension]
    kept: dict[str, dict[str, int]] = {}
    overflow: dict[str, int] = {}
    missing: dict[str, int] = {}
    for counts in windows:
        b = counts.breakdowns.get(dimension) or Breakdown()
        for value, of_value in b.kept.items():
            _add(kept.setdefault(value, {}), of_value)
        _add(overflow, b.overflow)
        _add(missing, b.missing)
    ranked = sorted(kept.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    for _, of_value in ranked[max_keys:]:
        _add(overflow, of_value)
    rest = dict(by_type)
    rows: list[tuple[str, str | None, dict[str, int]]] = [
        *((KEPT, v, c) for v, c in ranked[:max_keys]),
        (OVERFLOW, None, overflow),
        (MISSING, None, missing),
    ]
    for _, _, of_row in rows:
        for key, n in of_row.items():
            rest[key] = rest.get(key, 0) - n
    rows.append((NOT_BROKEN_DOWN, None, {k: n for k, n in rest.items() if n}))
    out: list[dict[str, Any]] = [
        {
            id_field: value,
            "kind": kind,
            "total": sum(of_row.values()),
            "event_type_counts": dict(sorted(of_row.items())),
        }
        for kind, value, of_row in rows
        if any(of_row.values())
    ]
    out.sort(key=lambda row: -row["total"])  # stable: values first among equal totals
    return out


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
    max_keys: int = DEFAULT_MAX_KEYS,
) -> dict[str, Any]:
    """A campaign as a :class:`processors.api.server.CampaignSource` returns it: ``key_fields``
    (vendor, app_id, campaign_id), its name (the latest among its windows), the range's first
    and last windows with events, when it last changed, the totals and, with ``series``, one
    point per window (in start order) and the breakdowns (:func:`merged_breakdown`, e.g.
    ``messages``)."""
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
        for dimension, (field, _) in BREAKDOWN_FIELDS.items():
            out[field] = merged_breakdown(dimension, (w.counts for w in ordered), by_type, max_keys)
        out["series"] = [
            {
                "window_start": w.start,
                "window_end": w.start + size_ms,
                **window_figures(w.counts, lg_k),
            }
            for w in ordered
        ]
    return out
