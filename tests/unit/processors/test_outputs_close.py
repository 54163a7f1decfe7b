"""The outputs' readiness while the worker closes them (no broker needed: nothing is sent)."""

from __future__ import annotations

from pathlib import Path

from crmstream.settings import Settings
from processors.outputs import ConfluentOutputs


def test_a_readiness_probe_racing_the_close_answers_not_ready(tmp_path: Path) -> None:
    """/readyz runs on the metrics thread: a probe that reaches the producer just after the
    close did answers "not ready" instead of raising."""
    settings = Settings.from_env(
        {"CRM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CRM_DATA_DIR": str(tmp_path)}
    )
    outputs = ConfluentOutputs(settings)
    outputs._producer.close()  # the close reached the producer, the probe did not see it yet
    assert outputs.reachable(timeout=0.1) == (
        False,
        "the outputs are closed (the worker is stopping)",
    )
    outputs._changelog_producer.close()
