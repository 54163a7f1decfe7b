"""Conversions and last-touch attribution, the pure half: what a touch and a conversion are, how
a conversion record is read, and how a user's state decides which campaign gets the credit.

No I/O and no clock here (:mod:`processors.attribution_path` reads, sends and writes).

**Touches** are the canonical events (every vendor, already deduplicated) of
:data:`TOUCH_TYPES` that name a user and a campaign: the campaign messages a user was sent,
got, or saw (``SEND``, ``DELIVERY``, ``IMPRESSION``), and ``CONTROL``, the holdout group's "would
have been sent", so that a conversion in the holdout is credited to the campaign *as control*
and lift can compare the two groups later. Opens, clicks and lifecycle events are not touches:
they follow a message the user already received, and one of a day-old campaign must not take the
credit from the message received after it.

**Conversions** come from three places:

* the ``conversions`` topic: the customer's own purchases, sign-ups... (:func:`parse_conversion`,
  JSON or Avro ``Conversion``; a record without a user, a name or a valid time, or of an unknown
  shape, is a dead letter with its reason);
* the vendors' ``CONVERSION`` events, and Leanplum's ``CAMPAIGN_EXIT``, which Leanplum fires on
  the goal of a single-conversion campaign (TAXONOMY A-4: "conversion analytics must count
  CONVERSION + CAMPAIGN_EXIT"); their name is the vendor event type;
* Segment ``track`` events whose name is listed in ``CRM_CONVERSION_EVENTS`` (compared
  case-insensitively, as the Segment normalizer reads event names; the conversion takes the
  listed spelling). Their ``value`` is null: the canonical event does not carry Segment's
  ``properties`` (send the value on the ``conversions`` topic where it matters).

A vendor event without a user (anonymous, or a Pinpoint endpoint without ``User.UserId``) can be
neither a touch nor a conversion: nothing links it to a user.

**The rule** (:func:`apply`), per user, in the order the user's records reach the attribution
table (one partition, so one order):

1. a conversion goes to the *last touch before it*: the held touch with the latest
   ``occurred_at`` not after the conversion's, across all vendors, no older than the attribution
   window of the conversion's name (``CRM_ATTRIBUTION_WINDOW``); ties go to the larger event id,
   so the choice never depends on arrival order;
2. it is counted **once per (user, campaign, conversion name)**: a second conversion of the same
   name credited to the same campaign while the first credit is held (the longest window after
   it) is a repeat, not counted;
3. **late records**: the attribution is decided when the conversion is processed, from the touches
   held then. A conversion arriving late is attributed among the touches held at or before its
   time (a touch is held for the longest window after the user's newest record, so a conversion
   later than that finds none). A touch arriving after a conversion it precedes never re-attributes
   it: an attribution, once sent, stands;
   A conversion no touch gets is **unattributed**, counted per conversion name and hour with
   why: :data:`NO_EXPOSURE` (no touch of the user at or before it) or :data:`OUTSIDE_WINDOW` (a
   touch before it, none within its window);
4. a replay after a crash (an ``attribution-inputs`` record at or below the offset the user's
   state last applied) decides nothing again; nor does a conversion id seen before (sent again
   by the raw path or the ``conversions`` feed replaying a batch, or a customer's
   ``conversion_id`` sent twice) while it is remembered: for the longest window after the
   user's newest item when it was decided, and among the user's latest
   :data:`RECENT_CONVERSIONS` conversion ids whatever their time (a replay of a few batches
   finds them however far the user's time moved in between). It is not decided again,
   however many touches arrived in between. Its attribution, if it made one that Kafka has not
   been seen to acknowledge, is sent again as it was (same id, same content, counted once): a
   crash can leave the table's changelog with a batch whose attributions never reached Kafka,
   and the replay then finds the conversion seen. Once acknowledged (:func:`confirm`), a replay
   sends nothing. What a decision adds to the hourly totals is counted once as well, however
   much of a batch a crash left on the table's changelog
   (:class:`Contribution`, :meth:`Tally.count`).

The attribution id is a hash of the conversion id and the campaign key, so a replay that sends an
attribution again sends the same id.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import orjson

from processors.campaigns import campaign_key, split_campaign_key
from processors.normalize.common import RecordError, iso_to_ms
from processors.normalize.model import CanonicalEvent, RejectReason
from processors.records import MAX_TIMESTAMP_MS
from processors.uniques import DEFAULT_LG_K, Sketch, Union

TOUCH_TYPES = frozenset({"SEND", "DELIVERY", "IMPRESSION", "CONTROL"})
"""Canonical event types that are a touch (see the module docstring)."""
CONTROL = "CONTROL"
VENDOR_CONVERSION_TYPES = frozenset({"CONVERSION"})
LEANPLUM_GOAL_EXIT = ("LEANPLUM", "CAMPAIGN_EXIT")
"""TAXONOMY A-4: Leanplum's single-goal campaign exit is a conversion."""
SEGMENT = "SEGMENT"

