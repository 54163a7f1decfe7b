"""The connector registry: ``crm-stream connect NAME`` looks connectors up here.

Each entry maps a connector name to a callable that builds its ``argparse`` options and runs it.
Explicit entries, no import side effects: a new connector is one more line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from connectors import feeds
from connectors.airship import cli as airship
from connectors.feeds import FeedProfile
from connectors.objectstore import cli as objectstore
from connectors.pinpoint_kinesis import cli as pinpoint_kinesis
from connectors.runtime.kafka import KeyFunction
from connectors.runtime.process import as_process
from connectors.segment import cli as segment
from crmstream.settings import Settings


@dataclass(frozen=True)
class ConnectorEntry:
    name: str
    vendor: str
    doc: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # The vendor's event-id function is the caller's (the CLI's) to give: see KeyFunction.
    run: Callable[[argparse.Namespace, Settings, KeyFunction], int]


CONNECTORS: dict[str, ConnectorEntry] = {}


def _feed(profile: FeedProfile) -> ConnectorEntry:
    """An object-store feed (issue 3): one profile in connectors/feeds.py, one shared source."""
    return ConnectorEntry(
        name=profile.connector,
        vendor=profile.vendor,
        doc=profile.doc,
        add_arguments=partial(objectstore.add_arguments, profile),
        run=as_process(partial(objectstore.run, profile)),
    )


CONNECTORS["leanplum"] = _feed(feeds.LEANPLUM)
CONNECTORS["flarelane"] = _feed(feeds.FLARELANE)
CONNECTORS["pinpoint-firehose"] = _feed(feeds.PINPOINT_FIREHOSE)
CONNECTORS["segment"] = ConnectorEntry(
    name="segment",
    vendor="segment",
    doc="Segment webhook receiver: 200 only after Kafka acknowledged the request's events",
    add_arguments=segment.add_arguments,
    run=as_process(lambda args, settings, _key_of: segment.run(args, settings)),
)
CONNECTORS["pinpoint-kinesis"] = ConnectorEntry(
    name="pinpoint-kinesis",
    vendor="pinpoint",
    doc="Pinpoint events on Kinesis: parent shards before children, checkpoint after Kafka acks",
    add_arguments=pinpoint_kinesis.add_arguments,
    run=as_process(pinpoint_kinesis.run),
)
CONNECTORS["airship"] = ConnectorEntry(
    name="airship",
    vendor="airship",
    doc="Airship Real-Time Data Streaming: resumable NDJSON stream, checkpoint after Kafka acks",
    add_arguments=airship.add_arguments,
    run=as_process(lambda args, settings, _key_of: airship.run(args, settings)),
)
