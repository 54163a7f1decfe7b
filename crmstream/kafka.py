"""Kafka client configuration for both client libraries, from one :class:`Settings`.

confluent-kafka (connectors, admin, CLI) takes librdkafka's dotted keys; Faust runs on aiokafka
and takes ``broker_credentials`` / ``ssl_context`` (built in ``processors.faust_engine`` from
:func:`ssl_context`, so the core never imports Faust). The friendly settings map onto both
(the Quix Streams ``ConnectionConfig`` idea), so TLS and SASL are configured once.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from crmstream.errors import BrokerError, ConfigError
from crmstream.settings import Settings

log = logging.getLogger("crmstream.kafka")


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


# librdkafka's wording of a failed TLS handshake -> the setting to look at (first match wins).
_TLS_CAUSES = (
    # TLS spoken to a plaintext listener (or the reverse).
    (("wrong version number", "packet length too long", "http request"), "CRM_SECURITY_PROTOCOL"),
    # The broker refused our certificate (mutual TLS).
    (
        ("alert certificate required", "alert bad certificate", "alert unknown ca"),
        "CRM_SSL_CERT_LOCATION",
    ),
)


def security_problem(settings: Settings, error: KafkaError) -> ConfigError | None:
    """The setting behind a librdkafka error, when the error is the security configuration's
    (a TLS handshake or SASL authentication that failed): retrying cannot fix it."""
    text = error.str()
    if error.code() == KafkaError._SSL:
        lowered = text.lower()
        for words, var in _TLS_CAUSES:
            if any(w in lowered for w in words):
                return ConfigError(var, f"TLS with {settings.bootstrap_servers} failed: {text}")
        if "certificate verify failed" in lowered:
            source = settings.ssl_ca_location or "the system's CA certificates"
            return ConfigError(
                "CRM_SSL_CA_LOCATION",
                f"the broker's certificate is not trusted by {source}: {text}",
            )
        return ConfigError(
            "CRM_SSL_CA_LOCATION", f"TLS with {settings.bootstrap_servers} failed: {text}"
        )
    if error.code() == KafkaError._AUTHENTICATION:
        if "mechanism" in text.lower() and "unsupported" in text.lower():
            return ConfigError("CRM_SASL_MECHANISM", f"the broker refused it: {text}")
        return ConfigError(
            "CRM_SASL_PASSWORD",
            f"SASL {settings.sasl_mechanism} authentication of CRM_SASL_USERNAME="
            f"{settings.sasl_username!r} failed: {text}",
        )
    return None


def reach(settings: Settings, timeout: float = 30.0) -> tuple[AdminClient, ClusterMetadata]:
    """An admin client and the cluster's metadata, once Kafka answers.

    Waits up to ``timeout`` for a broker that is down, but stops at once with a
    :class:`ConfigError` naming the setting when the TLS handshake or SASL authentication fails
    (an untrusted CA, a wrong password), instead of retrying it until the timeout and then
    reporting a bare "transport failure".
    """
    errors: list[KafkaError] = []
    conf = client_config(settings)
    conf["error_cb"] = errors.append
    # librdkafka's own log lines (one per retried connection) at debug level, served by poll():
    # the errors they repeat come through error_cb and end up in the one line that stops the
    # process, and none is printed after it while librdkafka's threads are torn down.
    librdkafka_log = _DebugLogger(log)
    conf["logger"] = librdkafka_log
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    seen: set[str] = set()
    while True:
        try:
            return admin, admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0.1)  # serves error_cb
        for error in errors:
            problem = security_problem(settings, error)
            if problem is not None:
                raise problem
        if errors:
            last = errors[-1].str()
            seen.update(e.str() for e in errors[-5:])
        seen.update(librdkafka_log.lines)
        errors.clear()
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka is not reachable at {settings.bootstrap_servers}: {last}"
                + _protocol_hint(settings, seen)
            )


def _protocol_hint(settings: Settings, errors: set[str]) -> str:
    """What a broker that answers the connection but not the protocol usually means."""
    text = " ".join(errors)
    protocol = f"CRM_SECURITY_PROTOCOL={settings.security_protocol}"
    if "timed out in state SSL_HANDSHAKE" in text:
        return f" (no TLS answer: is the listener plaintext? {protocol})"
    if "APIVERSION_QUERY" in text and "closed by peer" in text:
        tls = settings.security_protocol in {"SSL", "SASL_SSL"}
        mtls = (
            "; or it wants a client certificate" if tls and not settings.ssl_cert_location else ""
        )
        return f" (the broker closes the connection at once: does it speak {protocol}{mtls}?)"
    return ""


class _DebugLogger(logging.LoggerAdapter[logging.Logger]):
    """librdkafka's log lines, whatever their level, at debug level; the latest kept in
    ``lines`` for :func:`_protocol_hint`."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.lines: list[str] = []

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(TypeError, ValueError):
            self.lines = [*self.lines[-9:], str(msg) % args]
        super().log(logging.DEBUG, msg, *args, **kwargs)
