"""TLS and SASL in front of the embedded broker, for the Kafka security integration tests.

Tansu 0.6.0 serves neither TLS nor a usable SASL (README, "About the embedded broker"), so these
loopback servers stand in front of it, and Tansu advertises the front's port so that every
connection of every client goes through them:

- :class:`TlsFront`: a real TLS server (Python's ssl, i.e. OpenSSL), bytes passed through.
- :class:`SaslFront`: the broker side of Kafka's SASL exchange (SaslHandshake v0-1 and
  SaslAuthenticate v0-1, as Apache Kafka answers them) with a SCRAM-SHA-256/512 server
  (RFC 5802, 7677) and PLAIN, checking each client's credentials against its own users; once a
  connection authenticated, its bytes pass through untouched. ApiVersions before it is
  forwarded to Tansu.

The Kafka protocol behind them is Tansu's own: nothing about Kafka is faked. Chained, TLS in
front of SASL, they give SASL_SSL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import ssl
import struct
import threading

SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
API_VERSIONS = 18
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


class _Front:
    """A loopback server on ``port`` in a thread of its own, one upstream connection to
    ``127.0.0.1:target_port`` per client connection."""

    ssl_context: ssl.SSLContext | None = None

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.failures = 0  # handshakes or authentications refused
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> _Front:
        self._thread.start()
        self._loop.set_exception_handler(self._on_loop_error)
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(
                self._serve,
                "127.0.0.1",
                self.port,
                ssl=self.ssl_context,
                ssl_handshake_timeout=10 if self.ssl_context else None,
            ),
            self._loop,
        ).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            self.failures += 1  # an untrusted or certificate-less client: expected
            return
        loop.default_exception_handler(context)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            if await self._before_piping(reader, writer, up_reader, up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    w.close()

    async def _before_piping(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        return True


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        dst.close()


class TlsFront(_Front):
    def __init__(self, context: ssl.SSLContext, port: int, target_port: int) -> None:
        super().__init__(port, target_port)
        self.ssl_context = context


# --- Kafka framing (request header v1, response header v0: what these APIs use up to v1) ------


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _response(correlation_id: int, body: bytes) -> bytes:
    payload = struct.pack(">i", correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


class SaslFront(_Front):
    """SASL in front of the broker: ``users`` name -> password, for every mechanism offered."""

    def __init__(
        self,
        users: dict[str, str],
        port: int,
        target_port: int,
        mechanisms: tuple[str, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"),
    ) -> None:
        super().__init__(port, target_port)
        self.users = users
        self.mechanisms = mechanisms
        self.authenticated: list[tuple[str, str]] = []  # (mechanism, user), in order

    async def _before_piping(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        mechanism: str | None = None
        scram: _ScramServer | None = None
        while True:
            frame = await _read_frame(reader)
            api_key, api_version, correlation_id, client_len = struct.unpack(">hhih", frame[:10])
            body = frame[10 + max(client_len, 0) :]
            if api_key == API_VERSIONS:  # before authentication, as Kafka allows
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                answer = await _read_frame(up_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
            elif api_key == SASL_HANDSHAKE and api_version in (0, 1):
                (length,) = struct.unpack(">h", body[:2])
                asked = body[2 : 2 + length].decode()
                error = 0 if asked in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                mechanism = asked if error == 0 else None
                listed = b"".join(_string(m) for m in self.mechanisms)
                writer.write(
                    _response(
                        correlation_id,
                        struct.pack(">hi", error, len(self.mechanisms)) + listed,
                    )
                )
                if error or api_version == 0:  # v0's unframed tokens: not offered
                    await writer.drain()
                    self.failures += 1
                    return False
            elif api_key == SASL_AUTHENTICATE and api_version in (0, 1) and mechanism:
                (length,) = struct.unpack(">i", body[:4])
                token = body[4 : 4 + length]
                if mechanism == "PLAIN":
                    user, reply, done = self._plain(token), b"", True
                else:
                    scram = scram or _ScramServer(mechanism, self.users)
                    user, reply, done = scram.step(token)
                failed = done and user is None
                message = (
                    "Authentication failed during authentication due to invalid credentials "
                    f"with SASL mechanism {mechanism}"
                    if failed
                    else None
                )
                answer = struct.pack(">h", SASL_AUTHENTICATION_FAILED if failed else 0)
                answer += _string(message) + _bytes(reply)
                if api_version >= 1:
                    answer += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
                writer.write(_response(correlation_id, answer))
                await writer.drain()
                if failed:
                    self.failures += 1
                    return False
                if done and user is not None:
                    self.authenticated.append((mechanism, user))
                    return True
            else:  # anything else before authentication: Kafka closes the connection
                self.failures += 1
                return False
            await writer.drain()

    def _plain(self, token: bytes) -> str | None:
        try:
            _authzid, user, password = token.decode().split("\0")
        except ValueError:
            return None
        expected = self.users.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), password.encode())
        return user if ok else None


class _ScramServer:
    """The server side of one SCRAM exchange (RFC 5802), without channel binding."""

    def __init__(self, mechanism: str, users: dict[str, str], iterations: int = 4096) -> None:
        self.hash = SCRAM_HASHES[mechanism]
        self.users = users
        self.iterations = iterations
        self.salt = os.urandom(16)
        self.user: str | None = None
        self.first_bare = ""
        self.server_first = ""
        self.nonce = ""

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash).digest()

    def step(self, token: bytes) -> tuple[str | None, bytes, bool]:
        """(the authenticated user or None, the reply, whether the exchange is over)."""
        text = token.decode()
        if not self.server_first:
            gs2_cbind, _authzid, bare = text.split(",", 2)
            attrs = dict(part.split("=", 1) for part in bare.split(","))
            user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            if gs2_cbind != "n" or user not in self.users:
                return None, b"", True
            self.user, self.first_bare = user, bare
            self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
            salt = base64.b64encode(self.salt).decode()
            self.server_first = f"r={self.nonce},s={salt},i={self.iterations}"
            return None, self.server_first.encode(), False
        without_proof, proof_b64 = text.rsplit(",p=", 1)
        attrs = dict(part.split("=", 1) for part in without_proof.split(","))
        assert self.user is not None
        salted = hashlib.pbkdf2_hmac(
            self.hash, self.users[self.user].encode(), self.salt, self.iterations
        )
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.hash, client_key).digest()
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        proof = base64.b64decode(proof_b64)
        presented = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        ok = attrs.get("r") == self.nonce and hmac.compare_digest(
            hashlib.new(self.hash, presented).digest(), stored_key
        )
        if not ok:
            return None, b"", True
        server_key = self._hmac(salted, b"Server Key")
        verifier = base64.b64encode(self._hmac(server_key, auth_message)).decode()
        return self.user, f"v={verifier}".encode(), True
