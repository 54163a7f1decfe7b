"""The build and the Makefile, as a new user meets them (issue 22 item 13)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from connectors.segment import SegmentSettings
from crmstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_license_is_an_spdx_string_so_setuptools_does_not_warn() -> None:
    """``license = { text = ... }`` made setuptools warn twice per build (deprecated table form);
    the SPDX string needs setuptools 77 or later in the build requirements."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    requires = pyproject["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    assert setuptools == "setuptools>=77", setuptools


def test_web_preview_does_not_take_a_port_crm_stream_uses_by_default() -> None:
    """``make web-preview`` listened on 8088, the Segment receiver's default port."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^web-preview:.*\n\t(.*)$", makefile, re.MULTILINE)
    assert recipe is not None
    port = int(re.search(r"--port (\d+)", recipe.group(1)).group(1))  # type: ignore[union-attr]
    defaults = {SegmentSettings.__dataclass_fields__["port"].default, Settings().api_port}
    assert port not in defaults, (port, defaults)
    assert f"http://127.0.0.1:{port}/" in makefile
    assert f"http://127.0.0.1:{port}/" in (ROOT / "README.md").read_text()
