"""``processors.normalize.normalize``: the one entry point the worker and the CLI call."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from processors.normalize import ERROR_DETAIL_CHARS, NORMALIZERS, normalize
from processors.normalize.model import (
    CanonicalEvent,
    NormalizeContext,
    Outcome,
    Rejected,
    RejectReason,
)

CTX = NormalizeContext()
LEANPLUM = (
    b'{"event_id":"x1","name":"(Leanplum) Email Send","properties":'
    b'{"time":"2026-11-29 10:00:00.000","channel":"Email","event_type":"Send"}}'
)


def raising(exc: BaseException) -> object:
    def normalizer(raw: bytes, ctx: NormalizeContext) -> Outcome:
        raise exc

    return normalizer


def test_a_normalizer_result_is_passed_through() -> None:
    assert normalize("leanplum", LEANPLUM, CTX) == NORMALIZERS["leanplum"](LEANPLUM, CTX)
    assert isinstance(normalize("leanplum", LEANPLUM, CTX), CanonicalEvent)


def test_a_normalizer_bug_is_a_normalizer_error_dead_letter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(NORMALIZERS, "leanplum", raising(ZeroDivisionError("division by zero")))
    with caplog.at_level(logging.ERROR, logger="processors.normalize"):
        outcome = normalize("leanplum", LEANPLUM, CTX)
    assert outcome == Rejected(RejectReason.NORMALIZER_ERROR, "ZeroDivisionError: division by zero")
    (entry,) = caplog.records
    assert entry.levelno == logging.ERROR
    assert entry.exc_info is not None and entry.exc_info[0] is ZeroDivisionError
    assert entry.__dict__["vendor"] == "leanplum"


@pytest.mark.parametrize("exc", [RecursionError("deep"), TypeError("x"), KeyError("k")])
def test_every_exception_is_caught(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    monkeypatch.setitem(NORMALIZERS, "pinpoint", raising(exc))
    outcome = normalize("pinpoint", b"{}", CTX)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is RejectReason.NORMALIZER_ERROR
    assert outcome.detail.startswith(type(exc).__name__ + ": ")


def test_the_detail_is_short_and_valid_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(NORMALIZERS, "segment", raising(ValueError("\ud800" + "x" * 10_000)))
    outcome = normalize("segment", b"{}", CTX)
    assert isinstance(outcome, Rejected)
    assert len(outcome.detail) < ERROR_DETAIL_CHARS + 40
    assert outcome.detail.startswith("ValueError: \\ud800xxx")
    outcome.detail.encode("utf-8")  # an Avro string


def test_an_exception_whose_message_fails_still_gives_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    monkeypatch.setitem(NORMALIZERS, "airship", raising(Broken()))
    assert normalize("airship", b"{}", CTX) == Rejected(
        RejectReason.NORMALIZER_ERROR, "Broken: <message unavailable>"
    )


def test_memory_error_is_not_a_record_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(NORMALIZERS, "flarelane", raising(MemoryError()))
    with pytest.raises(MemoryError):
        normalize("flarelane", b"{}", CTX)


def test_an_unknown_vendor_is_the_callers_bug() -> None:
    with pytest.raises(KeyError):
        normalize("braze", b"{}", CTX)


def test_reject_reasons() -> None:
    """TAXONOMY §5's four, in check order, then the pipeline's."""
    assert [r.value for r in RejectReason] == [
        "invalid_json",
        "missing_event_id",
        "missing_event_type",
        "invalid_timestamp",
        "normalizer_error",
        "too_large",
        "invalid_stats_update",
        "missing_user_id",
        "invalid_conversion",
        "invalid_attribution_input",
    ]


def test_every_reason_is_documented_once_in_the_readme_and_the_schema() -> None:
    """README's "Dead-letter reasons" table and DeadLetter.avsc's ``reason`` doc name every
    reason, and no other."""
    repo = Path(__file__).resolve().parents[4]
    readme = (repo / "README.md").read_text()
    section = readme.split("## Dead-letter reasons\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert rows == [r.value for r in RejectReason]

    schema = json.loads((repo / "schemas" / "avro" / "DeadLetter.avsc").read_text())
    (doc,) = (f["doc"] for f in schema["fields"] if f["name"] == "reason")
    named = set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", doc))
    assert named == {r.value for r in RejectReason}
