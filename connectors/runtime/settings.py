"""Connector settings classes built from ``CRM_*`` variables and command-line options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from crmstream.settings import values_from_env

_S = TypeVar("_S")


def settings_from_env(
    cls: type[_S], environ: Mapping[str, str] | None = None, **overrides: Any
) -> _S:
    """Build a connector's frozen settings class (fields declared with
    :func:`crmstream.settings.setting`) from ``CRM_*`` variables.

    ``overrides`` are command-line values; ``None`` means "not given", so the variable or the
    default applies. Parse errors raise :class:`ConfigError` naming the variable; the class's own
    ``__post_init__`` checks the combination.
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    given = {
        name: value for name, value in overrides.items() if name in names and value is not None
    }
    values = values_from_env(cls, environ, skip=given)
    values.update(given)
    return cls(**values)
