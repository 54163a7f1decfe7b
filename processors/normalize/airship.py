"""AIRSHIP normalizer (TAXONOMY.md §6). Placeholder: being written."""

from __future__ import annotations

from processors.normalize.model import NormalizeContext, Outcome, Rejected, RejectReason


def normalize(raw: bytes, ctx: NormalizeContext) -> Outcome:
    return Rejected(RejectReason.INVALID_JSON, "normalizer not implemented yet")
