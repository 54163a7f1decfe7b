"""Property-based tests (Hypothesis) of every normalizer on any input (issue 11).

One bad record used to stop the worker for good: a normalizer raised on it, and the worker met
it again after every restart. These properties hold for every vendor and three kinds of input:

* arbitrary bytes;
* arbitrary JSON documents, their keys and scalars drawn partly from the vendor's own records so
  that they reach past the first checks;
* valid vendor records (the sample generators' output) with one to three values replaced by a
  poison (another type, huge or out-of-range numbers, NaN/Infinity text, deep nesting, huge,
  empty or odd strings, null) or removed, with keys they lack added, or cut short.

Properties: :func:`processors.normalize.normalize` returns one Outcome; never
``normalizer_error`` (a normalizer that raises fails here, with its traceback); the same input
gives the same outcome; a canonical event encodes and decodes with the real Avro schema, as the
worker writes it, and its largest window end still fits an Avro long; a reject is a TAXONOMY §5
reason with a short detail and its dead letter encodes too.

Examples per test: ``CRM_FUZZ_PROFILE=ci`` runs five times the default, ``CRM_FUZZ_EXAMPLES=N``
any number (e.g. 20000 for a long local run); the default keeps the module under 20 s.
"""

from __future__ import annotations

import copy
import functools
import importlib
import io
import json
import math
import os
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from crmdemo.samples import campaigns
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.normalize import NORMALIZERS, normalize
from processors.normalize.cli import normalize_lines
from processors.normalize.common import (
    MAX_DEPTH,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    RecordError,
    parse_json,
)
from processors.normalize.model import (
    CanonicalEvent,
    NormalizeContext,
    Outcome,
    Rejected,
    RejectReason,
    Skipped,
)
from processors.records import RawPosition, canonical_record, dead_letter_record

VENDORS = sorted(NORMALIZERS)
# Examples per test, scaled by CRM_FUZZ_PROFILE (see the module docstring).
SCALE = {"default": 1, "ci": 5}[os.environ.get("CRM_FUZZ_PROFILE") or "default"]


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=int(os.environ.get("CRM_FUZZ_EXAMPLES") or examples * SCALE),
        deadline=None,  # a 400,000-character field takes longer than Hypothesis' 200 ms
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


AVRO_LONG_MAX = 2**63 - 1
LARGEST_WINDOW_MS = 3_600_000  # the worker's 1h stats window: its end is occurred_at + this
SECTION_5 = {
    RejectReason.INVALID_JSON,
    RejectReason.MISSING_EVENT_ID,
    RejectReason.MISSING_EVENT_TYPE,
    RejectReason.INVALID_TIMESTAMP,
}
MAX_DETAIL_CHARS = 400  # a detail quotes at most DETAIL_VALUE_CHARS of a value
PROCESSED_AT = 1_767_225_600_250
SAMPLE_SIZE = 200


@functools.cache
def serde() -> AvroSerde:
    return AvroSerde(Settings.from_env({}))


def position(vendor: str) -> RawPosition:
    return RawPosition(f"crm.raw.{vendor}", 0, 42, PROCESSED_AT - 250, {"vendor": vendor.encode()})


# --- the properties ---------------------------------------------------------------------------


def check(vendor: str, raw: bytes, ctx: NormalizeContext) -> Outcome:
    """Every property of one input; returns the outcome for tests that want more."""
    outcome = normalize(vendor, raw, ctx)
    assert isinstance(outcome, CanonicalEvent | Rejected | Skipped), outcome
    if currently_in_test_context():  # --hypothesis-show-statistics shows each outcome's share
        event(f"outcome: {getattr(outcome, 'reason', 'event')}")
    if isinstance(outcome, Rejected) and outcome.reason is RejectReason.NORMALIZER_ERROR:
        NORMALIZERS[vendor](raw, ctx)  # raises again: Hypothesis shows the traceback
        pytest.fail(f"normalizer_error without an exception the second time: {outcome.detail}")
    assert normalize(vendor, raw, ctx) == outcome, "not deterministic"

    pos = position(vendor)
    if isinstance(outcome, CanonicalEvent):
        assert MIN_EPOCH_MS <= outcome.occurred_at <= MAX_EPOCH_MS
        assert outcome.occurred_at + LARGEST_WINDOW_MS <= AVRO_LONG_MAX
        record = canonical_record(outcome, pos, PROCESSED_AT)
        encoded = serde().encode("CanonicalEvent", record, "events")
        assert serde().decode(encoded, "events") == ("CanonicalEvent", record)
    elif isinstance(outcome, Rejected):
        assert outcome.reason in SECTION_5, outcome
        assert len(outcome.detail) <= MAX_DETAIL_CHARS, outcome.detail[:MAX_DETAIL_CHARS]
        letter = dead_letter_record(
            raw=raw,
            raw_key=None,
            vendor=vendor,
            reason=outcome.reason.value,
            detail=outcome.detail,
            pos=pos,
            now_ms=PROCESSED_AT,
        )
        encoded = serde().encode("DeadLetter", letter, "dead-letter")
        assert serde().decode(encoded, "dead-letter") == ("DeadLetter", letter)
    return outcome