MAX_TOUCHES = 200
"""Touches held per user (the newest); a user sent more within the window loses the oldest."""
RECENT_CONVERSIONS = 64
"""A user's latest conversion ids kept as seen whatever their time (rule 4)."""
MAX_NAME = 200
"""Longest conversion name accepted (characters)."""

_CURRENCY = re.compile(r"[A-Za-z]{3}")


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """The attribution window per conversion name, in ms (``CRM_ATTRIBUTION_WINDOW``)."""

    default_ms: int
    by_name: Mapping[str, int] = field(default_factory=dict)

    def of(self, name: str) -> int:
        return self.by_name.get(name, self.default_ms)

    @cached_property
    def longest_ms(self) -> int:
        return max([self.default_ms, *self.by_name.values()])


def windows_of(default_s: float, by_name: Mapping[str, float]) -> Windows:
    """The windows of ``Settings.attribution_windows()``."""
    return Windows(int(default_s * 1000), {n: int(v * 1000) for n, v in by_name.items()})


def conversion_names(names: Iterable[str]) -> dict[str, str]:
    """``CRM_CONVERSION_EVENTS`` as casefolded name -> the name as listed (the first spelling)."""
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(name.casefold(), name)
    return out


# --- the items of a user's stream ---------------------------------------------------------


class Touch(NamedTuple):
    """A touch (a named tuple: a user's state holds up to :data:`MAX_TOUCHES` of them, decoded
    and encoded with every batch that touches the user, :meth:`UserState.encode`)."""

    event_id: str
    at: int
    vendor: str
    app_id: str
    campaign_id: str
    event_type: str
    campaign_name: str | None = None
    message_id: str | None = None
    variant_id: str | None = None

    @property
    def campaign(self) -> str:
        return campaign_key(self.vendor, self.app_id, self.campaign_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "k": "t",
            "id": self.event_id,
            "at": self.at,
            "v": self.vendor,
            "a": self.app_id,
            "c": self.campaign_id,
            "e": self.event_type,
            "n": self.campaign_name,
            "m": self.message_id,
            "x": self.variant_id,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Touch:
        return cls(
            str(d["id"]),
            int(d["at"]),
            str(d["v"]),
            str(d["a"]),
            str(d["c"]),
            str(d["e"]),
            d.get("n"),
            d.get("m"),
            d.get("x"),
        )

    @classmethod
    def from_row(cls, row: Any) -> Touch:
        """A touch of a user state's ``t`` (:meth:`UserState.encode`): its fields in order, as a
        JSON array; an object as written before (:meth:`from_json`)."""
        if type(row) is list:
            return cls._make(row)
        return cls.from_json(row)


@dataclass(frozen=True, slots=True)
class Conversion:
    conversion_id: str
    user_id: str
    name: str
    at: int
    source: str
    """``conversions`` (the customer's topic) or the vendor whose event it is."""
    value: float | None = None
    currency: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "k": "c",
            "id": self.conversion_id,
            "at": self.at,
            "name": self.name,
            "src": self.source,
            "val": self.value,
            "cur": self.currency,
        }

    @classmethod
    def from_json(cls, user_id: str, d: Mapping[str, Any]) -> Conversion:
        value = d.get("val")
        return cls(
            str(d["id"]),
            user_id,
            str(d["name"]),
            int(d["at"]),
            str(d["src"]),
            None if value is None else float(value),
            d.get("cur"),
        )


Item = Touch | Conversion


def encode_items(items: Sequence[Item]) -> bytes:
    """The value of one ``attribution-inputs`` record: a user's items of one feed batch."""
    return orjson.dumps([i.to_json() for i in items])


def decode_items(user_id: str, value: bytes) -> list[Item]:
    """An ``attribution-inputs`` value; ``ValueError`` (or ``KeyError``/``TypeError``) when it is
    not one."""
    return _items(user_id, orjson.loads(value))


def _items(user_id: str, raw: Any) -> list[Item]:
    if not isinstance(raw, list):
        raise ValueError("not a list of items")
    out: list[Item] = []
    for d in raw:
        kind = d["k"]
        if kind == "t":
            out.append(Touch.from_json(d))
        elif kind == "c":
            out.append(Conversion.from_json(user_id, d))
        else:
            raise ValueError(f"unknown item kind {kind!r}")
    return out


