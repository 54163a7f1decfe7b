"""The standby follower's apply step (``StandbyFollower._apply``) on a poll's records, without a
broker: the last value of each key per partition, the table's upgrade applied before records are
merged, tombstones, partitions interleaved in a poll, and the offset written with the data."""

from __future__ import annotations

from pathlib import Path

import rocksdict
from confluent_kafka import KafkaError

from crmstream.settings import Settings
from processors.standby import Followed, StandbyFollower

OFFSET_KEY = b"__offset__"


class Message:
    """What ``Consumer.consume`` returns, as far as the follower reads it."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes | None):
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value = key, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value


def _db(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))


def _contents(db: rocksdict.Rdict) -> dict[bytes, bytes]:
    return dict(db.items())


def test_a_poll_is_applied_as_the_last_value_of_each_key_with_its_offset(tmp_path: Path) -> None:
    a, b = _db(tmp_path / "a"), _db(tmp_path / "b")

    def upgrade(key: bytes, value: bytes | None) -> tuple[bytes, bytes | None]:
        # An earlier layout's key ("old-") and the current one name the same record.
        return key.removeprefix(b"old-"), value

    try:
        follower = StandbyFollower(
            Settings.from_env({}),
            {
                ("t", 0): Followed(None, a, None, OFFSET_KEY),
                ("u", 1): Followed(5, b, upgrade, OFFSET_KEY),
            },
        )
        a.put(b"gone", b"before")
        poll = [
            Message("t", 0, 0, b"k1", b"v1"),
            Message("t", 0, 1, b"k2", b"v2"),
            Message("u", 1, 5, b"old-m", b"first"),
            Message("u", 1, 6, b"n", b"x"),
            Message("t", 0, 2, b"k1", b"v1b"),  # overwritten
            Message("t", 0, 3, b"gone", None),  # a tombstone of a stored key
            Message("t", 0, 4, b"k2", None),  # written, then deleted in the same poll
            Message("u", 1, 7, b"m", b"second"),  # the upgraded key of offset 5, written again
            Message("u", 1, 8, b"old-m", b"third"),  # and once more in the earlier layout
            Message("u", 1, 9, b"old-n", None),  # deletes "n"
            Message("t", 0, 5, b"k3", b"v3"),
        ]
        assert follower._apply(poll, KafkaError)
        assert follower.records == len(poll)
        assert follower.applied == {("t", 0): 5, ("u", 1): 9}
        assert _contents(a) == {b"k1": b"v1b", b"k3": b"v3", OFFSET_KEY: b"5"}
        assert _contents(b) == {b"m": b"third", OFFSET_KEY: b"9"}

        # A stop asked before the writes: nothing is written, and the poll is not counted.
        follower.stop()
        assert not follower._apply([Message("t", 0, 6, b"k4", b"v4")], KafkaError)
        assert _contents(a) == {b"k1": b"v1b", b"k3": b"v3", OFFSET_KEY: b"5"}
        assert follower.records == len(poll)
    finally:
        a.close()
        b.close()
