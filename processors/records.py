"""Pure builders of the worker's output records: canonical events, dead letters, stats.

Kept apart from the Faust agents so that what the worker writes can be tested without a broker.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from crmstream.serde import AVRO_SMALL_LONGS, avro_long, avro_string
from crmstream.topics import H_APP_ID, H_INGESTED_AT, H_SOURCE
from processors import campaigns
from processors.normalize.model import CanonicalEvent, Channel, EventType

if TYPE_CHECKING:
    from crmstream.serde import AvroSerde
    from processors.uniques import Sketch

SCHEMA_VERSION = 1  # CanonicalEvent
STATS_SCHEMA_VERSION = 3  # CampaignStats; 2: unique recipients, their sketches, campaign_name;
# 3: variants
DEAD_LETTER_VERSION = 2  # 2: raw_size (the raw value was cut to fit)
# 9999-12-31T23:59:59.999Z: the latest occurred_at a normalizer lets through, so that a window's
# end (start + size) still fits an Avro long.
MAX_TIMESTAMP_MS = 253_402_300_799_999

_new_object = object.__new__
"""Makes a slotted dataclass's instance without its ``__init__`` (the fast constructors below:
the stats path makes a window and its breakdowns for every window a batch touches)."""


@dataclass(frozen=True, slots=True)
class RawPosition:
    """Where a raw record came from: its Kafka position and the connector's headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: Mapping[str, bytes]

    @property
    def kafka_position(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def source(self) -> str | None:
        raw = self.headers.get(H_SOURCE)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def app_id(self) -> str | None:
        raw = self.headers.get(H_APP_ID)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def ingested_at(self) -> int:
        """The connector's ingest time, else the raw record's Kafka timestamp."""
        raw = self.headers.get(H_INGESTED_AT)
        if raw:
            try:
                return int(raw)
            except ValueError:
                pass
        return self.timestamp_ms


def headers_dict(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> dict:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: v for k, v in items if v is not None}


def canonical_record(event: CanonicalEvent, pos: RawPosition, processed_at: int) -> dict[str, Any]:
    record = event.to_record()
    record["ingested_at"] = pos.ingested_at
    record["processed_at"] = processed_at
    record["source_position"] = pos.source or pos.kafka_position
    record["raw_topic"] = pos.topic
    record["raw_partition"] = pos.partition
    record["raw_offset"] = pos.offset
    record["schema_version"] = SCHEMA_VERSION
    return record


def dead_letter_record(
    *,
    raw: bytes,
    raw_size: int | None = None,
    raw_key: bytes | None,
    vendor: str | None,
    reason: str,
    detail: str,
    pos: RawPosition,
    now_ms: int,
) -> dict[str, Any]:
    return {
        "raw": raw,
        "raw_size": raw_size,
        "raw_key": raw_key,
        "vendor": vendor,
        "reason": reason,
        "detail": detail,
        "source_topic": pos.topic,
        "source_partition": pos.partition,
        "source_offset": pos.offset,
        "source_position": pos.source,
        "headers": {k: v.decode("utf-8", "replace") for k, v in pos.headers.items()},
        "dead_lettered_at": now_ms,
        "schema_version": DEAD_LETTER_VERSION,
    }


# --- campaign stats -------------------------------------------------------------------------


def campaign_key(event: CanonicalEvent) -> str:
    """The stats key of the event's campaign (:func:`processors.campaigns.campaign_key`)."""
    return campaigns.campaign_key(event.vendor.value, event.app_id or "", event.campaign_id or "")


Increment = list[Any]
"""One canonical event as the stats agent counts it: ``[raw offset, occurred_at ms, event_type,
channel, recipient]``. The raw offset (with the raw partition the increment is filed under) makes
a replayed increment recognisable: see :meth:`WindowCounts.apply`. The recipient is the sketch
item of :func:`recipient_of` (user id, else device id), or None. On the wire the recipients
travel in a list of their own (:func:`stats_updates_value`), so the increment there has four
fields."""


def recipient_of(event: CanonicalEvent) -> str | None:
    """The event's recipient as the uniques count it: ``u:<user_id>``, else ``d:<device_id>``,
    else None (see :mod:`processors.uniques`, which this module does not import: the raw side
    and the benchmark's peers do without the sketch library)."""
    if event.user_id:
        return "u:" + event.user_id
    if event.device_id:
        return "d:" + event.device_id
    return None


BREAKDOWNS: dict[str, Callable[[CanonicalEvent], str | None]] = {
    "message": lambda event: event.message_id,
    "variant": lambda event: event.variant_id,
}
"""The dimensions a campaign window is broken down by, by their name on the wire and in the
window value, with the event's value of each (None: the event has none). A dimension added here
travels in ``stats-updates`` (:func:`stats_updates_value`), is counted per window
(:class:`Breakdown`, by its :data:`BREAKDOWN_RULES`), and is read back by
:func:`processors.figures.merged_breakdown`. An unknown value (a variant id no one declared) is
a value like any other, never an error."""

DEFAULT_MAX_KEYS = 100
"""Default bound of the values a window keeps its own counts for, per dimension
(``CRM_STATS_MAX_MESSAGES``); the rest are counted in the window's overflow."""

DEFAULT_MAX_VARIANTS = 20
"""Default bound of the variant ids a window keeps its own counts and sketches for
(``CRM_STATS_MAX_VARIANTS``); the rest are counted in the window's overflow."""

CONTROL_GROUP = "control"
"""The bucket of the variant breakdown that holds the campaign's control (holdout) group."""

VARIANT_SKETCHED = frozenset({"SEND", "DELIVERY", "IMPRESSION", "OPEN", "CLICK", "CONTROL"})
"""The event types whose recipients each variant keeps a sketch of (besides all its
recipients): what its unique rates and its received recipients (SEND, DELIVERY, IMPRESSION;
the control group: CONTROL) are computed from. Its converted recipients are those of them in
the campaign's conversion sketches (:mod:`processors.figures`), so a conversion need not carry
the variant. Bounded: at most this many sketches plus one per kept variant, the overflow and
the control group (the events without a variant keep none)."""


@dataclass(frozen=True, slots=True)
class BreakdownRule:
    """How a dimension is counted besides its counts per value. ``groups``: event types whose
    events are counted in a named bucket of their own whatever their value (never bounded, never
    in the overflow). ``sketched``: with ``sketches``, each bucket keeps the sketch of all its
    recipients and of the recipients of each of these event types."""

    groups: Mapping[str, str] = field(default_factory=dict)
    sketches: bool = False
    sketched: frozenset[str] = frozenset()


NO_RULE = BreakdownRule()

BREAKDOWN_RULES: dict[str, BreakdownRule] = {
    # The control group is a variant of its own: every CONTROL event of the campaign, whatever
    # variant id it carries. A vendor puts the campaign's treatment id on a holdout record
    # (Pinpoint: variant_id = treatment_id, "0" for a standard campaign, TAXONOMY 6.2), which is
    # also the id of the recipients who got the message: kept as a variant, the holdout would be
    # counted among the treated. Airship CONTROL carries the push's variant, if any (6.5).
    # TAXONOMY has no A-n judgement call for this rule (docs/events.md states it meanwhile).
    "variant": BreakdownRule({"CONTROL": CONTROL_GROUP}, True, VARIANT_SKETCHED),
}
"""Per dimension of :data:`BREAKDOWNS`, its :class:`BreakdownRule` (none: counts per value only)."""


def breakdown_values(event: CanonicalEvent) -> dict[str, str | None]:
    """The event's value of every dimension of :data:`BREAKDOWNS`."""
    return {name: value_of(event) for name, value_of in BREAKDOWNS.items()}


def stats_increment(event: CanonicalEvent, raw_offset: int) -> Increment:
    """The increment as sent, without its recipient (:func:`recipient_of`)."""
    return [raw_offset, event.occurred_at, event.event_type.value, event.channel.value]


def raw_source(topic: str, partition: int) -> str:
    """The raw partition an increment came from, as stats windows remember it."""
    return f"{topic}/{partition}"


STATS_UPDATES_VERSION = 2

Counted = tuple[str | None, Any, str, str, str | None, Mapping[str, str | None]]
"""One increment as a window counts it (:meth:`WindowCounts.apply`): (raw source, raw offset,
event type, channel, recipient, dimension values)."""

Named = tuple[int, str]
"""A campaign name with the occurred_at of the event that carried it; the latest wins (the
larger tuple: by time, then by name, so that the choice does not depend on arrival order)."""


def stats_updates_value(
    by_campaign: Mapping[str, Mapping[str, list[Increment]]],
    recipients: Mapping[str, Mapping[str, list[str | None]]] | None = None,
    names: Mapping[str, Named] | None = None,
    dimensions: Mapping[str, Mapping[str, Mapping[str, list[str | None]]]] | None = None,
) -> bytes:
    """One ``stats-updates`` record: the increments of every campaign bound for one partition
    from one worker batch, by the raw partition they came from, in raw-offset order::

        {"v": 2,
         "c": {campaign key: {"<raw topic>/<partition>": [[offset, occurred_at, type, channel]]}},
         "r": {campaign key: {"<raw topic>/<partition>": [recipient or null, ...]}},
         "n": {campaign key: [occurred_at, campaign name]},
         "d": {dimension: {campaign key: {"<raw topic>/<partition>": [value or null, ...]}}}}

    ``r`` (each increment's recipient, in the same order as in ``c``) and ``n`` (the latest
    campaign name among the batch's events) were added to version 2 without changing ``c``: a
    worker of the version before reads these records (and ignores them), and this one reads its
    records (increments without a recipient count as unattributed). ``d`` (each increment's
    value of each dimension of :data:`BREAKDOWNS`, in the same order as in ``c``) was added the
    same way: a worker of the version before ignores it, and increments of a record without it
    are counted in the window's totals and no breakdown bucket (the API shows them as not broken
    down)."""
    out: dict[str, Any] = {"v": STATS_UPDATES_VERSION, "c": by_campaign}
    if recipients:
        out["r"] = recipients
    if names:
        out["n"] = names
    if dimensions:
        out["d"] = dimensions
    return orjson.dumps(out)


class StatsUpdates(NamedTuple):
    """A parsed ``stats-updates`` record."""

    increments: list[tuple[str, str | None, list[Increment]]]  # (campaign, raw source, incs)
    names: dict[str, Named]  # campaign -> its latest name in the record


def parse_stats_updates(key: bytes | None, value: bytes) -> StatsUpdates:
    """The increments, ``[(campaign key, raw source or None, [increment, ...]), ...]`` with
    six-field increments (recipient None where the record has none; then the increment's
    dimension values, ``{dimension: value or None}``, empty where the record has none), and the
    campaign names.

    Also reads the two earlier formats (one campaign per record keyed by it, with a list of
    ``[occurred_at, event_type, channel]``; then a dict of campaign -> that list), whose
    increments carry no raw position and are counted as they come. Raises ``ValueError`` on a
    record that is none of these.
    """
    data = orjson.loads(value)
    if isinstance(data, list):
        return StatsUpdates(
            [((key or b"").decode(), None, [[None, *_old(i), {}] for i in data])], {}
        )
    if not isinstance(data, dict):
        raise ValueError(f"a stats-updates value is a JSON object, not {type(data).__name__}")
    if data.get("v") == STATS_UPDATES_VERSION:
        out: list[tuple[str, str | None, list[Increment]]] = []
        recipients = data.get("r") or {}
        dimensions = data.get("d") or {}
        if not isinstance(dimensions, dict):
            raise ValueError(f"not breakdown values: {dimensions!r}")
        for campaign, by_source in data["c"].items():
            of_campaign = recipients.get(campaign) or {}
            for source, increments in by_source.items():
                who = of_campaign.get(source)
                if who is None:
                    who = [None] * len(increments)
                elif len(who) != len(increments):
                    raise ValueError(f"{len(who)} recipients for {len(increments)} increments")
                values = _dimension_values(dimensions, campaign, source, len(increments))
                for inc, person, dims in zip(increments, who, values, strict=True):
                    # _check, inline (this runs for every increment)
                    raw_offset, occurred, event_type, channel = inc
                    if (
                        type(occurred) is not int
                        or not 0 <= occurred <= MAX_TIMESTAMP_MS
                        or not isinstance(event_type, str)
                        or not isinstance(channel, str)
                        or (raw_offset is not None and type(raw_offset) is not int)
                    ):
                        _check(inc[1:], inc[0])  # raises, naming what is wrong
                    if person is not None and not isinstance(person, str):
                        raise ValueError(f"not a recipient: {person!r}")
                    inc.append(person)
                    inc.append(dims)
                out.append((campaign, source, increments))
        names: dict[str, Named] = {}
        for campaign, named in (data.get("n") or {}).items():
            occurred, name = named
            if type(occurred) is not int or not isinstance(name, str):
                raise ValueError(f"not a campaign name: {named!r}")
            names[campaign] = (occurred, name)
        return StatsUpdates(out, names)
    # Campaign keys always hold '|' (campaign_key), so "v" above cannot be one.
    return StatsUpdates(
        [(campaign, None, [[None, *_old(i), {}] for i in incs]) for campaign, incs in data.items()],
        {},
    )


def _dimension_values(
    dimensions: Mapping[str, Any], campaign: str, source: str, n: int
) -> list[dict[str, str | None]]:
    """Each of ``n`` increments' dimension values from a record's ``d``."""
    out: list[dict[str, str | None]] = [{} for _ in range(n)]
    for name, by_campaign in dimensions.items():
        values = ((by_campaign or {}).get(campaign) or {}).get(source)
        if values is None:
            continue
        if len(values) != n:
            raise ValueError(f"{len(values)} {name} values for {n} increments")
        for dims, value in zip(out, values, strict=True):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"not a {name} value: {value!r}")
            dims[name] = value
    return out