# --- reading the inputs -------------------------------------------------------------------


def from_canonical(
    event: Mapping[str, Any], conversion_events: Mapping[str, str]
) -> tuple[str, Item] | None:
    """(user id, touch or conversion) of a decoded canonical event, or None when it is neither
    (see the module docstring)."""
    user = event.get("user_id")
    if not user:
        return None
    event_type = event["event_type"]
    vendor = event["vendor"]
    if event_type in TOUCH_TYPES:
        campaign = event.get("campaign_id")
        if not campaign:
            return None
        return user, Touch(
            event["event_id"],
            int(event["occurred_at"]),
            vendor,
            event.get("app_id") or "",
            campaign,
            event_type,
            event.get("campaign_name"),
            event.get("message_id"),
            event.get("variant_id"),
        )
    name: str | None = None
    if event_type in VENDOR_CONVERSION_TYPES or (vendor, event_type) == LEANPLUM_GOAL_EXIT:
        name = event["vendor_event_type"]
    elif vendor == SEGMENT and conversion_events:
        name = conversion_events.get(str(event["vendor_event_type"]).casefold())
    if name is None:
        return None
    return user, Conversion(event["event_id"], user, name, int(event["occurred_at"]), vendor)


def from_event(
    event: CanonicalEvent, conversion_events: Mapping[str, str]
) -> tuple[str, Item] | None:
    """:func:`from_canonical` of a canonical event as the raw path holds it (before encoding):
    the raw path hands its batch's touches and conversions over where it produces them."""
    user = event.user_id
    if not user:
        return None
    event_type = event.event_type.value
    if event_type in TOUCH_TYPES:
        if not event.campaign_id:
            return None
        return user, Touch(
            event.event_id,
            event.occurred_at,
            event.vendor.value,
            event.app_id or "",
            event.campaign_id,
            event_type,
            event.campaign_name,
            event.message_id,
            event.variant_id,
        )
    vendor = event.vendor.value
    name: str | None = None
    if event_type in VENDOR_CONVERSION_TYPES or (vendor, event_type) == LEANPLUM_GOAL_EXIT:
        name = event.vendor_event_type
    elif vendor == SEGMENT and conversion_events:
        name = conversion_events.get(event.vendor_event_type.casefold())
    if name is None:
        return None
    return user, Conversion(event.event_id, user, name, event.occurred_at, vendor)


def input_records(
    found: Iterable[tuple[str, Item]], partition_of: Callable[[bytes], int]
) -> dict[int, bytes]:
    """The ``attribution-inputs`` records of one batch's (user, item) pairs: one record per
    partition (a Kafka record costs more than its items), each user's items in order under the
    user (:func:`decode_record`). ``partition_of``: a user key's partition (murmur2, so that a
    user's items from the raw path and from the ``conversions`` feed meet on one partition)."""
    by_partition: dict[int, dict[str, list[dict[str, Any]]]] = {}
    partitions: dict[str, int] = {}
    for user, item in found:
        partition = partitions.get(user)
        if partition is None:
            partition = partitions[user] = partition_of(user.encode())
        by_partition.setdefault(partition, {}).setdefault(user, []).append(item.to_json())
    return {p: orjson.dumps({"u": users}) for p, users in by_partition.items()}


def decode_record(key: bytes | None, value: bytes) -> list[tuple[str, list[Item]]]:
    """An ``attribution-inputs`` record as (user, items) pairs: one partition's users
    (:func:`input_records`: ``{"u": {user: [items]}}``), or, as written before, one user's items
    keyed by the user (:func:`encode_items`). ``ValueError`` (or ``KeyError``/``TypeError``)
    when it is neither."""
    if value[:1] == b"{":
        body = orjson.loads(value)
        users = body["u"]
        if not isinstance(users, dict):
            raise ValueError("not a map of users")
        out: list[tuple[str, list[Item]]] = []
        for user, items in users.items():
            if not user:
                raise ValueError("an empty user")
            out.append((user, _items(user, items)))
        return out
    user = (key or b"").decode()
    if not user:
        raise ValueError("no user key")
    return [(user, decode_items(user, value))]


def _time(value: Any) -> int:
    if isinstance(value, bool):
        raise RecordError(RejectReason.INVALID_TIMESTAMP, "occurred_at is a boolean")
    if isinstance(value, int):
        if not 0 <= value <= MAX_TIMESTAMP_MS:
            raise RecordError(
                RejectReason.INVALID_TIMESTAMP, f"occurred_at {value} is out of range (epoch ms)"
            )
        return value
    return iso_to_ms(value, "occurred_at")


