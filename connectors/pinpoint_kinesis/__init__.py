"""Amazon Pinpoint event stream on Kinesis Data Streams: ``crm-stream connect pinpoint-kinesis``.

Pinpoint writes one JSON object per Kinesis record (TAXONOMY §6.2, seed 001). Each record goes to
the raw topic unchanged, keyed by the synthetic event id of [A-10]
(:func:`processors.normalize.pinpoint.vendor_event_id`); a record that is not a JSON object, or
has no ``client.client_id``, is still published, with key None, so the worker dead-letters it.

"Nothing is lost" (connectors/runtime/runner.py) on Kinesis means:

* a shard's sequence number is checkpointed in ``connect-offsets`` only after Kafka acknowledged
  every record up to it; a restart resumes with ``AFTER_SEQUENCE_NUMBER`` (at least once);
* after a reshard, a child shard is read only once each parent is drained: SHARD_END reached
  and checkpointed. Records of one partition key then reach Kafka in the order Kinesis holds
  them, parent first;
* shards are rediscovered with ListShards on an interval (and at once when a shard ends), and
  a shard that appears after the first start is read from TRIM_HORIZON, because everything in
  it was written after the reshard and has not been read;
* ``LATEST`` and ``AT_TIMESTAMP`` apply to the shards of the very first start only; the start
  time is checkpointed before reading, so a restart before the first record resumes from it.
* a shard ListShards no longer lists (a closed shard past the stream's retention) is never read
  again: its ``connect-offsets`` key is deleted with a tombstone, so the compacted topic holds
  the stream's current shards, not every shard of every reshard.

AWS credentials and region come from boto3's own chain (``AWS_*`` variables, shared files,
instance roles), never from the command line.

The package, split by responsibility: :mod:`.settings`, :mod:`.source` (shards, discovery,
GetRecords: a :class:`connectors.runtime.runner.Source`) and :mod:`.cli`; publishing, flushing,
checkpointing, back-off after Kafka failures and health belong to the runner.
"""

from connectors.pinpoint_kinesis.settings import CONNECTOR, VENDOR, KinesisSettings
from connectors.pinpoint_kinesis.source import KinesisSource, RunStats

__all__ = ["CONNECTOR", "VENDOR", "KinesisSettings", "KinesisSource", "RunStats"]
