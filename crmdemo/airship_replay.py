"""``crm-stream airship-replay FILE``: a local server that speaks Airship's RTDS API from NDJSON.

It exists so that the connector's hard cases can be exercised for real, on loopback, in tests and
in ``make demo``: ``start``/``resume_offset``, blank keep-alives and ``OFFSET_UPDATE`` events,
the 307-with-a-cookie load-balancer dance ([X8]), a stall that triggers the client's idle rule,
an abrupt disconnect, gzip, and injected 4xx/5xx answers. It is not a mock of Airship's data:
it replays the file's lines byte for byte.

Behaviour (seed 004, TAXONOMY §7):

* ``POST /api/events`` needs ``Authorization: Bearer`` (the token, when one is configured);
  ``POST /api/events/general`` needs Basic ``appKey:masterSecret``; both ``X-UA-Appkey``.
* The body is checked like Airship does: documented fields only, ``start`` xor
  ``resume_offset``, filters and subset valid (else 400).
* ``resume_offset`` resumes after the line carrying that offset (numeric offsets also compare
  by value). PARTITION/SAMPLE subsets and the ``types``/``device_types`` filters are applied;
  other filter fields are accepted but not applied.
* When no event is due, a blank line is written every ``keepalive`` seconds, or an
  ``OFFSET_UPDATE`` whose offset is the last line *considered* (sent or filtered out).
* The file is re-read when the stream reaches its end, so lines appended later are served.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from connectors.airship.filters import validate_filters, validate_subset
from connectors.airship.settings import STREAM_PATHS
from crmstream.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE = "rtds-affinity"
REQUEST_FIELDS = frozenset({"start", "resume_offset", "filters", "subset", "enable_offset_updates"})


@dataclass(frozen=True)
class ReplayOptions:
    """How the replay server behaves; every misbehaviour is opt-in except the first 307."""

    path: Path
    app_key: str | None = None  # X-UA-Appkey must equal it when set
    token: str | None = None  # the bearer token must equal it when set (else any non-empty)
    master_secret: str | None = None  # compliance Basic auth must match when set
    interval_s: float = 0.0  # pause between two events
    keepalive_s: float = 1.0  # a keep-alive this often while no event is due
    keepalive_every: int = 0  # also a keep-alive after every N events (0: never)
    redirect: str = "first"  # first: 307 until one cookie re-POST worked; every; never
    stall_after: int = 0  # once in the server's life, after N events sent: go silent
    stall_s: float = 0.0  # ... for this long, then drop the connection
    disconnect_after: int = 0  # once, after N events sent: drop the connection mid-stream
    fail: tuple[int, ...] = ()  # status codes answered to the first requests, in order
    gzip: bool = True  # gzip the stream when the client accepts it


@dataclass
class RecordedRequest:
    """One request as the server saw it: tests assert on these."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str]
    at: float
    status: int = 0
    gzip: bool = False  # the response stream was gzip-encoded


@dataclass
class _Line:
    raw: bytes
    offset: str | None
    record: dict[str, Any] | None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _load(path: Path) -> list[_Line]:
    out: list[_Line] = []
    for raw in path.read_bytes().split(b"\n"):
        raw = raw.rstrip(b"\r")
        try:
            record = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            record = None
        offset = record.get("offset") if record else None
        out.append(_Line(raw, offset if isinstance(offset, str) else None, record))
    while out and not out[-1].raw.strip():
        out.pop()  # the file's final newline is not a keep-alive
    return out


