"""Kafka client configuration for both client libraries, from one :class:`Settings`.

confluent-kafka (connectors, admin, CLI) takes librdkafka's dotted keys; Faust runs on aiokafka
and takes ``broker_credentials`` / ``ssl_context`` (built in ``processors.faust_engine`` from
:func:`ssl_context`, so the core never imports Faust). The friendly settings map onto both
(the Quix Streams ``ConnectionConfig`` idea), so TLS and SASL are configured once.
"""

from __future__ import annotations

import ssl
from typing import Any

from crmstream.settings import Settings


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka connection keys shared by producers, consumers and the admin client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username
        conf["sasl.password"] = settings.sasl_password.get()
    if settings.ssl_ca_location:
        conf["ssl.ca.location"] = settings.ssl_ca_location
    if settings.ssl_cert_location:
        conf["ssl.certificate.location"] = settings.ssl_cert_location
        conf["ssl.key.location"] = settings.ssl_key_location
    if settings.ssl_key_password:
        conf["ssl.key.password"] = settings.ssl_key_password.get()
    return conf


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """A producer that never loses or reorders an acknowledged record.

    Idempotence implies acks=all and bounded in-flight requests, so a retried batch cannot be
    duplicated or reordered by the producer itself. murmur2 is the Java client's partitioner:
    raw records keyed by the vendor event id land on the same partition whichever client
    (ours, Kafka Connect, a vendor SDK) produced them, which the worker's dedupe relies on.
    """
    conf = client_config(settings)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "compression.type": "lz4",
        }
    )
    conf.update(extra)
    return conf


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    conf = client_config(settings)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.consumer_session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.consumer_heartbeat_interval_s * 1000),
        }
    )
    conf.update(extra)
    return conf


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for aiokafka, or None when the protocol does not use TLS."""
    if settings.security_protocol not in {"SSL", "SASL_SSL"}:
        return None
    context = ssl.create_default_context(cafile=settings.ssl_ca_location or None)
    if settings.ssl_cert_location:
        context.load_cert_chain(
            settings.ssl_cert_location,
            settings.ssl_key_location,
            password=settings.ssl_key_password.get() or None,
        )
    return context
