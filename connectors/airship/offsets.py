"""Which Airship offset may be checkpointed: the highest one Kafka acknowledged together with
every event before it in stream order."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass
class _Slot:
    offset: str | None
    acked: bool = False


class OffsetTracker:
    """The highest offset whose own record and every earlier one are acknowledged by Kafka.

    Offsets are opaque strings (TAXONOMY §4: numeric-looking, base64-like, even negative), so
    "highest" means latest in stream order: slots queue in read order and the position advances
    over the acknowledged prefix. Delivery callbacks may run on librdkafka's flush thread, hence
    the lock.
    """

    def __init__(self, position: str | None = None) -> None:
        self.position = position
        self._pending: deque[_Slot] = deque()
        self._lock = threading.Lock()

    def add(self, offset: str | None) -> _Slot:
        """Queue a published record; ``offset`` None for a line whose offset is unknown."""
        slot = _Slot(offset)
        with self._lock:
            self._pending.append(slot)
        return slot

    def ack(self, slot: _Slot) -> None:
        with self._lock:
            slot.acked = True
            self._advance()

    def mark(self, offset: str) -> None:
        """An OFFSET_UPDATE: nothing to publish, so the position may move to it once every
        record before it is acknowledged (TAXONOMY §7: its offset may be checkpointed)."""
        with self._lock:
            self._pending.append(_Slot(offset, acked=True))
            self._advance()

    def _advance(self) -> None:
        while self._pending and self._pending[0].acked:
            slot = self._pending.popleft()
            if slot.offset is not None:
                self.position = slot.offset

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def reset(self) -> int:
        """Forget unacknowledged records (their publish failed); the stream is re-read from
        :attr:`position`. Returns how many were dropped. Late acks land on orphaned slots."""
        with self._lock:
            dropped = len(self._pending)
            self._pending = deque()
        return dropped
