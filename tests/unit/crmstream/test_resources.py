"""Files read at run time come from the wheel's copy when there is one, else from the checkout;
the Tansu dev profile has one source, config/tansu-dev.env (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmstream import resources
from crmstream.errors import CrmStreamError
from crmstream.resources import SCHEMAS, TANSU_DEV_PROFILE, read_env_file, shipped_path

REPO = Path(__file__).resolve().parents[3]


def test_a_checkout_reads_the_repository_files() -> None:
    assert shipped_path(SCHEMAS) == REPO / "schemas" / "avro"
    assert shipped_path(TANSU_DEV_PROFILE) == REPO / "config" / "tansu-dev.env"


def test_the_copy_a_wheel_ships_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "tansu-dev.env").write_text("# shipped\nCRM_X = 1\n\nCRM_Y=a=b\n")
    monkeypatch.setattr(resources, "SHIPPED", tmp_path)
    assert resources.tansu_dev_profile() == {"CRM_X": "1", "CRM_Y": "a=b"}
    assert shipped_path(SCHEMAS) == REPO / "schemas" / "avro"  # not shipped there: the checkout


def test_a_missing_file_names_both_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(resources, "SHIPPED", tmp_path / "a")
    monkeypatch.setattr(resources, "CHECKOUT", tmp_path / "b")
    with pytest.raises(CrmStreamError, match="reinstall"):
        shipped_path(SCHEMAS)


def test_the_tests_and_the_demo_use_the_one_profile() -> None:
    from tests.conftest import TANSU_DEV

    profile = read_env_file(REPO / "config" / "tansu-dev.env")
    assert profile == TANSU_DEV
    assert profile["CRM_CONSUMER_SESSION_TIMEOUT"] == "2s"
