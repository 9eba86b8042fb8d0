"""One HTTP client for talking to a crib daemon over its UNIX socket.

`DaemonClient` holds one `aiohttp.ClientSession` on a `UnixConnector` for its target and
turns every transport failure into the shared error vocabulary in one place
(`_map_transport_errors`): a missing or refusing socket is Unavailable naming the daemon, a
timeout is DeadlineExceeded, an error answer is rebuilt from its JSON body. Per-daemon
typed clients (`crib_common.clients`) subclass it and expose methods that take and return
models; callers never touch aiohttp.

The request id bound in the logging context is sent as `X-Request-Id`; a timeout becomes
both the client's total timeout and the `X-Crib-Timeout` header the daemon enforces.

Unary CRI calls (`call_cri`), the gateway's hot path, skip aiohttp's client: `_FrameTransport`
sends one frame (`crib_common.frames`) on a pooled connection to the daemon's frame socket
and reads one answer frame; a daemon without a frame socket gets one HTTP/1.1 request on
a pooled keep-alive connection to its REST socket (`_CriTransport`, which also serves
`health`). aiohttp's per-request machinery (URL building, tracing hooks, cookie jar,
timeout objects) cost about a third of the gateway's time per `Version`, and HTTP itself
(both sides) 0.03 ms of the 0.10 ms hop. Everything else (JSON, streams) stays on the
aiohttp session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
from pydantic import BaseModel, TypeAdapter

from .errors import CribError, DeadlineExceeded, Internal, Unavailable, error_from_body
from .frames import frame_socket, pack_request
from .logging import current_request_id
from .server import PROTO_CONTENT_TYPE, REQUEST_ID_HEADER, TIMEOUT_HEADER

__all__ = ["DaemonClient"]

M = TypeVar("M", bound=BaseModel)

# Connecting to a local socket either works at once or the daemon is not there.
DEFAULT_CONNECT_TIMEOUT = 1.0


def _request_id() -> str | None:
    rid = current_request_id()
    if rid:
        return rid
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


# An answer's head (status line and headers) larger than this is not from a crib daemon.
_MAX_HEAD = 64 * 1024
# Idle keep-alive connections kept per daemon; more concurrent calls open more, then close.
_MAX_IDLE = 32


class _CriTransport:
    """One HTTP/1.1 request per call on pooled keep-alive UNIX-socket connections."""

    def __init__(self, name: str, socket: Path, connect_timeout: float) -> None:
        self.name = name
        self.socket = socket
        self.connect_timeout = connect_timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncio.open_unix_connection(str(self.socket), limit=_MAX_HEAD)
        except TimeoutError:
            raise Unavailable(
                f"{self.name} is not available (socket {self.socket}): connect timed out "
                f"after {self.connect_timeout}s"
            ) from None
        except OSError as exc:  # FileNotFoundError, ConnectionRefusedError, ...
            raise Unavailable(
                f"{self.name} is not available (socket {self.socket}): "
                f"{exc.strerror or exc}"
            ) from None

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            reader, writer = self._idle.pop()
            # A daemon that restarted closed our old connections; the loop has seen the
            # EOF by now, so such a connection is dropped here instead of failing a call.
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            return reader, writer
        return None

    async def post(self, path: str, body: bytes, headers: dict[str, str],
                   timeout: float | None) -> tuple[int, bytes]:
        """POST `body`; (status, body) of the answer. Transport failures become CribErrors."""
        return await self.request("POST", path, body, headers, timeout)

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str],
                      timeout: float | None) -> tuple[int, bytes]:
        """One request; (status, body) of the answer. Transport failures become CribErrors."""
        head = [f"{method} {path} HTTP/1.1\r\nHost: crib\r\nContent-Length: {len(body)}\r\n"]
        for key, value in headers.items():
            head.append(f"{key}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        try:
            async with asyncio.timeout(timeout):
                conn = self._take_idle()
                if conn is not None:
                    try:
                        return await self._exchange(conn, request)
                    except _StaleConnection:
                        pass  # the daemon closed it before reading: safe to send again
                try:
                    return await self._exchange(await self._connect(), request)
                except _StaleConnection:
                    # A fresh connection closed without an answer: the daemon died (or
                    # is stopping) with our request in hand.
                    raise Unavailable(f"{self.name} went away during the call "
                                      f"(socket {self.socket})") from None
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name} did not answer within {timeout}s") from None

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> tuple[int, bytes]:
        reader, writer = conn
        keep = False
        received = False
        complete = False
        try:
            writer.write(request)
            try:
                raw_head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection() from None
                raise
            received = True
            status, length, chunked, keep = _parse_head(raw_head)
            if chunked:
                data = await _read_chunked(reader)
            elif length is not None:
                data = await reader.readexactly(length) if length else b""
            else:
                keep = False
                data = await reader.read()
            complete = True
            return status, data
        except _StaleConnection:
            raise
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if not received and isinstance(exc, ConnectionResetError | BrokenPipeError):
                raise _StaleConnection() from None
            raise Unavailable(
                f"{self.name} went away during the call (socket {self.socket}): "
                f"{type(exc).__name__}"
            ) from None
        except asyncio.LimitOverrunError:
            raise Internal(f"{self.name} sent an oversized answer head") from None
        finally:
            # Only a connection whose answer was read to its end can carry the next call;
            # one interrupted (deadline, cancellation, error) is closed.
            if complete and keep and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
            else:
                writer.close()

    async def close(self) -> None:
        while self._idle:
            _reader, writer = self._idle.pop()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _StaleConnection(Exception):
    """A pooled connection the daemon had closed before our request reached it."""


def _parse_head(raw: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content-length, chunked, keep-alive) of an HTTP/1.1 answer head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise Internal(f"bad HTTP status line from daemon: {lines[0][:100]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep = parts[0] == "HTTP/1.1"
    for line in lines[1:]:
        if not line:
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "content-length":
            length = int(value.strip())
        elif key == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif key == "connection":
            keep = value.strip().lower() == "keep-alive" or (
                keep and value.strip().lower() != "close"
            )
    return status, length, chunked, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers (none from aiohttp) end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class _NoFrameSocket(Exception):
    """The daemon serves no frame socket (an older daemon, a test's bare HTTP server)."""


class _FrameConnection(asyncio.Protocol):
    """One pooled connection to a frame socket; one call at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_StaleConnection() if not self._buffer else
                                 ConnectionResetError("closed mid-answer"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if len(buffer) < 6:
            return
        (size,) = _FRAME_LEN.unpack_from(buffer)
        if len(buffer) < 4 + size:
            return
        (status,) = _FRAME_STATUS.unpack_from(buffer, 4)
        body = bytes(buffer[6:4 + size])
        del buffer[:4 + size]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))
        elif self.transport is not None:
            self.transport.close()  # an answer nobody asked for: this connection is confused

    def exchange(self, frame: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        waiter: asyncio.Future[tuple[int, bytes]] = (
            asyncio.get_running_loop().create_future())
        self._waiter = waiter
        self.transport.write(frame)
        return waiter

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


_FRAME_LEN = struct.Struct(">I")
_FRAME_STATUS = struct.Struct(">H")


class _FrameTransport:
    """Unary CRI calls over the daemon's frame socket (`crib_common.frames`), pooled."""

    def __init__(self, name: str, socket: Path, connect_timeout: float) -> None:
        self.name = name
        self.socket = frame_socket(socket)
        self.connect_timeout = connect_timeout
        self._idle: list[_FrameConnection] = []

    async def _connect(self) -> _FrameConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_unix_connection(
                    _FrameConnection, str(self.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            # No frame socket, or a stale one: the REST socket answers (or says why not).
            raise _NoFrameSocket() from None
        except TimeoutError:
            raise Unavailable(
                f"{self.name} is not available (socket {self.socket}): connect timed out "
                f"after {self.connect_timeout}s"
            ) from None
        except OSError as exc:
            raise Unavailable(
                f"{self.name} is not available (socket {self.socket}): "
                f"{exc.strerror or exc}"
            ) from None
        return connection

    async def call(self, frame: bytes, timeout: float | None) -> tuple[int, bytes]:
        """(status, body) of the answer to `frame`; transport failures become CribErrors."""
        try:
            async with asyncio.timeout(timeout):
                while self._idle:
                    connection = self._idle.pop()
                    if not connection.usable:
                        connection.close()
                        continue
                    try:
                        return await self._exchange(connection, frame)
                    except _StaleConnection:
                        break  # closed by the daemon before it read our call: send again
                try:
                    return await self._exchange(await self._connect(), frame)
                except _StaleConnection:
                    raise Unavailable(f"{self.name} went away during the call "
                                      f"(socket {self.socket})") from None
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name} did not answer within {timeout}s") from None

    async def _exchange(self, connection: _FrameConnection,
                        frame: bytes) -> tuple[int, bytes]:
        complete = False
        try:
            answer = await connection.exchange(frame)
            complete = True
            return answer
        except ConnectionError as exc:
            raise Unavailable(
                f"{self.name} went away during the call (socket {self.socket}): "
                f"{type(exc).__name__}"
            ) from None
        finally:
            # A call cut short (deadline, cancellation) leaves its answer to come on this
            # connection: it carries no other call.
            if complete and connection.usable and len(self._idle) < _MAX_IDLE:
                self._idle.append(connection)
            elif not complete or not connection.usable:
                connection.close()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


@contextlib.contextmanager
def _map_transport_errors(name: str, socket: Path, timeout: float | None) -> Iterator[None]:
    try:
        yield
    except CribError:
        raise
    except (TimeoutError, asyncio.TimeoutError):
        raise DeadlineExceeded(
            f"{name} did not answer within {timeout if timeout is not None else '?'}s"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise Unavailable(f"{name} is not available (socket {socket}): {exc.os_error}") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise Unavailable(f"{name} went away during the call (socket {socket}): {exc}") from None
    except aiohttp.ClientError as exc:
        raise Internal(f"talking to {name}: {type(exc).__name__}: {exc}") from None


class DaemonClient:
    """Calls one daemon; open with `async with` or call `close()` at the end."""

    def __init__(
        self,
        name: str,
        socket: Path,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        default_timeout: float | None = 60.0,
    ) -> None:
        self.name = name
        self.socket = Path(socket)
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self._session: aiohttp.ClientSession | None = None
        self._cri = _CriTransport(name, self.socket, connect_timeout)
        self._frames = _FrameTransport(name, self.socket, connect_timeout)
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=str(self.socket), limit=256)
            self._session = aiohttp.ClientSession(
                connector=connector, base_url="http://crib", auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        """Close the pooled connections (the client can be used again afterwards)."""
        await self._cri.close()
        await self._frames.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        total = timeout if timeout is not None else self.default_timeout
        cached = self._timeouts.get(total)
        if cached is None:
            cached = aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout)
            if len(self._timeouts) < 64:  # the usual callers use a handful of fixed values
                self._timeouts[total] = cached
        return cached

    def _headers(self, timeout: float | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = dict(extra or {})
        rid = _request_id()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        if timeout is not None:
            headers[TIMEOUT_HEADER] = f"{timeout:.6f}"
        return headers

    # -------------------------------------------------------------- raw calls

    async def request_bytes(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        """One request; an error status raises the daemon's error, else (status, body)."""
        headers = self._headers(timeout, {"Content-Type": content_type} if content_type else None)
        with _map_transport_errors(self.name, self.socket, timeout):
            async with self._get_session().request(
                method, path, data=data, json=json_body, params=params,
                headers=headers, timeout=self._timeout(timeout),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise error_from_body(resp.status, body)
                return resp.status, body

    async def call_cri(self, grpc_path: str, message: bytes, *, timeout: float | None) -> bytes:
        """Forward one unary CRI call (protobuf in, protobuf out).

        Over the daemon's frame socket; over HTTP on its REST socket when it has none.
        """
        if timeout is None:
            timeout = self.default_timeout
        rid = (_request_id() or "").encode("ascii", "replace")[:255]
        try:
            status, body = await self._frames.call(
                pack_request(grpc_path.encode("ascii"), rid, timeout, message), timeout)
        except _NoFrameSocket:
            headers = self._headers(timeout, {"Content-Type": PROTO_CONTENT_TYPE})
            status, body = await self._cri.post("/v1/cri" + grpc_path, message, headers,
                                                timeout)
        if status >= 400:
            raise error_from_body(status, body)
        return body

    async def stream_cri(
        self, grpc_path: str, message: bytes, *, timeout: float | None
    ) -> AsyncIterator[bytes]:
        """Forward one server-streaming CRI call; yields each protobuf message."""
        headers = self._headers(timeout, {"Content-Type": PROTO_CONTENT_TYPE})
        with _map_transport_errors(self.name, self.socket, timeout):
            async with self._get_session().post(
                "/v1/cri" + grpc_path, data=message, headers=headers,
                timeout=self._timeout(timeout) if timeout is not None else
                aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            ) as resp:
                if resp.status >= 400:
                    raise error_from_body(resp.status, await resp.read())
                while True:
                    try:
                        head = await resp.content.readexactly(4)
                    except asyncio.IncompleteReadError as exc:
                        if exc.partial:
                            raise Internal(f"{self.name} cut a stream mid-message") from None
                        return
                    (size,) = struct.unpack(">I", head)
                    yield await resp.content.readexactly(size)

    # -------------------------------------------------------------- typed JSON helpers

    async def get_model(
        self, path: str, model: type[M], *, params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> M:
        _, body = await self.request_bytes("GET", path, params=params, timeout=timeout)
        return model.model_validate_json(body)

    async def get_list(
        self, path: str, model: type[M], *, params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[M]:
        _, body = await self.request_bytes("GET", path, params=params, timeout=timeout)
        return TypeAdapter(list[model]).validate_json(body)  # type: ignore[valid-type]

    async def post_model(
        self, path: str, body: BaseModel | None, model: type[M] | None, *,
        timeout: float | None = None,
    ) -> M | None:
        payload = body.model_dump_json().encode() if body is not None else b"{}"
        _, raw = await self.request_bytes(
            "POST", path, data=payload, timeout=timeout, content_type="application/json",
        )
        return model.model_validate_json(raw) if model is not None else None

    async def delete(self, path: str, *, timeout: float | None = None) -> None:
        await self.request_bytes("DELETE", path, timeout=timeout)

    async def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """The daemon's /healthz body; a not-ready daemon answers 503 with the same body."""
        # On the pooled transport: the gateway asks three daemons on every CRI Status.
        _, raw = await self._cri.request("GET", "/healthz", b"", self._headers(None), timeout)
        try:
            result = json.loads(raw)
        except ValueError:
            raise Internal(f"{self.name} answered /healthz with something not JSON") from None
        if not isinstance(result, dict):
            raise Internal(f"{self.name} answered /healthz with {type(result).__name__}")
        return result
