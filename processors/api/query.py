"""The query API's pure half: parameters in, a typed query (or a 400 naming the parameter) out;
campaign ids; the rate formulas. No aiohttp, no clock (the caller passes ``now_ms``), no I/O, so
that the worker, the server and the tests agree on one definition of each.

The contract these implement is ``openapi.yaml`` beside this module.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from crmstream.settings import Settings, parse_duration
from processors.campaigns import campaign_key, split_campaign_key
from processors.normalize.model import Vendor

Windows = Mapping[str, int]
"""The window sizes a deployment keeps, label -> ms, in ``CRM_STATS_WINDOWS`` order."""


def window_sizes(settings: Settings) -> dict[str, int]:
    """The windows the worker keeps (``CRM_STATS_WINDOWS``): the API offers exactly these."""
    return {label: seconds * 1000 for label, seconds in settings.stats_window_seconds()}


def default_window(windows: Windows) -> str:
    """The window a query without ``window`` gets: the largest kept, whose default range
    (``MAX_WINDOWS`` of them) reaches furthest back."""
    return max(windows, key=lambda label: windows[label])


WINDOWS: dict[str, int] = window_sizes(Settings())
"""The windows of the ``CRM_STATS_WINDOWS`` default (``1m``, ``1h``), in ms."""
DEFAULT_WINDOW = default_window(WINDOWS)
MAX_WINDOWS = 10_000
"""A range may span at most this many windows: 10,000 minutes is about a week of 1m windows,
10,000 hours about 14 months of 1h windows. More is refused rather than answered slowly."""
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT = 1000
"""Longest ``q`` or ``app_id`` accepted: a longer one matches nothing any vendor sends."""
TIME_END_MS = 253_402_300_800_000
"""10000-01-01T00:00:00Z: just past the latest ``occurred_at`` a normalizer lets through
(``processors.records.MAX_TIMESTAMP_MS``); ``from`` and ``to`` lie in ``0 .. TIME_END_MS``."""
VENDORS: tuple[str, ...] = tuple(v.value for v in Vendor)

LIST_PARAMETERS = frozenset({"vendor", "app_id", "from", "to", "window", "q", "limit", "cursor"})
CAMPAIGN_PARAMETERS = frozenset({"window", "from", "to"})

_DIGITS = re.compile(r"[0-9]{1,16}")
_ID = re.compile(r"[A-Za-z0-9_-]+")


class QueryError(ValueError):
    """A request the API refuses: HTTP 400 with ``{"error": message, "parameter": name}``."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "parameter": self.parameter}


# --- campaign ids -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignKey:
    """A campaign as the worker's stats know it: ``(vendor, app_id, campaign_id)``, a missing
    part being an empty string (``processors.campaigns.campaign_key``)."""

    vendor: str
    app_id: str
    campaign_id: str

    @property
    def key(self) -> str:
        """The worker's stats table key (:func:`processors.campaigns.campaign_key`)."""
        return campaign_key(self.vendor, self.app_id, self.campaign_id)

    @property
    def id(self) -> str:
        return encode_id(self.key)

    @classmethod
    def from_key(cls, key: str) -> CampaignKey:
        """Raises ``ValueError`` for a string that is not a campaign key."""
        vendor, app_id, campaign_id = split_campaign_key(key)
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor[:40]!r}")
        return cls(vendor, app_id, campaign_id)

    def fields(self) -> dict[str, str | None]:
        """The campaign's identifying fields in a response: missing parts are null."""
        return {
            "id": self.id,
            "vendor": self.vendor,
            "app_id": self.app_id or None,
            "campaign_id": self.campaign_id or None,
        }


def encode_id(key: str) -> str:
    """The API's opaque campaign id: URL-safe base64 of the UTF-8 key, without padding, so that
    any campaign id (slashes, spaces, ``|``, non-ASCII) is one safe path segment."""
    return base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode("ascii")


def decode_id(campaign_id: str) -> CampaignKey:
    """The campaign an API id names; a string that no :func:`encode_id` produced is a
    ``QueryError`` on ``id`` (a 400, while a well-formed id of an unknown campaign is a 404)."""
    if len(campaign_id) > 4 * MAX_TEXT or not _ID.fullmatch(campaign_id):
        raise QueryError("id", "not a campaign id (URL-safe base64 without padding)")
    try:
        raw = base64.urlsafe_b64decode(campaign_id + "=" * (-len(campaign_id) % 4))
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise QueryError("id", "not a campaign id: not base64 of UTF-8 text") from None
    try:
        key = CampaignKey.from_key(text)
    except ValueError as exc:
        raise QueryError("id", f"not a campaign id: {exc}") from None
    if key.id != campaign_id:
        raise QueryError("id", "not a campaign id: not in canonical form")
    return key