# --- seeds: valid records of every vendor -----------------------------------------------------


@functools.cache
def seeds(vendor: str) -> tuple[dict[str, Any], ...]:
    """Distinct valid records (event or skip) of the vendor's sample generator, as JSON."""
    module = __import__(f"crmdemo.samples.{vendor}", fromlist=["generate"])
    sample = module.generate(random.Random(7), SAMPLE_SIZE, campaigns(random.Random(7)))
    found: dict[bytes, dict[str, Any]] = {}
    for _, value in sample.records:
        if isinstance(NORMALIZERS[vendor](value, NormalizeContext()), Rejected):
            continue
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue  # an Airship keep-alive line
        found.setdefault(value, doc)
        if vendor == "leanplum" and "properties" not in doc:  # a Parquet row: also as Avro JSON
            found.setdefault(value + b" avro-json", avro_json(doc))
    assert len(found) >= 20, f"too few valid {vendor} samples"
    return tuple(found.values())


AVRO_BRANCHES = {str: "string", bool: "boolean", int: "long", float: "double", dict: "map"}


def avro_json(row: dict[str, Any]) -> dict[str, Any]:
    """A Leanplum Parquet row in the Avro JSON encoding (unions wrapped in their branch, nested
    records in their full name), which the normalizer also reads (§6.1)."""

    def wrap(value: Any) -> Any:
        return value if value is None else {AVRO_BRANCHES.get(type(value), "array"): value}

    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("Campaign", "Message", "AbTest") and isinstance(value, dict):
            fields = {name: wrap(field) for name, field in value.items()}
            out[key] = {f"com.leanplum.partners.feed.models.avro.{key}": fields}
        else:
            out[key] = wrap(value)
    return out


EMBEDDED = "<embedded JSON>"  # a path step into a string that holds a JSON object


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in ``doc``: object keys, array indexes, and into strings that hold
    a JSON object (Pinpoint's endpoint record)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        items: list[tuple[Any, Any]] = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    else:
        items = []
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths(value, (*prefix, key)))
        if isinstance(value, str) and value.startswith("{"):
            try:
                inner = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            found.extend(paths(inner, (*prefix, key, EMBEDDED)))
    return found


@functools.cache
def seed_paths(vendor: str) -> tuple[tuple[tuple[Any, ...], ...], ...]:
    return tuple(tuple(paths(doc)) for doc in seeds(vendor))


