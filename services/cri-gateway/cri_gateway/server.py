"""The gateway's gRPC server: the part of HTTP/2 a CRI client uses, and nothing else.

grpclib's server (over the h2 state machine) took about 0.25 ms of CPU per unary call
here, more than containerd's whole read (issue 14). The gateway needs little of it: it
never decodes a message, every call is unary or server-streaming, and every answer starts
with the same headers. This server keeps HTTP/2's rules where a client depends on them
and drops the rest:

- frames (RFC 9113 section 6): SETTINGS acknowledged and applied (initial window, frame
  size), PING answered, WINDOW_UPDATE honoured both ways, RST_STREAM cancels the call,
  GOAWAY from the client ends the connection once its calls are answered, PRIORITY and
  unknown frame types ignored (as the RFC requires), PUSH_PROMISE from a client is a
  connection error;
- shutdown in two GOAWAYs (section 6.8): `stop_accepting` sends the first, so clients
  open their next calls elsewhere while the calls in flight finish; `close` the last;
- request headers decoded by `hpack` (its dynamic table must follow the client's);
- answers encoded without the dynamic table (literal fields, "without indexing"), so the
  headers every answer shares are bytes built once (`_RESPONSE_HEADERS`);
- a call's writes in one loop turn leave in one `write` (one wake-up of the client).

What the gateway does with a call (ids, deadline, routing, errors, metrics) is
`forward.Gateway`; this module only moves bytes. A call's deadline (`grpc-timeout`) is
enforced around the handler, as grpclib did: DEADLINE_EXCEEDED when it passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable

import hpack
import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from crib_common.protowire import varint

__all__ = ["CallStream", "GrpcServer", "encode_grpc_message", "parse_grpc_timeout"]

log = structlog.get_logger("crib.gateway")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags, RFC 9113 section 6.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes, RFC 9113 section 7.
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 3
FRAME_SIZE_ERROR, CANCEL, COMPRESSION_ERROR = 6, 8, 9
# SETTINGS identifiers, section 6.5.2.
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
# Protocol defaults (section 6.5.2) until the client's SETTINGS say otherwise.
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1  # a stream identifier is 31 bits (section 5.1.1)
# What we let a client send before our WINDOW_UPDATEs: the largest request the gateway
# accepts (16 MiB by default) fits without waiting for credit; credit is returned once
# half of it is used.
RECEIVE_WINDOW = 1 << 24

_FRAME_HEAD = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream
_MESSAGE_HEAD = struct.Struct(">?I")  # gRPC's length prefix: compressed flag, size


def _frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with `first`'s high bits in its first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    # The rest in 7-bit groups, low first, the high bit saying "more": a varint.
    return bytes((first | limit,)) + varint(value - limit)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field "literal without indexing, new name" (RFC 7541 section 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# ":status: 200" is static entry 8; "content-type" static name 31, literal value.
_RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4) + _hpack_int(16, 7) + b"application/grpc"
_GRPC_OK = _literal(b"grpc-status", b"0")


def encode_grpc_message(message: str) -> bytes:
    """grpc-message's percent-encoding (gRPC over HTTP2: bytes outside 0x20-0x7E and %)."""
    raw = message.encode("utf-8")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in raw)


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds of a `grpc-timeout` header ("100m", "5S"); None when absent or malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:]) if value else None
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class _Reset(Exception):
    """The client reset the stream (or the connection ended) while we sent."""


class CallStream:
    """One call: its request headers and body, and the way back (`forward.Call`)."""

    __slots__ = ("_conn", "id", "path", "headers", "body", "ended", "reset", "refused",
                 "headers_sent", "partial", "send_window", "received", "task", "deadline")

    def __init__(self, conn: _Connection, stream_id: int, headers: dict[str, str],
                 send_window: int) -> None:
        self._conn = conn
        self.id = stream_id
        self.path = headers.get(":path", "")
        self.headers = headers
        self.body = bytearray()
        self.ended = False
        self.reset = False
        self.refused = False  # a declared size over the limit: the rest is not kept
        self.headers_sent = False
        self.partial = False  # a message begun and not wholly sent (waiting for window)
        self.send_window = send_window
        self.received = 0  # DATA bytes not yet given back as stream credit
        self.task: asyncio.Task[None] | None = None
        timeout = parse_grpc_timeout(headers.get("grpc-timeout", ""))
        self.deadline = None if timeout is None else conn.loop.time() + timeout

    # -- what the gateway's wrapper uses (forward.Call)
    def metadata(self, key: str) -> str | None:
        return self.headers.get(key)

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - self._conn.loop.time(), 0.0)

    def request(self) -> bytes:
        return bytes(self.body)

    async def send_initial_metadata(self) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            self._conn.write(_frame(HEADERS, END_HEADERS, self.id, _RESPONSE_HEADERS))

    async def send_message(self, message: bytes) -> None:
        if self.reset:
            raise _Reset()
        await self.send_initial_metadata()
        self.partial = True
        await self._conn.send_data(self, _MESSAGE_HEAD.pack(False, len(message)) + message)
        self.partial = False