# --- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``[from_ms, to_ms)`` widened to whole windows: the windows whose start lies in it."""

    window: str
    from_ms: int
    to_ms: int

    @property
    def window_ms(self) -> int:
        return _window_ms(self.window)

    @property
    def windows(self) -> int:
        return (self.to_ms - self.from_ms) // self.window_ms

    def starts(self) -> range:
        """Every window start of the range (at most ``MAX_WINDOWS``)."""
        return range(self.from_ms, self.to_ms, self.window_ms)

    def __contains__(self, window_start: object) -> bool:
        return isinstance(window_start, int) and self.from_ms <= window_start < self.to_ms


@functools.lru_cache(maxsize=64)
def _window_ms(label: str) -> int:
    """A window label's size in ms, read as ``CRM_STATS_WINDOWS`` reads it (``5m``, ``1d``)."""
    return int(parse_duration(label) * 1000)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of the list ended: the last campaign's place in the list's order
    (``last_window_end`` newest first, then ``total`` largest first, then ``id``). The next
    page holds the campaigns after it, so a campaign is never listed twice as pages are read,
    though new events may move a campaign ahead of the cursor."""

    last_window_end: int
    total: int
    id: str

    def order(self) -> tuple[int, int, str]:
        return (-self.last_window_end, -self.total, self.id)

    def encode(self) -> str:
        raw = orjson.dumps([self.last_window_end, self.total, self.id])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ``QueryError`` on ``cursor`` for anything :meth:`encode` did not write."""
        error = QueryError("cursor", "not a cursor of this API (use next_cursor as given)")
        if len(text) > 4 * MAX_TEXT or not _ID.fullmatch(text):
            raise error
        try:
            value = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, orjson.JSONDecodeError):
            raise error from None
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, int) and v >= 0 for v in value[:2])
            and isinstance(value[2], str)
        ):
            raise error
        return cls(value[0], value[1], value[2])


@dataclass(frozen=True, slots=True)
class ListQuery:
    """``GET /api/campaigns``: campaigns with events in ``range``, matching every filter given."""

    range: TimeRange
    vendor: str | None = None
    app_id: str | None = None
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: Cursor | None = None
    app_ids: frozenset[str] | None = None
    """The apps the caller may read (its API token's restriction); None: every app."""

    def matches(self, key: CampaignKey, campaign_name: str | None) -> bool:
        """The vendor, app and text filters (not the range) on one campaign, and the caller's
        app restriction. ``q`` is a case-insensitive substring of the campaign id, name or app
        id."""
        if self.app_ids is not None and key.app_id not in self.app_ids:
            return False
        if self.vendor is not None and key.vendor != self.vendor:
            return False
        if self.app_id is not None and key.app_id != self.app_id:
            return False
        if self.q is not None:
            needle = self.q.casefold()
            return any(
                needle in text.casefold()
                for text in (key.campaign_id, campaign_name or "", key.app_id)
            )
        return True


@dataclass(frozen=True, slots=True)
class CampaignQuery:
    """``GET /api/campaigns/{id}``: one campaign's windows in ``range``."""

    key: CampaignKey
    range: TimeRange


Params = Iterable[tuple[str, str]]
"""Query parameters as (name, value) pairs, repeats included (``request.query.items()``)."""


def parse_list_query(
    params: Params,
    now_ms: int,
    windows: Windows = WINDOWS,
    app_ids: frozenset[str] | None = None,
) -> ListQuery:
    """``windows``: the deployment's (:func:`window_sizes`); ``app_ids``: the caller's
    restriction, if any."""
    values = _single_values(params, LIST_PARAMETERS)
    vendor = values.get("vendor")
    if vendor is not None:
        # Either case: the CLI and the settings name vendors in lower case.
        vendor = vendor.upper()
        if vendor not in VENDORS:
            raise QueryError("vendor", f"vendor must be one of {', '.join(VENDORS)} (in any case)")
    cursor = values.get("cursor")
    return ListQuery(
        range=_range(values, now_ms, windows),
        vendor=vendor,
        app_id=_text(values, "app_id"),
        q=_text(values, "q"),
        limit=_limit(values),
        cursor=None if cursor is None else Cursor.decode(cursor),
        app_ids=app_ids,
    )


def parse_campaign_query(
    campaign_id: str, params: Params, now_ms: int, windows: Windows = WINDOWS
) -> CampaignQuery:
    key = decode_id(campaign_id)
    values = _single_values(params, CAMPAIGN_PARAMETERS)
    return CampaignQuery(key=key, range=_range(values, now_ms, windows))


def _single_values(params: Params, allowed: frozenset[str]) -> dict[str, str]:
    """Each parameter at most once; an empty value is an absent parameter (what an empty form
    field sends); an unknown one is refused, so that a misspelt filter is not silently ignored."""
    values: dict[str, str] = {}
    for name, value in params:
        if name not in allowed:
            raise QueryError(name, f"unknown parameter; expected {', '.join(sorted(allowed))}")
        if name in values:
            raise QueryError(name, "given more than once")
        values[name] = value
    return {k: v for k, v in values.items() if v != ""}


