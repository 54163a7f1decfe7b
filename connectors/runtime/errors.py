"""The one error taxonomy of the connectors (as Meltano SDK's Fatal/Retriable/Skippable).

What a source raises says what the runner does next:

* :class:`FatalSourceError`: waiting cannot fix it (credentials refused, a missing bucket or
  stream, a request the vendor rejects). The run stops; ``crm-stream`` prints one line, exit 1.
* :class:`RetriableSourceError`: the vendor or the network failed for now (throttling, a 5xx,
  a cut connection, an idle stream). The runner backs off (:mod:`.backoff`) and the source goes
  on from its last checkpoint. ``kind`` is the bounded ``crm_connector_errors_total`` label.
* :class:`SkippableError`: one piece of the source cannot be read (a truncated or corrupt
  object). It becomes one ``dead-letter`` record with its ``reason`` and ``source_position``
  before the position past it is checkpointed, and the feed goes on.

A bad *record* is none of these: it is published unchanged (key None when it has no id) and the
worker dead-letters it with the rest of the vendor's validation.
"""

from __future__ import annotations

from crmstream.errors import CrmStreamError


class SourceFailure(CrmStreamError):
    """Base of the taxonomy; ``kind`` is a bounded metric label."""

    kind = "source"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class FatalSourceError(SourceFailure):
    """Stop the connector: retrying cannot fix it."""

    kind = "fatal"


class RetriableSourceError(SourceFailure):
    """Back off and go on from the last checkpoint."""

    kind = "transient"


class SkippableError(Exception):
    """One unreadable piece of the source, for the dead-letter topic: ``reason`` (bounded, e.g.
    ``unreadable_object:truncated``) and where reading stopped (``source_position``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