def conversion_from_fields(d: Mapping[str, Any], default_id: str) -> Conversion:
    """A ``conversions`` record's fields (JSON object or decoded Avro) as a conversion;
    :class:`RecordError` with the dead-letter reason when they are not one."""
    unknown = set(d) - {"user_id", "name", "occurred_at", "value", "currency", "conversion_id"}
    if unknown:
        raise RecordError(
            RejectReason.INVALID_CONVERSION, f"unknown fields {', '.join(sorted(unknown))}"
        )
    user = d.get("user_id")
    if not isinstance(user, str) or not user.strip():
        raise RecordError(RejectReason.MISSING_USER_ID, "user_id is missing or empty")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError(RejectReason.MISSING_EVENT_TYPE, "name (the conversion) is missing")
    if len(name) > MAX_NAME:
        raise RecordError(RejectReason.INVALID_CONVERSION, f"name longer than {MAX_NAME}")
    at = _time(d.get("occurred_at"))
    value = d.get("value")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        raise RecordError(RejectReason.INVALID_CONVERSION, f"value {value!r} is not a number")
    currency = d.get("currency")
    if currency is not None and (
        not isinstance(currency, str) or not _CURRENCY.fullmatch(currency)
    ):
        raise RecordError(
            RejectReason.INVALID_CONVERSION, f"currency {currency!r} is not a 3-letter code"
        )
    cid = d.get("conversion_id")
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise RecordError(RejectReason.INVALID_CONVERSION, "conversion_id is not a string")
    return Conversion(
        cid or default_id,
        user.strip(),
        name.strip(),
        at,
        "conversions",
        None if value is None else float(value),
        currency.upper() if currency else None,
    )


