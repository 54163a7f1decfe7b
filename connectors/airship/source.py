"""The Airship RTDS source: one resumable NDJSON stream into ``raw.airship``, run by the
connectors' runner (:class:`connectors.runtime.runner.Runner`) like every pulling connector.

A batch is what the stream delivered within :data:`BATCH_WINDOW_S` (at most
:data:`MAX_BATCH_LINES` lines). The runner publishes it and, every ``checkpoint_interval``,
flushes and then takes the :meth:`AirshipConnector.snapshot`: the offset of the last event (or
``OFFSET_UPDATE``) handed out. Kafka acknowledged that record and every one before it in stream
order, so this is the highest contiguous acknowledged offset. A flush that fails rewinds the
source: the connection is closed and the stream resumed from the checkpoint (``resume_offset``).

The HTTP stream is asynchronous (aiohttp): the source owns a private event loop and drives it
from :meth:`AirshipConnector.next_batch`, so the connection, its 307 dance and its idle timer
live between batches; while the runner flushes, unread bytes wait in the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from connectors.airship.filters import is_int
from connectors.airship.settings import AirshipSettings
from connectors.runtime import runner as runtime
from connectors.runtime.backoff import Backoff
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.errors import FatalSourceError, RetriableSourceError
from connectors.runtime.kafka import RawPublisher
from connectors.runtime.runner import Batch, Runner, SourceRecord
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.settings import Settings

log = logging.getLogger("connectors.airship")

CONNECTOR = "airship"
VENDOR = "airship"

BATCH_WINDOW_S = 0.25  # a batch is what arrived within this (also how soon a stop is seen)
MAX_BATCH_LINES = 1000

_T = TypeVar("_T")


class AirshipError(FatalSourceError):
    """Airship refused the stream in a way that retrying cannot fix (400, 401, 403, other 4xx)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem, kind="http_auth" if status in (401, 403) else "http_4xx")
        self.status = status


@dataclass
class RunStats(runtime.RunStats):
    """The runner's account of one run (records acknowledged, checkpoints, errors) and what only
    a stream has: connections, reconnects, bytes, control lines. The CLI prints it and the tests
    assert on it; ``checkpoint`` is the last offset in ``connect-offsets``."""

    connections: int = 0
    reconnects: int = 0
    bytes: int = 0
    keepalives: int = 0
    offset_updates: int = 0
    idle_timeouts: int = 0
    invalid_lines: int = 0
    redirects: int = 0
    checkpoint: str | None = None


class _Retry(RetriableSourceError):
    """The connection ended in a way that calls for a reconnect; ``kind`` is the metric kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail, kind=kind)


def _epoch_s(value: Any) -> float | None:
    """An event's ISO-8601 ``processed`` time in epoch seconds; None if absent or unreadable
    (the worker validates timestamps, the connector only reports lag)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _offset_of(record: dict[str, Any]) -> str | None:
    value = record.get("offset")
    if isinstance(value, str) and value:
        return value
    if is_int(value):  # offsets are strings (seed 004), but tolerate a numeric one
        return str(value)
    return None


class _Stopped(Exception):
    """A stop was asked while a connection was being opened."""


class _Checkpoints(CheckpointStore):
    """``connect-offsets`` for the runner, remembering the last ``resume_offset`` Kafka took
    (a failed write leaves it, and the next due checkpoint writes the position again)."""

    def __init__(self, settings: Settings, key: str) -> None:
        super().__init__(settings, CONNECTOR)
        self.position_key = key
        self.committed: str | None = None

    def commit_many(self, values: dict[str, dict[str, Any]], timeout: float = 30.0) -> None:
        super().commit_many(values, timeout)
        value = values.get(self.position_key)
        if value is not None:
            self.committed = value["resume_offset"]