def _old(increment: Any) -> list[Any]:
    _check(increment, None)
    return [*increment, None]


def _check(fields: Any, raw_offset: Any) -> None:
    occurred, event_type, channel = fields
    if (
        type(occurred) is not int
        or not 0 <= occurred <= MAX_TIMESTAMP_MS
        or not isinstance(event_type, str)
        or not isinstance(channel, str)
    ):
        raise ValueError(f"not an increment: {fields!r}")
    if raw_offset is not None and type(raw_offset) is not int:
        raise ValueError(f"not a raw offset: {raw_offset!r}")


def window_start(occurred_at_ms: int, size_s: int) -> int:
    size_ms = size_s * 1000
    return occurred_at_ms - occurred_at_ms % size_ms


def stats_upsert_key(campaign: str, window_label: str, start_ms: int) -> bytes:
    return f"{campaign}|{window_label}|{start_ms}".encode()


KEPT_BUCKET, OVERFLOW_BUCKET, MISSING_BUCKET, GROUP_BUCKET = "v", "o", "x", "g"
"""The kinds of a breakdown's buckets, as its sketches are keyed: ``(kind, value or group)``."""

Bucket = tuple[str, str | None]


@dataclass(slots=True)
class Breakdown:
    """A window's counts per event type for each value of one dimension (e.g. ``message_id``),
    bounded: at most ``max_keys`` values get their own counts, in the order the window first
    counted them; the events of any further value are counted in ``overflow``, and events
    without a value in ``missing``; the events of a :attr:`BreakdownRule.groups` event type in
    their group (``groups``) whatever their value. Every event the window counts with this
    dimension is in exactly one of these, so they add up to the window's counts (of those
    events). ``sketches``: per bucket, the sketches of its recipients (:class:`BreakdownRule`),
    keyed like the window's (:data:`ALL_RECIPIENTS`, event types)."""

    kept: dict[str, dict[str, int]] = field(default_factory=dict)
    overflow: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    sketches: dict[Bucket, dict[str, Sketch]] = field(default_factory=dict)

    def add(
        self,
        value: str | None,
        event_type: str,
        max_keys: int,
        recipient: str | None = None,
        rule: BreakdownRule = NO_RULE,
        lg_k: int | None = None,
    ) -> None:
        group = rule.groups.get(event_type) if rule.groups else None
        bucket: Bucket
        if group is not None:
            counts = self.groups.get(group)
            if counts is None:
                counts = self.groups[group] = {}
            bucket = (GROUP_BUCKET, group)
        elif value is None:
            counts, bucket = self.missing, (MISSING_BUCKET, None)
        else:
            found = self.kept.get(value)
            if found is None and len(self.kept) < max_keys:
                found = self.kept[value] = {}
            if found is None:
                counts, bucket = self.overflow, (OVERFLOW_BUCKET, None)
            else:
                counts, bucket = found, (KEPT_BUCKET, value)
        counts[event_type] = counts.get(event_type, 0) + 1
        # No sketches for the events without a value: for a campaign without variants they would
        # be its totals' sketches a second time, and no figure is computed from them.
        # (value_known and _sketch_in, inline: this runs for every increment of a variant)
        if (
            rule.sketches
            and recipient is not None
            and lg_k is not None
            and bucket[0] != MISSING_BUCKET
        ):
            of_bucket = self.sketches.get(bucket)
            if of_bucket is None:
                of_bucket = self.sketches[bucket] = {}
            sketch = of_bucket.get(ALL_RECIPIENTS)
            if sketch is None:
                sketch = of_bucket[ALL_RECIPIENTS] = _new_sketch(lg_k)
            sketch.update(recipient)
            if event_type in rule.sketched:
                sketch = of_bucket.get(event_type)
                if sketch is None:
                    sketch = of_bucket[event_type] = _new_sketch(lg_k)
                sketch.update(recipient)

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.kept}
        if self.overflow:
            out["o"] = self.overflow
        if self.missing:
            out["x"] = self.missing
        if self.groups:
            out["g"] = self.groups
        return out

    @classmethod
    def load(cls, value: Mapping[str, Any]) -> Breakdown:
        """From :meth:`dump`, freshly decoded: its dicts are kept as they are (not copied)."""
        self = _new_object(cls)
        self.kept = value.get("k") or {}
        self.overflow = value.get("o") or {}
        self.missing = value.get("x") or {}
        self.groups = value.get("g") or {}
        self.sketches = {}
        return self

    @classmethod
    def new(cls) -> Breakdown:
        """``Breakdown()``, made without the dataclass's default factories (a window touched
        once at 50,000 campaigns makes two, and its loaded value as many)."""
        self = _new_object(cls)
        self.kept = {}
        self.overflow = {}
        self.missing = {}
        self.groups = {}
        self.sketches = {}
        return self

    def images(self) -> list[tuple[Bucket, str, bytes]]:
        """Every sketch's compact image, ``(bucket, sketch key, image)``, in a fixed order."""
        sketches = self.sketches
        buckets = sorted(sketches, key=_order) if len(sketches) > 1 else sketches
        return [
            (bucket, key, sketch.image())
            for bucket in buckets
            for key, sketch in sorted(sketches[bucket].items())
        ]


