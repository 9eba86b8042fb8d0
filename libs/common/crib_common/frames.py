"""The gateway's hop for unary CRI calls: length-prefixed frames on a second UNIX socket.

Every daemon that serves CRI methods listens, beside its REST socket `<name>.sock`, on
`<name>.cri.sock` (`frame_socket`). The gateway keeps a pool of connections there and
passes the kubelet's protobuf bytes through and the daemon's bytes back, without decoding
either. HTTP/1.1 on the REST socket did the same job, but parsing and writing an HTTP
request and answer on both sides (aiohttp's server in the daemon) was most of the hop's
cost (issue 14). Streams and everything operator-facing stay on HTTP.

One frame is a 4-byte big-endian length and that many bytes:

    request  = u8 len | path (ASCII, "/runtime.v1.RuntimeService/Version")
               u8 len | request id (ASCII, may be empty)
               f64    | seconds left for the call (big-endian; NaN: none)
               rest   | the protobuf request
    answer   = u16    | status: 200 with the protobuf answer as the rest, or the HTTP
                        status of the error with the daemon's JSON `ErrorBody` as the rest,
                        so the client rebuilds the same error as from an HTTP answer
                        (`errors.error_from_body`)

A connection carries one call at a time (the client's pool never pipelines), so answers
need no id. A daemon closes a connection it cannot read (a frame over `MAX_FRAME`, a bad
header) after answering what it can; the client treats a closed connection without an
answer as the daemon gone (Unavailable) or, for a pooled connection closed before our
request reached it, sends again on a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = [
    "FrameServer",
    "MAX_FRAME",
    "frame_socket",
    "pack_answer",
    "pack_request",
    "unpack_request",
]

# As the daemons' aiohttp `client_max_size`: the gateway refuses larger requests first
# (its own `max_message_bytes`), so this only bounds a confused client.
MAX_FRAME = 64 * 1024 * 1024

_LEN = struct.Struct(">I")
_TIMEOUT = struct.Struct(">d")
_STATUS = struct.Struct(">IH")  # frame length, then the answer's status


def frame_socket(rest_socket: Path) -> Path:
    """The frame socket beside a daemon's REST socket: runtimed.sock -> runtimed.cri.sock."""
    return rest_socket.with_name(f"{rest_socket.stem}.cri{rest_socket.suffix or '.sock'}")


def pack_request(path: bytes, request_id: bytes, timeout: float | None, body: bytes) -> bytes:
    """One request frame (see the module docstring)."""
    head = b"".join((
        bytes((len(path),)), path, bytes((len(request_id),)), request_id,
        _TIMEOUT.pack(math.nan if timeout is None else timeout),
    ))
    return _LEN.pack(len(head) + len(body)) + head + body


def unpack_request(payload: bytes) -> tuple[str, str, float | None, bytes]:
    """(path, request id, timeout, body) of a request frame's payload; ValueError if bad."""
    try:
        end = 1 + payload[0]
        path = payload[1:end].decode("ascii")
        rid_end = end + 1 + payload[end]
        request_id = payload[end + 1:rid_end].decode("ascii")
        (timeout,) = _TIMEOUT.unpack_from(payload, rid_end)
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise ValueError(f"bad CRI frame header: {exc}") from None
    return (path, request_id, None if math.isnan(timeout) else max(timeout, 0.0),
            payload[rid_end + _TIMEOUT.size:])


def pack_answer(status: int, body: bytes) -> bytes:
    """One answer frame: the status and the protobuf answer or JSON error body."""
    return _STATUS.pack(len(body) + 2, status) + body


# Answers one request frame's payload with (status, body); never raises.
Dispatch = Callable[[bytes], Awaitable[tuple[int, bytes]]]


class _ServerConnection(asyncio.Protocol):
    """One gateway connection: frames read in order, each answered before the next."""

    def __init__(self, server: FrameServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def busy(self) -> bool:
        return self._busy

    def _next(self) -> None:
        buffer = self._buffer
        if len(buffer) < 4 or self._transport is None:
            return
        (size,) = _LEN.unpack_from(buffer)
        if size > MAX_FRAME:
            self._transport.write(pack_answer(
                413, b'{"kind":"resource_exhausted","message":"CRI frame of %d bytes '
                b'exceeds the limit of %d"}' % (size, MAX_FRAME)))
            self._transport.close()
            return
        if len(buffer) < 4 + size:
            return
        payload = bytes(buffer[4:4 + size])
        del buffer[:4 + size]
        self._busy = True
        self._server.loop.create_task(self._answer(payload))

    async def _answer(self, payload: bytes) -> None:
        try:
            status, body = await self._server.dispatch(payload)
        finally:
            self._busy = False
        if self._transport is None:
            return  # the gateway gave up on this call (its deadline) and closed
        self._transport.write(pack_answer(status, body))
        self._next()


class FrameServer:
    """Serves the frame socket of one daemon; `dispatch` answers each call."""

    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        self.loop = asyncio.get_running_loop()
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.path: Path | None = None

    async def start(self, path: Path, mode: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await self.loop.create_unix_server(
            lambda: _ServerConnection(self), str(path))
        os.chmod(path, mode)
        self.path = path

    async def close(self, timeout: float) -> None:
        """Stop accepting, give calls in flight `timeout` to answer, close the rest."""
        if self._server is not None:
            self._server.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        deadline = self.loop.time() + timeout
        while any(c.busy for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
