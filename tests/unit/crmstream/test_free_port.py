"""``free_port``: a port for a process started next, picked where the kernel does not hand out
ports by itself (crmstream/broker.py)."""

from __future__ import annotations

import random
import socket

import pytest

from crmstream import broker


def test_a_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = broker._ephemeral_low()
    for _ in range(20):
        port = broker.free_port()
        assert broker._LOWEST_PICKED <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_seeded_random_module_does_not_fix_the_ports() -> None:
    """Seeded tests run in several processes at once: each must still pick its own ports."""
    random.seed(1234)
    first = [broker.free_port() for _ in range(3)]
    random.seed(1234)
    second = [broker.free_port() for _ in range(3)]
    assert first != second


def test_without_room_below_the_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "_ephemeral_low", lambda: broker._LOWEST_PICKED + 10)
    port = broker.free_port()
    assert port > 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_port_is_handed_out_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo picks its own port and each worker's before any binds: never the same twice."""
    monkeypatch.setattr(broker, "_ephemeral_low", lambda: broker._LOWEST_PICKED + 1_000)
    monkeypatch.setattr(broker, "_handed", set())
    ports = [broker.free_port() for _ in range(150)]
    assert len(set(ports)) == len(ports)
