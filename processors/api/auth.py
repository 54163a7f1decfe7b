"""Bearer-token authentication of the query API (``CRM_API_TOKEN``, issue 23 item 4).

A request to ``/api/...`` or ``/internal/...`` must carry ``Authorization: Bearer <token>`` with
one of the configured tokens; without it, or with another, it gets a 401 and no data. A token may
be restricted to some ``app_id`` values: it then lists, and opens, only those apps' campaigns
(another app's campaign is a 404, as if it did not exist). No token configured: the API is open,
as the demo needs.

The page (``/``, ``/static/...``) holds no figures and stays open: it asks for the token and
sends it with every API request. The probes and metrics are served on the metrics port
(``CRM_METRICS_PORT``), not here, and need no token.

A worker that forwards a request to the worker owning a campaign (``processors.stats_api``)
sends the caller's own ``Authorization`` (:func:`forwarded_headers`), so the owner applies the
same token and the same restriction.

Tokens are compared in constant time (:func:`hmac.compare_digest`, every configured token
tried) and never logged: they stay :class:`~crmstream.settings.Secret` until compared.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from crmstream.settings import Secret

PROTECTED = ("/api/", "/internal/")
"""Paths that need a token: everything that answers with figures."""

_AUTHORIZATION: ContextVar[str | None] = ContextVar("crm_api_authorization", default=None)


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authenticated caller may read: ``app_ids`` None is every app."""

    app_ids: frozenset[str] | None = None


OPEN = Grant()


class Tokens:
    """The configured tokens (:meth:`crmstream.settings.Settings.api_grants`)."""

    def __init__(self, grants: Sequence[tuple[Secret, frozenset[str] | None]] = ()) -> None:
        self._grants = [(secret.get().encode(), Grant(apps)) for secret, apps in grants]

    @property
    def required(self) -> bool:
        return bool(self._grants)

    def __repr__(self) -> str:
        return f"Tokens({len(self._grants)} configured)"

    def check(self, authorization: str | None) -> Grant | None:
        """The grant of an ``Authorization`` header, None when it names no configured token.
        Every token is compared, in constant time, whichever matches."""
        if not self._grants:
            return OPEN
        scheme, _, credentials = (authorization or "").partition(" ")
        given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
        found: Grant | None = None
        for token, grant in self._grants:
            if hmac.compare_digest(token, given) and found is None:
                found = grant
        return found


def set_forwarded(authorization: str | None) -> object:
    """Remember the request's ``Authorization`` for the requests it leads to (a context
    variable: it follows the request's task and the tasks it gathers)."""
    return _AUTHORIZATION.set(authorization)


def reset_forwarded(token: object) -> None:
    _AUTHORIZATION.reset(token)  # type: ignore[arg-type]


def forwarded_headers() -> dict[str, str]:
    """The headers a worker adds to a request it forwards on behalf of the current caller."""
    value = _AUTHORIZATION.get()
    return {"Authorization": value} if value else {}
