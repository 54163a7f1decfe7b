"""Object-store source: vendor event files in S3 (or a local folder) -> the vendor's raw topic.

One source serves every file feed; what differs per vendor is its
:class:`~connectors.feeds.FeedProfile`. The guarantees (issue 3):

* Nothing is lost. Every record of an object is published and acknowledged before the object's
  checkpoint (ETag, size, rows done) is written to ``connect-offsets``; a restarted connector
  resumes mid-file at the last checkpoint. Records between two checkpoints may be published
  twice, and the worker's event-id dedupe absorbs that.
* Late files are found. The first pass lists the whole prefix; later passes re-list the last
  ``late_days`` date partitions before the newest one seen (the Leanplum document says events
  near midnight can land in the neighbouring ``dt=`` folder) and everything after it. An object
  whose ETag changed is ingested again from its first row.
* A bad object never stops the feed or loops. Whatever was readable is published; the object is
  checkpointed as failed with the error (so it is retried only when its ETag changes), counted
  and logged by name. Missing buckets and denied access are configuration errors and are not
  retried; throttling and 5xx are retried with backoff by botocore.
* Parquet is streamed by row group through ranged reads: a 2-million-row Leanplum file is never
  held in memory.

The package, split by responsibility (as Quix Streams splits its file source): :mod:`.settings`,
:mod:`.errors`, :mod:`.stores` (S3, local), :mod:`.formats` (JSON lines, JSON array, Parquet),
:mod:`.compressions`, :mod:`.reader` (sniffing an object), :mod:`.source` (the loop) and
:mod:`.cli`.
"""

from connectors.objectstore.errors import (
    ObjectChangedError,
    ObjectReadError,
    SourceError,
    TransientSourceError,
)
from connectors.objectstore.reader import ObjectReader
from connectors.objectstore.settings import ObjectStoreSettings
from connectors.objectstore.source import ObjectStoreSource, PassStats
from connectors.objectstore.stores import LocalStore, ObjectInfo, S3Store

__all__ = [
    "LocalStore",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectReadError",
    "ObjectReader",
    "ObjectStoreSettings",
    "ObjectStoreSource",
    "PassStats",
    "S3Store",
    "SourceError",
    "TransientSourceError",
]
