"""The standby follower's apply step (``StandbyFollower._apply``) on a poll's records, without a
broker: the last value of each key per partition, the table's upgrade applied before records are
merged, tombstones, partitions interleaved in a poll, and the offset written with the data."""

from __future__ import annotations

import shutil
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


def _crash_image(db_path: Path, to: Path) -> dict[bytes, bytes]:
    """What a kill -9 would leave of an open store: its files as they are, opened elsewhere."""
    shutil.copytree(db_path, to)
    image = _db(to)
    try:
        return _contents(image)
    finally:
        image.close()


def test_a_crash_keeps_a_prefix_and_the_end_flushes_what_was_written(tmp_path: Path) -> None:
    """The follower's writes skip the write-ahead log: a crash image taken mid-follow holds
    neither a poll's data nor its offset (never the offset without the data), and once the
    follower has ended (its flush), both."""
    db = _db(tmp_path / "a")
    try:
        db.put(OFFSET_KEY, b"0")
        db.flush(True)
        follower = StandbyFollower(
            Settings.from_env({}), {("t", 0): Followed(1, db, None, OFFSET_KEY)}
        )
        assert follower._apply(
            [Message("t", 0, 1, b"k1", b"v1"), Message("t", 0, 2, b"k2", b"v2")], KafkaError
        )
        assert _contents(db) == {b"k1": b"v1", b"k2": b"v2", OFFSET_KEY: b"2"}
        assert _crash_image(tmp_path / "a", tmp_path / "mid") == {OFFSET_KEY: b"0"}
        follower.flush()
        assert follower.written == set()
        assert _crash_image(tmp_path / "a", tmp_path / "end") == {
            b"k1": b"v1",
            b"k2": b"v2",
            OFFSET_KEY: b"2",
        }
    finally:
        db.close()


def test_the_follower_flushes_when_its_thread_ends(tmp_path: Path) -> None:
    """``_run`` flushes whatever ended the following (here: it fails at once, no broker)."""
    db = _db(tmp_path / "a")
    try:
        follower = StandbyFollower(
            Settings.from_env({}), {("t", 0): Followed(None, db, None, OFFSET_KEY)}
        )
        follower.written.add(("t", 0))
        flushed: list[bool] = []
        follower._follow = lambda: (_ for _ in ()).throw(RuntimeError("no broker"))  # type: ignore[method-assign]
        follower.partitions[("t", 0)] = Followed(None, _Flushes(db, flushed), None, OFFSET_KEY)
        follower._run()
        assert isinstance(follower.failed, RuntimeError)
        assert flushed == [True]
    finally:
        db.close()


class _Flushes:
    def __init__(self, db: rocksdict.Rdict, flushed: list[bool]) -> None:
        self.db, self.flushed = db, flushed

    def flush(self, wait: bool) -> None:
        self.flushed.append(wait)
        self.db.flush(wait)
