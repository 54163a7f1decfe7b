"""Connectors create or verify the topics they write at start (issue 14): a connector started
before ``crm-stream topics create`` must not let the broker auto-create its raw topic with the
broker's default partition count."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from crmstream.kafka import client_config
from crmstream.settings import Settings

pytestmark = pytest.mark.integration


def _connect(settings: Settings, feed: Path, partitions: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        CRM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        CRM_TOPIC_PREFIX=settings.topic_prefix,
        CRM_PARTITIONS=str(partitions),
        CRM_REPLICATION_FACTOR="1",
        CRM_METRICS_PORT="0",
    )
    cmd = [sys.executable, "-m", "crmcli", "connect", "leanplum", "--source", f"file://{feed}"]
    return subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True, timeout=120)


def _partitions(settings: Settings) -> dict[str, int]:
    meta = AdminClient(client_config(settings)).list_topics(timeout=10)
    return {
        name[len(settings.topic_prefix) :]: len(t.partitions)
        for name, t in meta.topics.items()
        if name.startswith(settings.topic_prefix)
    }


def test_a_connector_creates_its_topics_with_the_configured_partitions(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()  # no topics created
    (tmp_path / "feed").mkdir()
    done = _connect(settings, tmp_path / "feed", partitions=3)
    assert done.returncode == 0, done.stderr
    assert _partitions(settings) == {"raw.leanplum": 3, "connect-offsets": 3, "dead-letter": 3}


def test_a_raw_topic_with_other_partitions_is_refused_naming_the_setting(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    admin = AdminClient(client_config(settings))
    topic = settings.topic("raw.leanplum")
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    (tmp_path / "feed").mkdir()
    done = _connect(settings, tmp_path / "feed", partitions=3)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"crm-stream: invalid setting CRM_PARTITIONS: topic {topic} exists with 2 partitions but "
        "CRM_PARTITIONS is 3: set CRM_PARTITIONS to the topic's count, or recreate the topic "
        "(crm-stream topics create) before starting connectors"
    )
    assert _partitions(settings) == {"raw.leanplum": 2}  # nothing else was created