def value_known(bucket: Bucket) -> bool:
    """Whether a bucket keeps sketches (with a :class:`BreakdownRule` that asks for them): every
    bucket but the events without a value."""
    return bucket[0] != MISSING_BUCKET


def _order(bucket: Bucket) -> tuple[str, str]:
    return (bucket[0], bucket[1] or "")


def _sketch_in(sketches: dict[str, Sketch], key: str, lg_k: int) -> Sketch:
    sketch = sketches.get(key)
    if sketch is None:
        sketch = sketches[key] = _new_sketch(lg_k)
    return sketch


_UNIQUES: list[ModuleType] = []  # processors.uniques, once a window needs it


def _uniques() -> ModuleType:
    """:mod:`processors.uniques`, imported when a window first needs it (the raw side and the
    benchmark's peers do without the sketch library); an import statement in the hot path
    costs more than the sketch it makes."""
    if not _UNIQUES:
        import processors.uniques

        _UNIQUES.append(processors.uniques)
    return _UNIQUES[0]


def _new_sketch(lg_k: int) -> Sketch:
    """An empty sketch."""
    if not _UNIQUES:
        _uniques()
    sketch: Sketch = _UNIQUES[0].new_sketch(lg_k)
    return sketch


ALL_RECIPIENTS = "*"
"""The key of a window's sketch of every recipient (the others are keyed by event type)."""


