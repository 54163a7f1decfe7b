"""``crm-stream demo --workdir DIR`` empties only a folder a demo made (issue 22 item 6: it
deleted an unrelated file in DIR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmcli import main
from crmdemo.demo import WORKDIR_MARKER, prepare_workdir


def test_a_non_empty_folder_the_demo_did_not_make_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    code = main(["demo", "--once", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"crm-stream: invalid setting --workdir: {tmp_path} is not empty")
    assert mine.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(Exception, match="is not a folder"):
        prepare_workdir(path)
    assert path.read_text() == "x"


def test_a_new_or_empty_folder_is_marked_and_an_earlier_demos_is_emptied(tmp_path: Path) -> None:
    new = prepare_workdir(tmp_path / "new" / "demo")
    assert sorted(p.name for p in new.iterdir()) == [WORKDIR_MARKER]
    (new / "worker.log").write_text("from the last run")
    (new / "feeds" / "leanplum").mkdir(parents=True)
    (new / "feeds" / "leanplum" / "a.json").write_text("{}")
    again = prepare_workdir(new)
    assert sorted(p.name for p in again.iterdir()) == [WORKDIR_MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sorted(p.name for p in prepare_workdir(empty).iterdir()) == [WORKDIR_MARKER]
