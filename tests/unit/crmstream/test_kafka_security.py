"""The configuration each Kafka client receives for each CRM_SECURITY_PROTOCOL: librdkafka's
dict (connectors, admin, the worker's output producers) and aiokafka's arguments (the worker's
Faust consumers and producer), plus the settings' own checks of SASL and TLS values.

The aiokafka side is taken where it really comes from: the worker's Faust broker settings, turned
into aiokafka's arguments by Faust's own ``credentials_to_aiokafka_auth``, then handed to
aiokafka's client constructor, which refuses what aiokafka does not support.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaClient
from confluent_kafka import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from crmstream.errors import ConfigError
from crmstream.kafka import LIBRDKAFKA_LOG, client_config, security_problem
from crmstream.settings import Settings
from tests.tls_helpers import KEY_PASSWORD, Pki, make_pki


def security_config(settings: Settings) -> dict[str, Any]:
    """What librdkafka receives, less the log callback (``LIBRDKAFKA_LOG`` where the process
    quiets librdkafka)."""
    conf = client_config(settings)
    assert conf.pop("logger", LIBRDKAFKA_LOG) is LIBRDKAFKA_LOG
    return conf


def faust_kwargs(settings: Settings) -> dict[str, Any]:
    """The worker's Faust broker settings (the one import of the engine module here)."""
    from processors.faust_engine import faust_broker_kwargs

    return faust_broker_kwargs(settings)


def aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """What aiokafka's clients receive, checked by aiokafka's own constructor."""
    auth = dict(credentials_to_aiokafka_auth(faust_kwargs(settings).get("broker_credentials")))

    async def construct() -> None:
        AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, **auth)

    asyncio.run(construct())
    return auth


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mtls(pki: Pki) -> dict[str, str]:
    return {
        "CRM_SSL_CA_LOCATION": str(pki.ca),
        "CRM_SSL_CERT_LOCATION": str(pki.client_cert),
        "CRM_SSL_KEY_LOCATION": str(pki.client_key),
        "CRM_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }


SASL = {"CRM_SASL_USERNAME": "svc", "CRM_SASL_PASSWORD": "pw-1"}


def _ca_subjects(context: ssl.SSLContext) -> list[str]:
    return [
        dict(item[0] for item in ca["subject"]).get("commonName", "")
        for ca in context.get_ca_certs()
    ]


def test_plaintext_sends_no_credentials_to_either_client() -> None:
    settings = Settings.from_env({"CRM_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert security_config(settings) == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "PLAINTEXT",
    }
    assert "broker_credentials" not in faust_kwargs(settings)
    assert aiokafka_auth(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_kwargs(settings)["broker"] == "kafka://k1:9092,kafka://k2:9092"


def test_ssl_with_mutual_tls(mtls: dict[str, str], pki: Pki) -> None:
    settings = Settings.from_env({"CRM_SECURITY_PROTOCOL": "SSL", **mtls})
    assert security_config(settings) == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key),
        "ssl.key.password": KEY_PASSWORD,
    }
    auth = aiokafka_auth(settings)
    assert auth["security_protocol"] == "SSL"
    context = auth["ssl_context"]
    # Verifies the broker's certificate and name, like librdkafka's default
    # ssl.endpoint.identification.algorithm=https, against the given CA only.
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert _ca_subjects(context) == ["crm-stream test CA"]


def test_ssl_without_a_ca_uses_the_system_trust_store_and_still_verifies() -> None:
    settings = Settings.from_env({"CRM_SECURITY_PROTOCOL": "SSL"})
    assert security_config(settings) == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SSL",
    }
    context = aiokafka_auth(settings)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert "crm-stream test CA" not in _ca_subjects(context)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism: str) -> None:
    settings = Settings.from_env(
        {"CRM_SECURITY_PROTOCOL": "sasl_plaintext", "CRM_SASL_MECHANISM": mechanism.lower(), **SASL}
    )
    assert security_config(settings) == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": "svc",
        "sasl.password": "pw-1",
    }
    assert aiokafka_auth(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw-1",
        "ssl_context": None,
    }


def test_sasl_ssl_with_scram_and_a_ca(pki: Pki) -> None:
    settings = Settings.from_env(
        {
            "CRM_SECURITY_PROTOCOL": "SASL_SSL",
            "CRM_SASL_MECHANISM": "SCRAM-SHA-512",
            "CRM_SSL_CA_LOCATION": str(pki.ca),
            **SASL,
        }
    )
    assert security_config(settings) == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "pw-1",
        "ssl.ca.location": str(pki.ca),
    }
    auth = aiokafka_auth(settings)
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc", "pw-1")
    assert _ca_subjects(auth["ssl_context"]) == ["crm-stream test CA"]


def test_the_sasl_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    settings = Settings.from_env(
        {
            "CRM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CRM_SASL_USERNAME": "svc",
            "CRM_SASL_PASSWORD_FILE": str(secret),
        }
    )
    assert client_config(settings)["sasl.password"] == "from-a-file"
    assert aiokafka_auth(settings)["sasl_plain_password"] == "from-a-file"
    assert "from-a-file" not in repr(settings) and "from-a-file" not in str(settings.describe())


