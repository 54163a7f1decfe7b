"""The Airship RTDS connector: one resumable NDJSON stream into ``raw.airship``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from connectors.airship.filters import is_int
from connectors.airship.offsets import OffsetTracker
from connectors.airship.settings import AirshipSettings
from connectors.runtime.backoff import backoff_delay
from connectors.runtime.checkpoints import CheckpointStore
from connectors.runtime.errors import FatalSourceError, RetriableSourceError
from connectors.runtime.kafka import RawPublisher
from crmstream import metrics
from crmstream.errors import BrokerError
from crmstream.settings import Settings

log = logging.getLogger("connectors.airship")

CONNECTOR = "airship"
VENDOR = "airship"


class AirshipError(FatalSourceError):
    """Airship refused the stream in a way that retrying cannot fix (400, 401, 403, other 4xx)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem, kind="http_auth" if status in (401, 403) else "http_4xx")
        self.status = status


# --- the connector -----------------------------------------------------------------------------


@dataclass
class RunStats:
    """What one run did; the CLI prints it and the tests assert on it."""

    connections: int = 0
    reconnects: int = 0
    records: int = 0
    bytes: int = 0
    keepalives: int = 0
    offset_updates: int = 0
    idle_timeouts: int = 0
    invalid_lines: int = 0
    redirects: int = 0
    checkpoint: str | None = None
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        metrics.CONNECTOR_ERRORS.labels(CONNECTOR, kind).inc()


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


