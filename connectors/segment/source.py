"""The Segment receiver: an aiohttp application that answers each webhook request only once
Kafka acknowledged its events (see the package's docstring for how it fits the runner)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.runtime.health import KafkaWatch, connector_health
from connectors.runtime.kafka import BROKEN_PRODUCER_CODES, RawPublisher
from connectors.runtime.stop import FINAL_FLUSH_S
from connectors.segment.settings import CONNECTOR, VENDOR, SegmentSettings
from crmstream import metrics
from crmstream.settings import Settings

log = logging.getLogger("connectors.segment")

SIGNATURE_HEADERS = ("X-Signature", "X-Segment-Signature")  # [X6]: legacy and newer setting

UNACKED_BEFORE_REBUILD = 3  # requests in a row that Kafka did not acknowledge while reachable


def signature(secret: str, body: bytes) -> str:
    """What Segment sends in ``X-Signature``: hex HMAC-SHA1 of the raw body [X6]."""
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


class Reject(Exception):
    """A request answered with a 4xx/5xx; ``kind`` is the bounded metrics label."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def split_events(body: bytes) -> list[tuple[str | None, bytes]]:
    """``(messageId or None, raw event bytes)`` per event of a body: one object or an array.

    A single object is published byte for byte as received; array elements are re-serialized
    one by one (the raw topic holds one event per record). Anything else is a 400: Segment only
    sends JSON objects, so another shape is a misconfigured sender, not an event.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Reject(400, "invalid_json", f"body is not JSON: {exc}") from exc
    if isinstance(parsed, dict):
        return [(_message_id(parsed), body)]
    if not isinstance(parsed, list):
        raise Reject(400, "invalid_shape", "body must be a JSON object or an array of objects")
    out: list[tuple[str | None, bytes]] = []
    for index, item in enumerate(parsed):
        if not isinstance(item, dict):
            raise Reject(
                400, "invalid_shape", f"array element {index} is {type(item).__name__}, not object"
            )
        out.append((_message_id(item), orjson.dumps(item)))
    return out


def _message_id(event: dict[str, Any]) -> str | None:
    # TAXONOMY §6.3: messageId is the vendor event id. Without one the record is still published
    # (key None) so the worker dead-letters it as missing_event_id with its source position.
    value = event.get("messageId")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class SegmentReceiver:
    """The aiohttp application plus the Kafka producer it answers for.

    confluent-kafka serves delivery callbacks from ``poll()``: a background thread polls, and
    each callback resolves an asyncio future through ``call_soon_threadsafe``, so a request
    awaits its acknowledgements without blocking the event loop.
    """

    def __init__(
        self,
        config: SegmentSettings,
        settings: Settings,
        *,
        publisher: RawPublisher | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self._rebuildable = publisher is None
        self.publisher = publisher or self._new_publisher()
        self.rebuilds = 0
        self._unacked_in_a_row = 0
        self._last_rebuild = 0.0
        self._lock = threading.Lock()
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.watch = KafkaWatch(lambda: self.publisher)
        self.health = connector_health(self.watch, acks=self._poller_alive)
        self.bound_port: int | None = None

    def _new_publisher(self) -> RawPublisher:
        # Undelivered records fail after the ack timeout instead of librdkafka's 5 minutes,
        # so the local queue drains while Kafka is away and every request gets its 503.
        # linger 0: a request waits for its acks, and concurrent requests still batch
        # behind in-flight ones (measured: 94 -> 239 sequential single-event posts/s).
        timeout_ms = max(1000, int(self.config.ack_timeout_s * 1000))
        return RawPublisher(
            self.settings,
            VENDOR,
            app_id=self.config.app_id or None,
            config={"message.timeout.ms": timeout_ms, "linger.ms": 0},
        )

    def _rebuild(self, reason: str) -> None:
        """Replace a producer librdkafka has declared fatally broken (fenced, its producer id
        lost after a broker replacement) or whose ack thread died: the records it still held
        fail (their requests answer 503, Segment retries them) and later requests use the new
        producer. At most once a second, so a broker that fences every new producer is not
        hammered."""
        with self._lock:
            wait = self._last_rebuild + 1.0 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            old = self.publisher
            self.publisher = self._new_publisher()
            self._last_rebuild = time.monotonic()
            self.rebuilds += 1
        metrics.CONNECTOR_ERRORS.labels(CONNECTOR, "producer_rebuilt").inc()
        log.warning("segment producer rebuilt (%s)", reason, extra={"connector": CONNECTOR})
        old.abandon()

    # --- application --------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post(self.config.path, self._handle_post)
        app.router.add_get("/livez", self._handle_health)
        app.router.add_get("/readyz", self._handle_health)
        app.router.add_get("/healthz", self._handle_health)
        app.router.add_get("/metrics", self._handle_metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._stop_polling.clear()
        self._start_poller()
        self.watch.start()

    def _start_poller(self) -> None:
        self._poller = threading.Thread(target=self._poll_loop, name="segment-acks", daemon=True)
        self._poller.start()

    def _poller_alive(self) -> tuple[bool, str]:
        if self._poller is not None and self._poller.is_alive():
            return True, "ack thread running"
        return False, "ack thread not running"

    async def _on_cleanup(self, _app: web.Application) -> None:
        self._stop_polling.set()
        self.watch.stop()
        if self._poller is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._poller.join, 5.0)
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(
                None, self.publisher.flush, FINAL_FLUSH_S
            )

    def _poll_loop(self) -> None:
        """Serve delivery callbacks; rebuild the producer after a fatal error. Nothing may end
        this thread but a stop: an exception out of ``poll`` is a broken producer, replaced."""
        while not self._stop_polling.is_set():
            publisher = self.publisher
            try:
                if publisher.fatal_error is not None and self._rebuildable:
                    self._rebuild(publisher.fatal_error)
                    continue
                publisher.poll(0.1)
            except Exception as exc:
                log.exception("segment ack thread: %s", exc, extra={"connector": CONNECTOR})
                if self._rebuildable:
                    self._rebuild(f"poll raised {exc!r}")
                else:
                    time.sleep(0.1)

    async def _handle_health(self, request: web.Request) -> web.Response:
        which = "live" if request.path == "/livez" else "ready"
        ok, report = self.health.report(which)
        report["connector"] = CONNECTOR
        return web.json_response(report, status=200 if ok else 503)

    async def _handle_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_post(self, request: web.Request) -> web.Response:
        request_id = uuid.uuid4().hex
        if not self._stop_polling.is_set() and not self._poller_alive()[0]:
            # The ack thread cannot end on its own; should it have, restart it with a fresh
            # producer rather than answer 503 forever.
            log.error("segment ack thread died; restarting it", extra={"connector": CONNECTOR})
            if self._rebuildable:
                await asyncio.get_running_loop().run_in_executor(
                    None, self._rebuild, "ack thread died"
                )
            self._start_poller()
        try:
            body = await self._read_body(request)
            self._verify(request, body)
            events = split_events(body)
            self._check_sizes(events)
            await self._publish(request_id, events)
        except Reject as rej:
            metrics.CONNECTOR_ERRORS.labels(CONNECTOR, rej.kind).inc()
            metrics.CONNECTOR_HTTP_REQUESTS.labels(CONNECTOR, str(rej.status)).inc()
            log.warning(
                "segment request %s answered %d: %s",
                request_id,
                rej.status,
                rej.message,
                extra={"connector": CONNECTOR, "reason": rej.kind},
            )
            headers = {"Retry-After": "5"} if rej.status == 503 else None
            return web.json_response(
                {"error": rej.kind, "message": rej.message, "request_id": request_id},
                status=rej.status,
                headers=headers,
            )
        metrics.CONNECTOR_RECORDS.labels(CONNECTOR).inc(len(events))
        metrics.CONNECTOR_HTTP_REQUESTS.labels(CONNECTOR, "200").inc()
        return web.json_response({"accepted": len(events), "request_id": request_id})

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Reject(413, "body_too_large", f"body of {request.content_length} > {limit}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise Reject(413, "body_too_large", f"body over {limit} bytes") from exc
        metrics.CONNECTOR_BYTES.labels(CONNECTOR).inc(len(body))
        return body

    def _verify(self, request: web.Request, body: bytes) -> None:
        """[X6]: HMAC of the raw bytes, before parsing, in constant time. The secret and the
        received signature are never logged."""
        secret = self.config.shared_secret
        if not secret:
            return
        received = [request.headers[h] for h in SIGNATURE_HEADERS if h in request.headers]
        if not received:
            raise Reject(401, "signature_missing", "X-Signature header missing")
        expected = signature(secret.get(), body).encode()
        for value in received:
            if hmac.compare_digest(value.strip().lower().encode("utf-8", "replace"), expected):
                return
        raise Reject(401, "signature_invalid", "signature does not match the body")

    def _check_sizes(self, events: list[tuple[str | None, bytes]]) -> None:
        """A batch is all or nothing: an event Kafka would refuse is found before any is queued,
        so a 413 never leaves part of the batch on the raw topic."""
        limit = self.publisher.max_record_bytes
        for index, (key, value) in enumerate(events):
            size = len(value) + len(key.encode() if key else b"")
            if size > limit:
                raise Reject(
                    413,
                    "record_too_large",
                    f"event {index} is {size} bytes, over the {limit}-byte record limit; "
                    "nothing of this request was published",
                )

    async def _publish(self, request_id: str, events: list[tuple[str | None, bytes]]) -> None:
        """Queue every event, then wait for all acknowledgements or answer 503."""
        if not events:
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = [loop.create_future() for _ in events]

        def settle(fut: asyncio.Future[None], error: str | None) -> None:
            if fut.done():  # the request already timed out
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(Reject(503, "kafka", error))

        def callbacks(
            fut: asyncio.Future[None],
        ) -> tuple[Callable[[], None], Callable[[str], None]]:
            def acked() -> None:
                loop.call_soon_threadsafe(settle, fut, None)

            def failed(error: str) -> None:
                loop.call_soon_threadsafe(settle, fut, error)

            return acked, failed

        def produce_all() -> None:
            publisher = self.publisher
            for index, ((key, value), fut) in enumerate(zip(events, futures, strict=True)):
                acked, failed = callbacks(fut)
                publisher.publish(
                    key,
                    value,
                    source=f"segment:{request_id}#{index}",
                    fmt="json",
                    on_ack=acked,
                    on_error=failed,
                )

        async def produce_and_wait() -> None:
            try:
                await loop.run_in_executor(None, produce_all)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise Reject(413, "record_too_large", err.str()) from exc
                if isinstance(err, KafkaError) and (
                    err.fatal() or err.code() in BROKEN_PRODUCER_CODES
                ):
                    self.publisher.fatal_error = self.publisher.fatal_error or err.str()
                raise Reject(503, "kafka", str(exc)) from exc
            results = await asyncio.gather(*futures, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

        try:
            await asyncio.wait_for(produce_and_wait(), timeout=self.config.ack_timeout_s)
        except TimeoutError as exc:
            self._unacknowledged()
            raise Reject(
                503,
                "kafka_timeout",
                f"Kafka did not acknowledge {len(events)} events in {self.config.ack_timeout_s}s",
            ) from exc
        except Reject as rej:
            if rej.status == 503:
                self._unacknowledged()
            raise
        self._unacked_in_a_row = 0

    def _unacknowledged(self) -> None:
        """A request Kafka did not acknowledge. Several in a row while Kafka answers metadata
        (the watch says ready) is a producer the cluster no longer accepts (its producer id
        unknown to a replaced broker: librdkafka retries until the records time out), not an
        outage: mark it broken so the ack thread replaces it."""
        self._unacked_in_a_row += 1
        if self._unacked_in_a_row < UNACKED_BEFORE_REBUILD or not self._rebuildable:
            return
        publisher = self.publisher
        if publisher.fatal_error is None and self.watch.ready()[0]:
            publisher.fatal_error = (
                f"{self._unacked_in_a_row} requests in a row unacknowledged while Kafka "
                "answers metadata requests"
            )
            self._unacked_in_a_row = 0

    # --- running ------------------------------------------------------------------------------
    async def start(self) -> str:
        """Start listening; returns the URL Segment should post to."""
        # A stop waits this long for the requests in flight; one still waiting for Kafka then
        # loses its connection and Segment retries it (issue 22 item 7).
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=FINAL_FLUSH_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        addresses = self._runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else self.config.port
        return self.url

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.bound_port or self.config.port}{self.config.path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class BackgroundReceiver:
    """The receiver on its own event loop in a thread, for the demo and the tests.

    ``with BackgroundReceiver(config, settings) as r: ...`` posts to ``r.url``
    (``crmdemo.feeds.post_samples`` sends signed sample requests).
    """

    def __init__(self, config: SegmentSettings, settings: Settings) -> None:
        self.receiver = SegmentReceiver(config, settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="segment", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> BackgroundReceiver:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop)
        self.url = fut.result(timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._loop.close()

    def __enter__(self) -> BackgroundReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