def vocabulary(vendor: str) -> tuple[list[str], list[Any]]:
    """The keys and scalar values of the vendor's valid records."""
    keys: set[str] = set()
    scalars: set[Any] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            keys.update(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif node is not None:
            scalars.add(node)

    for doc in seeds(vendor):
        walk(doc)
    return sorted(keys), sorted(scalars, key=repr)


# --- poisons: raw JSON text put where a value was ---------------------------------------------

DELETE = object()
HUGE_NUMBERS = [
    b"18446744073709551616",  # 2**64: orjson reads a double
    b"18446744073709551615",
    b"9223372036854775808",  # 2**63: no Avro long
    b"9223372036854775807",
    b"9223372036854774807",  # a window end after it overflows
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"253402300799999",  # 9999-12-31T23:59:59.999Z
    b"253402300800000",
    b"253402300799999.0",
    b"-1",
    b"0",
    b"-0",
    b"0.5",
    b"1e19",
    b"-1e19",
    b"1E308",
    b"1.7976931348623157e308",
    b"4.9e-324",
    b"1562109497426.0",
    b"1" + b"0" * 308,
    b"1" + b"0" * 400,
    b"9" * 640,
    b"9" * 641,
    b"1" + b"0" * 5000,
    b"1e400",
    b"-1e400",
]
NOT_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"-NaN", b"nan", b"inf", b"+1", b"01", b".5"]
ODD_STRINGS = [
    s.encode() if isinstance(s, str) else s
    for s in [
        '"1969-12-31T23:59:59.999Z"',
        '"1970-01-01T00:00:00.000Z"',
        '"1970-01-01 00:00:00.000"',
        '"1970-01-01 00:00:00.001"',
        '"0001-01-01T00:00:00Z"',
        '"0000-01-01T00:00:00Z"',
        '"9999-12-31T23:59:59.999Z"',
        '"9999-12-31 23:59:59.999"',
        '"9999-12-31T23:59:59.999-23:59"',
        '"0001-01-01T00:00:00+23:59"',
        '"2026-11-29T10:00:00+99:99"',
        '"2026-11-29T10:00:00-0060"',
        '"2026-02-30T10:00:00Z"',
        '"2026-11-29T24:00:00Z"',
        '"2026-11-29T10:00:60Z"',
        '"2026-11-29T10:00:00.' + "9" * 5000 + 'Z"',
        '"\uff12\uff10\uff12\uff16-11-29T10:00:00Z"',  # fullwidth digits
        '"\u0662\u0660\u0662\u0666-11-29 10:00:00.000"',  # Arabic-Indic digits
        '"\u00b2"',  # superscript two: str.isdigit() says yes, int() says no
        '"1\u00b2"',
        '"--5"',
        '"-"',
        '"60"',
        '"-60"',
        '"9' + "9" * 5000 + '"',
        '"true"',
        '"TRUE"',
        '"false"',
        '"a|b%7Cc"',
        '"\\u0000"',
        '"\\ud800"',  # a lone surrogate, escaped
        '"\\udc00\\ud800"',
        '"\\ud83d\\ude00"',
        '"\u202e\ufeff"',
        '"   "',
        '""',
    ]
] + [b'"\xff\xfe"', b'"\xed\xa0\x80"', b'"\xc3"', b"\xef\xbb\xbf{}"]  # not UTF-8 / BOM


