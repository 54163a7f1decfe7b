"""docs/events.md, the users' reference for the canonical event (issue 22 item 12), lists
exactly the code's enums, fields, outcomes and dead-letter reasons, so the two cannot drift; and
the user-facing texts cite it, not a document outside the repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.registry import CONNECTORS
from processors.normalize import airship
from processors.normalize.model import Channel, EventType, RejectReason, Vendor

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "events.md").read_text()


def _block(name: str) -> str:
    match = re.search(rf"<!-- {name}[^>]*-->\n(.*?)<!-- /{name} -->", DOC, re.DOTALL)
    assert match, f"docs/events.md has no <!-- {name} --> block"
    return match.group(1)


def _first_column(name: str) -> list[str]:
    rows = [line for line in _block(name).splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]  # type: ignore[union-attr]


def test_event_types_are_the_codes() -> None:
    assert _first_column("event_type") == [t.value for t in EventType]


def test_channels_are_the_codes() -> None:
    assert _first_column("channel") == [c.value for c in Channel]


def test_dead_letter_reasons_are_the_codes_in_order() -> None:
    listed = _first_column("reasons")
    assert listed[: len(RejectReason)] == [r.value for r in RejectReason]
    # The one reason a connector writes itself (connectors/objectstore), with its kind.
    assert listed[len(RejectReason) :] == ["unreadable_object:<kind>"]


def test_fields_are_the_schemas_in_order() -> None:
    schema = json.loads((ROOT / "schemas" / "avro" / "CanonicalEvent.avsc").read_text())
    assert _first_column("fields") == [f["name"] for f in schema["fields"]]
    vendor_row = next(r for r in _block("fields").splitlines() if r.startswith("| `vendor` "))
    assert re.findall(r"`([A-Z]+)`", vendor_row) == [v.value for v in Vendor]


def test_outcomes_and_skip_reasons_are_the_codes() -> None:
    assert _first_column("outcomes") == []  # plain words, checked below
    outcomes = [row.split("|")[1].strip() for row in _block("outcomes").splitlines()[2:]]
    assert outcomes == ["event", "dead letter", "duplicate", "skip"]
    skips = _block("outcomes").splitlines()[-1]
    for reason in (airship.OFFSET_UPDATE, airship.KEEPALIVE):
        assert f"reason `{reason}`" in skips, reason


def test_every_judgement_call_cited_is_listed_once() -> None:
    table = DOC[DOC.index("## Judgement calls") :]
    listed = re.findall(r"^\| (A-\d+) \|", table, re.MULTILINE)
    assert listed == [f"A-{n}" for n in range(1, len(listed) + 1)]
    cited = set(re.findall(r"\bA-\d+\b", DOC[: DOC.index("## Judgement calls")]))
    assert cited <= set(listed), cited - set(listed)


USER_TEXTS = [
    "README.md",
    "deploy/helm/crm-stream/README.md",
    "deploy/helm/crm-stream/values.yaml",
    "deploy/helm/crm-stream/values.schema.json",
    "deploy/helm/crm-stream/dashboards/crm-stream.json",
    "docs/events.md",
]


@pytest.mark.parametrize("path", USER_TEXTS)
def test_user_texts_cite_the_projects_own_reference(path: str) -> None:
    """They cited "TAXONOMY §1/§5/§6.3", a document outside the repository."""
    text = (ROOT / path).read_text()
    assert "TAXONOMY" not in text, path
    assert "§" not in text, path


def _help(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "crmcli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_help_texts_and_settings_cite_the_projects_own_reference() -> None:
    texts = [_help("settings")]
    for command in ("normalize", "decode", "worker", "demo", "topics"):
        texts.append(_help(command, "--help"))
    for name in CONNECTORS:
        texts.append(_help("connect", name, "--help"))
    for text in texts:
        assert "TAXONOMY" not in text and "§" not in text, text
    assert "docs/events.md" in _help("normalize", "--help")
