"""The connector registry: ``crm-stream connect NAME`` looks connectors up here.

Each entry maps a connector name to a callable that builds its ``argparse`` options and runs it.
Explicit entries, no import side effects: a new connector is one more line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from crmstream.settings import Settings


@dataclass(frozen=True)
class ConnectorEntry:
    name: str
    vendor: str
    doc: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]


CONNECTORS: dict[str, ConnectorEntry] = {}
