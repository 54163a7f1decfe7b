"""Airship Real-Time Data Streaming (RTDS) source connector: ``crm-stream connect airship``.

RTDS is one endless NDJSON response to a ``POST`` (TAXONOMY §7, seed 004). Nothing may be lost
across disconnects, restarts or bad requests, so the connector:

* publishes every non-empty line, unchanged, to ``raw.airship`` keyed by the event ``id``;
* checkpoints, in ``connect-offsets``, only the highest offset that Kafka acknowledged together
  with every event before it in stream order, and resumes from it with ``resume_offset``;
* closes and reconnects from that checkpoint after any disconnect, and after ``idle_timeout``
  (90 s, "If you receive no data or new line characters for ninety seconds, close the connection
  and reconnect"), with exponential back-off and jitter;
* on a 307, re-POSTs the same body with the response's cookies to its ``Location`` when that is
  on the same scheme, host and port, else to the same URL, as Airship's own client does ([X8]);
* stops with a clear error on 400/401/403, which retrying cannot fix.

The configuration is validated before the first connection (an empty filter array, an unknown
field or a PARTITION selection not below its count would only earn a 400 later).

The package, split by responsibility: :mod:`.filters` (filter and subset validation),
:mod:`.settings`, :mod:`.source` (the stream, a source of the connectors' runner, which owns
publish -> flush -> checkpoint) and :mod:`.cli`. :mod:`.offsets` (a per-record acknowledgement
tracker) is what the connector checkpointed with before it ran on the runner.
"""

from connectors.airship.settings import AirshipSettings
from connectors.airship.source import AirshipConnector, AirshipError, RunStats

__all__ = ["AirshipConnector", "AirshipError", "AirshipSettings", "RunStats"]
