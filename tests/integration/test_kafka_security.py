"""Every kind of process over each secured protocol, on a real broker: SSL with mutual TLS,
SASL_PLAINTEXT with SCRAM-SHA-512, SASL_SSL with SCRAM-SHA-256.

Tansu 0.6.0 serves neither TLS nor a usable SASL (README, "Kafka security"), so each test starts
its own Tansu behind a TLS front, a SASL front, or both (``tests/broker_fronts.py``), and Tansu
advertises the front's port: every connection of every client, bootstrap and per-broker, makes a
real TLS handshake (OpenSSL, verifying the client's certificate where asked; the clients verify
the server's against a throwaway CA) and a real SASL exchange checked against the front's user.

The worker (``crm-stream worker``: Faust's aiokafka consumers and producer, librdkafka output
producers and admin) starts, a connector CLI (leanplum, from a file feed) publishes its raw topic
(librdkafka), the worker turns that into exact canonical events, and the test reads them back
with the same settings and with ``crm-stream decode``. A CA that did not sign the broker's
certificate, or a wrong password, stops a process at once with one line naming the setting.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from crmstream.broker import EmbeddedBroker, free_port, tansu_binary, wait_for_port
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from tests.broker_fronts import SaslFront, TlsFront
from tests.conftest import TANSU_DEV
from tests.integration.harness import wait_status
from tests.kafka_helpers import read_topic
from tests.tls_helpers import KEY_PASSWORD, Pki, make_pki

pytestmark = pytest.mark.integration

UNIQUE = 24
DUPLICATES = 6  # lines that repeat an event id already in the feed
USER, PASSWORD = "crm-stream", "s3cret-pw"


@dataclass
class Secured:
    pki: Pki
    bootstrap: str
    env: dict[str, str]
    tls: TlsFront | None = None
    sasl: SaslFront | None = None
    _stops: list[Callable[[], None]] = field(default_factory=list)


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[Callable[..., Secured]]:
    """A factory: ``make(protocol, mechanism)`` -> its own Tansu behind the fronts."""
    made: list[Secured] = []

    def make(protocol: str, mechanism: str = "SCRAM-SHA-512") -> Secured:
        pki = make_pki(tmp_path / "pki")
        front = free_port()
        broker = EmbeddedBroker(advertised_port=front, log_path=tmp_path / "tansu.log").start()
        secured = Secured(pki, f"127.0.0.1:{front}", {"CRM_SECURITY_PROTOCOL": protocol})
        secured._stops.append(broker.stop)
        made.append(secured)
        target = broker.port
        if protocol.startswith("SASL"):
            port = free_port() if protocol == "SASL_SSL" else front
            secured.sasl = SaslFront({USER: PASSWORD}, port, broker.port).start()
            secured._stops.append(secured.sasl.stop)
            target = port
            secured.env.update(
                CRM_SASL_MECHANISM=mechanism, CRM_SASL_USERNAME=USER, CRM_SASL_PASSWORD=PASSWORD
            )
        if protocol.endswith("SSL"):
            mutual = protocol == "SSL"
            secured.tls = TlsFront(pki.server_context(require_client_cert=mutual), front, target)
            secured.tls.start()
            secured._stops.append(secured.tls.stop)
            secured.env["CRM_SSL_CA_LOCATION"] = str(pki.ca)
            if mutual:
                secured.env.update(
                    CRM_SSL_CERT_LOCATION=str(pki.client_cert),
                    CRM_SSL_KEY_LOCATION=str(pki.client_key),
                    CRM_SSL_KEY_PASSWORD=KEY_PASSWORD,
                )
        return secured

    yield make
    for secured in made:
        for stop in reversed(secured._stops):
            stop()


def _env(secured: Secured, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(TANSU_DEV)
    env.update(
        {
            "CRM_BOOTSTRAP_SERVERS": secured.bootstrap,
            "CRM_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
            "CRM_PARTITIONS": "2",
            "CRM_DATA_DIR": str(tmp_path / "data"),
            "CRM_METRICS_PORT": "0",
            "CRM_API_PORT": "0",
            "CRM_APP_ID": f"crm-sec-{uuid.uuid4().hex[:8]}",
        }
    )
    env.update(secured.env)
    env.update(extra)
    return env


def _feed(root: Path) -> list[str]:
    """A Leanplum JSON feed file; the event id of each line, in order."""
    ids = [f"lp-sec-{i:03d}" for i in range(UNIQUE)]
    lines = ids + ids[:DUPLICATES]
    # Recent: within the dedupe window and the stats retention.
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    part = root / f"dt={at:%Y-%m-%d}"
    part.mkdir(parents=True)
    (part / "part-0.json").write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "event_id": event_id,
                    "name": "(Leanplum) Campaign Enter",
                    "properties": {"user_id": "u1", "time": f"{at:%Y-%m-%d %H:%M:%S}.000"},
                }
            )
            + b"\n"
            for event_id in lines
        )
    )
    return lines


def _crm(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmcli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow(seconds=20)
@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SSL", ""), ("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256")],
)
def test_the_worker_and_a_connector_over_a_secured_protocol(
    secured_broker: Callable[..., Secured], tmp_path: Path, protocol: str, mechanism: str
) -> None:
    secured = secured_broker(protocol, mechanism)
    metrics_port = free_port()
    env = _env(secured, tmp_path, CRM_METRICS_PORT=str(metrics_port))
    settings = Settings.from_env(env)
    lines = _feed(tmp_path / "feed")

    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "crmcli", "worker"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_status(f"http://127.0.0.1:{metrics_port}/readyz", 200, timeout=90)
        feed = f"file://{tmp_path / 'feed'}"
        done = _crm(
            {**env, "CRM_METRICS_PORT": "0"}, "connect", "leanplum", "--source", feed, "--once"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        raw = read_topic(
            settings, settings.topic("raw.leanplum"), until=lambda r: len(r) >= len(lines)
        )
        assert Counter(m.key() for m in raw) == Counter(i.encode() for i in lines)
        events = read_topic(
            settings,
            settings.topic("events"),
            until=lambda r: len(r) >= UNIQUE,
            timeout=90,
            idle=3.0,
        )
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    serde = AvroSerde(settings)
    decoded = [serde.decode(m.value() or b"", settings.topic("events"))[1] for m in events]
    assert sorted(r["vendor_event_id"] for r in decoded) == sorted(set(lines)), log.read_text()[
        -3000:
    ]
    assert [m.key() for m in events] == [
        f"LEANPLUM:{r['vendor_event_id']}".encode() for r in decoded
    ]
    # The command-line tools too: crm-stream decode reads the same records back.
    printed = _crm(env, "decode", "events", "--idle-timeout", "3", timeout=60)
    assert printed.returncode == 0, printed.stderr[-3000:]
    rows = [orjson.loads(line) for line in printed.stdout.splitlines()]
    assert sorted(row["value"]["vendor_event_id"] for row in rows) == sorted(set(lines))
    if secured.tls is not None:
        assert secured.tls.failures == 0
    if secured.sasl is not None:
        # Every connection authenticated with the configured mechanism, none refused.
        assert secured.sasl.failures == 0
        assert {m for m, _ in secured.sasl.authenticated} == {mechanism}
        assert {u for _, u in secured.sasl.authenticated} == {USER}


def _command(kind: str, tmp_path: Path) -> list[str]:
    if kind == "worker":
        return ["worker"]
    (tmp_path / "feed").mkdir()
    return ["connect", "leanplum", "--source", f"file://{tmp_path / 'feed'}", "--once"]


def _stops_at_once(env: dict[str, str], command: list[str]) -> str:
    """Runs ``command``; its last stderr line, after asserting exit 2 within seconds."""
    started = time.monotonic()
    done = _crm(env, *command, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    assert took < 20, f"took {took:.1f}s: retried instead of stopping"
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("kind", "ca"), [("connector", "other"), ("worker", "other"), ("connector", "none")]
)
def test_an_untrusted_broker_certificate_stops_a_process_naming_the_ca_setting(
    secured_broker: Callable[..., Secured], tmp_path: Path, kind: str, ca: str
) -> None:
    """A CA from another authority, or none (the system's CA certificates, which do not include
    the throwaway CA): verification is never skipped."""
    secured = secured_broker("SSL")
    location = str(secured.pki.other_ca) if ca == "other" else ""
    env = _env(secured, tmp_path, CRM_SSL_CA_LOCATION=location)
    last = _stops_at_once(env, _command(kind, tmp_path))
    source = location or "the system's CA certificates"
    assert last.startswith(
        "crm-stream: invalid setting CRM_SSL_CA_LOCATION: the broker's certificate is not "
        f"trusted by {source}: "
    ), last
    assert "certificate verify failed" in last


@pytest.mark.parametrize(
    ("kind", "mechanism"), [("connector", "PLAIN"), ("worker", "SCRAM-SHA-512")]
)
def test_a_wrong_password_stops_a_process_naming_the_password_setting(
    secured_broker: Callable[..., Secured], tmp_path: Path, kind: str, mechanism: str
) -> None:
    secured = secured_broker("SASL_PLAINTEXT", mechanism)
    env = _env(secured, tmp_path, CRM_SASL_PASSWORD="not-the-password")
    last = _stops_at_once(env, _command(kind, tmp_path))
    assert last.startswith(
        f"crm-stream: invalid setting CRM_SASL_PASSWORD: SASL {mechanism} authentication of "
        f"CRM_SASL_USERNAME='{USER}' failed: "
    ), last
    assert "not-the-password" not in last
    assert secured.sasl is not None and secured.sasl.failures >= 1
    assert secured.sasl.authenticated == []


@pytest.mark.slow(seconds=20)
def test_the_embedded_broker_still_cannot_serve_tls_or_sasl(tmp_path: Path) -> None:
    """Why the tests above need fronts (README, "About the embedded broker"). If this fails, the
    Tansu in use has learnt TLS or SASL: run the tests above against it directly instead."""
    tansu = str(tansu_binary())
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    listen = ["--listener-url", f"tcp://127.0.0.1:{port}"]
    listen += ["--advertised-listener-url", f"tcp://127.0.0.1:{port}"]

    both = [tansu, "broker", *listen, "--cert", str(pki.server_cert), "--key", str(pki.server_key)]
    refused = subprocess.run(both, capture_output=True, text=True, timeout=20, check=False)
    assert refused.returncode != 0 and "cannot be used with" in refused.stderr, refused.stderr

    combined = tmp_path / "combined.pem"
    combined.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    with _tansu(tmp_path, tansu, *listen, "--cert", str(combined)):
        # --cert alone: still plaintext, and a TLS client's handshake is never answered.
        assert _metadata(port, {}) is not None
        context = ssl.create_default_context(cafile=str(pki.ca))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as sock,
            pytest.raises((TimeoutError, ssl.SSLError, ConnectionError)),
        ):
            context.wrap_socket(sock, server_hostname="127.0.0.1")

    with _tansu(tmp_path, tansu, *listen, "--authentication"):
        # Only SCRAM is offered, and no SCRAM credential can exist (the storage engines keep
        # none; creating one needs an authenticated connection in the first place).
        created = subprocess.run(
            [tansu, "user", "create", USER, PASSWORD, "--broker", f"tcp://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert created.returncode != 0
        for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            conf = {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": mechanism,
                "sasl.username": USER,
                "sasl.password": PASSWORD,
            }
            assert _metadata(port, conf) is None, mechanism
        assert _metadata(port, {}) is None


@contextlib.contextmanager
def _tansu(tmp_path: Path, *command: str) -> Iterator[None]:
    log = (tmp_path / "tansu-limits.log").open("ab")
    proc = subprocess.Popen([command[0], "broker", *command[1:]], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", int(command[2].rsplit(":", 1)[1]), 20)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _metadata(port: int, conf: dict[str, str]) -> object | None:
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0, **conf})
    try:
        return admin.list_topics(timeout=4)
    except KafkaException:
        return None
