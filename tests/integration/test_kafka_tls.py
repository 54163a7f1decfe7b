"""Every process over TLS with mutual authentication (CRM_SECURITY_PROTOCOL=SSL), on a real broker.

Tansu 0.6.0 cannot serve TLS (README, "Kafka security"), so the test puts a TLS server on loopback
in front of its own Tansu and has Tansu advertise that port: every connection of every client,
bootstrap and per-broker, goes through a real TLS handshake (Python's ssl, i.e. OpenSSL) that
verifies the client's certificate, and the clients verify the server's against a throwaway CA.

The worker (``crm-stream worker``: Faust's aiokafka consumers and producer, librdkafka output
producers and admin) starts, a connector CLI (leanplum, from a file feed) publishes its raw topic
through it (librdkafka), the worker turns that into exact canonical events, and the test reads
them back over TLS too. A
process given a CA that did not sign the broker's certificate stops at once with one line naming
CRM_SSL_CA_LOCATION.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from crmstream.broker import EmbeddedBroker, free_port
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from tests.conftest import TANSU_DEV
from tests.integration.harness import wait_status
from tests.kafka_helpers import read_topic
from tests.tls_helpers import KEY_PASSWORD, Pki, TlsProxy, make_pki

pytestmark = pytest.mark.integration

UNIQUE = 24
DUPLICATES = 6  # lines that repeat an event id already in the feed


class TlsBroker:
    def __init__(self, pki: Pki, bootstrap: str, proxy: TlsProxy) -> None:
        self.pki = pki
        self.bootstrap = bootstrap
        self.proxy = proxy


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    pki = make_pki(tmp_path / "pki")
    front = free_port()
    broker = EmbeddedBroker(advertised_port=front, log_path=tmp_path / "tansu.log").start()
    proxy = TlsProxy(pki.server_context(require_client_cert=True), front, broker.port).start()
    try:
        yield TlsBroker(pki, f"127.0.0.1:{front}", proxy)
    finally:
        proxy.stop()
        broker.stop()


def _env(tls: TlsBroker, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(TANSU_DEV)
    env.update(
        {
            "CRM_BOOTSTRAP_SERVERS": tls.bootstrap,
            "CRM_SECURITY_PROTOCOL": "SSL",
            "CRM_SSL_CA_LOCATION": str(tls.pki.ca),
            "CRM_SSL_CERT_LOCATION": str(tls.pki.client_cert),
            "CRM_SSL_KEY_LOCATION": str(tls.pki.client_key),
            "CRM_SSL_KEY_PASSWORD": KEY_PASSWORD,
            "CRM_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
            "CRM_PARTITIONS": "2",
            "CRM_DATA_DIR": str(tmp_path / "data"),
            "CRM_METRICS_PORT": "0",
            "CRM_API_PORT": "0",
            "CRM_APP_ID": f"crm-tls-{uuid.uuid4().hex[:8]}",
        }
    )
    env.update(extra)
    return env


def _feed(root: Path) -> list[str]:
    """A Leanplum JSON feed file; the event id of each line, in order."""
    ids = [f"lp-tls-{i:03d}" for i in range(UNIQUE)]
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
def test_the_worker_and_a_connector_over_mutual_tls(tls_broker: TlsBroker, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = _env(tls_broker, tmp_path, CRM_METRICS_PORT=str(metrics_port))
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
    assert tls_broker.proxy.handshake_failures == 0


@pytest.mark.parametrize("command", [("connect", "leanplum", "--once"), ("worker",)])
def test_an_untrusted_broker_certificate_stops_a_process_naming_the_ca_setting(
    tls_broker: TlsBroker, tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = _env(tls_broker, tmp_path, CRM_SSL_CA_LOCATION=str(tls_broker.pki.other_ca))
    args = list(command)
    if command[0] == "connect":
        (tmp_path / "feed").mkdir()
        args[2:2] = ["--source", f"file://{tmp_path / 'feed'}"]
    started = time.monotonic()
    done = _crm(env, *args, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "crm-stream: invalid setting CRM_SSL_CA_LOCATION: the broker's certificate is not "
        f"trusted by {tls_broker.pki.other_ca}: "
    ), done.stderr[-3000:]
    assert "certificate verify failed" in last
    assert took < 20, f"took {took:.1f}s: retried instead of stopping"