def test_tls_files_are_ignored_by_both_clients_unless_the_protocol_uses_tls(pki: Pki) -> None:
    settings = Settings.from_env(
        {"CRM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CRM_SSL_CA_LOCATION": str(pki.ca), **SASL}
    )
    assert aiokafka_auth(settings)["ssl_context"] is None
    assert client_config(settings)["security.protocol"] == "SASL_PLAINTEXT"


def _unreadable(path: Path) -> Path:
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"CRM_SECURITY_PROTOCOL": "SASL_SSL"}, "CRM_SASL_USERNAME", "required"),
        (
            {"CRM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CRM_SASL_USERNAME": "svc"},
            "CRM_SASL_PASSWORD",
            "required",
        ),
        ({"CRM_SASL_MECHANISM": "GSSAPI"}, "CRM_SASL_MECHANISM", "not one of"),
        ({"CRM_SECURITY_PROTOCOL": "SSL", "CRM_SSL_CA_LOCATION": "{missing}"}, None, "not found"),
        ({"CRM_SSL_CERT_LOCATION": "{client_cert}"}, "CRM_SSL_KEY_LOCATION", "together"),
        ({"CRM_SSL_KEY_LOCATION": "{client_key}"}, "CRM_SSL_CERT_LOCATION", "together"),
        ({"CRM_SSL_KEY_PASSWORD": "x"}, "CRM_SSL_KEY_PASSWORD", "only applies"),
        (
            {"CRM_SECURITY_PROTOCOL": "SSL", "CRM_SSL_CA_LOCATION": "{unreadable}"},
            "CRM_SSL_CA_LOCATION",
            "cannot read",
        ),
        (
            {"CRM_SECURITY_PROTOCOL": "SSL", "CRM_SSL_CA_LOCATION": "{not_pem}"},
            "CRM_SSL_CA_LOCATION",
            "no PEM CA certificate",
        ),
        (
            {
                "CRM_SECURITY_PROTOCOL": "SSL",
                "CRM_SSL_CERT_LOCATION": "{client_cert}",
                "CRM_SSL_KEY_LOCATION": "{client_key}",
                "CRM_SSL_KEY_PASSWORD": "wrong",
            },
            "CRM_SSL_CERT_LOCATION",
            "CRM_SSL_KEY_PASSWORD",
        ),
        (
            {
                "CRM_SECURITY_PROTOCOL": "SSL",
                "CRM_SSL_CERT_LOCATION": "{client_cert}",
                "CRM_SSL_KEY_LOCATION": "{server_key}",
            },
            "CRM_SSL_CERT_LOCATION",
            "cannot load the client certificate",
        ),
    ],
)
def test_a_security_mistake_names_its_variable(
    env: dict[str, str], variable: str | None, words: str, pki: Pki, tmp_path: Path
) -> None:
    if os.geteuid() == 0 and any("{unreadable}" in v for v in env.values()):
        pytest.skip("root reads a file whatever its permissions")
    paths: dict[str, Callable[[], Path]] = {
        "missing": lambda: tmp_path / "missing.pem",
        "client_cert": lambda: pki.client_cert,
        "client_key": lambda: pki.client_key,
        "server_key": lambda: pki.server_key,
        "unreadable": lambda: _unreadable(tmp_path / "ca.pem"),
        "not_pem": lambda: pki.client_key,  # a key, not a certificate
    }
    resolved = {k: v.format(**{n: make() for n, make in paths.items()}) for k, v in env.items()}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(resolved)
    expected = variable or "CRM_SSL_CA_LOCATION"
    assert info.value.setting == expected
    assert str(info.value).startswith(f"invalid setting {expected}: ")
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("code", "text", "variable"),
    [
        (
            KafkaError._SSL,
            "ssl://k:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
            "certificate verify failed: broker certificate could not be verified",
            "CRM_SSL_CA_LOCATION",
        ),
        (
            KafkaError._SSL,
            "ssl://k:9092/bootstrap: SSL handshake failed: error:0A00010B:SSL routines::"
            "wrong version number",
            "CRM_SECURITY_PROTOCOL",
        ),
        (
            KafkaError._SSL,
            "ssl://k:9093/bootstrap: SSL handshake failed: error:0A00045C:SSL routines::"
            "tlsv13 alert certificate required",
            "CRM_SSL_CERT_LOCATION",
        ),
        (
            KafkaError._AUTHENTICATION,
            "sasl_ssl://k:9093/bootstrap: SASL authentication error: Authentication failed "
            "during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            "CRM_SASL_PASSWORD",
        ),
        (
            KafkaError._AUTHENTICATION,
            "sasl_ssl://k:9093/bootstrap: Unsupported SASL mechanism: broker's supported "
            "mechanisms: PLAIN",
            "CRM_SASL_MECHANISM",
        ),
        (KafkaError._TRANSPORT, "k:9092/bootstrap: Connect to ipv4#1.2.3.4:9092 failed", None),
        (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", None),
    ],
)
def test_a_tls_or_sasl_failure_of_librdkafka_names_the_setting(
    code: int, text: str, variable: str | None
) -> None:
    settings = Settings.from_env({"CRM_SECURITY_PROTOCOL": "SASL_SSL", **SASL})
    problem = security_problem(settings, KafkaError(code, text))
    if variable is None:
        assert problem is None  # a broker that is down: retried until the timeout
        return
    assert problem is not None and problem.setting == variable
    assert text in str(problem) and "pw-1" not in str(problem)