@dataclass(slots=True)
class WindowCounts:
    """Counts of one campaign in one window, its recipients, and the raw records they include.

    ``applied`` maps each raw partition (``raw_source``) to the highest raw offset counted here.
    A campaign's increments from one raw partition reach its stats partition in raw-offset order
    (one producer per raw partition at a time, idempotent, so ordered and without gaps; a
    restart re-sends from an earlier position, after what it sent before). So an increment at or
    below that offset was counted already: a replay after a crash, of the worker or of the
    stats agent itself. Stored with the counts in one value, it is saved (locally and in the
    changelog) atomically with them: a replayed increment changes neither the counts nor the
    sketches.

    ``sketches`` (HyperLogLog, :mod:`processors.uniques`): the recipients of every event
    (:data:`ALL_RECIPIENTS`) and of each event type; ``lg_k`` is None for counts kept without
    them (the benchmark's peers). ``unattributed``: events with no recipient, or counted before
    windows kept recipients. ``name``: the latest campaign name seen among the window's events.
    ``breakdowns``: per dimension of :data:`BREAKDOWNS`, the counts per value (:class:`Breakdown`,
    at most ``max_keys`` values each: one bound for every dimension, or a bound per dimension,
    :func:`bound_of`); empty for a window stored before windows kept them. In the same value as
    ``applied``, so exact through a crash like the counts.
    """

    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    unattributed: int = 0
    sketches: dict[str, Sketch] = field(default_factory=dict)
    lg_k: int | None = None
    name: Named | None = None
    breakdowns: dict[str, Breakdown] = field(default_factory=dict)
    max_keys: int | Mapping[str, int] = DEFAULT_MAX_KEYS

    @classmethod
    def new(
        cls,
        lg_k: int | None,
        max_keys: int | Mapping[str, int] = DEFAULT_MAX_KEYS,
        total: int = 0,
        by_type: dict[str, int] | None = None,
        by_channel: dict[str, int] | None = None,
        applied: dict[str, int] | None = None,
        unattributed: int = 0,
        sketches: dict[str, Sketch] | None = None,
        name: Named | None = None,
        breakdowns: dict[str, Breakdown] | None = None,
    ) -> WindowCounts:
        """``WindowCounts(...)`` made without the dataclass's keyword handling and default
        factories (every window a stats batch touches is made once: at 50,000 campaigns a new
        one, ``load_window(None)``, for nearly every event). The dicts given are kept, not
        copied."""
        self = _new_object(cls)
        self.total = total
        self.by_type = {} if by_type is None else by_type
        self.by_channel = {} if by_channel is None else by_channel
        self.applied = {} if applied is None else applied
        self.unattributed = unattributed
        self.sketches = {} if sketches is None else sketches
        self.lg_k = lg_k
        self.name = name
        self.breakdowns = {} if breakdowns is None else breakdowns
        self.max_keys = max_keys
        return self

    @classmethod
    def load(cls, value: Any) -> WindowCounts:
        """From :meth:`dump` (a JSON object; no sketches)."""
        if not value:
            return cls()
        return cls(int(value["n"]), dict(value["t"]), dict(value["c"]), dict(value.get("w", {})))

    def apply(
        self,
        source: str | None,
        raw_offset: int | None,
        event_type: str,
        channel: str,
        recipient: str | None = None,
        dimensions: Mapping[str, str | None] | None = None,
    ) -> bool:
        """Count one event unless this window has counted its raw record already.
        ``dimensions``: its value of each dimension it is broken down by (a dimension absent:
        counted in the totals only)."""
        if source is not None and raw_offset is not None:
            applied = self.applied
            if raw_offset <= applied.get(source, -1):
                return False
            applied[source] = raw_offset
        self.total += 1
        by_type, by_channel = self.by_type, self.by_channel
        by_type[event_type] = by_type.get(event_type, 0) + 1
        by_channel[channel] = by_channel.get(channel, 0) + 1
        if dimensions:
            breakdowns = self.breakdowns
            for name, value in dimensions.items():
                breakdown = breakdowns.get(name)
                if breakdown is None:
                    breakdown = breakdowns[name] = Breakdown.new()
                breakdown.add(
                    value,
                    event_type,
                    bound_of(self.max_keys, name),
                    recipient,
                    BREAKDOWN_RULES.get(name, NO_RULE),
                    self.lg_k,
                )
        if self.lg_k is not None:
            if recipient is None:
                self.unattributed += 1
            else:
                self._sketch(ALL_RECIPIENTS).update(recipient)
                self._sketch(event_type).update(recipient)
        return True

    def apply_all(self, increments: Iterable[Counted]) -> int:
        """:meth:`apply` of each of ``increments`` in order (a stats batch's for this window);
        returns how many it had counted already (a replay), which it skips. The window's
        look-ups are made once, not per increment."""
        applied, by_type, by_channel = self.applied, self.by_type, self.by_channel
        breakdowns, sketches, lg_k = self.breakdowns, self.sketches, self.lg_k
        bounds: dict[str, tuple[int, BreakdownRule]] = {}
        replayed = counted = unattributed = 0
        for source, raw_offset, event_type, channel, recipient, dimensions in increments:
            if source is not None and raw_offset is not None:
                if raw_offset <= applied.get(source, -1):
                    replayed += 1
                    continue
                applied[source] = raw_offset
            counted += 1
            by_type[event_type] = by_type.get(event_type, 0) + 1
            by_channel[channel] = by_channel.get(channel, 0) + 1
            if dimensions:
                for name, value in dimensions.items():
                    breakdown = breakdowns.get(name)
                    if breakdown is None:
                        breakdown = breakdowns[name] = Breakdown.new()
                    found = bounds.get(name)
                    if found is None:
                        found = bounds[name] = (
                            bound_of(self.max_keys, name),
                            BREAKDOWN_RULES.get(name, NO_RULE),
                        )
                    breakdown.add(value, event_type, found[0], recipient, found[1], lg_k)
            if lg_k is not None:
                if recipient is None:
                    unattributed += 1
                else:
                    sketch = sketches.get(ALL_RECIPIENTS)
                    if sketch is None:
                        sketch = sketches[ALL_RECIPIENTS] = _new_sketch(lg_k)
                    sketch.update(recipient)
                    sketch = sketches.get(event_type)
                    if sketch is None:
                        sketch = sketches[event_type] = _new_sketch(lg_k)
                    sketch.update(recipient)
        self.total += counted
        self.unattributed += unattributed
        return replayed

    def _sketch(self, key: str) -> Sketch:
        sketch = self.sketches.get(key)
        if sketch is None:
            if self.lg_k is None:
                raise ValueError("a window without sketches (lg_k None) keeps no recipients")
            sketch = self.sketches[key] = _new_sketch(self.lg_k)
        return sketch

    def add(self, event_type: str, channel: str) -> None:
        self.total += 1
        self.by_type[event_type] = self.by_type.get(event_type, 0) + 1
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1

    def named(self, named: Named) -> None:
        """Keep the latest of the campaign names seen."""
        if self.name is None or tuple(named) > self.name:
            self.name = (int(named[0]), str(named[1]))

    def dump(self) -> dict[str, Any]:
        return {"n": self.total, "t": self.by_type, "c": self.by_channel, "w": self.applied}

    def uniques(self) -> dict[str, Any] | None:
        """The unique recipients: estimates, images and precision (None without sketches).
        One pass over the sketches: every upsert asks (:func:`stats_record`)."""
        lg_k = self.lg_k
        if lg_k is None:
            return None
        sketches = self.sketches
        estimates: dict[str, int] = {}
        images: dict[str, bytes] = {}
        for key in sorted(sketches):
            if key != ALL_RECIPIENTS:
                sketch = sketches[key]
                images[key] = sketch.image()
                estimates[key] = sketch.estimate()
        everyone = sketches.get(ALL_RECIPIENTS)
        return {
            "recipients": everyone.estimate() if everyone is not None else 0,
            "by_event_type": estimates,
            "unattributed": self.unattributed,
            "lg_k": lg_k,
            "error_bound": _error_bound(lg_k),
            "sketch": everyone.image() if everyone is not None else None,
            "sketches": images,
        }


