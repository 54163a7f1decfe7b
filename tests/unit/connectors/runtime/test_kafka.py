"""RawPublisher's local-queue and health facts, with a real librdkafka producer and no broker
(nothing here needs one: the records stay in the local queue)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from connectors.runtime.health import KafkaWatch, connector_health
from connectors.runtime.kafka import BROKEN_PRODUCER_CODES, RawPublisher
from crmstream.broker import free_port
from crmstream.settings import Settings


def _publisher(**config: object) -> RawPublisher:
    settings = Settings.from_env({"CRM_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    return RawPublisher(settings, "airship", config=config)


def test_has_room_tells_an_event_loop_when_publish_would_block() -> None:
    """Airship awaits while has_room() is false instead of blocking its loop in publish()."""
    publisher = _publisher(**{"queue.buffering.max.messages": 5})
    assert publisher.max_queued == 5
    for i in range(4):
        publisher.publish(f"k{i}", b"{}", source=f"t#{i}", fmt="json")
    assert publisher.has_room()
    publisher.publish("k4", b"{}", source="t#4", fmt="json")
    assert not publisher.has_room()
    publisher.abandon(0)  # purge: the queue is empty again
    assert publisher.has_room(5)


def test_record_limit_follows_the_producer_config() -> None:
    assert _publisher().max_record_bytes == 1_000_000 - 512
    assert _publisher(**{"message.max.bytes": 2_000_000}).max_record_bytes == 2_000_000 - 512


def test_a_fencing_delivery_error_marks_the_producer_broken() -> None:
    publisher = _publisher()
    assert publisher.fatal_error is None
    publisher._on_client_error(KafkaError(KafkaError._TRANSPORT, "broker down"))
    assert publisher.fatal_error is None  # transient: librdkafka reconnects by itself
    publisher._on_client_error(KafkaError(KafkaError.PRODUCER_FENCED, "fenced"))
    assert publisher.fatal_error == "fenced"
    assert KafkaError.UNKNOWN_PRODUCER_ID in BROKEN_PRODUCER_CODES


def test_health_is_not_ready_before_kafka_answers_and_not_live_when_fatal() -> None:
    publisher = _publisher()
    watch = KafkaWatch(lambda: publisher)  # not started: no answer yet, no watch thread
    health = connector_health(watch)
    ok, report = health.report("ready")
    assert not ok and report["checks"]["kafka"] == {"ok": False, "detail": "not checked yet"}
    ok, report = health.report("live")
    assert report["checks"]["producer"] == {
        "ok": False,
        "detail": "Kafka watch thread is not running",
    }
    publisher.fatal_error = "fenced"
    assert health.report("live")[1]["checks"]["producer"]["detail"] == (
        "producer in a fatal state: fenced"
    )
