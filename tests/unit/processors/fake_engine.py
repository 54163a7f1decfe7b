"""A fake :class:`processors.engine.Engine` and the worker's other collaborators (outputs, broker
probe), so that the orchestration (placement, gap repair, in-flight batches, read-back, the stats
path) runs in a unit test without a broker or Faust.

Tables are real RocksDB databases (rocksdict) under a temporary directory: the key layout and
range deletes are what the worker relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from processors.app import build_stats
from processors.engine import Event, Positions, SeekError
from processors.outputs import DeadLetters, Headers, Offsets
from processors.positioning import Floors, Positioning
from processors.positions import TP, TopicPartition
from processors.raw import RawPath, StatsPartitions
from processors.records import RawPosition
from processors.state.table import LocalStore, WindowedTable
from processors.stats_path import StatsPath


@dataclass(frozen=True)
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float = 1_780_000_000.0
    headers: Any = ()

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True)
class FakeEvent:
    message: FakeMessage


FakeStore = LocalStore  # a table store on real RocksDB databases


class FakeFatal(Exception):
    """What ``fatal`` raises here instead of exiting the process."""


@dataclass
class FakeEngine:
    assigned: set[TP] = field(default_factory=set)
    committed_offsets: dict[TP, int] = field(default_factory=dict)
    highwaters: dict[TP, int] = field(default_factory=dict)
    seeks: list[dict[TP, int]] = field(default_factory=list)
    held: list[Event] = field(default_factory=list)
    released: list[Event] = field(default_factory=list)
    fatal_errors: list[tuple[BaseException, str]] = field(default_factory=list)
    seek_error: Exception | None = None
    is_settled: bool = True
    is_rebalancing: bool = False
    positions: Positions | None = None

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def settled(self) -> tuple[bool, str]:
        return (True, "settled") if self.is_settled else (False, "rebalancing")

    def rebalancing(self) -> bool:
        return self.is_rebalancing

    def committed(self, tp: TP) -> int | None:
        return self.committed_offsets.get(tp) or None

    async def seek(self, offsets: Mapping[TP, int]) -> None:
        if self.seek_error is not None:
            raise SeekError(str(self.seek_error)) from self.seek_error
        self.seeks.append(dict(offsets))

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters.get(tp)

    def hold(self, events: Iterable[Event]) -> None:
        self.held.extend(events)

    def release(self, events: Iterable[Event]) -> None:
        for event in events:
            self.held.remove(event)
            self.released.append(event)

    def fatal(self, exc: BaseException, what: str) -> None:
        self.fatal_errors.append((exc, what))

    def set_positions(self, positions: Positions) -> None:
        self.positions = positions


class FakeOutputs:
    """Records sent, with offsets per partition; ``gate`` holds every acknowledgement back
    until it is set."""

    def __init__(self, partitions: int = 2) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None, Headers | None]] = []
        self.changelog: list[tuple[str, int, bytes, bytes | None]] = []
        self.next_offset: dict[tuple[str, int], int] = {}
        self.pending: Offsets = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.n_partitions = partitions
        self.started = False

    async def start(self) -> None:
        self.started = True

    def _offset(self, topic: str, partition: int) -> None:
        offset = self.next_offset.get((topic, partition), 0)
        self.next_offset[topic, partition] = offset + 1
        self.pending[topic, partition] = offset

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.sent.append((topic, key, value, partition, headers))
        self._offset(topic, partition or 0)

    def partitions(self, topic: str) -> int:
        return self.n_partitions

    def send_changelog(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.changelog.append((topic, partition, key, value))
        self._offset(topic, partition)

    def seal(self) -> asyncio.Future[Offsets]:
        offsets, self.pending = self.pending, {}

        async def acked() -> Offsets:
            await self.gate.wait()
            return offsets

        return asyncio.ensure_future(acked())

    def alive(self) -> tuple[bool, str]:
        return True, "alive"

    def reachable(self, timeout: float = 3.0) -> tuple[bool, str]:
        return True, "reachable"

    def close(self) -> int:
        return 0

    def topics(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(key, value) for t, key, value, _, _ in self.sent if t == topic]


@dataclass
class FakeProbe:
    """The broker as the worker asks it: first offsets, ends, the first record at or after an
    offset, and the outputs an earlier run wrote (``landed``)."""

    first_offsets: dict[TP, int] = field(default_factory=dict)
    records: dict[TP, list[int]] = field(default_factory=dict)  # offsets that hold a record
    landed: dict[TopicPartition, set[int]] = field(default_factory=dict)
    read_backs: list[tuple[dict[TopicPartition, int], dict[TopicPartition, int]]] = field(
        default_factory=list
    )

    def starts(self, tps: Iterable[TP]) -> dict[TP, int]:
        return {tp: self.first_offsets.get(tp, 0) for tp in tps}

    def ends(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    def first_offset(self, tp: TP, offset: int) -> int | None:
        return min((o for o in self.records.get(tp, ()) if o >= offset), default=None)

    def read_back(
        self, floors: Mapping[TopicPartition, int], positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, set[int]]:
        self.read_backs.append((dict(floors), dict(positions)))
        return {
            tp: {o for o in self.landed.get(TopicPartition(tp.topic, tp.partition), ()) if o >= p}
            for tp, p in positions.items()
        }


class Parts:
    """The worker's parts as :class:`processors.app.Worker` wires them, on the fakes."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        # Every batch writes the windows it touched (CRM_STATS_FLUSH_INTERVAL=0) unless a test
        # asks for write-behind (tests/unit/processors/test_write_behind.py).
        self.settings = Settings.from_env(
            {
                "CRM_DATA_DIR": str(root / "data"),
                "CRM_PARTITIONS": "2",
                "CRM_STATS_FLUSH_INTERVAL": "0",
                **(env or {}),
            }
        )
        settings = self.settings
        self.engine = FakeEngine()
        self.outputs = FakeOutputs()
        self.probe = FakeProbe()
        self.serde = AvroSerde(settings)
        self.raw_topic = settings.topic("raw.segment")
        self.stats_topic = settings.topic("stats-updates")
        self.dedupe = WindowedTable(
            FakeStore(root / "dedupe", "dedupe-changelog"),
            size_ms=int(settings.dedupe_window_s * 1000),
            keep_ms=int(2 * settings.dedupe_window_s * 1000),
        )
        # The stats tables as the worker wires them, on stores of the fake engine.
        self.stats_tables, self.stats = build_stats(
            settings, self.serde, lambda name: FakeStore(root / name, f"{name}-changelog")
        )
        self.floors = Floors([settings.topic("events"), settings.topic("dead-letter")])
        self.drained = 0
        self.positioning = Positioning(
            self.engine,
            self.probe,  # type: ignore[arg-type]
            self.outputs,
            self.dedupe,
            raw_topics=[self.raw_topic],
            stats_topic=self.stats_topic,
            floors=self.floors,
            allow_state_reset=False,
            start_outputs=self.outputs.start,
            drained=self._drained,
            busy=lambda stream: False,
            placing=lambda: self.stats_path.placing(),
        )
        self.dead_letters = DeadLetters(settings, self.serde, self.outputs, self._landed)
        self.raw = RawPath(
            settings,
            self.engine,
            self.serde,
            self.outputs,
            self.dedupe,
            self.positioning,
            self.dead_letters,
            StatsPartitions(settings.partitions),
            self.floors,
            vendor_of_topic={self.raw_topic: "segment"},
            ready=self.outputs.start,
        )
        self.stats_path = StatsPath(
            self.engine,
            self.stats,
            self.outputs,
            self.positioning,
            self.dead_letters,
            stats_updates_topic=self.stats_topic,
            ready=self.outputs.start,
            start_outputs=self.outputs.start,
        )
        self.engine.set_positions(self.positioning)

    async def _drained(self) -> None:
        self.drained += 1
        await self.raw.written()

    def _landed(self, pos: RawPosition) -> bool:
        return self.positioning.landed(TopicPartition(pos.topic, pos.partition), pos.offset)

    def raw_tp(self, partition: int = 0) -> TopicPartition:
        return TopicPartition(self.raw_topic, partition)

    def stats_tp(self, partition: int = 0) -> TopicPartition:
        return TopicPartition(self.stats_topic, partition)
