"""`crm-stream settings` lists every variable crm-stream reads: the shared ones, the files it
loads, and each connector's own (issue 12)."""

from __future__ import annotations

import pytest

from connectors.registry import CONNECTORS
from crmcli import main


def test_settings_lists_the_connector_variables_and_the_schema_dir(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_SEGMENT_PORT", "9999")
    monkeypatch.setenv("CRM_AIRSHIP_TOKEN", "never-printed")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("CRM_")}
    for var in ("CRM_BOOTSTRAP_SERVERS", "CRM_SCHEMA_DIR", "CRM_TANSU_BIN"):
        assert var in rows, var
    assert "schemas/avro" in rows["CRM_SCHEMA_DIR"]
    assert rows["CRM_SEGMENT_PORT"].split()[1] == "9999"
    assert "CRM_PINPOINT_KINESIS_STREAM" in rows
    assert rows["CRM_AIRSHIP_TOKEN"].split()[1] == "***"
    assert "never-printed" not in out
    for name in CONNECTORS:
        assert f"# crm-stream connect {name}\n" in out, name


def test_every_secret_is_masked_the_same_way(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core secret (a Secret value) and a connector's (read without validating) both show
    as ``***`` (issue 22 item 13: they showed as ``Secret('****')`` and ``***``)."""
    monkeypatch.setenv("CRM_SASL_PASSWORD", "core-never-printed")
    monkeypatch.setenv("CRM_SEGMENT_SHARED_SECRET", "segment-never-printed")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("CRM_")}
    assert rows["CRM_SASL_PASSWORD"][1] == "***"
    assert rows["CRM_SEGMENT_SHARED_SECRET"][1] == "***"
    assert "never-printed" not in out
    assert "Secret(" not in out