def deep(depth: int, kind: int) -> bytes:
    if kind == 0:
        return b"[" * depth + b"]" * depth
    if kind == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == 2:
        return b"[" * depth + b'"x"' + b"]" * depth
    return b'[{"b":' * (depth // 2) + b"null" + b"}]" * (depth // 2)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


finite_json_values = st.recursive(
    json_scalars.filter(lambda v: not isinstance(v, float) or math.isfinite(v)),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def as_json(value: Any) -> bytes:
    """JSON text as the standard library writes it: big integers exact, NaN as ``NaN``."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# Strings of digit-like characters: where a normalizer reads a number out of a string, the
# odd ones ("--5", superscript or Arabic-Indic digits, 5,000 digits) are what breaks it.
numeric_strings = st.text(alphabet="0123456789-+.eE:TZ \u00b2\u0662\uff12", max_size=8).map(as_json)
# Mostly JSON, so that most records get past the parser to the field that was poisoned.
valid_poisons = st.one_of(
    finite_json_values.map(as_json),  # another type
    numeric_strings,
    st.integers().map(lambda n: str(n).encode()),
    st.sampled_from(HUGE_NUMBERS),
    st.sampled_from(ODD_STRINGS),
    # Shallower than the limit on its own; in a nested field, now and then beyond it.
    st.builds(deep, st.integers(1, MAX_DEPTH - 1), st.integers(0, 3)),
    st.sampled_from([1_000, 70_000, 400_000]).map(lambda n: b'"' + b"x" * n + b'"'),
    st.sampled_from([b'""', b"null", b"[]", b"{}", b"0", b"false", b"true"]),
)
invalid_poisons = st.one_of(
    st.sampled_from(NOT_NUMBERS),
    st.builds(  # beyond the limit, and beyond orjson's (1024) and the serializer's (254)
        deep,
        st.one_of(st.integers(MAX_DEPTH, 1100), st.sampled_from([254, 255, 1024, 1025, 5000])),
        st.integers(0, 3),
    ),
    st.binary(max_size=12),  # anything at all, now and then JSON
)


def chance(draw: st.DrawFn, p: float) -> bool:
    """True with probability ``p``. Weights come from a Random that Hypothesis seeds: it draws
    a small choice at its bounds far more often than its share (``integers(0, 9) == 0`` a third
    of the time, nearly always once the other values were tried)."""
    return draw(st.randoms(use_true_random=True)).random() < p


@st.composite
def poisons(draw: st.DrawFn) -> bytes:
    """A poison: JSON four times in five, so that most records reach the poisoned field."""
    return draw(invalid_poisons if chance(draw, 0.2) else valid_poisons)


def sentinel(index: int) -> str:
    return f"\x01poison-{index}\x01"


def put(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced (or removed, for :data:`DELETE`)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if not isinstance(doc, dict | list):
        return doc
    if isinstance(doc, list) and not (isinstance(head, int) and head < len(doc)):
        return doc
    if isinstance(doc, dict) and head not in doc:
        if not rest and value is not DELETE:
            doc[head] = value  # a key the record lacked
        return doc
    if not rest and value is DELETE:
        del doc[head]
        return doc
    doc[head] = put(doc[head], rest, value)
    return doc


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def render(doc: Any, mutations: list[tuple[tuple[Any, ...], Any]]) -> bytes:
    """``doc`` as JSON with every mutation applied; a poison's bytes go in verbatim, so they
    may be anything (invalid JSON included)."""
    doc = copy.deepcopy(doc)
    replaced: list[tuple[bytes, bytes]] = []
    for index, (path, poison) in enumerate(mutations):
        if EMBEDDED in path:  # poison the inner document, then put it back as a string
            outer, inner = path[: path.index(EMBEDDED)], path[path.index(EMBEDDED) + 1 :]
            try:
                embedded = orjson.loads(get(doc, outer))
            except (orjson.JSONDecodeError, TypeError, LookupError):
                continue  # an earlier mutation replaced it
            poisoned = render(embedded, [(inner, poison)]).decode("utf-8", "replace")
            doc = put(doc, outer, poisoned)
        elif poison is DELETE:
            doc = put(doc, path, DELETE)
        else:
            doc = put(doc, path, sentinel(index))
            replaced.append((as_json(sentinel(index)), poison))
    out = as_json(doc)
    for marker, poison in replaced:
        out = out.replace(marker, poison)
    return out


@st.composite
def mutated_records(draw: st.DrawFn, vendor: str) -> bytes:
    """A valid record with one to three values poisoned or removed, now and then cut short;
    or (one draw in four) with many of the vendor's keys it lacks added to one of its objects,
    each with a poison, so that optional fields and other event types' fields get their turn."""
    index = draw(st.integers(0, len(seeds(vendor)) - 1))
    doc, doc_paths = seeds(vendor)[index], seed_paths(vendor)[index]
    objects = [()] + [p for p in doc_paths if EMBEDDED not in p and isinstance(get(doc, p), dict)]
    known_keys = vocabulary(vendor)[0]
    if chance(draw, 0.25):
        where = draw(st.sampled_from(objects))
        lacking = [key for key in known_keys if key not in get(doc, where)]
        keys = draw(st.lists(st.sampled_from(lacking or known_keys), min_size=1, unique=True))
        mutations = [((*where, key), draw(valid_poisons)) for key in keys]
    else:
        added = st.tuples(st.sampled_from(objects), st.sampled_from(known_keys)).map(
            lambda pair: (*pair[0], pair[1])
        )
        mutations = [
            (
                draw(st.one_of(st.sampled_from(doc_paths), added)),
                DELETE if chance(draw, 0.1) else draw(poisons()),
            )
            for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3])))
        ]
    raw = render(doc, mutations)
    if chance(draw, 0.1):  # cut off mid-write, anywhere
        raw = raw[: draw(st.randoms(use_true_random=True)).randrange(len(raw) + 1)]
    return raw


@st.composite
def json_documents(draw: st.DrawFn, vendor: str) -> bytes:
    known_keys, known_scalars = vocabulary(vendor)
    keys = st.one_of(st.sampled_from(known_keys), st.text(max_size=8))
    scalars = st.one_of(json_scalars, st.sampled_from(known_scalars))
    values = st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6)
        ),
        max_leaves=30,
    )
    return as_json(draw(st.one_of(st.dictionaries(keys, values, max_size=12), values)))


contexts = st.builds(
    NormalizeContext,
    app_id=st.one_of(st.none(), st.just("app-1"), st.text(max_size=10)),
    include_pii=st.booleans(),
)


# --- the tests --------------------------------------------------------------------------------

# Any digit as "0", anything else as ".": nineteen "0" in a row is a run of 19+ digits, an
# integer orjson may read as a double.
DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))


@pytest.mark.parametrize("vendor", VENDORS)
@fuzz(100)
@given(raw=st.binary(max_size=300), ctx=contexts)
def test_arbitrary_bytes(vendor: str, raw: bytes, ctx: NormalizeContext) -> None:
    check(vendor, raw, ctx)