def _sketched(counts: WindowCounts) -> Sketched:
    """A window's sketches, sorted by key, with their images and estimates."""
    sketches = counts.sketches
    keys = sorted(sketches)
    return (
        keys,
        [sketches[key].image() for key in keys],
        [sketches[key].estimate() for key in keys],
    )


@functools.cache
def _error_bound(lg_k: int) -> float:
    error_bound: Callable[[int], float] = _uniques().error_bound
    return error_bound(lg_k)


def bound_of(max_keys: int | Mapping[str, int], dimension: str) -> int:
    """A dimension's bound: the one bound of every dimension, or its own (the default if the
    mapping has none: ``CRM_STATS_MAX_MESSAGES`` / ``CRM_STATS_MAX_VARIANTS``)."""
    if isinstance(max_keys, int):
        return max_keys
    found = max_keys.get(dimension)
    if found is not None:
        return found
    return DEFAULT_MAX_VARIANTS if dimension == "variant" else DEFAULT_MAX_KEYS


# --- window values, as stored in the stats tables ----------------------------------------------

WINDOW_VALUE_MAGIC = b"\xc5\x02"
"""Binary window values start with these bytes; the earlier JSON values start with ``{``."""
_WINDOW_HEAD = struct.Struct(">2sqI")  # magic, updated at (epoch ms), length of the JSON part


Sketched = tuple[list[str], list[bytes], list[int]]
"""A window's sketch keys (sorted), their compact images and their estimates, in that order:
what its stored value and its upsert both write (:func:`encode_window`)."""


def window_value(counts: WindowCounts, updated_ms: int) -> bytes:
    """A window as stored: a fixed header (with the time it was last updated, which its expiry
    reads without parsing the rest), its counts as JSON, then its sketches' compact images, then
    its breakdowns' (``bs``: ``[dimension, bucket kind, bucket value, sketch key, length]`` each,
    in the order of the images; absent in a window stored before breakdowns kept sketches)."""
    return encode_window(counts, updated_ms)[0]


def encode_window(counts: WindowCounts, updated_ms: int) -> tuple[bytes, Sketched]:
    """:func:`window_value`, and the window's :data:`Sketched` as it wrote them, for its upsert
    (:meth:`StatsUpserts.value`): the sketches are sorted, imaged and estimated once a window.
    (:meth:`StatsUpserts.window` writes both at once.)"""
    sketches = counts.sketches
    keys = sorted(sketches)
    images: list[bytes] = []
    estimates: list[int] = []
    lengths: list[list[Any]] = []
    for key in keys:
        image, estimate = sketches[key].written()
        images.append(image)
        estimates.append(estimate)
        lengths.append([key, len(image)])
    return _stored_value(counts, updated_ms, lengths, estimates, images), (
        keys,
        images,
        estimates,
    )


def _stored_value(
    counts: WindowCounts,
    updated_ms: int,
    lengths: list[list[Any]],
    estimates: list[int],
    images: list[bytes],
) -> bytes:
    """:func:`window_value` of ``counts``, given its sketches' ``[key, length]``, estimates and
    images, sorted by key."""
    head: dict[str, Any] = {
        "n": counts.total,
        "t": counts.by_type,
        "c": counts.by_channel,
        "w": counts.applied,
        "u": counts.unattributed,
        "k": counts.lg_k,
        "s": lengths,
        # The estimates, so that a window's unchanged sketches are not estimated again.
        "e": estimates,
    }
    if counts.name is not None:
        head["m"] = counts.name
    breakdowns = counts.breakdowns
    extra_images: list[bytes] = []
    if breakdowns:
        names = sorted(breakdowns) if len(breakdowns) > 1 else breakdowns
        head["b"] = {name: breakdowns[name].dump() for name in names}
        extra: list[list[Any]] = []
        for name in names:
            b = breakdowns[name]
            if b.sketches:
                for (kind, value), key, image in b.images():
                    extra.append([name, kind, value, key, len(image)])
                    extra_images.append(image)  # after the window's own, in this order
        if extra:
            head["bs"] = extra
    body = orjson.dumps(head)
    head_bytes = _WINDOW_HEAD.pack(WINDOW_VALUE_MAGIC, updated_ms, len(body))
    return b"".join([head_bytes, body, *images, *extra_images])


def window_updated_ms(value: bytes) -> int | None:
    """When the window was last updated; None for a value of the JSON format (stored before
    windows kept it)."""
    if value[:2] != WINDOW_VALUE_MAGIC:
        return None
    return int(_WINDOW_HEAD.unpack_from(value)[1])


def load_window(
    value: bytes | None, lg_k: int, max_keys: int | Mapping[str, int] = DEFAULT_MAX_KEYS
) -> WindowCounts:
    """A stored window (either format), or a new one, kept with sketches of ``lg_k`` buckets
    (a stored window keeps its own) and breakdowns of at most ``max_keys`` values per dimension.
    A window of the JSON format counted its events before windows kept recipients: they are
    unattributed. A window stored before windows kept breakdowns has none (its events are in no
    bucket; the API shows them as not broken down)."""
    if not value:
        return _new_window(lg_k, max_keys)
    if value[:2] != WINDOW_VALUE_MAGIC:
        counts = WindowCounts.load(orjson.loads(value))
        counts.lg_k = lg_k
        counts.unattributed = counts.total
        counts.max_keys = max_keys
        return counts
    new = _uniques().stored_sketch
    _, _, length = _WINDOW_HEAD.unpack_from(value)
    start = _WINDOW_HEAD.size
    head = orjson.loads(value[start : start + length])
    at = start + length
    sketches: dict[str, Sketch] = {}
    known = head.get("e") or [None] * len(head["s"])
    for (key, size), guess in zip(head["s"], known, strict=True):
        sketches[key] = new(value[at : at + size], guess)
        at += size
    breakdowns = {key: Breakdown.load(b) for key, b in (head.get("b") or {}).items()}
    for dimension, kind, of_value, key, size in head.get("bs") or ():
        b = breakdowns.get(dimension)
        if b is None:
            b = breakdowns[dimension] = Breakdown.new()
        b.sketches.setdefault((kind, of_value), {})[key] = new(value[at : at + size])
        at += size
    name = head.get("m")
    stored_lg_k = head.get("k")
    return _new_window(
        lg_k if stored_lg_k is None else int(stored_lg_k),
        max_keys,
        int(head["n"]),
        head["t"],
        head["c"],
        head["w"],
        int(head["u"]),
        sketches,
        (int(name[0]), str(name[1])) if name else None,
        breakdowns,
    )


_new_window = WindowCounts.new


