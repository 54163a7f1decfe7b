"""crm-stream's topics, their configs, and idempotent creation."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from crmstream.errors import BrokerError, KafkaUnreachable
from crmstream.kafka import reach, unreachable_message
from crmstream.settings import Settings
from crmstream.vendors import VENDOR_NAMES

VENDORS = VENDOR_NAMES  # crmstream.vendors is the registry

WEEK_MS = 7 * 86400 * 1000
TOMBSTONE_DAY_MS = 86400 * 1000  # how long compaction keeps a tombstone (Kafka's default)

# librdkafka's codes for "no broker answered" (as opposed to a broker refusing the request).
_UNREACHABLE = {KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}

# The raw topics' contract: each record is one vendor event, unchanged, keyed by the vendor's
# event id, with these headers. Connectors write them, the worker reads them.
H_VENDOR = "vendor"
H_SOURCE = "source"  # where the vendor side holds the record, e.g. s3://bucket/key#row
H_FORMAT = "format"
H_INGESTED_AT = "ingested_at"  # epoch ms when the connector read it
H_APP_ID = "app_id"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    doc: str
    configs: dict[str, str] = field(default_factory=dict)


def raw_topic(vendor: str) -> str:
    return f"raw.{vendor}"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic, without prefix. Retention is explicit so that brokers (and Quix Streams,
    which reads it back) never fall back to a surprising default."""
    keep_two_weeks = {"retention.ms": str(2 * WEEK_MS), "retention.bytes": "-1"}
    specs = [
        TopicSpec(
            raw_topic(v),
            f"{v} vendor events, unchanged, keyed by vendor event id",
            dict(keep_two_weeks),
        )
        for v in VENDORS
    ]
    specs += [
        TopicSpec("events", "canonical events (Avro), keyed by event_id", dict(keep_two_weeks)),
        TopicSpec(
            "campaign-stats",
            "per-campaign window counts (Avro upserts), keyed by campaign and window; a window "
            "that expired (CRM_STATS_RETENTION of its size) is a tombstone",
            {
                "cleanup.policy": "compact",
                "retention.ms": "-1",
                "retention.bytes": "-1",
                # A consumer bootstrapping from the start sees a tombstone for a day before
                # compaction removes it (and with it the key).
                "delete.retention.ms": str(TOMBSTONE_DAY_MS),
            },
        ),
        TopicSpec(
            "dead-letter",
            "records that could not be normalized (Avro)",
            {"retention.ms": str(4 * WEEK_MS), "retention.bytes": "-1"},
        ),
        TopicSpec(
            "stats-updates",
            "internal: per-event stats increments, keyed by campaign",
            {"retention.ms": str(WEEK_MS), "retention.bytes": "-1"},
        ),
        TopicSpec(
            "conversions",
            "the customer's conversions (JSON or Avro Conversion), any key; input of the "
            "attribution (CRM_ATTRIBUTION)",
            dict(keep_two_weeks),
        ),
        TopicSpec(
            "attribution-inputs",
            "internal: touches and conversions, keyed by user",
            {"retention.ms": str(WEEK_MS), "retention.bytes": "-1"},
        ),
        TopicSpec(
            "attributions",
            "conversions credited to a campaign by last touch (Avro), keyed by campaign",
            dict(keep_two_weeks),
        ),
        TopicSpec(
            "connect-offsets",
            "connector checkpoints, keyed by connector and source object; an object behind the "
            "re-listing horizon is a tombstone",
            {
                "cleanup.policy": "compact",
                "retention.ms": "-1",
                "retention.bytes": "-1",
                "delete.retention.ms": str(TOMBSTONE_DAY_MS),
            },
        ),
    ]
    return specs


def create_topics(
    settings: Settings,
    extra: list[TopicSpec] | None = None,
    timeout: float = 30.0,
    *,
    specs: list[TopicSpec] | None = None,
) -> dict[str, str]:
    """Create every missing topic (``specs``, default all of :func:`topic_specs`, plus
    ``extra``) with the configured partitions; existing ones are left alone.

    Returns ``{full_name: "created" | "exists"}``. Raises :class:`BrokerError` on anything else,
    :class:`ConfigError` naming the setting when TLS or SASL fails.
    """
    admin, _ = reach(settings)
    specs = (topic_specs(settings) if specs is None else specs) + (extra or [])
    new = [
        NewTopic(
            settings.topic(s.name),
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            config=s.configs,
        )
        for s in specs
    ]
    result: dict[str, str] = {}
    futures = admin.create_topics(new, request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            result[name] = "created"
        except TimeoutError as exc:
            # No answer at all (concurrent.futures' timeout): not a refusal, an absent Kafka.
            raise KafkaUnreachable(
                unreachable_message(settings, f"no answer in {timeout:g}s creating {name}")
            ) from exc
        except KafkaException as exc:
            err = exc.args[0]
            if err.name() == "TOPIC_ALREADY_EXISTS":
                result[name] = "exists"
            elif err.code() in _UNREACHABLE:
                raise KafkaUnreachable(
                    unreachable_message(settings, f"cannot create topic {name}: {err.str()}")
                ) from exc
            else:
                raise BrokerError(f"cannot create topic {name}: {err.str()}") from exc
    return result