@pytest.mark.parametrize("vendor", VENDORS)
@fuzz(100)
@given(data=st.data(), ctx=contexts)
def test_arbitrary_json(vendor: str, data: st.DataObject, ctx: NormalizeContext) -> None:
    check(vendor, data.draw(json_documents(vendor)), ctx)


@pytest.mark.parametrize("vendor", VENDORS)
@fuzz(400)
@given(data=st.data(), ctx=contexts)
def test_mutated_vendor_records(vendor: str, data: st.DataObject, ctx: NormalizeContext) -> None:
    check(vendor, data.draw(mutated_records(vendor)), ctx)


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_seeds_are_events(vendor: str) -> None:
    """The mutations start from records that normalize: a fuzz run over rejects only would
    prove little."""
    events = [
        check(vendor, orjson.dumps(doc), NormalizeContext(app_id="app-1")) for doc in seeds(vendor)
    ]
    assert sum(isinstance(e, CanonicalEvent) for e in events) >= 20


@pytest.mark.parametrize("vendor", VENDORS)
@fuzz(40)
@given(lines=st.lists(st.one_of(st.binary(max_size=60), poisons()), max_size=6), end=st.booleans())
def test_cli_writes_one_json_line_per_line(vendor: str, lines: list[bytes], end: bool) -> None:
    """Any bytes, any number of lines, a last line with or without its newline: one JSON
    object per input line."""
    lines = [line.replace(b"\n", b" ") for line in lines]
    data = b"\n".join(lines) + (b"\n" if end and lines else b"")
    out = io.BytesIO()
    count = normalize_lines(vendor, io.BytesIO(data), out, NormalizeContext())
    expected = data.count(b"\n") + (not data.endswith(b"\n") and data != b"")
    written = out.getvalue().split(b"\n")
    assert written.pop() == b""
    assert count == len(written) == expected
    for line in written:
        result = orjson.loads(line)
        assert isinstance(result, dict)
        assert result.get("reject") != RejectReason.NORMALIZER_ERROR.value, result
        assert ("reject" in result) + ("skip" in result) + ("event_id" in result) == 1


@pytest.mark.parametrize("vendor", VENDORS)
@fuzz(200)
@given(data=st.data())
def test_the_connectors_key_function_takes_any_record(vendor: str, data: st.DataObject) -> None:
    """Connectors key raw records by ``<vendor>.vendor_event_id`` on what orjson read (up to
    1024 levels deep, integers beyond 64 bits as doubles): it returns a string or None, and for
    every canonical event it is the event's own vendor id, so that all copies of an event land
    on one partition and meet in the dedupe table."""
    raw = data.draw(mutated_records(vendor))
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if not isinstance(record, dict):
        return
    key_function = importlib.import_module(f"processors.normalize.{vendor}").vendor_event_id
    key = key_function(record)
    assert key is None or isinstance(key, str)
    outcome = normalize(vendor, raw, NormalizeContext())
    if isinstance(outcome, CanonicalEvent) and b"0" * 19 not in raw.translate(DIGITS_AS_ZERO):
        assert key == outcome.vendor_event_id


# --- the two JSON parsers agree ---------------------------------------------------------------


def parsed(raw: bytes, parse: Callable[[bytes], Any]) -> tuple[str, Any]:
    try:
        return "value", parse(raw)
    except (RecordError, orjson.JSONDecodeError):
        return "error", None


@fuzz(200)
@given(value=json_values)
def test_the_exact_parser_reads_what_orjson_reads(value: Any) -> None:
    """parse_json reads a record with a run of 19+ digits with the standard library (exact
    integers). Padding a document with such a run inside a string takes that path; both paths
    must accept the same documents and give the same values. Integers beyond 64 bits aside:
    orjson reads them as doubles (or refuses them beyond a double's range), which is why the
    exact path exists."""
    raw = as_json(value)
    padded = b'{"pad":"' + b"1" * 19 + b'","v":' + raw + b"}"
    fast = parsed(raw, orjson.loads)
    exact = parsed(padded, parse_json)
    if _beyond_64_bits(value):
        return
    if fast[0] == "error":  # NaN or Infinity
        assert exact[0] == "error"
        return
    if _too_deep(fast[1]):
        assert exact[0] == "error"
        return
    assert exact == ("value", {"pad": "1" * 19, "v": fast[1]})


def _beyond_64_bits(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_beyond_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return any(_beyond_64_bits(v) for v in value)
    return type(value) is int and not -(2**63) <= value < 2**64


def _too_deep(value: Any, depth: int = 2) -> bool:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return depth > MAX_DEPTH or any(_too_deep(v, depth + 1) for v in children)
    return False