@functools.lru_cache(maxsize=4096)
def _campaign_fields(campaign: str) -> tuple[str, str | None, str | None]:
    """(vendor, app id or None, campaign id or None) of a campaign key, as an upsert holds them
    (kept for the campaigns seen last: each window a batch touches asks)."""
    vendor, app_id, campaign_id = (campaigns.unescape(part) for part in campaign.split("|"))
    return vendor, app_id or None, campaign_id or None


def stats_record(
    campaign: str,
    window_label: str,
    start_ms: int,
    size_s: int,
    counts: WindowCounts,
    now_ms: int,
) -> dict[str, Any]:
    """A window's ``CampaignStats`` upsert (this runs for every window a batch touches). The
    counts' dicts go in as they are: the record is encoded before they change."""
    vendor, app_id, campaign_id = _campaign_fields(campaign)
    record: dict[str, Any] = {
        "vendor": vendor,
        "app_id": app_id,
        "campaign_id": campaign_id,
        "window": window_label,
        "window_start": start_ms,
        "window_end": start_ms + size_s * 1000,
        "total": counts.total,
        "event_type_counts": counts.by_type,
        "channel_counts": counts.by_channel,
        "updated_at": now_ms,
        "campaign_name": counts.name[1] if counts.name else None,
        "schema_version": STATS_SCHEMA_VERSION,
    }
    uniques = counts.uniques()
    if uniques is not None:
        record["unique_recipients"] = uniques["recipients"]
        record["unique_event_type_counts"] = uniques["by_event_type"]
        record["unattributed"] = uniques["unattributed"]
        record["hll_lg_k"] = uniques["lg_k"]
        record["error_bound"] = uniques["error_bound"]
        record["recipients_sketch"] = uniques["sketch"]
        record["event_type_sketches"] = uniques["sketches"]
    variants = counts.breakdowns.get("variant")
    # A window of a campaign without variants and control group has none (its events are all
    # in the "none" bucket, which would repeat its counts in every upsert).
    if variants is not None and (variants.kept or variants.groups or variants.overflow):
        record["variants"] = variant_records(variants)
    return record


BUCKET_KINDS = {
    KEPT_BUCKET: "value",
    OVERFLOW_BUCKET: "overflow",
    MISSING_BUCKET: "none",
    GROUP_BUCKET: "group",
}
"""A bucket's ``kind`` in ``campaign-stats`` and in the API (a group's kind is its name)."""


CAMPAIGN_STATS_FINGERPRINT = bytes.fromhex("ffc352b12f0ce09a")
"""The ``CampaignStats`` schema :class:`StatsUpserts` writes by hand (its CRC-64-AVRO
fingerprint): with any other, every upsert goes through :meth:`AvroSerde.encode`."""

_MAX_MAP_KEYS = 4096
_MAP_KEYS: dict[str, bytes] = {}
"""Map keys (event types, channels, sketch keys) as Avro writes them, kept (bounded)."""


def _map_key(key: str) -> bytes:
    found = _MAP_KEYS.get(key)
    if found is None:
        found = avro_string(key)
        if len(_MAP_KEYS) < _MAX_MAP_KEYS:
            _MAP_KEYS[key] = found
    return found


def _long_map(m: Mapping[str, int]) -> bytes:
    """An Avro map of longs (one block, then the end), as the generated encoders write it; kept
    for the maps seen last (a sparse window's counts repeat from window to window)."""
    if not m:
        return b"\x00"
    if len(m) == 1:
        for key in m:  # a sparse window's {"SEND": 1}: looked up without a tuple key
            return _long_one(key, m[key])
    return _long_pairs(tuple(m.items()))


def _long_one(key: str, value: int) -> bytes:
    """:func:`_long_map` of ``{key: value}``."""
    of_key = _LONG_ONES.get(key)
    if of_key is None:
        if len(_LONG_ONES) >= _MAX_LONG_MAPS:
            _LONG_ONES.clear()
        of_key = _LONG_ONES[key] = {}
    found = of_key.get(value)
    if found is None:
        if len(of_key) >= _MAX_LONG_MAPS:
            of_key.clear()
        found = of_key[value] = _long_pairs(((key, value),))
    return found


_LONG_ONES: dict[str, dict[int, bytes]] = {}
"""One-entry maps of longs as :func:`_long_map` writes them, by key then value (bounded: each
level emptied when full)."""


def _long_pairs(items: tuple[tuple[str, int], ...]) -> bytes:
    """:func:`_long_map` of a map's items, in its order (at least one)."""
    found = _LONG_MAPS.get(items)
    if found is None:
        key, small, long = _map_key, AVRO_SMALL_LONGS, avro_long
        found = b"".join(
            [
                small.get(len(items)) or long(len(items)),
                *[key(k) + (small.get(v) or long(v)) for k, v in items],
                b"\x00",
            ]
        )
        if len(_LONG_MAPS) >= _MAX_LONG_MAPS:
            _LONG_MAPS.clear()
        _LONG_MAPS[items] = found
    return found


_MAX_LONG_MAPS = 4096
_LONG_MAPS: dict[tuple[tuple[str, int], ...], bytes] = {}


def _bytes_map(m: Mapping[str, bytes]) -> bytes:
    if not m:
        return b"\x00"
    return _bytes_pairs(m.keys(), m.values(), len(m))


def _bytes_pairs(keys: Iterable[str], values: Iterable[bytes], n: int) -> bytes:
    """:func:`_bytes_map` of the map of ``n`` ``keys`` to ``values``, in that order."""
    if not n:
        return b"\x00"
    heads, small = _BYTES_HEADS, AVRO_SMALL_LONGS
    parts = [small.get(n) or avro_long(n)]
    for k, v in zip(keys, values, strict=True):
        head = heads.get((k, len(v)))
        if head is None:
            head = _bytes_head(k, len(v))
        parts.append(head)
        parts.append(v)
    parts.append(b"\x00")
    return b"".join(parts)


_BYTES_HEADS: dict[tuple[str, int], bytes] = {}
"""A bytes map entry's key and value length as Avro writes them, by (key, length): a sketch key
and an image's length (a one-recipient image's is the same for every recipient) repeat from
window to window (bounded: emptied when full)."""


def _bytes_head(key: str, length: int) -> bytes:
    head = _map_key(key) + avro_long(length)
    if len(_BYTES_HEADS) >= _MAX_LONG_MAPS:
        _BYTES_HEADS.clear()
    _BYTES_HEADS[key, length] = head
    return head


def _optional_image(value: bytes | None) -> bytes:
    """:func:`_optional_bytes` of a sketch image (its length's encoding kept)."""
    if value is None:
        return b"\x00"
    head = _OPTIONAL_HEADS.get(len(value))
    if head is None:
        head = b"\x02" + avro_long(len(value))
        if len(_OPTIONAL_HEADS) >= _MAX_LONG_MAPS:
            _OPTIONAL_HEADS.clear()
        _OPTIONAL_HEADS[len(value)] = head
    return head + value


_OPTIONAL_HEADS: dict[int, bytes] = {}
"""An optional bytes' union branch and length, by length (an image is at most a few KB)."""


