"""Session fixtures. The broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' Kafka if
a Docker engine answers; else the embedded Tansu. Never a mock of Kafka."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crmstream.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO.parent / "shared" / "seeds"

# Tansu workarounds (config/tansu-dev.env); harmless on a real Kafka too.
TANSU_DEV = {
    "CRM_CONSUMER_SESSION_TIMEOUT": "2s",
    "CRM_CONSUMER_HEARTBEAT_INTERVAL": "0.5s",
    "CRM_CONSUMER_REBALANCE_TIMEOUT": "2s",
    "CRM_CHANGELOG_MAX_BATCH_BYTES": "1",
    "CRM_REPLICATION_FACTOR": "1",
}


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One broker for the whole test session."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from crmstream.broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def crm_env_factory(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """CRM_* variables for one test (its own topic prefix, app id and data dir, the session
    broker), for code that runs crm-stream in a child process."""

    def make(**env: str) -> dict[str, str]:
        values = dict(TANSU_DEV)
        values.update(
            {
                "CRM_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "CRM_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
                "CRM_PARTITIONS": "2",
                "CRM_DATA_DIR": str(tmp_path / "data"),
                "CRM_METRICS_PORT": "0",
                # No query API unless a test asks for one on a free port (several workers run
                # side by side, and other test sessions may share the machine).
                "CRM_API_PORT": "0",
                "CRM_APP_ID": f"crm-test-{uuid.uuid4().hex[:8]}",
            }
        )
        values.update(env)
        return values

    return make


@pytest.fixture
def settings_factory(crm_env_factory: Callable[..., dict[str, str]]) -> Callable[..., Settings]:
    """Settings for one test: its own topic prefix and data dir, the session broker."""

    def make(**env: str) -> Settings:
        return Settings.from_env(crm_env_factory(**env))

    return make