class AirshipConnector:
    """Streams one Airship app (or one PARTITION of it) into ``raw.airship``: a
    :class:`connectors.runtime.runner.Source` that also runs itself (:meth:`run_blocking`)."""

    connector = CONNECTOR

    def __init__(
        self,
        config: AirshipSettings,
        settings: Settings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.publisher = RawPublisher(settings, VENDOR, app_id=config.app_key)
        self.store = _Checkpoints(settings, config.checkpoint_key)
        self.rng = rng or random.Random()
        self.counts = RunStats()  # the stream's own counts; the runner keeps the rest
        self.errors: dict[str, int] = {}
        self.position: str | None = None  # the offset of the last line handed out
        self._resume: str | None = None  # where a rewind reads again from
        self._loaded: str | None = None
        self._backoff = Backoff(config.backoff_min_s, config.backoff_max_s, rng=self.rng)
        self._retrying = False
        self._fatal: AirshipError | None = None
        self._rewound = False
        self._halt = threading.Event()
        self._runner: Runner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._buffer = b""
        self._last_byte = time.monotonic()
        self._last_event = time.monotonic()
        self._last_checkpoint = time.monotonic()
        self._streamed = False  # a 200 stream has been opened in this run
        self._source_prefix = f"airship:{config.app_key}#"
        # Bound once: labels() per record is measurable at thousands of events a second.
        self._m_bytes = metrics.CONNECTOR_BYTES.labels(CONNECTOR)
        self._m_behind = metrics.AIRSHIP_BEHIND.labels(CONNECTOR)

    # -- running (the runner does the work) --

    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = Runner(self, self.publisher, self.store)
        return self._runner

    def stop(self) -> None:
        """Stop after the current batch (SIGINT/SIGTERM, ``stop_after_idle``)."""
        self._halt.set()
        self.runner().stop()

    def run_blocking(self) -> RunStats:
        """Stream until :meth:`stop`, ``stop_after_idle`` passes, or a fatal error."""
        self._loop = asyncio.new_event_loop()
        try:
            done = self.runner().run()
        finally:
            self._loop.run_until_complete(self._close())
            self._loop.close()
            self._loop = None
        if self._rewound:
            raise BrokerError("Kafka did not acknowledge every record; checkpoint kept back")
        errors = dict(self.errors)
        for kind, n in done.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        stats = RunStats(**{**asdict(self.counts), **asdict(done), "errors": errors})
        stats.checkpoint = self.store.committed or self._loaded
        return stats

    async def run(self, stop: asyncio.Event | None = None) -> RunStats:
        """:meth:`run_blocking` on a thread, stopped when ``stop`` is set."""
        watcher: asyncio.Task[None] | None = None
        if stop is not None:

            async def watch() -> None:
                await stop.wait()
                self.stop()

            watcher = asyncio.create_task(watch())
        try:
            return await asyncio.to_thread(self.run_blocking)
        finally:
            if watcher is not None:
                watcher.cancel()

    # -- the Source protocol --

    def open(self, checkpoints: dict[str, dict[str, Any]]) -> None:
        saved = checkpoints.get(self.config.checkpoint_key)
        if saved and isinstance(saved.get("resume_offset"), str):
            self._loaded = saved["resume_offset"]
            self.store.committed = self._loaded
            self.position = self._resume = self._loaded
            log.info(
                "resuming %s after offset %s",
                self.config.checkpoint_key,
                self._loaded,
                extra={"connector": CONNECTOR},
            )
        else:
            self.position = self._resume = self.config.resume_offset
        self._last_event = time.monotonic()
        self._last_checkpoint = time.monotonic()

    def next_batch(self) -> Batch:
        if self._fatal is not None:
            # Raised one batch late, so that the runner first settles what was read before.
            raise self._fatal
        if self._idle_stop_due() or self._halt.is_set():
            return self._stopping("idle_stop" if not self._halt.is_set() else "stopped")
        if self._response is None:
            if not self._backoff.due():
                return Batch(checkpoint=self._checkpoint_due())
            if self._retrying:
                self._retrying = False
                self.counts.reconnects += 1
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
            try:
                self._drive(self._connect(self.position))
            except _Stopped:
                return self._stopping("stopped")
            except _Retry as retry:
                return self._retry(retry, [])
            except AirshipError as fatal:
                self._error(fatal.kind)
                log.error("%s", fatal, extra={"connector": CONNECTOR})
                self._fatal = fatal
                return Batch(checkpoint=True)
        lines, problem = self._drive(self._read_lines())
        records = [r for r in (self._handle_line(line) for line in lines) if r is not None]
        if problem is not None:
            return self._retry(problem, records)
        return Batch(records=records, checkpoint=self._checkpoint_due())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        self._last_checkpoint = time.monotonic()
        self._rewound = False
        position = self.position
        self._resume = position
        if position is None or position == self.store.committed:
            return {}
        value = {
            "resume_offset": position,
            "app_key": self.config.app_key,
            "stream": self.config.stream,
            "subset": self.config.subset,
            "committed_at_ms": time.time_ns() // 1_000_000,
        }
        return {self.config.checkpoint_key: value}

    def rewind(self) -> None:
        """Kafka did not acknowledge what was handed out since the last snapshot: close the
        stream and resume it from the checkpoint."""
        log.warning(
            "Kafka did not acknowledge records; the stream is read again from offset %s",
            self._resume,
            extra={"connector": CONNECTOR},
        )
        self._rewound = True
        self.position = self._resume
        if self._loop is not None:
            self._drive(self._close())

    def caught_up(self) -> bool:
        """Everything handed out is checkpointed (the stream itself never ends)."""
        return self.position is None or self.position == self.store.committed

    def pause(self, published: int) -> float:
        if self._fatal is not None or self._response is not None:
            return 0.0  # reading waits for data by itself
        return max(0.0, self._backoff.retry_at - time.monotonic())

    # -- the source's own parts --

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        metrics.CONNECTOR_ERRORS.labels(CONNECTOR, kind).inc()

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_checkpoint >= self.config.checkpoint_interval_s

    def _stopping(self, outcome: str) -> Batch:
        log.info("stopping (%s)", outcome, extra={"connector": CONNECTOR})
        self.stop()
        return Batch(checkpoint=True)

    def _retry(self, retry: _Retry, records: list[SourceRecord]) -> Batch:
        """The connection ended: settle what was read (the runner flushes and checkpoints this
        batch), then reconnect from there after the back-off."""
        self._error(retry.kind)
        self._drive(self._close())
        delay = self._backoff.failed()
        if retry.kind == "http_404":
            # No data for the app yet: retry slowly, with jitter.
            delay = self.rng.uniform(0.75, 1.0) * self.config.not_found_retry_s
            self._backoff.retry_at = time.monotonic() + delay
        self._retrying = True
        log.warning(
            "%s; reconnecting in %.2fs from offset %s",
            retry,
            delay,
            self.position,
            extra={"connector": CONNECTOR},
        )
        return Batch(records=records, checkpoint=True)

    def _drive(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def _close(self) -> None:
        response, self._response = self._response, None
        session, self._session = self._session, None
        self._buffer = b""
        if response is not None:
            response.close()
        if session is not None:
            await session.close()

    def _handle_line(self, line: bytes) -> SourceRecord | None:
        payload = line.rstrip(b"\r")
        if not payload.strip():
            # A blank line is a keep-alive (seed 004); it only resets the idle timer.
            self.counts.keepalives += 1
            metrics.CONNECTOR_KEEPALIVES.labels(CONNECTOR, "blank").inc()
            return None
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            # Published anyway, key None: the worker dead-letters it as invalid_json (§5).
            self.counts.invalid_lines += 1
            self._error("invalid_json")
            return self._record(None, payload, None)
        offset = _offset_of(record)
        if record.get("type") == "OFFSET_UPDATE":
            # "You should not store these events" (seed 004); the offset may be checkpointed
            # once every record before it is acknowledged, i.e. with this batch.
            self.counts.offset_updates += 1
            metrics.CONNECTOR_KEEPALIVES.labels(CONNECTOR, "offset_update").inc()
            if offset is not None:
                self.position = offset
            return None
        event_id = record.get("id")
        key = event_id if isinstance(event_id, str) and event_id else None
        processed = _epoch_s(record.get("processed"))
        if processed is not None:
            # How far behind Airship the connector reads (a replay from EARLIEST starts days
            # behind and should fall to seconds).
            self._m_behind.set(max(0.0, time.time() - processed))
        return self._record(key, payload, offset)

    def _record(self, key: str | None, payload: bytes, offset: str | None) -> SourceRecord:
        if offset is not None:
            self.position = offset
        self._last_event = time.monotonic()
        return SourceRecord(key, payload, source=self._source_prefix + (offset or "?"), fmt="json")

    def _idle_stop_due(self) -> bool:
        """``stop_after_idle``: no event for that long on an open stream. Time spent before
        the first stream opened (404s, back-off) does not count: a bounded run must not stop
        before it has read anything."""
        limit = self.config.stop_after_idle_s
        if not limit or not self._streamed:
            return False
        return time.monotonic() - self._last_event >= limit

    # -- the stream --

    async def _read_lines(self) -> tuple[list[bytes], _Retry | None]:
        """The complete lines that arrive within :data:`BATCH_WINDOW_S`, and the reason the
        stream ended if it did (the lines before it are still handed out). A line cut by the
        disconnect is not: it is re-read after the resume."""
        response = self._response
        if response is None:
            return [], None
        idle = self.config.idle_timeout_s
        lines: list[bytes] = []
        deadline = time.monotonic() + min(BATCH_WINDOW_S, idle)
        while len(lines) < MAX_BATCH_LINES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):  # no task per read, unlike wait_for
                    chunk = await response.content.readany()
            except TimeoutError:
                if time.monotonic() - self._last_byte >= idle:
                    # Seed 004: "If you receive no data or new line characters for ninety
                    # seconds, close the connection and reconnect."
                    self.counts.idle_timeouts += 1
                    metrics.CONNECTOR_IDLE_TIMEOUTS.labels(CONNECTOR).inc()
                    return lines, _Retry("idle_timeout", f"nothing received for {idle:g}s")
                break
            except aiohttp.ClientPayloadError as exc:
                return lines, _Retry("disconnect", f"the stream was cut: {exc!r}")
            except (aiohttp.ClientError, OSError) as exc:
                return lines, _Retry("connection", f"stream broke: {exc!r}")
            if not chunk:
                return lines, _Retry("disconnect", "the server closed the stream")
            self._backoff.succeeded()
            self._last_byte = time.monotonic()
            self.counts.bytes += len(chunk)
            self._m_bytes.inc(len(chunk))
            self._buffer += chunk
            if b"\n" in chunk:
                *complete, self._buffer = self._buffer.split(b"\n")
                lines.extend(complete)
        return lines, None

    async def _until_halted(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """``coro``, cancelled when a stop is asked (a connection attempt can take up to the
        idle timeout plus the connect timeout)."""
        task = asyncio.ensure_future(coro)
        while True:
            done, _ = await asyncio.wait({task}, timeout=BATCH_WINDOW_S)
            if done:
                return task.result()
            if self._halt.is_set():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task  # cancelled, or failed meanwhile: either way, stopping
                raise _Stopped

    async def _connect(self, resume_offset: str | None) -> None:
        """One connection attempt, including the 307 dance: the open 200 response becomes the
        stream; raises _Retry (reconnect), AirshipError (give up) or _Stopped."""
        config = self.config
        body = orjson.dumps(config.request_body(resume_offset))
        base_headers = config.headers()
        cookies: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_s, sock_connect=config.connect_timeout_s
        )
        # A fresh session per connection: its cookies are this connection's only ([X8]).
        url = config.endpoint
        self._session = session = aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
        )
        for _hop in range(config.max_redirects + 1):
            headers = dict(base_headers)
            if cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            self.counts.connections += 1
            try:
                response = await self._until_halted(
                    asyncio.wait_for(
                        session.post(url, data=body, headers=headers, allow_redirects=False),
                        timeout=config.idle_timeout_s + config.connect_timeout_s,
                    )
                )
            except TimeoutError:
                raise _Retry("idle_timeout", "no response headers in time") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise _Retry("connection", f"cannot reach {config.endpoint}: {exc!r}") from None
            status = response.status
            if status == 200:
                self._response = response
                self._buffer = b""
                self._last_byte = time.monotonic()
                if not self._streamed:
                    self._streamed = True
                    self._last_event = self._last_byte
                return
            try:
                if status == 307:
                    # [X8] uaconnect: re-POST the same body with the cookies of the 307
                    # (load-balancer affinity), to its Location when that is on the same
                    # host (a generic client would turn the POST into a GET, or carry the
                    # token to another host); the hop limit ends any loop.
                    for name, morsel in response.cookies.items():
                        cookies[name] = morsel.value
                    url = self._redirect_target(url, response.headers.get("Location"))
                    self.counts.redirects += 1
                    continue
                detail = (await response.text(errors="replace"))[:300].strip()
                raise self._status_error(status, detail)
            finally:
                response.close()
        raise _Retry("redirect_loop", f"more than {config.max_redirects} HTTP 307 in a row")

    def _redirect_target(self, url: str, location: str | None) -> str:
        """Where a 307 sends the next POST: ``Location`` resolved against ``url`` if it stays
        on the configured endpoint's scheme, host and port; else ``url`` again."""
        if not location:
            return url
        target = urljoin(url, location)
        here, there = urlsplit(self.config.endpoint), urlsplit(target)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            log.warning(
                "307 to another host (%s) not followed: the credentials stay on %s",
                there.netloc,
                here.netloc,
                extra={"connector": CONNECTOR},
            )
            return url
        return target

    def _status_error(self, status: int, detail: str) -> Exception:
        where = f"{self.config.endpoint} answered HTTP {status}"
        suffix = f": {detail}" if detail else ""
        if status in (401, 403):
            secret = (
                "CRM_AIRSHIP_MASTER_SECRET"
                if self.config.stream == "compliance"
                else ("CRM_AIRSHIP_TOKEN")
            )
            return AirshipError(
                status,
                f"{where}; the credentials were refused (revoked or wrong {secret}, or wrong "
                f"CRM_AIRSHIP_APP_KEY){suffix}",
            )
        if status == 400:
            return AirshipError(
                status, f"{where}; Airship rejected the request (check filters/subset){suffix}"
            )
        if status == 402:
            return _Retry("http_402", f"{where}: too many simultaneous connections")
        if status == 404:
            return _Retry("http_404", f"{where}: no data for this app key yet")
        if status >= 500 or status in (408, 429):
            return _Retry("http_5xx" if status >= 500 else f"http_{status}", f"{where}{suffix}")
        return AirshipError(status, f"{where}; not retried{suffix}")
