"""Session fixtures. The broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' Kafka if
a Docker engine answers; else the embedded Tansu. Never a mock of Kafka."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from crmstream.resources import tansu_dev_profile
from crmstream.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO.parent / "shared" / "seeds"

# Tansu workarounds, from the one dev profile (config/tansu-dev.env); harmless on a real Kafka.
TANSU_DEV = tansu_dev_profile()


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(autouse=True)
def _signals_as_they_were() -> Iterator[None]:
    """Every test leaves the pytest process's signal mask and SIGINT/SIGTERM handlers as it
    found them. A test that runs ``crm-stream connect`` in-process (``crmcli.main``) installs
    the connector's stop signals: SIGINT and SIGTERM blocked for a thread of their own. Blocked
    signals are inherited by every process started after it, so a worker this pytest process
    started later ignored its SIGTERM and the stop tests timed out, one full run in three."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


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


# --- order and placement under pytest-xdist (make test: -n N --dist loadgroup) ------------------
# Each xdist worker is its own session, so it starts its own broker (kafka_bootstrap) and tests
# on different workers never share one. Under loadgroup a worker is handed a test, or a whole
# xdist_group, when it has few left, in collection order; so the longest run first (slow's
# `seconds`, else by marker) and no worker starts a minute-long test while the others are
# finishing. The demo's end-to-end runs go first of all: each then starts on a broker that no
# other test has used yet.
def _cost(item: pytest.Item) -> tuple[int, float]:
    slow = item.get_closest_marker("slow")
    seconds = -float(slow.kwargs.get("seconds", 0)) if slow else 0.0
    if item.get_closest_marker("demo"):
        return (0, seconds)
    if slow:
        return (1, seconds)
    if item.get_closest_marker("integration"):
        return (2, 0.0)
    return (3, 0.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_cost)  # stable: at equal cost, the collection order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Captured output as valid UTF-8: an xdist worker sends each report to the controller as
    UTF-8 and dies on a lone surrogate, which tests of malformed input do log
    (test_normalize.py::test_the_detail_is_short_and_valid_utf8)."""
    report = yield
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, text in report.sections
    ]
    return report
