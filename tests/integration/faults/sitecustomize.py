"""Test-only fault injection, loaded by a worker process whose PYTHONPATH starts with this folder.

``CRM_TEST_DROP=<topic suffix>:<partition>:<first>:<last>`` makes the worker's consumer (Faust's,
or the librdkafka reader) silently drop the records at offsets first..last of that partition the
first time they are fetched, after its fetch position has moved past them: the failure issue 11
traced (records of paused partitions handed over and discarded). The worker must notice and read
them again.
"""

from __future__ import annotations

import os
from typing import Any

_SPEC = os.environ.get("CRM_TEST_DROP", "")

if _SPEC:
    from faust.transport.consumer import Consumer

    _suffix, _partition, _first, _last = _SPEC.rsplit(":", 3)
    _dropped: set[int] = set()
    _getmany = Consumer.getmany

    async def _dropping_getmany(self: Any, timeout: float) -> Any:
        async for tp, message in _getmany(self, timeout):
            if (
                tp.topic.endswith(_suffix)
                and tp.partition == int(_partition)
                and int(_first) <= message.offset <= int(_last)
                and message.offset not in _dropped
            ):
                _dropped.add(message.offset)
                if len(_dropped) == 1:
                    print(f"FAULT: dropping {_SPEC}", flush=True)
                continue
            yield tp, message

    Consumer.getmany = _dropping_getmany  # type: ignore[method-assign]

    # The librdkafka reader (CRM_STREAM_READER=librdkafka): the same records dropped from the
    # batches it hands over, its position already past them.
    from processors.reader import Reader

    _get = Reader.get

    async def _dropping_get(self: Any) -> Any:
        records = await _get(self)
        kept = []
        for record in records:
            if (
                record.topic.endswith(_suffix)
                and record.partition == int(_partition)
                and int(_first) <= record.offset <= int(_last)
                and record.offset not in _dropped
            ):
                _dropped.add(record.offset)
                if len(_dropped) == 1:
                    print(f"FAULT: dropping {_SPEC}", flush=True)
                continue
            kept.append(record)
        return kept

    Reader.get = _dropping_get  # type: ignore[method-assign]