def _range(values: Mapping[str, str], now_ms: int, windows: Windows) -> TimeRange:
    """Defaults: ``window`` is the largest kept; ``to`` is the end of the window holding
    ``now_ms``; ``from`` is ``MAX_WINDOWS`` windows before ``to``. Given bounds are widened to
    whole windows."""
    window = values.get("window", default_window(windows))
    if window not in windows:
        raise QueryError(
            "window",
            f"window must be one of {', '.join(windows)} (the windows this deployment keeps, "
            "CRM_STATS_WINDOWS)",
        )
    size = windows[window]
    to_given = _time(values, "to")
    from_given = _time(values, "from")
    to_ms = _ceil(to_given if to_given is not None else min(now_ms + 1, TIME_END_MS), size)
    if from_given is None:
        from_ms = max(0, to_ms - MAX_WINDOWS * size)
        if from_ms >= to_ms:
            raise QueryError("to", "to must be later than 0")
    else:
        from_ms = from_given - from_given % size
        if from_given >= (to_given if to_given is not None else to_ms):
            raise QueryError("from", "from must be earlier than to (default: now)")
    spanned = (to_ms - from_ms) // size
    if spanned > MAX_WINDOWS:
        raise QueryError(
            "from",
            f"the range spans {spanned} windows of {window}; at most {MAX_WINDOWS} "
            "(choose a shorter range or a larger window)",
        )
    return TimeRange(window, from_ms, to_ms)


def _ceil(ms: int, size: int) -> int:
    return -(-ms // size) * size


def _time(values: Mapping[str, str], name: str) -> int | None:
    raw = values.get(name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw) or int(raw) > TIME_END_MS:
        raise QueryError(name, f"{name} must be epoch milliseconds, an integer in 0..{TIME_END_MS}")
    return int(raw)


def _text(values: Mapping[str, str], name: str) -> str | None:
    raw = values.get(name)
    if raw is not None and len(raw) > MAX_TEXT:
        raise QueryError(name, f"{name} is longer than {MAX_TEXT} characters")
    return raw


def _limit(values: Mapping[str, str]) -> int:
    raw = values.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise QueryError("limit", f"limit must be an integer in 1..{MAX_LIMIT}")
    return int(raw)


# --- rates ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One side of a rate: the count of an event type, or its unique recipients."""

    kind: str  # "count" | "unique"
    event_type: str

    def __str__(self) -> str:
        return self.event_type if self.kind == "count" else f"unique {self.event_type} recipients"

    def value(self, figures: Mapping[str, Any]) -> int:
        if self.kind == "count":
            return int(figures["event_type_counts"].get(self.event_type, 0))
        return int(figures["uniques"]["by_event_type"].get(self.event_type, 0))


def _count(event_type: str) -> Term:
    return Term("count", event_type)


def _unique(event_type: str) -> Term:
    return Term("unique", event_type)


RATES: dict[str, tuple[Term, Term]] = {
    "delivery_rate": (_count("DELIVERY"), _count("SEND")),
    "unique_open_rate": (_unique("OPEN"), _unique("DELIVERY")),
    "send_open_rate": (_unique("OPEN"), _unique("SEND")),
    "unique_click_rate": (_unique("CLICK"), _unique("DELIVERY")),
    "click_to_open_rate": (_unique("CLICK"), _unique("OPEN")),
    "bounce_rate": (_count("BOUNCE"), _count("SEND")),
    "unsubscribe_rate": (_count("UNSUBSCRIBE"), _count("DELIVERY")),
}
"""Each rate as (numerator, denominator). Counts are events; uniques are distinct recipients
(HyperLogLog estimates). ``openapi.yaml`` quotes :func:`formula` of each, and docs/events.md
("Rates") says which vendor's convention each follows: where they differ, both are offered
(``unique_open_rate`` per delivery, as Braze; ``send_open_rate`` per send, as Leanplum;
``unique_click_rate`` click-through per delivery, ``click_to_open_rate`` per open)."""


def formula(name: str) -> str:
    numerator, denominator = RATES[name]
    return f"{numerator} / {denominator}"


def rate_formulas() -> dict[str, str]:
    """Every rate of :data:`RATES` with its formula, as the API names them."""
    return {name: formula(name) for name in RATES}


def rates(figures: Mapping[str, Any]) -> dict[str, float | None]:
    """Every rate of one set of figures (``total``, ``event_type_counts``, ``uniques``): a
    float, or None where the denominator is 0. Not clamped to 1: vendors that report deliveries
    without sends, or late opens of earlier sends, can push a rate over 1 in a short range."""
    out: dict[str, float | None] = {}
    for name, (numerator, denominator) in RATES.items():
        below = denominator.value(figures)
        out[name] = numerator.value(figures) / below if below else None
    return out