def _start_index(lines: list[_Line], resume_offset: str) -> int | None:
    """Index of the first line after ``resume_offset``; None when the offset is unknown."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].offset == resume_offset:
            return i + 1
    if resume_offset.lstrip("-").isdigit():
        wanted = int(resume_offset)
        for i, line in enumerate(lines):
            digits = line.offset is not None and line.offset.lstrip("-").isdigit()
            if digits and int(line.offset or 0) > wanted:
                return i
        return len(lines)
    return None


def _hash_fraction(text: str) -> float:
    return zlib.crc32(text.encode()) / 2**32


def _passes(record: dict[str, Any], body: dict[str, Any]) -> bool:
    event_id = str(record.get("id", ""))
    subset = body.get("subset")
    if subset is not None:
        if subset["type"] == "PARTITION":
            if zlib.crc32(event_id.encode()) % subset["count"] != subset["selection"]:
                return False
        elif _hash_fraction(event_id) >= subset["proportion"]:
            return False
    filters = body.get("filters")
    if not filters:
        return True
    device = record.get("device")
    device_type = str(device.get("device_type", "")).lower() if isinstance(device, dict) else ""
    for item in filters:
        if "types" in item and record.get("type") not in item["types"]:
            continue
        if "device_types" in item and device_type not in item["device_types"]:
            continue
        return True
    return False


class ReplayServer:
    """The aiohttp application; :class:`ReplayThread` runs it in a thread for tests."""

    def __init__(self, options: ReplayOptions, host: str = "127.0.0.1", port: int = 0) -> None:
        self.options = options
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._fail = list(options.fail)
        self._issued: set[str] = set()
        self._dance_done = False
        self._sent = 0
        self._stalled = False
        self._disconnected = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sent(self) -> int:
        """Events written so far, over every connection."""
        return self._sent

    async def start(self) -> str:
        app = web.Application()
        for path in STREAM_PATHS.values():
            app.router.add_post(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.url

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _problem(self, rec: RecordedRequest, status: int, text: str) -> web.Response:
        rec.status = status
        return web.json_response({"ok": False, "error": text}, status=status)

    def _auth_error(self, request: web.Request) -> str | None:
        opts = self.options
        app_key = request.headers.get("X-UA-Appkey", "")
        if not app_key or (opts.app_key and app_key != opts.app_key):
            return "missing or unknown X-UA-Appkey"
        auth = request.headers.get("Authorization", "")
        if request.path == STREAM_PATHS["compliance"]:
            # Seed 004: Basic (appKey:masterSecret) is the only scheme this endpoint accepts.
            if not auth.startswith("Basic "):
                return "the compliance stream needs Basic auth"
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return "malformed Basic credentials"
            if user != app_key or (opts.master_secret and password != opts.master_secret):
                return "wrong app key or master secret"
            return None
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return "the event stream needs a bearer token"
        if opts.token and auth[7:] != opts.token:
            return "token refused"
        return None

    def _body_error(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "the request body must be a JSON object"
        unknown = set(body) - REQUEST_FIELDS
        if unknown:
            return f"unexpected attribute(s) {', '.join(sorted(unknown))}"
        if ("start" in body) == ("resume_offset" in body):
            return "give exactly one of start, resume_offset"
        if "start" in body and body["start"] not in {"EARLIEST", "LATEST"}:
            return "start must be EARLIEST or LATEST"
        if "resume_offset" in body and not isinstance(body["resume_offset"], str):
            return "resume_offset must be a string"
        try:
            if "filters" in body:
                validate_filters(body["filters"])
            if "subset" in body:
                validate_subset(body["subset"])
        except ValueError as exc:
            return str(exc)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=raw,
            cookies=dict(request.cookies),
            at=time.monotonic(),
        )
        self.requests.append(rec)
        if self._fail:
            status = self._fail.pop(0)
            return self._problem(rec, status, f"injected HTTP {status}")
        if self.options.redirect != "never" and not self._dance_done:
            cookie = request.cookies.get(COOKIE)
            if cookie is None or cookie not in self._issued:
                # [X8]: a load balancer answers 307 and pins the client with a cookie; the
                # client must POST the same body again, with the cookie, to the same URL.
                value = secrets.token_hex(8)
                self._issued.add(value)
                rec.status = 307
                response = web.Response(status=307, headers={"Location": str(request.url)})
                response.set_cookie(COOKIE, value)
                return response
            self._issued.discard(cookie)
            if self.options.redirect == "first":
                self._dance_done = True
        auth_error = self._auth_error(request)
        if auth_error:
            return self._problem(rec, 401, auth_error)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._problem(rec, 400, "the request body is not JSON")
        body_error = self._body_error(body)
        if body_error:
            return self._problem(rec, 400, body_error)
        lines = _load(self.options.path)
        if "resume_offset" in body:
            start = _start_index(lines, body["resume_offset"])
            if start is None:
                return self._problem(rec, 400, f"unknown resume_offset {body['resume_offset']}")
        else:
            start = 0 if body["start"] == "EARLIEST" else len(lines)
        rec.status = 200
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await self._stream(request, rec, body, lines, start)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _stream(
        self,
        request: web.Request,
        rec: RecordedRequest,
        body: dict[str, Any],
        lines: list[_Line],
        pos: int,
    ) -> web.StreamResponse:
        opts = self.options
        response = web.StreamResponse(status=200)
        # Seed 004's example answers with this (not the documented ndjson) content type.
        response.content_type = "application/vnd.urbanairship+json"
        compress = opts.gzip and "gzip" in request.headers.get("Accept-Encoding", "")
        compressor = zlib.compressobj(wbits=31) if compress else None
        if compress:
            response.headers["Content-Encoding"] = "gzip"
            rec.gzip = True
        await response.prepare(request)

        async def write(data: bytes) -> None:
            if compressor is not None:
                # A sync flush per write: a keep-alive must reach the client now, not when
                # the compressor's buffer fills.
                data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            await response.write(data)

        offset_updates = bool(body.get("enable_offset_updates"))
        considered = lines[pos - 1].offset if 0 < pos <= len(lines) else body.get("resume_offset")
        if pos >= len(lines):
            considered = next((ln.offset for ln in reversed(lines) if ln.offset), considered)

        async def keepalive() -> None:
            if offset_updates and considered is not None:
                now = _now_iso()
                update = {
                    "id": str(uuid.uuid4()),
                    "type": "OFFSET_UPDATE",
                    "offset": considered,
                    "occurred": now,
                    "processed": now,
                }
                await write(orjson.dumps(update) + b"\n")
            else:
                await write(b"\n")

        sent_here = 0
        try:
            while True:
                if pos >= len(lines):
                    await asyncio.sleep(opts.keepalive_s)
                    await keepalive()
                    lines = _load(opts.path)
                    continue
                line = lines[pos]
                pos += 1
                if line.record is not None and not _passes(line.record, body):
                    considered = line.offset or considered
                    continue
                await write(line.raw + b"\n")
                considered = line.offset or considered
                if not line.raw.strip():
                    continue
                self._sent += 1
                sent_here += 1
                if opts.stall_after and not self._stalled and self._sent >= opts.stall_after:
                    self._stalled = True
                    # Silence: no byte, no keep-alive; the client's idle rule must fire.
                    await asyncio.sleep(opts.stall_s)
                    break
                if (
                    opts.disconnect_after
                    and not self._disconnected
                    and self._sent >= opts.disconnect_after
                ):
                    self._disconnected = True
                    break
                if opts.keepalive_every and sent_here % opts.keepalive_every == 0:
                    await keepalive()
                if opts.interval_s:
                    await asyncio.sleep(opts.interval_s)
        except (ConnectionError, asyncio.CancelledError):
            pass
        # End without a proper terminating chunk: the client sees a broken stream.
        if request.transport is not None:
            request.transport.close()
        return response


class ReplayThread:
    """Runs a :class:`ReplayServer` on its own event loop in a daemon thread."""

    def __init__(self, options: ReplayOptions, port: int = 0) -> None:
        self.server = ReplayServer(options, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.server.requests

    def start(self) -> ReplayThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ReplayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _secret(var: str) -> str | None:
    """A credential from ``var`` or the file named by ``var_FILE``: never from the command line."""
    if os.environ.get(var):
        return os.environ[var]
    file_var = var + "_FILE"
    if os.environ.get(file_var):
        try:
            return Path(os.environ[file_var]).read_text().strip()
        except OSError as exc:
            raise ConfigError(file_var, f"cannot read secret file: {exc}") from None
    return None


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """The command line's options; credentials from CRM_AIRSHIP_TOKEN / _MASTER_SECRET (_FILE),
    the same variables the connector reads, so a demo sets them once."""
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError("FILE", f"no such NDJSON file: {path}")
    try:
        fail = tuple(int(s) for s in args.fail.split(",") if s.strip()) if args.fail else ()
    except ValueError:
        raise ConfigError("--fail", f"not a list of HTTP status codes: {args.fail!r}") from None
    if any(not 400 <= status <= 599 for status in fail):
        raise ConfigError("--fail", "status codes must be 4xx or 5xx")
    if args.redirect not in {"first", "every", "never"}:
        raise ConfigError("--redirect", "must be first, every or never")
    return ReplayOptions(
        path=path,
        app_key=args.app_key or os.environ.get("CRM_AIRSHIP_APP_KEY") or None,
        token=_secret("CRM_AIRSHIP_TOKEN"),
        master_secret=_secret("CRM_AIRSHIP_MASTER_SECRET"),
        interval_s=args.interval,
        keepalive_s=args.keepalive,
        keepalive_every=args.keepalive_every,
        redirect=args.redirect,
        stall_after=args.stall_after,
        stall_s=args.stall,
        disconnect_after=args.disconnect_after,
        fail=fail,
        gzip=not args.no_gzip,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)

    async def serve() -> None:
        server = ReplayServer(options, host=args.host, port=args.port)
        url = await server.start()
        print(f"airship-replay serving {options.path} on {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


__all__ = ["ReplayOptions", "ReplayServer", "ReplayThread", "run"]
