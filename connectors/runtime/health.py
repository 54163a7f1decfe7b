"""A connector's health: ``/livez`` and ``/readyz`` from its producer and a Kafka watch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from connectors.runtime.kafka import RawPublisher
from crmstream.metrics import Check, Health

log = logging.getLogger(__name__)


class KafkaWatch:
    """A connector's Kafka side for ``/livez`` and ``/readyz`` (``crmstream.metrics.Health``).

    A daemon thread asks the cluster for the raw topic's metadata every ``interval`` seconds
    through the connector's own producer: *ready* while the last answer came, *live* while the
    producer is not in a fatal state. ``publisher`` is called each time, so a connector that
    rebuilds its publisher is watched through the new one.
    """

    def __init__(
        self,
        publisher: Callable[[], RawPublisher],
        *,
        interval: float = 2.0,
        timeout: float = 3.0,
    ) -> None:
        self._publisher = publisher
        self.interval = interval
        self.timeout = timeout
        self._ok = False
        self._detail = "not checked yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> KafkaWatch:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kafka-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            publisher = self._publisher()
            try:
                ok = publisher.reachable(self.timeout)
            except Exception as exc:  # a probe that cannot run is a failed probe
                ok = False
                log.warning("Kafka reachability probe failed: %r", exc)
            self._ok = ok
            self._detail = (
                f"{publisher.topic} metadata answered"
                if ok
                else f"no metadata for {publisher.topic} in {self.timeout}s"
            )
            self._stop.wait(self.interval)

    def ready(self) -> tuple[bool, str]:
        """Kafka answered the last metadata request."""
        return self._ok, self._detail

    def live(self) -> tuple[bool, str]:
        """The producer can still publish (no fatal error) and the watch itself runs."""
        fatal = self._publisher().fatal_error
        if fatal is not None:
            return False, f"producer in a fatal state: {fatal}"
        if self._thread is None or not self._thread.is_alive():
            return False, "Kafka watch thread is not running"
        return True, "producer usable"


def connector_health(watch: KafkaWatch, **live: Check) -> Health:
    """``/livez``: the producer (and the connector's own ``live`` checks, e.g. its loop thread);
    ``/readyz``: also Kafka reachable."""
    return Health(live={"producer": watch.live, **live}, ready={"kafka": watch.ready})
