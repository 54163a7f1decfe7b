"""Segment webhook receiver: ``crm-stream connect segment``.

Segment's Webhooks destination pushes each event (or a JSON array of them when batching is on)
as an HTTP POST and retries on any non-2xx answer. So the receiver answers 200 only once Kafka
has acknowledged every event of the request, and 503 when Kafka cannot take them: a lost event
is then Segment's retry, never a silent drop. Duplicates from those retries share ``messageId``,
the raw-topic key, and the worker's dedupe absorbs them (TAXONOMY §5, [X5]).

Authenticity follows TAXONOMY §6.3 / [X6]: with a shared secret configured, ``X-Signature`` (or
the newer ``X-Segment-Signature``) must be the lowercase hex HMAC-SHA1 of the raw body, checked
on the raw bytes before any parsing and in constant time.

How it fits the connectors' runner (:mod:`connectors.runtime.runner`): Segment pushes, so there
is no ``next_batch`` to call; each request is the batch and its answer is the checkpoint. The
receiver publishes a request's events through the same
:class:`~connectors.runtime.kafka.RawPublisher`, answers 200 only after Kafka acknowledged every
one of them (the runner's "checkpoint after acknowledgement"), and 503 otherwise, which makes
Segment send it again (the runner's rewind). Health (the same Kafka watch), the stop on
SIGINT/SIGTERM (:mod:`connectors.runtime.stop`) and the error kinds are the runner's; what is
its own is HTTP (signatures, sizes, shapes: 4xx answers, never published).

The package, split by responsibility: :mod:`.settings`, :mod:`.source` (the receiver) and
:mod:`.cli`.
"""

from connectors.segment.settings import CONNECTOR, VENDOR, SegmentSettings
from connectors.segment.source import (
    BackgroundReceiver,
    Reject,
    SegmentReceiver,
    signature,
    split_events,
)

__all__ = [
    "CONNECTOR",
    "VENDOR",
    "BackgroundReceiver",
    "Reject",
    "SegmentReceiver",
    "SegmentSettings",
    "signature",
    "split_events",
]