class AirshipConnector:
    """Streams one Airship app (or one PARTITION of it) into ``raw.airship``."""

    def __init__(
        self,
        config: AirshipSettings,
        settings: Settings,
        *,
        store: CheckpointStore | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.publisher = RawPublisher(settings, VENDOR, app_id=config.app_key)
        self.store = store or CheckpointStore(settings, CONNECTOR)
        self.rng = rng or random.Random()
        self.tracker = OffsetTracker()
        self.stats = RunStats()
        self._committed: str | None = None
        self._committed_at = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._last_event = time.monotonic()
        self._attempt = 0
        self._streamed = False  # a 200 stream has been opened in this run
        self._kafka_failure: str | None = None
        self._source_prefix = f"airship:{config.app_key}#"
        # Bound once: labels() per record is measurable at thousands of events a second.
        self._m_records = metrics.CONNECTOR_RECORDS.labels(CONNECTOR)
        self._m_bytes = metrics.CONNECTOR_BYTES.labels(CONNECTOR)
        self._m_behind = metrics.AIRSHIP_BEHIND.labels(CONNECTOR)

    # -- checkpointing --

    async def _load_checkpoint(self) -> str | None:
        saved = (await asyncio.to_thread(self.store.load)).get(self.config.checkpoint_key)
        if saved and isinstance(saved.get("resume_offset"), str):
            self._committed = saved["resume_offset"]
            log.info(
                "resuming %s after offset %s",
                self.config.checkpoint_key,
                self._committed,
                extra={"connector": CONNECTOR},
            )
            return self._committed
        return self.config.resume_offset

    async def _checkpoint(self) -> None:
        """Write the tracker's position if it moved. Never raises: a failed write is retried
        on the next tick and the old checkpoint stays valid (at-least-once)."""
        async with self._commit_lock:
            position = self.tracker.position
            if position is None or position == self._committed:
                return
            value = {
                "resume_offset": position,
                "app_key": self.config.app_key,
                "stream": self.config.stream,
                "subset": self.config.subset,
                "committed_at_ms": time.time_ns() // 1_000_000,
            }
            try:
                await asyncio.to_thread(self.store.commit, self.config.checkpoint_key, value)
            except BrokerError as exc:
                self.stats.error("kafka")
                log.warning("checkpoint not written: %s", exc, extra={"connector": CONNECTOR})
                return
            self._committed = position
            self._committed_at = time.monotonic()
            self.stats.checkpoint = position

    async def _settle(self) -> bool:
        """Wait for every published record's ack, then checkpoint. On a Kafka failure the
        unacknowledged records are forgotten and will be re-read from the checkpoint."""
        try:
            await asyncio.to_thread(self.publisher.flush, 30.0)
            if self._kafka_failure is not None:
                raise BrokerError(self._kafka_failure)
        except BrokerError as exc:
            self._kafka_failure = None
            self.stats.error("kafka")
            self.publisher.renew_if_broken()
            dropped = self.tracker.reset()
            log.error(
                "Kafka did not acknowledge records (%s); %d will be re-read from offset %s",
                exc,
                dropped,
                self.tracker.position,
                extra={"connector": CONNECTOR},
            )
            await self._checkpoint()
            return False
        await self._checkpoint()
        return True

    async def _background(self) -> None:
        """Serve delivery callbacks without blocking the loop; checkpoint periodically."""
        interval = self.config.checkpoint_interval_s
        next_commit = time.monotonic() + interval
        age = metrics.CONNECTOR_CHECKPOINT_AGE.labels(CONNECTOR)
        while True:
            await asyncio.sleep(0.05)
            self.publisher.poll(0)
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + interval
                await self._checkpoint()
            behind = self.tracker.position != self._committed or self.tracker.in_flight > 0
            age.set(now - self._committed_at if behind else 0.0)

    # -- the stream --

    def _handle_line(self, line: bytes) -> None:
        payload = line.rstrip(b"\r")
        if not payload.strip():
            # A blank line is a keep-alive (seed 004); it only resets the idle timer.
            self.stats.keepalives += 1
            metrics.CONNECTOR_KEEPALIVES.labels(CONNECTOR, "blank").inc()
            return
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            # Published anyway, key None: the worker dead-letters it as invalid_json (§5).
            self.stats.invalid_lines += 1
            self.stats.error("invalid_json")
            self._publish(None, payload, None)
            return
        offset = _offset_of(record)
        if record.get("type") == "OFFSET_UPDATE":
            # "You should not store these events" (seed 004); the offset may be checkpointed.
            self.stats.offset_updates += 1
            metrics.CONNECTOR_KEEPALIVES.labels(CONNECTOR, "offset_update").inc()
            if offset is not None:
                self.tracker.mark(offset)
            return
        event_id = record.get("id")
        key = event_id if isinstance(event_id, str) and event_id else None
        self._publish(key, payload, offset)
        processed = _epoch_s(record.get("processed"))
        if processed is not None:
            # How far behind Airship the connector reads (a replay from EARLIEST starts days
            # behind and should fall to seconds).
            self._m_behind.set(max(0.0, time.time() - processed))

    def _publish(self, key: str | None, payload: bytes, offset: str | None) -> None:
        slot = self.tracker.add(offset)
        self.publisher.publish(
            key,
            payload,
            source=self._source_prefix + (offset or "?"),
            fmt="json",
            on_ack=lambda: self.tracker.ack(slot),
            on_error=self._delivery_failed,
        )
        self.stats.records += 1
        self._m_records.inc()
        self._last_event = time.monotonic()

    def _delivery_failed(self, problem: str) -> None:
        """A record Kafka gave up on: its slot never acks, so the checkpoint stops short of it.
        The stream is then reconnected from the checkpoint (see :meth:`_read_stream`)."""
        self._kafka_failure = problem

    def _idle_stop_due(self) -> bool:
        """``stop_after_idle``: no event for that long on an open stream. Time spent before
        the first stream opened (404s, back-off) does not count: a bounded run must not stop
        before it has read anything."""
        limit = self.config.stop_after_idle_s
        if not limit or not self._streamed:
            return False
        return time.monotonic() - self._last_event >= limit

    async def _read_stream(self, response: aiohttp.ClientResponse, stop: asyncio.Event) -> str:
        """Read lines until the stream ends; returns "stopped" / "idle_stop" or raises _Retry."""
        idle = self.config.idle_timeout_s
        tick = min(0.25, idle)
        last_byte = time.monotonic()
        buffer = b""
        got_data = False
        if not self._streamed:
            self._streamed = True
            self._last_event = last_byte
        while True:
            if stop.is_set():
                return "stopped"
            if self._idle_stop_due():
                return "idle_stop"
            if self._kafka_failure is not None:
                raise _Retry("kafka", f"Kafka refused a record: {self._kafka_failure}")
            try:
                async with asyncio.timeout(tick):  # no task per read, unlike wait_for
                    chunk = await response.content.readany()
            except TimeoutError:
                if time.monotonic() - last_byte >= idle:
                    # Seed 004: "If you receive no data or new line characters for ninety
                    # seconds, close the connection and reconnect."
                    self.stats.idle_timeouts += 1
                    metrics.CONNECTOR_IDLE_TIMEOUTS.labels(CONNECTOR).inc()
                    raise _Retry("idle_timeout", f"nothing received for {idle:g}s") from None
                continue
            except aiohttp.ClientPayloadError as exc:
                raise _Retry("disconnect", f"the stream was cut: {exc!r}") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise _Retry("connection", f"stream broke: {exc!r}") from None
            if not chunk:
                # A line cut by the disconnect is not published: it is re-read after resume.
                raise _Retry("disconnect", "the server closed the stream")
            if not got_data:
                got_data = True
                self._attempt = 0
            last_byte = time.monotonic()
            self.stats.bytes += len(chunk)
            self._m_bytes.inc(len(chunk))
            buffer += chunk
            if b"\n" not in chunk:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                while not self.publisher.has_room():
                    # librdkafka's queue is full (Kafka slow or away): wait for acks on the
                    # loop (the background task serves them) instead of blocking it in publish.
                    # A line left unpublished here is re-read after the resume.
                    if stop.is_set():
                        return "stopped"
                    if self._kafka_failure is not None:
                        raise _Retry("kafka", f"Kafka refused a record: {self._kafka_failure}")
                    await asyncio.sleep(0.05)
                self._handle_line(line)

    async def _connect_once(self, resume_offset: str | None, stop: asyncio.Event) -> str:
        """One connection attempt, including the 307 dance. Returns "stopped"/"idle_stop";
        raises _Retry (reconnect) or AirshipError (give up)."""
        config = self.config
        body = orjson.dumps(config.request_body(resume_offset))
        base_headers = config.headers()
        cookies: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_s, sock_connect=config.connect_timeout_s
        )
        # A fresh session per connection: its cookies are this connection's only ([X8]).
        url = config.endpoint
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
        ) as session:
            for _hop in range(config.max_redirects + 1):
                headers = dict(base_headers)
                if cookies:
                    headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
                self.stats.connections += 1
                try:
                    response = await asyncio.wait_for(
                        session.post(url, data=body, headers=headers, allow_redirects=False),
                        timeout=config.idle_timeout_s + config.connect_timeout_s,
                    )
                except TimeoutError:
                    raise _Retry("idle_timeout", "no response headers in time") from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise _Retry("connection", f"cannot reach {config.endpoint}: {exc!r}") from None
                try:
                    status = response.status
                    if status == 307:
                        # [X8] uaconnect: re-POST the same body with the cookies of the 307
                        # (load-balancer affinity), to its Location when that is on the same
                        # host (a generic client would turn the POST into a GET, or carry the
                        # token to another host); the hop limit ends any loop.
                        for name, morsel in response.cookies.items():
                            cookies[name] = morsel.value
                        url = self._redirect_target(url, response.headers.get("Location"))
                        self.stats.redirects += 1
                        continue
                    if status == 200:
                        return await self._read_stream(response, stop)
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

    async def run(self, stop: asyncio.Event | None = None) -> RunStats:
        """Stream until ``stop`` is set, ``stop_after_idle`` passes, or a fatal error."""
        stop = stop or asyncio.Event()
        self.tracker = OffsetTracker(await self._load_checkpoint())
        self._last_event = time.monotonic()
        self._attempt = 0
        background = asyncio.create_task(self._background())
        try:
            while True:
                try:
                    outcome = await self._connect_once(self.tracker.position, stop)
                    if outcome in {"stopped", "idle_stop"}:
                        log.info("stopping (%s)", outcome, extra={"connector": CONNECTOR})
                        return self.stats
                    raise _Retry("disconnect", "stream ended")  # pragma: no cover
                except _Retry as retry:
                    self.stats.error(retry.kind)
                    reason = retry
                except AirshipError as fatal:
                    self.stats.error(fatal.kind)
                    log.error("%s", fatal, extra={"connector": CONNECTOR})
                    raise
                # Reconnect from the checkpoint: settle everything read so far first.
                await self._settle()
                if self._idle_stop_due() or stop.is_set():
                    return self.stats
                self._attempt += 1
                if reason.kind == "http_404":
                    # No data for the app yet: retry slowly, with jitter.
                    delay = self.rng.uniform(0.75, 1.0) * self.config.not_found_retry_s
                else:
                    delay = backoff_delay(
                        self._attempt,
                        self.config.backoff_min_s,
                        self.config.backoff_max_s,
                        self.rng,
                    )
                log.warning(
                    "%s; reconnecting in %.2fs from offset %s",
                    reason,
                    delay,
                    self.tracker.position,
                    extra={"connector": CONNECTOR},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return self.stats
                self.stats.reconnects += 1
                metrics.CONNECTOR_RECONNECTS.labels(CONNECTOR).inc()
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            settled = await self._settle()
            self.stats.checkpoint = self._committed
            if not settled:
                raise BrokerError("Kafka did not acknowledge every record; checkpoint kept back")