def parse_conversion_json(value: bytes, default_id: str) -> Conversion:
    """A JSON ``conversions`` record; :class:`RecordError` with its reason when it is not one."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(RejectReason.INVALID_JSON, f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise RecordError(RejectReason.INVALID_JSON, "not a JSON object")
    return conversion_from_fields(d, default_id)


def conversion_id_of(partition: int, offset: int) -> str:
    """The id of a ``conversions`` record without its own ``conversion_id``: its position."""
    return f"conversions/{partition}/{offset}"


# --- a user's state and the rule ----------------------------------------------------------


@dataclass
class UserState:
    """What the attribution table holds for one user."""

    touches: list[Touch] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    """Conversion ids processed, with the user's newest time when they were (what holding them
    is measured from)."""
    sent: dict[str, Any] = field(default_factory=dict)
    """Conversion id -> ``{"a": the attribution it made (:meth:`Attribution.to_json`), "ok":
    whether Kafka acknowledged it}``: one not acknowledged is sent again on a replay."""
    credits: dict[str, int] = field(default_factory=dict)
    """``<campaign key>\\x1f<name>`` -> the time of the conversion credited."""
    newest: int = 0
    """The latest ``occurred_at`` of any item (what holding is measured from)."""
    updated_ms: int = 0
    """Wall clock of the last write (what the expiry of idle users reads)."""
    first: int | None = None
    """The earliest ``occurred_at`` of the user's touches (held or no longer): whether an
    unattributed conversion came after an exposure (:data:`OUTSIDE_WINDOW`)."""
    offset: int = -1
    """The ``attribution-inputs`` offset of the last record applied (the user's partition):
    a record at or below it is a replay (:func:`apply`'s ``replay``)."""
    kept: list[Contribution] = field(default_factory=list)
    """What the user's records of the batch that last wrote the state (and of a replayed batch
    not yet processed again) added to the hourly totals, by input offset: a replay of such a
    record adds them again where its total lacks them (:attr:`Tally.offset`)."""

    def encode(self) -> bytes:
        # A touch as the array of its fields: cheaper to write and read back than an object.
        body: dict[str, Any] = {
            "t": [tuple(t) for t in self.touches],
            "s": self.seen,
            "a": self.sent,
            "c": self.credits,
            "n": self.newest,
            "u": self.updated_ms,
        }
        if self.first is not None:
            body["f"] = self.first
        if self.offset >= 0:
            body["o"] = self.offset
        if self.kept:
            body["k"] = [c.to_json() for c in self.kept]
        return orjson.dumps(body)

    @classmethod
    def decode(cls, value: bytes | None) -> UserState:
        if value is None:
            return cls()
        d = orjson.loads(value)
        return cls(
            [Touch.from_row(t) for t in d["t"]],
            dict(d["s"]),
            dict(d["a"]),
            dict(d["c"]),
            int(d["n"]),
            int(d["u"]),
            None if d.get("f") is None else int(d["f"]),
            int(d.get("o", -1)),
            [Contribution.from_json(c) for c in d.get("k") or ()],
        )


@dataclass(frozen=True, slots=True)
class Attribution:
    """One credited conversion."""

    attribution_id: str
    conversion: Conversion
    touch: Touch
    window_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.attribution_id,
            "u": self.conversion.user_id,
            "c": self.conversion.to_json(),
            "t": self.touch.to_json(),
            "w": self.window_ms,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Attribution:
        return cls(
            str(d["id"]),
            Conversion.from_json(str(d["u"]), d["c"]),
            Touch.from_json(d["t"]),
            int(d["w"]),
        )

    @property
    def control(self) -> bool:
        return self.touch.event_type == CONTROL

    def record(self, processed_at: int) -> dict[str, Any]:
        """The ``Attribution`` Avro record."""
        c, t = self.conversion, self.touch
        return {
            "attribution_id": self.attribution_id,
            "user_id": c.user_id,
            "conversion_id": c.conversion_id,
            "conversion_name": c.name,
            "conversion_source": c.source,
            "converted_at": c.at,
            "value": c.value,
            "currency": c.currency,
            "vendor": t.vendor,
            "app_id": t.app_id or None,
            "campaign_id": t.campaign_id,
            "campaign_name": t.campaign_name,
            "message_id": t.message_id,
            "variant_id": t.variant_id,
            "control": self.control,
            "touch_event_id": t.event_id,
            "touch_event_type": t.event_type,
            "touched_at": t.at,
            "window_ms": self.window_ms,
            "processed_at": processed_at,
        }


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one input record of a user added to one hourly total: an attribution (counted in
    its campaign's total) or a miss (``missed``: the conversion's time, name and why, counted
    in the unattributed total). ``offset``: the record's ``attribution-inputs`` offset, what
    makes adding it idempotent (:attr:`Tally.offset`)."""

    offset: int
    attribution: Attribution | None = None
    missed: tuple[int, str, str] | None = None

    def miss(self) -> tuple[int, str, str]:
        """``missed``, of a contribution that is not an attribution."""
        if self.missed is None:
            raise ValueError("a contribution is neither an attribution nor a miss")
        return self.missed

    def to_json(self) -> dict[str, Any]:
        if self.attribution is not None:
            return {"o": self.offset, "a": self.attribution.to_json()}
        at, name, why = self.miss()
        return {"o": self.offset, "at": at, "n": name, "w": why}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Contribution:
        if "a" in d:
            return cls(int(d["o"]), Attribution.from_json(d["a"]))
        return cls(int(d["o"]), None, (int(d["at"]), str(d["n"]), str(d["w"])))

    @property
    def total(self) -> tuple[int, str, str]:
        """(hour, campaign key, conversion name) of the total it goes to
        (:data:`UNATTRIBUTED` for a miss)."""
        if self.attribution is not None:
            c = self.attribution.conversion
            return bucket_of(c.at), self.attribution.touch.campaign, c.name
        at, name, _ = self.miss()
        return bucket_of(at), UNATTRIBUTED, name


def contributions(
    offset: int, made: Iterable[Attribution], misses: Iterable[tuple[Conversion, str]]
) -> list[Contribution]:
    """The contributions of a record's :func:`apply`: its attributions and misses."""
    out = [Contribution(offset, a) for a in made]
    out += [Contribution(offset, None, (c.at, c.name, why)) for c, why in misses]
    return out


@dataclass
class Outcome:
    """What :func:`apply` did, for the metrics."""

    attributed: int = 0
    unattributed: int = 0
    repeats: int = 0
    replayed: int = 0
    resend: list[Attribution] = field(default_factory=list)
    """Attributions of replayed conversions, to send again (never counted again)."""
    touches_dropped: int = 0
    """Touches beyond :data:`MAX_TOUCHES` of one user."""
    misses: list[tuple[Conversion, str]] = field(default_factory=list)
    """The conversions attributed to nothing, with why (:data:`NO_EXPOSURE` or
    :data:`OUTSIDE_WINDOW`), counted in the hourly totals (:func:`unattributed_rows`)."""


NO_EXPOSURE = "no_exposure"
"""An unattributed conversion with no touch of the user at or before its time (the user's
touches are remembered as long as the user's state: a user idle for longer than the longest
window is forgotten, :meth:`processors.attribution_path.AttributionTable.expire`)."""
OUTSIDE_WINDOW = "outside_window"
"""An unattributed conversion whose user had a touch before it, but none within the conversion
name's window (nor held: a touch is held for the longest window after the user's newest item)."""
UNATTRIBUTED = ""
"""The campaign of the hourly totals of unattributed conversions (no campaign key is empty)."""


def attribution_id(conversion_id: str, campaign: str) -> str:
    return hashlib.sha256(f"{conversion_id}\x1f{campaign}".encode()).hexdigest()[:32]


def credit_key(campaign: str, name: str) -> str:
    return f"{campaign}\x1f{name}"


def last_touch(touches: Iterable[Touch], at: int, window_ms: int) -> Touch | None:
    """The touch with the latest time in ``[at - window_ms, at]`` (ties: the larger event id)."""
    best: Touch | None = None
    for t in touches:
        if at - window_ms <= t.at <= at and (
            best is None or (t.at, t.event_id) > (best.at, best.event_id)
        ):
            best = t
    return best


def apply(
    state: UserState,
    items: Iterable[Item],
    windows: Windows,
    outcome: Outcome,
    fresh: set[str] | None = None,
    *,
    replay: bool = False,
) -> list[Attribution]:
    """Apply a user's items, in order, to ``state`` (the rule of the module docstring); the
    attributions they make. ``fresh``: the conversion ids attributed earlier in the same batch
    (their attributions are being sent: a copy is not sent again). ``replay``: the items were
    applied to ``state`` before (the attribution table knows it by the input record's offset,
    :attr:`UserState.offset`), so nothing is decided or counted again however far the user's
    time moved since. ``state`` is pruned
    afterwards: touches, seen conversions and credits older than the longest window before the
    user's newest item go."""
    out: list[Attribution] = []
    fresh = set() if fresh is None else fresh
    if replay:
        # Items the state holds already (a record at or below its offset): every conversion
        # among them was decided, whatever the times since; only an attribution Kafka was not
        # seen to acknowledge is sent again (rule 4).
        for item in items:
            if isinstance(item, Conversion):
                outcome.replayed += 1
                again = state.sent.get(item.conversion_id)
                if again is not None and not again["ok"] and item.conversion_id not in fresh:
                    fresh.add(item.conversion_id)
                    outcome.resend.append(Attribution.from_json(again["a"]))
        return out
    ids = {t.event_id for t in state.touches}
    for item in items:
        state.newest = max(state.newest, item.at)
        if isinstance(item, Touch):
            if state.first is None or item.at < state.first:
                state.first = item.at
            if item.event_id not in ids:
                ids.add(item.event_id)
                state.touches.append(item)
            continue
        # What is older than the longest window before the newest item is no longer held
        # (pruning only drops it afterwards): the decision does not depend on where batches end.
        held = state.newest - windows.longest_ms
        if _remembered(state.seen, item.conversion_id, held):
            outcome.replayed += 1
            again = state.sent.get(item.conversion_id)
            if again is not None and not again["ok"] and item.conversion_id not in fresh:
                outcome.resend.append(Attribution.from_json(again["a"]))
            continue
        # Remembered for the longest window after the user's newest item now, not after the
        # conversion's own time: a late conversion (older than what is held) is remembered too,
        # so that a replay does not count it a second time.
        state.seen.pop(item.conversion_id, None)  # to the end: the order of decisions
        state.seen[item.conversion_id] = state.newest
        window = windows.of(item.name)
        reach = min(window, item.at - held)
        touch = last_touch(state.touches, item.at, reach) if reach >= 0 else None
        if touch is None:
            outcome.unattributed += 1
            exposed = state.first is not None and state.first <= item.at
            outcome.misses.append((item, OUTSIDE_WINDOW if exposed else NO_EXPOSURE))
            continue
        key = credit_key(touch.campaign, item.name)
        if state.credits.get(key, held - 1) >= held:
            outcome.repeats += 1
            continue
        state.credits[key] = item.at
        outcome.attributed += 1
        made = Attribution(attribution_id(item.conversion_id, touch.campaign), item, touch, window)
        state.sent[item.conversion_id] = {"a": made.to_json(), "ok": False}
        fresh.add(item.conversion_id)
        out.append(made)
    _prune(state, windows.longest_ms, outcome)
    return out


def _remembered(seen: dict[str, int], conversion_id: str, held: int) -> bool:
    """Whether a conversion id was decided and is still remembered (rule 4): for the longest
    window after the user's newest time then, or among the latest :data:`RECENT_CONVERSIONS`
    (what :func:`_prune` keeps; the same whatever the batches)."""
    when = seen.get(conversion_id)
    if when is None:
        return False
    if when >= held:
        return True
    return list(seen).index(conversion_id) >= len(seen) - RECENT_CONVERSIONS


def confirm(state: UserState) -> bool:
    """Mark the state's attributions acknowledged by Kafka; whether any was not."""
    changed = False
    for entry in state.sent.values():
        if not entry["ok"]:
            entry["ok"] = changed = True
    return changed


def _touch_order(t: Touch) -> tuple[int, str]:
    return t.at, t.event_id


def _prune(state: UserState, hold_ms: int, outcome: Outcome) -> None:
    oldest = state.newest - hold_ms
    touches = [t for t in state.touches if t.at >= oldest]
    if len(touches) > 1:
        touches.sort(key=_touch_order)
    if len(touches) > MAX_TOUCHES:
        outcome.touches_dropped += len(touches) - MAX_TOUCHES
        touches = touches[-MAX_TOUCHES:]
    state.touches = touches
    # (Most users hold no conversion: nothing more to look at.)
    if state.seen:
        recent = len(state.seen) - RECENT_CONVERSIONS  # the dict keeps the order of decisions
        state.seen = {
            k: v for n, (k, v) in enumerate(state.seen.items()) if v >= oldest or n >= recent
        }
    if state.sent:
        state.sent = {k: v for k, v in state.sent.items() if k in state.seen}
    if state.credits:
        state.credits = {k: v for k, v in state.credits.items() if v >= oldest}


# --- the aggregates the API reads ---------------------------------------------------------

BUCKET_MS = 3_600_000
"""Aggregates are kept per hour of the conversion's time."""


@dataclass
class Tally:
    """The attributed conversions of one (hour, campaign, conversion name)."""

    conversions: int = 0
    control_conversions: int = 0
    value: dict[str, float] = field(default_factory=dict)
    """Per currency (``""``: a value without a currency), the exposed group's values."""
    control_value: dict[str, float] = field(default_factory=dict)
    campaign_name: str | None = None
    missed: dict[str, int] = field(default_factory=dict)
    """Of the hour's unattributed conversions (campaign :data:`UNATTRIBUTED`): how many, by
    why (:data:`NO_EXPOSURE`, :data:`OUTSIDE_WINDOW`)."""
    converted: dict[str, bytes] = field(default_factory=dict)
    """Per :func:`variant_key` of the winning touch, the sketch of the users credited
    (``u:<user_id>``, as the stats' recipients): the lift's converted recipients."""
    offset: int = -1
    """The highest ``attribution-inputs`` offset (of the table partition's) whose contributions
    the total holds: every record at or below it that contributed to it is counted in it. A
    contribution of a record at or below it is not added again (:meth:`count`)."""

    def count(self, contribution: Contribution, held: int) -> bool:
        """Add ``contribution`` unless the total held it already: its offset is at or below
        ``held``, the total's :attr:`offset` before the batch (a batch adds every contribution
        of its records, several of one offset included). Whether it was added."""
        if contribution.offset <= held:
            return False
        if contribution.attribution is not None:
            self.add(contribution.attribution)
        else:
            self.miss(contribution.miss()[2])
        self.offset = max(self.offset, contribution.offset)
        return True

    def miss(self, why: str) -> None:
        self.missed[why] = self.missed.get(why, 0) + 1

    def add(self, a: Attribution) -> None:
        c = a.conversion
        key = variant_key(a.touch)
        sketch = Sketch(self.converted.get(key), CONVERTED_LG_K)
        sketch.update("u:" + c.user_id)
        self.converted[key] = sketch.image()
        if a.control:
            self.control_conversions += 1
        else:
            self.conversions += 1
        if c.value is not None:
            sums = self.control_value if a.control else self.value
            currency = c.currency or ""
            sums[currency] = sums.get(currency, 0.0) + c.value
        if a.touch.campaign_name:
            self.campaign_name = a.touch.campaign_name

    def merge(self, other: Tally) -> None:
        self.conversions += other.conversions
        self.control_conversions += other.control_conversions
        for mine, theirs in ((self.value, other.value), (self.control_value, other.control_value)):
            for cur, v in theirs.items():
                mine[cur] = mine.get(cur, 0.0) + v
        self.campaign_name = other.campaign_name or self.campaign_name
        for why, n in other.missed.items():
            self.missed[why] = self.missed.get(why, 0) + n
        for key, image in other.converted.items():
            self.converted[key] = _united(self.converted.get(key), image)

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "n": self.conversions,
            "nc": self.control_conversions,
            "v": self.value,
            "vc": self.control_value,
            "cn": self.campaign_name,
        }
        if self.missed:
            body["m"] = self.missed
        if self.converted:
            body["cv"] = {k: base64.b64encode(v).decode() for k, v in self.converted.items()}
        if self.offset >= 0:
            body["o"] = self.offset
        return orjson.dumps(body)

    @classmethod
    def decode(cls, value: bytes | None) -> Tally:
        if value is None:
            return cls()
        d = orjson.loads(value)
        return cls(
            int(d["n"]),
            int(d["nc"]),
            dict(d["v"]),
            dict(d["vc"]),
            d.get("cn"),
            {str(k): int(n) for k, n in (d.get("m") or {}).items()},
            {str(k): base64.b64decode(v) for k, v in (d.get("cv") or {}).items()},
            int(d.get("o", -1)),
        )


CONVERTED_LG_K = DEFAULT_LG_K
"""The precision of :attr:`Tally.converted` (exact up to a few hundred users per key, as the
stats' sketches)."""
CONTROL_KEY = "g:control"
"""The :func:`variant_key` of the holdout's CONTROL touches, whatever variant id they carry
(as the stats' control group, :data:`processors.records.BREAKDOWN_RULES`)."""
NO_VARIANT_KEY = "n"
"""The :func:`variant_key` of touches without a variant id."""


def variant_key(touch: Touch) -> str:
    """Which of the campaign's variant rows a credit goes to: the control group for a CONTROL
    touch, else ``v:<variant_id>`` of the touch, else :data:`NO_VARIANT_KEY`."""
    if touch.event_type == CONTROL:
        return CONTROL_KEY
    if touch.variant_id is not None:
        return "v:" + touch.variant_id
    return NO_VARIANT_KEY


def _united(a: bytes | None, b: bytes) -> bytes:
    if a is None:
        return b
    union = Union(CONVERTED_LG_K)
    union.add_all([a, b])
    return union.image() or b


def converted_of(tallies: Iterable[tuple[str, str, Tally]], campaign: str) -> dict[str, bytes]:
    """The users credited to ``campaign`` (every conversion name) per :func:`variant_key`, over
    the tallies (hours and partitions): each user once per key."""
    out: dict[str, bytes] = {}
    for found, _, tally in tallies:
        if found == campaign:
            for key, image in tally.converted.items():
                out[key] = _united(out.get(key), image)
    return out


def bucket_of(at: int) -> int:
    return at - at % BUCKET_MS


def rows(tallies: Iterable[tuple[str, str, Tally]]) -> list[dict[str, Any]]:
    """``GET /api/attribution``'s rows from (campaign key, name, tally) triples: one per vendor
    and campaign (the names summed; ``names`` breaks them down), most conversions first."""
    merged: dict[str, dict[str, Tally]] = {}
    for campaign, name, tally in tallies:
        if campaign == UNATTRIBUTED:
            continue
        merged.setdefault(campaign, {}).setdefault(name, Tally()).merge(tally)
    out: list[dict[str, Any]] = []
    for campaign, by_name in merged.items():
        vendor, app_id, campaign_id = split_campaign_key(campaign)
        total = Tally()
        for tally in by_name.values():
            total.merge(tally)
        out.append(
            {
                "vendor": vendor,
                "app_id": app_id or None,
                "campaign_id": campaign_id,
                "campaign_name": total.campaign_name,
                "conversions": total.conversions,
                "control_conversions": total.control_conversions,
                "value": _rounded(total.value),
                "control_value": _rounded(total.control_value),
                "names": {
                    n: {"conversions": t.conversions, "control_conversions": t.control_conversions}
                    for n, t in sorted(by_name.items())
                },
            }
        )
    out.sort(
        key=lambda r: (-r["conversions"], -r["control_conversions"], r["vendor"], r["campaign_id"])
    )
    return out


def unattributed_rows(tallies: Iterable[tuple[str, str, Tally]]) -> list[dict[str, Any]]:
    """``GET /api/attribution``'s ``unattributed``: per conversion name, the conversions credited
    to no campaign, and why (:data:`NO_EXPOSURE`, :data:`OUTSIDE_WINDOW`); most first."""
    by_name: dict[str, dict[str, int]] = {}
    for campaign, name, tally in tallies:
        if campaign != UNATTRIBUTED:
            continue
        counts = by_name.setdefault(name, {NO_EXPOSURE: 0, OUTSIDE_WINDOW: 0})
        for why, n in tally.missed.items():
            counts[why] = counts.get(why, 0) + n
    ranked = sorted(by_name.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return [
        {"name": name, "conversions": sum(counts.values()), **counts} for name, counts in ranked
    ]


def _rounded(sums: Mapping[str, float]) -> dict[str, float]:
    return {cur: round(v, 6) for cur, v in sorted(sums.items())}