Handler = Callable[[str, CallStream], Awaitable[None]]


class _Connection(asyncio.Protocol):
    """One client connection (section 5: streams, section 6.9: flow control)."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder()
        self.streams: dict[int, CallStream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.received = 0  # DATA bytes not yet given back as connection credit
        self.window_open = asyncio.Event()
        self.pending: list[bytes] = []
        # A header block cut into HEADERS + CONTINUATION: (stream id, flags, fragments).
        self.continuing: tuple[int, int, list[bytes]] | None = None
        self.going_away = False  # the client sent GOAWAY
        self.told_to_go = False  # we sent the first GOAWAY of a graceful shutdown

    # -------------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        # Our SETTINGS (the receive window), then the connection's window raised to match.
        self.write(_frame(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE,
                                                      RECEIVE_WINDOW)))
        self.write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECEIVE_WINDOW - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.reset = True
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.window_open.set()

    def write(self, data: bytes) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        if self.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.pending))
        self.pending.clear()

    def go_away(self) -> None:
        """The first GOAWAY of a graceful shutdown (RFC 9113 section 6.8): NO_ERROR with
        the largest stream id, so nothing the client already sent is refused. Without
        it a grpc-go client (the kubelet) keeps sending new calls on this connection
        while we drain, each answered UNAVAILABLE "shutting down"; with it grpc-go
        opens its next calls on a new connection, to the gateway that comes next (and
        grpcio does the same). Clients built on python-hyper/h2 (grpclib's, crib's CLI)
        close the connection at any GOAWAY (h2 issue 1181): their calls in flight then
        fail where the drain used to answer them; the kubelet is the client served."""
        if self.transport is not None and not self.told_to_go:
            self.told_to_go = True
            self.write(_frame(GOAWAY, 0, 0, struct.pack(">II", MAX_STREAM_ID, NO_ERROR)))

    def close(self, error: int = NO_ERROR) -> None:
        """The last GOAWAY (naming the last stream we took), then the end."""
        if self.transport is None:
            return
        self.write(_frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, error)))
        self.flush()
        self.transport.close()

    # -------------------------------------------------------------- frames in
    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(PREFACE):
                return
            if buffer[:len(PREFACE)] != PREFACE:
                self.close(PROTOCOL_ERROR)
                return
            del buffer[:len(PREFACE)]
            self.preface = True
        offset = 0
        size = len(buffer)
        try:
            while size - offset >= 9 and self.transport is not None:
                length = (buffer[offset] << 16) | (buffer[offset + 1] << 8) | buffer[offset + 2]
                if length > DEFAULT_MAX_FRAME:  # we never raise SETTINGS_MAX_FRAME_SIZE
                    self.close(FRAME_SIZE_ERROR)
                    return
                if size - offset < 9 + length:
                    break
                kind = buffer[offset + 3]
                flags = buffer[offset + 4]
                stream_id = int.from_bytes(buffer[offset + 5:offset + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[offset + 9:offset + 9 + length])
                offset += 9 + length
                self._frame(kind, flags, stream_id, payload)
        except _ConnectionError as exc:
            log.info("grpc connection error", error=str(exc))
            self.close(exc.code)
            return
        del buffer[:offset]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload)
            else:
                self.continuing = (stream_id, flags, [payload])
        elif kind == CONTINUATION:
            if self.continuing is None or self.continuing[0] != stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.continuing[2].append(payload)
            if flags & END_HEADERS:
                first, first_flags, parts = self.continuing
                self.continuing = None
                self._headers(first, first_flags, b"".join(parts))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
                self.write(_frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                self.write(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.reset = True
                if stream.task is not None:
                    stream.task.cancel()
                self.window_open.set()
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams:
                self.close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown types: ignored (section 5.5).

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                self.window_open.set()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            # Header table size: our encoder uses no dynamic table; the rest do not apply.

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of bad length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self.window_open.set()

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            fields = self.decoder.decode(block)
        except Exception as exc:  # hpack's errors: the decoder's state is lost (7.)
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client end its request
            if flags & END_STREAM:
                self._request_ended(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"bad stream id {stream_id}")
        self.last_stream = stream_id
        headers = {str(k): str(v) for k, v in fields}
        stream = CallStream(self, stream_id, headers, self.peer_initial_window)
        self.streams[stream_id] = stream
        if not headers.get("content-type", "").startswith("application/grpc"):
            # Not gRPC: an HTTP error, as grpclib answered (415 Unsupported Media Type).
            self.write(_frame(HEADERS, END_HEADERS | END_STREAM, stream_id,
                              _literal(b":status", b"415")))
            del self.streams[stream_id]
            return
        if flags & END_STREAM:
            self._request_ended(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        if flags & PADDED:
            payload = _unpad(payload)
        self.received += size
        if self.received >= RECEIVE_WINDOW // 2:
            self.write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            return  # a reset or answered stream: the bytes only count for the connection
        stream.received += size
        if stream.received >= RECEIVE_WINDOW // 2 and not flags & END_STREAM:
            self.write(_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.received)))
            stream.received = 0
        if not stream.refused:
            stream.body += payload
            limit = self.server.max_request
            if len(stream.body) >= 5 and _MESSAGE_HEAD.unpack_from(stream.body)[1] > limit:
                # Answered now (RESOURCE_EXHAUSTED) from the prefix: the rest is dropped.
                stream.refused = True
                del stream.body[5:]
                self._dispatch(stream)
                return
        if flags & END_STREAM:
            self._request_ended(stream)

    def _request_ended(self, stream: CallStream) -> None:
        stream.ended = True
        if stream.task is None:
            self._dispatch(stream)

    def _dispatch(self, stream: CallStream) -> None:
        stream.task = self.loop.create_task(self._run(stream))

    async def _run(self, stream: CallStream) -> None:
        status, message = Status.OK, ""
        try:
            timeout = stream.time_remaining()
            try:
                async with asyncio.timeout(timeout):
                    await self.server.handler(stream.path, stream)
            except TimeoutError:
                status, message = Status.DEADLINE_EXCEEDED, "Deadline exceeded"
        except GRPCError as exc:
            status, message = exc.status, exc.message or ""
        except (_Reset, asyncio.CancelledError):
            self.streams.pop(stream.id, None)
            return  # the client is gone or gave up: nothing to answer
        except Exception:  # forward.Gateway maps everything; this is a bug of ours
            log.exception("grpc handler crashed", path=stream.path)
            status, message = Status.UNKNOWN, "Internal Server Error"
        self._finish(stream, status, message)

    def _finish(self, stream: CallStream, status: Status, message: str) -> None:
        self.streams.pop(stream.id, None)
        if stream.reset or self.transport is None:
            return
        if stream.partial:
            # Cut mid-message (a deadline while the answer waited for window): a status
            # after a truncated message reads as a broken answer ("unexpected EOF",
            # INTERNAL), so the stream is reset. A client whose deadline has passed
            # reports DEADLINE_EXCEEDED for a CANCEL (grpc-go's handleRSTStream).
            self.write(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", CANCEL)))
            if self.going_away and not self.streams:
                self.close()
            return
        if status is Status.OK:
            trailers = _GRPC_OK
        else:
            trailers = _literal(b"grpc-status", str(status.value).encode())
            if message:
                trailers += _literal(b"grpc-message", encode_grpc_message(message))
        if not stream.headers_sent:
            trailers = _RESPONSE_HEADERS + trailers  # trailers-only answer
        self._write_headers(stream.id, trailers, END_STREAM)
        if not stream.ended:
            # The client still sends (a refused oversized request): it may stop now.
            self.write(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
        if self.going_away and not self.streams:
            self.close()

    def _write_headers(self, stream_id: int, block: bytes, flags: int) -> None:
        limit = self.peer_max_frame
        if len(block) <= limit:
            self.write(_frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        self.write(_frame(HEADERS, flags, stream_id, block[:limit]))
        rest = block[limit:]
        while rest:
            part, rest = rest[:limit], rest[limit:]
            self.write(_frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, part))

    # -------------------------------------------------------------- frames out
    async def send_data(self, stream: CallStream, data: bytes) -> None:
        """Send `data` on `stream` as DATA frames within both flow-control windows."""
        view = memoryview(data)
        while view:
            if stream.reset or self.transport is None:
                raise _Reset()
            allowed = min(self.send_window, stream.send_window, self.peer_max_frame)
            if allowed <= 0:
                self.window_open.clear()
                self.flush()
                await self.window_open.wait()
                continue
            chunk = view[:allowed]
            view = view[allowed:]
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
            self.write(_frame(DATA, 0, stream.id, chunk))


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
    return payload[1:len(payload) - payload[0]]


class GrpcServer:
    """Serves `handler(path, call)` for every gRPC call on a UNIX socket."""

    def __init__(self, handler: Handler, *, max_request: int) -> None:
        self.handler = handler
        self.max_request = max_request  # a request message's largest declared size
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path)

    def stop_accepting(self) -> None:
        """No new connections, and every open one told to go away (`_Connection.go_away`):
        calls in flight, and calls already on their way, still reach the handler."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()

    def close(self) -> None:
        """End every connection (GOAWAY, then close); calls still running are cancelled."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
