"""``crm-stream decode`` as a user runs it: a subprocess against the session broker, reading
records this test produced in both Avro wire formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
from confluent_kafka import Producer

from crmstream.kafka import producer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Secret, Settings
from crmstream.topics import create_topics
from tests.unit.crmstream.test_serde import (
    RegistryDouble,
    campaign_stats,
    canonical_event,
    dead_letter,
)

pytestmark = pytest.mark.integration


def cli_env(settings: Settings) -> dict[str, str]:
    """The CRM_* environment that reproduces ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env["CRM_" + f.metadata["env"]] = value.get() if isinstance(value, Secret) else str(value)
    return env


def produce(
    settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> None:
    """Into partition 0, in order, so the expected output order is known."""
    producer = Producer(producer_config(settings))
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def decode(settings: Settings, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "crmcli", "decode", *args],
        env=cli_env(settings),
        capture_output=True,
        timeout=90,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return done.returncode, lines, done.stderr.decode()


def test_decode_single_object_events_by_short_topic_name(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    create_topics(settings)
    topic = settings.topic("events")
    serde = AvroSerde(settings)
    events = [
        canonical_event(event_id=f"AIRSHIP:e{i}", vendor_event_id=f"e{i}", raw_offset=i)
        for i in range(5)
    ]
    produce(
        settings,
        topic,
        [(e["event_id"].encode(), serde.encode("CanonicalEvent", e, topic)) for e in events],
    )

    # No prefix on the command line: decode finds "<prefix>events".
    code, lines, stderr = decode(settings, "events", "--max", "5", "--idle-timeout", "30")

    assert code == 0, stderr
    assert [line["value"] for line in lines] == events
    assert [line["key"] for line in lines] == [e["event_id"] for e in events]
    assert {line["schema"] for line in lines} == {"CanonicalEvent"}
    assert {(line["topic"], line["partition"]) for line in lines} == {(topic, 0)}
    assert [line["offset"] for line in lines] == list(range(5))
    assert all(isinstance(line["timestamp"], int) and line["timestamp"] > 0 for line in lines)
    # Enums as names, timestamps as epoch ms.
    assert lines[0]["value"]["event_type"] == "DISMISS"
    assert lines[0]["value"]["occurred_at"] == 1_732_550_400_123


def test_decode_registry_records_bytes_tombstones_and_garbage(
    settings_factory: Callable[..., Settings],
) -> None:
    with RegistryDouble() as registry:
        settings = settings_factory(CRM_SCHEMA_REGISTRY_URL=registry.url)
        create_topics(settings)
        topic = settings.topic("dead-letter")
        serde = AvroSerde(settings)
        letter = dead_letter()
        stats_topic = settings.topic("campaign-stats")
        produce(
            settings,
            topic,
            [
                (b"k-\xe9", serde.encode("DeadLetter", letter, topic)),
                (b"gone", None),  # tombstone
                (None, b'{"not": "avro"}'),
                (
                    None,
                    AvroSerde(settings_factory()).encode(
                        "CampaignStats", campaign_stats(), stats_topic
                    ),
                ),
            ],
        )

        # Full name, and no --max: it ends by the idle timeout.
        code, lines, stderr = decode(settings, topic, "--idle-timeout", "4")

    assert code == 1  # one record was not decodable
    assert len(lines) == 4
    first, tombstone, garbage, single_object = lines

    assert first["schema"] == "DeadLetter"
    assert first["key"].encode("latin-1") == b"k-\xe9"
    value = first["value"]
    assert value["raw"].encode("latin-1") == letter["raw"]  # bytes: Avro JSON convention
    assert {k: v for k, v in value.items() if k != "raw"} == {
        k: v for k, v in letter.items() if k != "raw"
    }

    assert tombstone["key"] == "gone"
    assert tombstone["value"] is None and tombstone["schema"] is None

    assert "value" not in garbage
    assert garbage["bytes"] == '{"not": "avro"}'
    assert "not an Avro record" in garbage["error"]
    assert f"{topic}[0]@2" in stderr

    # A single-object record on a registry topic is still read: decode looks at the bytes.
    assert single_object["schema"] == "CampaignStats"
    # bytes as Avro's JSON encoding writes them: one character per byte (latin-1)
    assert single_object["value"] == as_avro_json(campaign_stats())


def as_avro_json(value: Any) -> Any:
    """``value`` with every bytes value as Avro's JSON encoding writes it: one character per
    byte (latin-1), nested records and arrays included."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: as_avro_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_avro_json(v) for v in value]
    return value


def test_decode_unknown_topic_fails_clearly(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    code, lines, stderr = decode(settings, "no-such-topic", "--idle-timeout", "1")
    assert code == 1
    assert lines == []
    assert "no topic" in stderr and "no-such-topic" in stderr
