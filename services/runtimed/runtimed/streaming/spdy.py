"""SPDY/3.1 framing and a stream-multiplexing connection on an asyncio transport.

Kubernetes upgrades an HTTP/1.1 request to "SPDY/3.1" (k8s.io/apimachinery
`pkg/util/httpstream/spdy`, built on moby/spdystream) and then opens one SPDY stream per
channel: the client sends SYN_STREAM with headers (`streamtype`, `port`, `requestid`), the
server answers SYN_REPLY, and both sides exchange DATA frames until each half is closed with
FLAG_FIN. Only what that use needs is implemented (draft-mbelshe-httpbis-spdy-00, SPDY/3):

    control frame   |1| version=3 (15) | type (16) | flags (8) | length (24) | payload
    data frame      |0| stream id (31)             | flags (8) | length (24) | payload

Header blocks are zlib streams with the SPDY/3 dictionary, one compression context per
direction for the whole connection, each block ended by a sync flush (section 2.6.10.1).
Flow control: we grant the peer window back as we consume data (WINDOW_UPDATE) and do not
throttle our own sends, as spdystream does not enforce windows either.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from .spdy_headers import (
    SPDY_DICTIONARY,
    HeaderCompressor,
    HeaderDecompressor,
    Headers,
    SpdyError,
    decode_headers,
    encode_headers,
    header,
)

__all__ = [
    "SPDY_DICTIONARY",
    "SpdyConnection",
    "SpdyError",
    "SpdyStream",
    "decode_headers",
    "encode_headers",
]

log = structlog.get_logger("runtimed.streaming.spdy")

VERSION = 3
# Frame types (SPDY/3 section 2.6).
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
# RST_STREAM status codes (section 2.6.3).
RST_PROTOCOL_ERROR = 1
RST_INVALID_STREAM = 2
RST_REFUSED_STREAM = 3
RST_CANCEL = 5
RST_STREAM_IN_USE = 8
# Largest frame payload we accept: spdystream caps header blocks far lower, and data frames
# we send are at most MAX_DATA; 16 MiB is the protocol's own limit (24-bit length).
MAX_FRAME = (1 << 24) - 1
# Our DATA frames carry at most this much; 32 KiB is spdystream's read buffer.
MAX_DATA = 32 * 1024
# Received data a stream may hold unread before the connection stops reading frames: our
# peers (spdystream) do not honour windows, so this is the only backpressure. The reader
# of the whole connection waits, as spdystream's own frame loop does on a full stream.
MAX_BUFFERED = 4 * 1024 * 1024
# Default initial window (SPDY/3.1 section 2.6.8); we re-grant consumed bytes in steps.
INITIAL_WINDOW = 64 * 1024
WINDOW_STEP = 32 * 1024


class ByteWriter(Protocol):
    """The part of asyncio.StreamWriter a connection writes through (a WebSocket tunnel
    provides the same)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