def _optional_bytes(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x02" + avro_long(len(value)) + value


_DOUBLE = struct.Struct("<d").pack
_SCHEMA_VERSION_LONG = avro_long(STATS_SCHEMA_VERSION)


class StatsUpserts:
    """A window's ``CampaignStats`` upsert value written straight from its counts: the bytes
    :meth:`AvroSerde.encode` writes for :func:`stats_record` (``tests/unit/processors/
    test_records.py`` compares them on windows of every shape), without the record dict and
    the generic encoder's field-by-field look-ups (issue 21: at 50,000 campaigns nearly every
    event is a window written, and its upsert was a quarter of the stats stage).
    With a schema other than the one written here (:data:`CAMPAIGN_STATS_FINGERPRINT`) or a
    vendor it has no symbol for, the upsert goes through :meth:`AvroSerde.encode`. (A cache of
    the campaigns' encoded first fields cost more than it saved at 129,000 campaign keys; they
    are kept for one stats batch, :meth:`new_batch`: a campaign's windows of every size, in the
    table partitions of one stats partition, write the same.)"""

    def __init__(self, serde: AvroSerde, topic: str) -> None:
        self.serde = serde
        self.topic = topic
        info = serde.schema("CampaignStats")
        self.by_hand = info.fingerprint == CAMPAIGN_STATS_FINGERPRINT
        symbols = info.parsed["fields"][0]["type"]["symbols"] if self.by_hand else []
        self._vendors = {symbol: avro_long(i) for i, symbol in enumerate(symbols)}
        self._labels: dict[str, bytes] = {}
        # A window's start and end, by (start, size): a batch's windows share a few.
        self._bounds: dict[tuple[int, int], bytes] = {}
        self._now: tuple[int, bytes] = (-1, b"")  # updated_at: one per batch
        self._tails: dict[int, bytes] = {}
        self._prefixes: dict[str, bytes | None] = {}  # the batch's campaigns' (new_batch)
        self._header: bytes | None = None  # the upserts' header, looked up once a batch

    def new_batch(self) -> None:
        """Forget the campaigns' first fields kept for the batch before (at most a batch's
        campaigns are kept)."""
        self._prefixes.clear()
        self._header = None

    def window(
        self,
        campaign: str,
        window_label: str,
        start_ms: int,
        size_s: int,
        counts: WindowCounts,
        updated_ms: int,
    ) -> tuple[bytes, bytes]:
        """A window written: its stored value (:func:`window_value` at ``updated_ms``) and its
        upsert's value (:meth:`value` at ``updated_ms``), the same bytes as those two, in one
        pass over its sketches (issue 21: at 50,000 campaigns nearly every event is a window
        written, and the two encodings walked its sketches twice, the upsert taking the
        recipients' sketch back out of the stored value's sorted lists)."""
        prefix = self._prefixes.get(campaign)
        if prefix is None and self.by_hand:
            prefix = self._prefixes[campaign] = self._prefix(campaign)
        lg_k = counts.lg_k
        if prefix is None or lg_k is None:  # the generic encoder: see value
            stored, sketched = encode_window(counts, updated_ms)
            upsert = self.value(
                campaign, window_label, start_ms, size_s, counts, updated_ms, sketched
            )
            return stored, upsert
        sketches = counts.sketches
        keys = sorted(sketches) if len(sketches) > 1 else sketches
        # The stored value's sketch lengths, estimates and images (every sketch, by key), and
        # the upsert's: the recipients' sketch, then the event types' estimates and images.
        lengths: list[list[Any]] = []
        estimates: list[int] = []
        images: list[bytes] = []
        everyone: bytes | None = None
        recipients = 0
        typed: list[tuple[str, int]] = []
        typed_images: list[bytes] = []
        heads = _BYTES_HEADS
        for key in keys:
            image, estimate = sketches[key].written()
            n = len(image)
            lengths.append([key, n])
            estimates.append(estimate)
            images.append(image)
            if key == ALL_RECIPIENTS:
                everyone, recipients = image, estimate
            else:
                typed.append((key, estimate))
                head = heads.get((key, n))
                if head is None:
                    head = _bytes_head(key, n)
                typed_images.append(head)
                typed_images.append(image)
        stored = _stored_value(counts, updated_ms, lengths, estimates, images)
        n = len(typed)
        if n == 1:
            estimated = _long_one(*typed[0])
            typed_map = b"\x02" + b"".join(typed_images) + b"\x00"
        elif n:
            estimated = _long_pairs(tuple(typed))
            typed_map = b"".join([AVRO_SMALL_LONGS.get(n) or avro_long(n), *typed_images, b"\x00"])
        else:
            estimated = typed_map = b"\x00"
        upsert = self._upsert(
            prefix,
            window_label,
            start_ms,
            size_s,
            counts,
            updated_ms,
            lg_k,
            (recipients, everyone, estimated, typed_map),
        )
        return stored, upsert

    def _prefix(self, campaign: str) -> bytes | None:
        # _campaign_fields without its cache: at 50,000 campaigns nearly every campaign of a
        # batch is one the cache dropped, and a part without '%' has nothing to unescape.
        parts = campaign.split("|")
        if len(parts) != 3:
            return None  # not a campaign_key: the generic encoder says what is wrong
        vendor, app_id, campaign_id = parts
        symbol = self._vendors.get(vendor)
        if symbol is None:
            return None
        if "%" in app_id:
            app_id = campaigns.unescape(app_id)
        if "%" in campaign_id:
            campaign_id = campaigns.unescape(campaign_id)
        return b"".join(
            [
                symbol,
                b"\x02" + avro_string(app_id) if app_id else b"\x00",
                b"\x02" + avro_string(campaign_id) if campaign_id else b"\x00",
            ]
        )

    def value(
        self,
        campaign: str,
        window_label: str,
        start_ms: int,
        size_s: int,
        counts: WindowCounts,
        now_ms: int,
        sketched: Sketched | None = None,
    ) -> bytes:
        """The upsert's value (header included) of ``counts``, the window of ``campaign``
        starting at ``start_ms``. ``sketched``: the window's sketches as :func:`encode_window`
        wrote them just now (else they are read again)."""
        prefix = self._prefixes.get(campaign)
        if prefix is None and self.by_hand:
            prefix = self._prefixes[campaign] = self._prefix(campaign)
        lg_k = counts.lg_k
        if prefix is None or lg_k is None:  # lg_k None: no sketches, no uniques
            record = stats_record(campaign, window_label, start_ms, size_s, counts, now_ms)
            return self.serde.encode("CampaignStats", record, self.topic)
        keys, images, estimates = sketched if sketched is not None else _sketched(counts)
        # The recipients' sketch ("*"), then the event types' (WindowCounts.uniques).
        at = keys.index(ALL_RECIPIENTS) if ALL_RECIPIENTS in keys else -1
        if at < 0:
            recipients, everyone = 0, None
        else:
            recipients, everyone = estimates[at], images[at]
            if at == 0:
                keys, images, estimates = keys[1:], images[1:], estimates[1:]
            else:
                keys = keys[:at] + keys[at + 1 :]
                images = images[:at] + images[at + 1 :]
                estimates = estimates[:at] + estimates[at + 1 :]
        return self._upsert(
            prefix,
            window_label,
            start_ms,
            size_s,
            counts,
            now_ms,
            lg_k,
            (
                recipients,
                everyone,
                _long_pairs(tuple(zip(keys, estimates, strict=True))) if keys else b"\x00",
                _bytes_pairs(keys, images, len(keys)),
            ),
        )

    def _upsert(
        self,
        prefix: bytes,
        window_label: str,
        start_ms: int,
        size_s: int,
        counts: WindowCounts,
        now_ms: int,
        lg_k: int,
        uniques: tuple[int, bytes | None, bytes, bytes],
    ) -> bytes:
        """The upsert's value (header included), written by hand (:meth:`value` and
        :meth:`window`): ``uniques`` is the recipients' estimate and sketch image, then the
        event types' estimates and images as their encoded maps."""
        recipients, everyone, estimated, typed_map = uniques
        small, long = AVRO_SMALL_LONGS, avro_long
        header = self._header
        if header is None:
            header = self._header = self.serde.header("CampaignStats", self.topic)
        label = self._labels.get(window_label)
        if label is None:
            label = self._labels[window_label] = avro_string(window_label)
        bounds = self._bounds.get((start_ms, size_s))
        if bounds is None:
            bounds = long(start_ms) + long(start_ms + size_s * 1000)
            if len(self._bounds) >= _MAX_LONG_MAPS:
                self._bounds.clear()
            self._bounds[start_ms, size_s] = bounds
        now = self._now
        if now[0] != now_ms:
            now = self._now = (now_ms, long(now_ms))
        tail = self._tails.get(lg_k)
        if tail is None:
            tail = self._tails[lg_k] = b"\x02" + long(lg_k) + b"\x02" + _DOUBLE(_error_bound(lg_k))
        name = counts.name
        variants = counts.breakdowns.get("variant")
        if variants is not None and (variants.kept or variants.groups or variants.overflow):
            by_variant = _variants(variants)
        else:
            by_variant = b"\x00"
        return b"".join(
            [
                header,
                prefix,
                label,
                bounds,
                small.get(counts.total) or long(counts.total),
                _long_map(counts.by_type),
                _long_map(counts.by_channel),
                now[1],
                b"\x00" if name is None else b"\x02" + avro_string(name[1]),
                b"\x02" + (small.get(recipients) or long(recipients)),
                estimated,
                b"\x02" + (small.get(counts.unattributed) or long(counts.unattributed)),
                tail,
                _optional_image(everyone),
                typed_map,
                by_variant,
                _SCHEMA_VERSION_LONG,
            ]
        )


def _variants(b: Breakdown) -> bytes:
    """:func:`variant_records` of ``b`` as the ``variants`` array of an upsert."""
    out: list[bytes] = []
    n = 0
    sketches, small = b.sketches, AVRO_SMALL_LONGS
    for v, of_bucket in b.kept.items():
        if of_bucket:
            n += 1
            out.append(_VARIANT_ID.get(v) or _variant_id(v))
            out.append(_VALUE_KIND)
            _variant_tail(out, of_bucket, sketches.get((KEPT_BUCKET, v)), small)
    if b.groups:
        for g, of_bucket in sorted(b.groups.items()):
            if of_bucket:
                n += 1
                out.append(b"\x00")
                out.append(_map_key(g))  # a group's kind is its name
                _variant_tail(out, of_bucket, sketches.get((GROUP_BUCKET, g)), small)
    for kind, of_bucket in ((OVERFLOW_BUCKET, b.overflow), (MISSING_BUCKET, b.missing)):
        if of_bucket:
            n += 1
            out.append(b"\x00")
            out.append(_map_key(BUCKET_KINDS[kind]))
            _variant_tail(out, of_bucket, sketches.get((kind, None)), small)
    if not n:
        return b"\x00"
    return b"".join([small.get(n) or avro_long(n), *out, b"\x00"])


def _variant_tail(
    out: list[bytes],
    of_bucket: dict[str, int],
    of_sketches: dict[str, Sketch] | None,
    small: Mapping[int, bytes],
) -> None:
    """A variant record's fields after its kind: total, counts, sketches (``out`` grows)."""
    total = sum(of_bucket.values())
    out.append(small.get(total) or avro_long(total))
    out.append(_long_map(of_bucket))
    if not of_sketches:
        out.append(b"\x00")  # no recipients' sketch
        out.append(b"\x00")  # no event types' sketches
        return
    everyone = of_sketches.get(ALL_RECIPIENTS)
    out.append(_optional_image(None if everyone is None else everyone.image()))
    n = len(of_sketches) - (everyone is not None)
    if not n:
        out.append(b"\x00")
        return
    # The event types' sketches in the dict's order, as variant_records' dict holds them.
    out.append(
        _bytes_pairs(
            [key for key in of_sketches if key != ALL_RECIPIENTS],
            [s.image() for key, s in of_sketches.items() if key != ALL_RECIPIENTS],
            n,
        )
    )


_VALUE_KIND = avro_string(BUCKET_KINDS[KEPT_BUCKET])
_VARIANT_ID: dict[str, bytes] = {}
"""A kept variant's ``variant_id`` union branch, by id (a campaign's variants repeat; bounded:
emptied when full)."""


def _variant_id(value: str) -> bytes:
    out = b"\x02" + avro_string(value)
    if len(_VARIANT_ID) >= _MAX_LONG_MAPS:
        _VARIANT_ID.clear()
    _VARIANT_ID[value] = out
    return out


def variant_records(b: Breakdown) -> list[dict[str, Any]]:
    """A window's per-variant counts and sketches, as ``CampaignStats.variants`` holds them: one
    per kept variant id (in the order the window first counted them), then the control group, the
    overflow and the events without a variant, each only if it has events."""
    buckets: list[tuple[Bucket, dict[str, int]]] = [
        *(((KEPT_BUCKET, v), c) for v, c in b.kept.items()),
        *(((GROUP_BUCKET, g), c) for g, c in sorted(b.groups.items())),
        ((OVERFLOW_BUCKET, None), b.overflow),
        ((MISSING_BUCKET, None), b.missing),
    ]
    out: list[dict[str, Any]] = []
    for bucket, of_bucket in buckets:
        if not of_bucket:
            continue
        kind, value = bucket
        images = {key: sketch.image() for key, sketch in (b.sketches.get(bucket) or {}).items()}
        out.append(
            {
                "variant_id": value if kind == KEPT_BUCKET else None,
                "kind": value if kind == GROUP_BUCKET else BUCKET_KINDS[kind],
                "total": sum(of_bucket.values()),
                "event_type_counts": dict(of_bucket),
                "recipients_sketch": images.pop(ALL_RECIPIENTS, None),
                "event_type_sketches": images,
            }
        )
    return out


KNOWN_EVENT_TYPES = frozenset(e.value for e in EventType)
KNOWN_CHANNELS = frozenset(c.value for c in Channel)
