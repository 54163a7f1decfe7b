"""Kafka client configuration for both client libraries, from one :class:`Settings`.

confluent-kafka (connectors, admin, CLI) takes librdkafka's dotted keys; Faust runs on aiokafka
and takes ``broker_credentials`` / ``ssl_context`` (built in ``processors.faust_engine`` from
:func:`ssl_context`, so the core never imports Faust). The friendly settings map onto both
(the Quix Streams ``ConnectionConfig`` idea), so TLS and SASL are configured once.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from crmstream.errors import ConfigError, KafkaUnreachable
from crmstream.settings import Settings

log = logging.getLogger(__name__)

# What varies between two reports of the same problem: the time spent in a state, the client.
_VARYING = re.compile(r"\(after \d+ms in state \w+\)|rdkafka#\w+-\d+")


class LibrdkafkaLog:
    """librdkafka's log lines, through Python logging (logger ``librdkafka``), each distinct
    line at most once per ``quiet_s``.

    Without it librdkafka writes to stderr from its own threads: ~20 lines a second per client
    while a broker is unreachable ("Connect to ... failed: Connection refused", "Failed to
    resolve"), and a burst from every live client when the demo's broker stops. With it the
    lines go where the process's other logs go (``CRM_LOG_FORMAT=json`` included), only when
    the client is polled, and a repeat (the same text from any client of the process) is held
    back and counted: ``(N more like it in the last 60s)`` on the next one let through."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        quiet_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger or logging.getLogger("librdkafka")
        self.quiet_s = quiet_s
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # text -> (last let through, held back)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """confluent-kafka's call: ``logger.log(level, "%s [%s] %s", fac, name, message)``."""
        text = fmt % args if args else fmt
        key = " ".join(_VARYING.sub("", text).split())
        now = self.clock()
        with self._lock:
            last, held = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.quiet_s:
                self._seen[key] = (last, held + 1)
                return
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # bounded: drop what has been quiet the longest
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
        if held:
            text += f" ({held} more like it in the last {self.quiet_s:g}s)"
        self.logger.log(level, "%s", text)


# One per process, so that the same failure reported by several clients is said once.
LIBRDKAFKA_LOG = LibrdkafkaLog()

# Whether every client of this process logs through LIBRDKAFKA_LOG (quiet_librdkafka()); by
# default only the admin clients of admin_config() do. Not every process: a Segment receiver
# whose producer logged through Python sometimes took more than 30 s to exit after SIGTERM
# (tests/integration/connectors/test_segment.py, the SIGTERM test), so the connectors and the
# worker keep librdkafka's own stderr logging.
_QUIET_ALL = False


def quiet_librdkafka() -> None:
    """Every client this process creates from now on logs through :data:`LIBRDKAFKA_LOG`: the
    demo's, whose producers outlive the feeds and would otherwise each print "Connection
    refused" when the demo stops its broker."""
    global _QUIET_ALL
    _QUIET_ALL = True


def admin_config(settings: Settings) -> dict[str, Any]:
    """:func:`client_config` for an admin client, logging through :data:`LIBRDKAFKA_LOG`: an
    admin client is never polled, so its reports of a broker it cannot reach (~20 lines a
    second) are never printed; its calls raise instead."""
    return {**client_config(settings), "logger": LIBRDKAFKA_LOG}


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka connection keys shared by producers, consumers and the admin client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    if _QUIET_ALL:
        conf["logger"] = LIBRDKAFKA_LOG
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


def unreachable_message(settings: Settings, reason: str) -> str:
    return (
        f"Kafka is not reachable at {settings.bootstrap_servers} (CRM_BOOTSTRAP_SERVERS): {reason}"
    )


def reach(
    settings: Settings,
    wait_s: float | None = None,
    *,
    probe_s: float = 1.0,
    pause_s: float = 1.0,
    interrupt: Callable[[], None] = lambda: None,
) -> tuple[AdminClient, ClusterMetadata]:
    """An admin client and the cluster's metadata, once a broker answers.

    Retries a broker that does not answer for ``wait_s`` (default ``CRM_KAFKA_WAIT``), saying so
    in one warning, then raises :class:`KafkaUnreachable` (exit code 69) in one line naming
    ``CRM_BOOTSTRAP_SERVERS``. A TLS handshake or SASL authentication that fails (an untrusted
    CA, a wrong password) cannot be fixed by retrying: :class:`ConfigError` naming the setting,
    at once. librdkafka's own report of each failed attempt is logged at debug level only. Each
    attempt lasts ``probe_s`` and the pauses are sleeps, so SIGINT and SIGTERM are handled
    within about a second; ``interrupt``, called between attempts, may raise to give up
    sooner (a connector asked to stop)."""
    wait_s = settings.kafka_wait_s if wait_s is None else wait_s
    errors: list[KafkaError] = []
    conf = client_config(settings)
    conf["error_cb"] = errors.append
    librdkafka_log = _DebugLogger(log)
    conf["logger"] = librdkafka_log
    admin = AdminClient(conf)
    deadline = time.monotonic() + wait_s
    seen: set[str] = set()
    warned = False
    while True:
        interrupt()
        try:
            metadata = admin.list_topics(timeout=probe_s)
            if warned:
                log.info("Kafka answered at %s", settings.bootstrap_servers)
            return admin, metadata
        except KafkaException as exc:
            reason = exc.args[0].str() if exc.args else str(exc)
        admin.poll(0.1)  # serves error_cb and the log
        for error in errors:
            problem = security_problem(settings, error)
            if problem is not None:
                raise problem
        if errors:
            seen.update(e.str() for e in errors[-5:])
        seen.update(librdkafka_log.lines)
        errors.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            raise KafkaUnreachable(
                f"{unreachable_message(settings, reason + _protocol_hint(settings, seen))}; "
                f"gave up after {wait_s:g}s (CRM_KAFKA_WAIT)"
            )
        if not warned:
            warned = True
            log.warning(
                "%s; retrying for up to %gs (CRM_KAFKA_WAIT)",
                unreachable_message(settings, reason),
                wait_s,
            )
        time.sleep(min(pause_s, left))


def wait_for_kafka(settings: Settings, wait_s: float | None = None) -> None:
    """:func:`reach`, for a caller that needs no admin client."""
    reach(settings, wait_s)


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