@dataclass(eq=False)
class SpdyStream:
    """One SPDY stream: an inbox of received data and our half to write to."""

    conn: SpdyConnection
    id: int
    headers: Headers
    _inbox: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    _pending: bytes = b""
    _unacked: int = 0
    _buffered: int = 0
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    remote_closed: bool = False
    local_closed: bool = False
    reset: bool = False
    replied: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> str:
        return header(self.headers, name)

    async def read(self, n: int = -1) -> bytes:
        """Next chunk of data (up to n bytes if n > 0); b"" once the peer closed its half."""
        if not self._pending:
            chunk = await self._inbox.get()
            if chunk is None:
                self._inbox.put_nowait(None)  # stay at EOF for later readers
                return b""
            self._pending = chunk
            self._grant(len(chunk))
            self._buffered -= len(chunk)
            if self._buffered <= MAX_BUFFERED // 2:
                self._room.set()
        if n < 0 or n >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:n], self._pending[n:]
        return data

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        """Everything until the peer closes its half (at most `limit` bytes)."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            chunk = await self.read()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def _grant(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= WINDOW_STEP and not self.reset:
            self.conn._send_window_update(self.id, self._unacked)
            self._unacked = 0

    def _feed(self, data: bytes | None) -> None:
        if data is None:
            self._room.set()  # nobody waits for room on a finished stream
        else:
            self._buffered += len(data)
            if self._buffered > MAX_BUFFERED:
                self._room.clear()
        self._inbox.put_nowait(data)

    async def _wait_room(self) -> None:
        if self._buffered > MAX_BUFFERED and not (self.reset or self.remote_closed):
            await self._room.wait()

    async def write(self, data: bytes) -> None:
        """Send data on this stream (split into frames of at most MAX_DATA)."""
        if self.local_closed or self.reset:
            raise SpdyError(f"stream {self.id} is closed for writing")
        view = memoryview(data)
        for off in range(0, len(view), MAX_DATA):
            self.conn._send_data(self.id, bytes(view[off:off + MAX_DATA]), fin=False)
            await self.conn._drain()

    async def close(self) -> None:
        """Close our half with an empty DATA frame carrying FLAG_FIN (idempotent)."""
        if self.local_closed or self.reset or self.conn.closed:
            self.local_closed = True
            return
        self.local_closed = True
        self.conn._send_data(self.id, b"", fin=True)
        await self.conn._drain()
        self.conn._maybe_forget(self)

    def abort(self, status: int = RST_CANCEL) -> None:
        """Reset the stream (RST_STREAM); both halves end at once."""
        if not self.reset and not self.conn.closed:
            self.conn._send_control(RST_STREAM, 0, struct.pack(">II", self.id, status))
        self.reset = True
        self.local_closed = True
        self._feed(None)
        self.conn._maybe_forget(self)


StreamHandler = Callable[[SpdyStream], Awaitable[None] | None]


class SpdyConnection:
    """A SPDY/3.1 session over an already-upgraded asyncio stream pair.

    A server passes `on_stream`, called for each SYN_STREAM the peer opens (after our
    SYN_REPLY, as k8s' server replies to every stream at once); a client calls
    `open_stream`. `run()` reads frames until the peer goes away.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: ByteWriter, *,
                 client: bool, on_stream: StreamHandler | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._client = client
        self._on_stream = on_stream
        self._compress = HeaderCompressor()
        self._decompress = HeaderDecompressor()
        # Client-initiated streams are odd, server-initiated even (section 2.3.2).
        self._next_id = 1 if client else 2
        self.streams: dict[int, SpdyStream] = {}
        self.closed = False
        self._goaway = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._next_ping = 1 if client else 2

    # -- writing --------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self.closed or self._writer.is_closing():
            raise SpdyError("connection closed")
        self._writer.write(frame)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self.closed = True
            raise SpdyError(f"connection lost: {e}") from e

    def _send_control(self, ftype: int, flags: int, payload: bytes) -> None:
        self._write(struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload))
                    + payload)

    def _send_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        self._write(struct.pack(">II", stream_id & 0x7FFFFFFF,
                                ((FLAG_FIN if fin else 0) << 24) | len(data)) + data)

    def _send_window_update(self, stream_id: int, delta: int) -> None:
        with contextlib.suppress(SpdyError):
            self._send_control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))

    async def open_stream(self, headers: Headers, fin: bool = False,
                          timeout: float = 30.0) -> SpdyStream:
        """Client side: SYN_STREAM and wait for the peer's SYN_REPLY."""
        sid = self._next_id
        self._next_id += 2
        stream = SpdyStream(self, sid, headers)
        self.streams[sid] = stream
        block = self._compress.compress(headers)
        # stream id, associated id 0, priority 0 + unused + slot 0.
        self._send_control(SYN_STREAM, FLAG_FIN if fin else 0,
                           struct.pack(">IIH", sid, 0, 0) + block)
        stream.local_closed = fin
        await self._drain()
        await asyncio.wait_for(stream.replied.wait(), timeout)
        if stream.reset:
            raise SpdyError(f"stream {sid} refused")
        return stream

    async def ping(self, timeout: float = 10.0) -> None:
        """Round trip a PING (section 2.6.5)."""
        pid = self._next_ping
        self._next_ping += 2
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[pid] = fut
        self._send_control(PING, 0, struct.pack(">I", pid))
        await self._drain()
        await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        """GOAWAY, then close the transport."""
        if self.closed:
            return
        with contextlib.suppress(SpdyError):
            last = max((s for s in self.streams if (s % 2 == 1) != self._client), default=0)
            self._send_control(GOAWAY, 0, struct.pack(">II", last, 0))
            with contextlib.suppress(SpdyError):
                await asyncio.wait_for(self._drain(), 5)
        self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.remote_closed = True
            stream._feed(None)
            stream.replied.set()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(SpdyError("connection closed"))
        self._writer.close()

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if (stream.local_closed and stream.remote_closed) or stream.reset:
            self.streams.pop(stream.id, None)

    # -- reading --------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and dispatch frames until EOF, GOAWAY with no streams left, or an error."""
        try:
            while True:
                try:
                    head = await self._reader.readexactly(8)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first, second = struct.unpack(">II", head)
                flags = second >> 24
                length = second & 0xFFFFFF
                try:
                    payload = await self._reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if first & 0x80000000:
                    version = (first >> 16) & 0x7FFF
                    if version != VERSION:
                        raise SpdyError(f"unsupported SPDY version {version}")
                    await self._on_control(first & 0xFFFF, flags, payload)
                else:
                    stream = self._on_data(first & 0x7FFFFFFF, flags, payload)
                    if stream is not None:
                        await stream._wait_room()
        except _GoAway:
            pass
        except SpdyError as e:
            log.warning("spdy protocol error", error=str(e))
        finally:
            self._shutdown()
            for task in list(self._tasks):
                task.cancel()

    def _on_data(self, sid: int, flags: int, payload: bytes) -> SpdyStream | None:
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            # Data for a stream we forgot (reset or finished): tell the peer once.
            with contextlib.suppress(SpdyError):
                self._send_control(RST_STREAM, 0, struct.pack(">II", sid, RST_INVALID_STREAM))
            return None
        if payload:
            stream._feed(payload)
        if flags & FLAG_FIN:
            stream.remote_closed = True
            stream._feed(None)
            self._maybe_forget(stream)
        return stream

    async def _on_control(self, ftype: int, flags: int, payload: bytes) -> None:
        if ftype == SYN_STREAM:
            if len(payload) < 10:
                raise SpdyError("short SYN_STREAM")
            sid = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            headers = self._decompress.decompress(payload[10:])
            if self._on_stream is None or self._goaway or sid in self.streams:
                code = RST_STREAM_IN_USE if sid in self.streams else RST_REFUSED_STREAM
                self._send_control(RST_STREAM, 0, struct.pack(">II", sid, code))
                return
            stream = SpdyStream(self, sid, headers)
            stream.remote_closed = bool(flags & FLAG_FIN)
            if stream.remote_closed:
                stream._feed(None)
            self.streams[sid] = stream
            # Reply at once (k8s' spdy server does the same before handing the stream on).
            self._send_control(SYN_REPLY, 0, struct.pack(">I", sid) +
                               self._compress.compress({}))
            stream.replied.set()
            await self._drain()
            result = self._on_stream(stream)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif ftype == SYN_REPLY:
            sid = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            self._decompress.decompress(payload[4:])  # keeps the zlib context in step
            opened = self.streams.get(sid)
            if opened is not None:
                if flags & FLAG_FIN:
                    opened.remote_closed = True
                    opened._feed(None)
                opened.replied.set()
        elif ftype == HEADERS:
            self._decompress.decompress(payload[4:])
        elif ftype == RST_STREAM:
            sid, _status = struct.unpack_from(">II", payload, 0)
            gone = self.streams.pop(sid & 0x7FFFFFFF, None)
            if gone is not None:
                gone.reset = True
                gone.remote_closed = True
                gone.local_closed = True
                gone._feed(None)
                gone.replied.set()
        elif ftype == PING:
            (pid,) = struct.unpack_from(">I", payload, 0)
            fut = self._pings.pop(pid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(None)
            else:
                self._send_control(PING, 0, payload[:4])
                await self._drain()
        elif ftype == GOAWAY:
            self._goaway = True
            if not self.streams:
                raise _GoAway("peer went away")
        # SETTINGS and WINDOW_UPDATE: we do not throttle our sends (see module docstring).


class _GoAway(SpdyError):
    pass
