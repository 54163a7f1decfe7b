"""Poison records through the running worker (issue 11): each gets one dead letter with its
reason, and the worker goes on, exact for everything around them."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crmstream.broker import free_port
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.app import changelog_specs
from processors.normalize import EVENT_IDS
from tests.integration.harness import (
    Feed,
    WorkerProcess,
    exactness_failures,
    read_outputs,
    samples,
)
from tests.kafka_helpers import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pinpoint(**changes: object) -> bytes:
    record = {
        "event_type": "_email.send",
        "event_timestamp": 1769821887313,
        "arrival_timestamp": 1769821887435,
        "application": {"app_id": "app-2"},
        "client": {"client_id": "7ce42c82-1807-4e8c-b5bf-992dc9e9c616"},
        "attributes": {
            "campaign_activity_id": "7ed4d57b1e2feb89414c343c1027c4d1",
            "campaign_id": "5dfc6a04171154599a807f684fb68c81",
        },
        "facets": {"email_channel": {"mail_event": {"mail": {"message_id": "m-1"}}}},
    }
    attributes = changes.pop("attributes", None)
    record.update(changes)
    if isinstance(attributes, dict):
        record["attributes"] = {**record["attributes"], **attributes}  # type: ignore[dict-item]
    return orjson.dumps(record)


def test_a_record_whose_event_is_too_large_is_a_dead_letter_and_the_worker_goes_on(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """The issue's case: a 400 kB Pinpoint record whose campaign_activity_id is 400,000
    characters becomes a 1.2 MB canonical event with a 400 kB key (it is part of the synthesized
    id): over the producer's limit. It is dead-lettered as too_large, the raw bytes kept whole
    (they fit), and the records around it are processed exactly."""
    env = crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    feed = Feed(settings)
    sets = samples(11, 60)
    feed.publish_all(sets, slice(0, 30))
    # Not an email or SMS event: the synthesized id holds campaign_activity_id.
    huge = _pinpoint(
        event_type="_campaign.send",
        attributes={"campaign_activity_id": "a" * 400_000, "delivery_type": "PUSH"},
    )
    feed.publish("pinpoint", [(b"huge-1", huge)])
    feed.publish_all(sets, slice(30, None))

    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        serde = AvroSerde(settings)
        dl_topic = settings.topic("dead-letter")
        expected = feed.expected
        # The harness's expectation counts the huge record as an event; it must not be one.
        dead = read_topic(
            settings,
            dl_topic,
            until=lambda r: len(r) >= len(expected.dead_letters) + 1,
            timeout=120,
        )
        records = [serde.decode(m.value() or b"", dl_topic)[1] for m in dead]
        too_large = [r for r in records if r["reason"] == "too_large"]
        assert len(too_large) == 1, [r["reason"] for r in records]
        assert too_large[0]["raw"] == huge and too_large[0]["raw_size"] is None
        assert "CRM_MAX_MESSAGE_BYTES=1000000" in too_large[0]["detail"]
        assert worker.alive(), worker.tail()
        assert worker.metric("crm_worker_too_large_total") == 1

        huge_id = next(i for i in expected.event_ids if len(i) > 100_000)
        expected.dead_lettered(huge_id)
        out = read_outputs(settings, expected)
        assert not exactness_failures(out, expected)
    finally:
        assert worker.stop() == 0, worker.tail()


def test_a_dead_letter_over_the_limit_keeps_the_first_bytes_of_the_raw_record(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """A malformed record almost as large as the limit: its dead letter (raw bytes, headers,
    detail) would not fit, so the raw value is cut, and raw_size says how large it was."""
    env = crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_MAX_MESSAGE_BYTES="100000",
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    rng = random.Random(5)
    raw = b'{"not json' + bytes(rng.randrange(32, 127) for _ in range(99_990))
    feed = Feed(settings)
    feed.publish("airship", [(b"k-big", raw)])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        serde = AvroSerde(settings)
        dl_topic = settings.topic("dead-letter")
        dead = read_topic(settings, dl_topic, until=lambda r: len(r) >= 1, timeout=90)
        assert len(dead) == 1
        record = serde.decode(dead[0].value() or b"", dl_topic)[1]
        assert record["reason"] == "invalid_json"
        assert record["raw_size"] == len(raw)
        assert 0 < len(record["raw"]) < len(raw)
        assert raw.startswith(record["raw"])
        assert len(dead[0].value() or b"") + len(dead[0].key() or b"") < 100_000
        time.sleep(1)
        assert worker.alive(), worker.tail()
    finally:
        assert worker.stop() == 0, worker.tail()


def _key(vendor: str, raw: bytes) -> bytes | None:
    """The raw-topic key a connector gives the record: its vendor event id, if it has one."""

    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    event_id = EVENT_IDS[vendor](record)
    return event_id.encode() if event_id else None


def _is_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


def _deep(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def _poison(vendor: str, sample: bytes) -> list[tuple[bytes, str]]:
    """The issue's poison kinds for ``vendor``, built from one of its valid records, each with
    the reason it must get."""
    record = orjson.loads(sample)
    # 300 nested arrays in a field nobody reads (orjson cannot write that deep: spliced in).
    deep = orjson.dumps({**record, "crm_poison": 0}).decode()
    deep = deep.replace('"crm_poison":0', '"crm_poison":' + "[" * 300 + "]" * 300)
    out = [(deep.encode(), "invalid_json")]
    if vendor == "pinpoint":
        for big in (18446744073709551616, 9223372036854775808, 9223372036854774807):
            # orjson cannot write integers beyond 64 bits: splice the literal in.
            text = orjson.dumps({**record, "event_timestamp": 0}).decode()
            out.append(
                (
                    text.replace('"event_timestamp":0', f'"event_timestamp":{big}').encode(),
                    "invalid_timestamp",
                )
            )
    return out


def _fuzzed(rng: random.Random, sample: bytes) -> bytes:
    """One seeded mutation of a valid record: bytes cut, flipped or invalid UTF-8 added, a field
    replaced by a value of another type, NaN or a huge number."""
    kind = rng.randrange(6)
    if kind == 0:
        return sample[: rng.randrange(len(sample))]
    if kind == 1:
        data = bytearray(sample)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2:
        return sample + b"\xff\xfe" + bytes([rng.randrange(128, 256)])
    record = orjson.loads(sample)
    field = rng.choice(sorted(record))
    replacement = [None, "", 1.5, -1, [], {}, "x" * 100_000, True, _deep(80)][rng.randrange(9)]
    if kind == 3:
        record[field] = replacement
        return orjson.dumps(record)
    text = orjson.dumps({**record, field: 0}).decode()
    literal = ["NaN", "Infinity", "1e400", "-" + "9" * 700][
        kind - 4 if kind < 5 else rng.randrange(4)
    ]
    return text.replace(f'"{field}":0', f'"{field}":{literal}').encode()


def test_poison_and_fuzzed_records_each_get_one_outcome_and_the_worker_goes_on(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Deep nesting (every vendor), Pinpoint's three huge timestamps and 500 seeded mutations of
    valid records, mixed into valid traffic: every record balances (event, duplicate, dead
    letter or skip), the poison ones get the reason the issue names, nothing is a
    normalizer_error, and every output is exact."""
    env = crm_env_factory(
        CRM_METRICS_PORT=str(free_port()),
        CRM_DATA_DIR=str(tmp_path / "state"),
        CRM_STATS_RETENTION="3650d",
    )
    settings = Settings.from_env(env)
    create_topics(settings, extra=changelog_specs(settings))
    feed = Feed(settings)
    rng = random.Random(20261202)
    sets = samples(23, 80)
    feed.publish_all(sets, slice(0, 40))
    poison: dict[str, list[tuple[bytes, str]]] = {}
    fuzzed = 0
    for vendor, sample_set in sets.items():
        valid = [v for _k, v in sample_set.records if _is_object(v)]
        poison[vendor] = _poison(vendor, valid[0])
        feed.publish(
            vendor, [(f"poison-{i}".encode(), v) for i, (v, _) in enumerate(poison[vendor])]
        )
        mutated = [_fuzzed(rng, rng.choice(valid)) for _ in range(100)]
        batch = [(_key(vendor, raw), raw) for raw in mutated]
        fuzzed += feed.publish(vendor, batch)
    feed.publish_all(sets, slice(40, None))

    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        out = read_outputs(settings, feed.expected)
        assert not exactness_failures(out, feed.expected)
        accounts = worker.accounts()
        for vendor, account in accounts.items():
            assert account.raw_in == feed.published[vendor] == account.accounted, vendor
        assert not any(a.dead_letters.get("normalizer_error") for a in accounts.values())
        serde = AvroSerde(settings)
        dl_topic = settings.topic("dead-letter")
        reasons = {
            (r["vendor"], r["raw"]): r["reason"]
            for r in (
                serde.decode(m.value() or b"", dl_topic)[1]
                for m in read_topic(settings, dl_topic, timeout=10)
            )
        }
        for vendor, kinds in poison.items():
            for raw, reason in kinds:
                assert reasons[(vendor, raw)] == reason, (vendor, raw[:80])
        assert fuzzed == 500 and worker.alive(), worker.tail()
    finally:
        assert worker.stop() == 0, worker.tail()
