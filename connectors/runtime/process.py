"""A connector as a process: the stop signals, and what a stop means for the exit code."""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from connectors.runtime.stop import PROCESS_STOP, STOP_EXIT_CODE, install_stop_signals
from crmstream.errors import ConfigError, CrmStreamError

log = logging.getLogger(__name__)

_R = TypeVar("_R", bound=Callable[..., int])


def as_process(run: _R) -> _R:
    """Wrap a connector's ``run(args, settings, ...)`` for ``crm-stream connect``: SIGINT and
    SIGTERM stop it within seconds (:mod:`connectors.runtime.stop`), and once a stop was asked
    a Kafka error on the way out (the broker away during the final flush) is the expected end,
    exit :data:`STOP_EXIT_CODE`, not a failure: nothing unacknowledged was checkpointed."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace, *rest: object) -> int:
        install_stop_signals()
        try:
            return int(run(args, *rest) or 0)
        except ConfigError:
            raise
        except CrmStreamError as exc:
            if not PROCESS_STOP.is_set():
                raise
            log.warning("stopped: %s", exc)
            return STOP_EXIT_CODE

    return wrapped  # type: ignore[return-value]
