"""ttrpc, the small RPC protocol NRI speaks on each multiplexed connection
(containerd/ttrpc `PROTOCOL.md`), unary calls only, as NRI uses it.

A message is a 10-byte header (u32 big-endian data length, u32 big-endian stream id, u8
type, u8 flags) and its data, at most 4 MiB. A request's data is ttrpc's `Request`, a
response's its `Response` (containerd/ttrpc `request.proto`):

    Request  { string service = 1; string method = 2; bytes payload = 3;
               int64 timeout_nano = 4; repeated KeyValue metadata = 5; }
    KeyValue { string key = 1; string value = 2; }
    Response { google.rpc.Status status = 1; bytes payload = 2; }
    Status   { int32 code = 1; string message = 2; repeated Any details = 3; }

Client streams are odd and strictly increasing. `Client.call` takes its stream id and
sends its frames with no await in between, so ids reach the wire in increasing order
whatever else runs. `Channel` reassembles messages from whatever the frames carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import structlog

from crib_common.protowire import field as pb_field
from crib_common.protowire import read_varint, varint

from .mux import Mux

__all__ = [
    "Channel",
    "Client",
    "Code",
    "ConnectionClosed",
    "Request",
    "Response",
    "Server",
    "TtrpcError",
    "decode_request",
    "decode_response",
    "encode_message",
    "encode_request",
    "encode_response",
]

log = structlog.get_logger("crib.runtimed.nri")

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = 10
# ttrpc channel.go messageLengthMax.
MESSAGE_LENGTH_MAX = 4 << 20
TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
TYPE_DATA = 0x3


class Code:
    """gRPC status codes, as ttrpc carries them (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class TtrpcError(Exception):
    """The peer answered with a non-OK status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ttrpc status {code}: {message}")
        self.code = code
        self.message = message


class ConnectionClosed(ConnectionError):
    """The connection went away before the answer came."""


# ------------------------------------------------------------------ protobuf, by hand

def _scan(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a protobuf message."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = read_varint(data, pos)
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            yield number, wire, data[pos:pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("truncated field")


def _signed(value: int, bits: int) -> int:
    value &= (1 << 64) - 1
    if bits == 32:
        value &= 0xFFFFFFFF
        return value - (1 << 32) if value >= 1 << 31 else value
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class Request:
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Response:
    payload: bytes = b""
    code: int = 0
    message: str = ""


def encode_request(req: Request) -> bytes:
    """ttrpc `Request`, proto3: fields at their default are left out."""
    out = b""
    if req.service:
        out += pb_field(1, req.service.encode())
    if req.method:
        out += pb_field(2, req.method.encode())
    if req.payload:
        out += pb_field(3, req.payload)
    if req.timeout_nano:
        out += varint(4 << 3) + varint(req.timeout_nano)
    for key, value in req.metadata:
        kv = (pb_field(1, key.encode()) if key else b"") + \
            (pb_field(2, value.encode()) if value else b"")
        out += pb_field(5, kv)
    return out


def decode_request(data: bytes) -> Request:
    req = Request(service="", method="")
    for number, wire, value in _scan(data):
        if wire == 2 and isinstance(value, bytes):
            if number == 1:
                req.service = value.decode()
            elif number == 2:
                req.method = value.decode()
            elif number == 3:
                req.payload = value
            elif number == 5:
                key = val = ""
                for n, w, v in _scan(value):
                    if w == 2 and isinstance(v, bytes):
                        if n == 1:
                            key = v.decode()
                        elif n == 2:
                            val = v.decode()
                req.metadata.append((key, val))
        elif wire == 0 and number == 4 and isinstance(value, int):
            req.timeout_nano = _signed(value, 64)
    return req


def encode_response(resp: Response) -> bytes:
    out = b""
    if resp.code or resp.message:
        status = (varint(1 << 3) + varint(resp.code) if resp.code else b"") + \
            (pb_field(2, resp.message.encode()) if resp.message else b"")
        out += pb_field(1, status)
    if resp.payload:
        out += pb_field(2, resp.payload)
    return out


def decode_response(data: bytes) -> Response:
    resp = Response()
    for number, wire, value in _scan(data):
        if wire != 2 or not isinstance(value, bytes):
            continue
        if number == 1:
            for n, w, v in _scan(value):
                if n == 1 and w == 0 and isinstance(v, int):
                    resp.code = _signed(v, 32)
                elif n == 2 and w == 2 and isinstance(v, bytes):
                    resp.message = v.decode(errors="replace")
        elif number == 2:
            resp.payload = value
    return resp


def encode_message(stream_id: int, kind: int, flags: int, data: bytes) -> bytes:
    """Header and data of one ttrpc message."""
    if len(data) > MESSAGE_LENGTH_MAX:
        raise TtrpcError(Code.RESOURCE_EXHAUSTED,
                         f"message length {len(data)} exceeds {MESSAGE_LENGTH_MAX}")
    return HEADER.pack(len(data), stream_id, kind, flags) + data


# ------------------------------------------------------------------ a connection

class Channel:
    """One multiplexed connection's bytes, reassembled into ttrpc messages, each handed
    to `on_message(stream_id, type, flags, data)`."""

    def __init__(self, mux: Mux, conn_id: int,
                 on_message: Callable[[int, int, int, bytes], None]) -> None:
        self.mux = mux
        self.conn_id = conn_id
        self._buffer = bytearray()
        self._on_message = on_message
        mux.open(conn_id, self._receive)

    def _receive(self, payload: bytes) -> None:
        self._buffer += payload
        while len(self._buffer) >= HEADER_LENGTH:
            length, stream_id, kind, flags = HEADER.unpack_from(self._buffer)
            if length > MESSAGE_LENGTH_MAX:
                raise ValueError(f"ttrpc message of {length} bytes exceeds the 4 MiB limit")
            if len(self._buffer) < HEADER_LENGTH + length:
                return
            data = bytes(self._buffer[HEADER_LENGTH:HEADER_LENGTH + length])
            del self._buffer[:HEADER_LENGTH + length]
            self._on_message(stream_id, kind, flags, data)

    def send(self, stream_id: int, kind: int, data: bytes, flags: int = 0) -> None:
        self.mux.send(self.conn_id, encode_message(stream_id, kind, flags, data))


class Client:
    """Unary calls on one connection."""

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self._channel = Channel(mux, conn_id, self._on_message)
        self._next_stream = 1
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._closed: BaseException | None = None
        mux.on_close.append(self._on_close)

    def _on_message(self, stream_id: int, kind: int, _flags: int, data: bytes) -> None:
        waiter = self._pending.pop(stream_id, None)
        if waiter is None or waiter.done():
            return  # an answer after its caller gave up
        if kind != TYPE_RESPONSE:
            waiter.set_exception(TtrpcError(Code.INTERNAL, f"unexpected message type {kind}"))
            return
        try:
            waiter.set_result(decode_response(data))
        except ValueError as exc:
            waiter.set_exception(TtrpcError(Code.INTERNAL, f"bad response: {exc}"))

    def _on_close(self, error: BaseException | None) -> None:
        self._closed = ConnectionClosed(str(error) if error else "connection closed")
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(self._closed)
        self._pending.clear()

    async def call(self, service: str, method: str, payload: bytes, timeout: float) -> bytes:
        """One unary call; TtrpcError for a non-OK status, ConnectionClosed, TimeoutError."""
        if self._closed is not None:
            raise self._closed
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        # The stream id is taken and its frames queued in one step (no await between):
        # ids reach the wire strictly increasing.
        stream_id = self._next_stream
        self._next_stream += 2
        self._pending[stream_id] = waiter
        try:
            self._channel.send(stream_id, TYPE_REQUEST, encode_request(Request(
                service=service, method=method, payload=payload,
                timeout_nano=int(timeout * 1e9))))
        except BaseException:
            self._pending.pop(stream_id, None)
            raise
        try:
            async with asyncio.timeout(timeout):
                await self._channel.mux.drain()
                resp = await waiter
        finally:
            self._pending.pop(stream_id, None)
        if resp.code != Code.OK:
            raise TtrpcError(resp.code, resp.message)
        return resp.payload


Handler = Callable[[bytes], Awaitable[bytes]]


class Server:
    """Serves `handlers[(service, method)]` on one connection; each request runs in its
    own task and is answered on its stream id."""

    def __init__(self, mux: Mux, conn_id: int, handlers: dict[tuple[str, str], Handler]) -> None:
        self._handlers = handlers
        self._channel = Channel(mux, conn_id, self._on_message)
        self._tasks: set[asyncio.Task[None]] = set()
        mux.on_close.append(lambda _e: self._cancel())

    def _on_message(self, stream_id: int, kind: int, _flags: int, data: bytes) -> None:
        if kind != TYPE_REQUEST:
            return  # unary only: no data messages
        task = asyncio.ensure_future(self._serve(stream_id, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream_id: int, data: bytes) -> None:
        try:
            req = decode_request(data)
            handler = self._handlers.get((req.service, req.method))
            if handler is None:
                resp = Response(code=Code.UNIMPLEMENTED,
                                message=f"{req.service}/{req.method} is not implemented")
            else:
                resp = Response(payload=await handler(req.payload))
        except TtrpcError as exc:
            resp = Response(code=exc.code, message=exc.message)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.warning("nri request failed", error=str(exc))
            resp = Response(code=Code.UNKNOWN, message=str(exc))
        with contextlib.suppress(ConnectionError):
            self._channel.send(stream_id, TYPE_RESPONSE, encode_response(resp))

    def _cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
