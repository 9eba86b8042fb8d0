"""Server side of RFC 6455 WebSocket on an asyncio stream pair, and k8s channel framing.

Kubernetes' `wsstream` (k8s.io/apimachinery/pkg/util/httpstream/wsstream) multiplexes
numbered channels over one WebSocket: each binary message is one channel byte followed by
the data. `v5.channel.k8s.io` adds a close signal: a message [255, channel] half-closes that
channel (the client uses it to end stdin).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

__all__ = ["ByteQueue", "WebSocket", "WebSocketClosed", "WsTunnel", "accept_key"]

# RFC 6455 section 1.3.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# A message larger than this is refused (close 1009); stdin chunks are far smaller.
MAX_MESSAGE = 16 * 1024 * 1024
# Our outgoing messages are at most this large so one channel cannot starve the others.
MAX_SEND = 64 * 1024


# Received bytes a channel may hold unread before we stop reading messages (backpressure
# through TCP: a client cannot grow our memory by writing faster than a process reads).
MAX_BUFFERED = 4 * 1024 * 1024


class ByteQueue:
    """Chunks from the reader loop to a consumer, bounded in bytes; b"" marks the end."""

    def __init__(self, limit: int = MAX_BUFFERED) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._size = 0
        self._limit = limit
        self._room = asyncio.Event()
        self._room.set()
        self._discarding = False

    async def put(self, data: bytes) -> None:
        """Queue data, first waiting while the consumer is more than `limit` behind."""
        await self._room.wait()
        if self._discarding:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._room.clear()
        self._queue.put_nowait(data)

    def end(self) -> None:
        self._room.set()
        self._queue.put_nowait(b"")

    def discard(self) -> None:
        """The consumer is gone: drop what comes from now on instead of holding it."""
        self._discarding = True
        self._room.set()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def get(self) -> bytes:
        data = await self._queue.get()
        if not data:
            self._queue.put_nowait(b"")  # stay at the end
            return b""
        self._size -= len(data)
        if self._size <= self._limit // 2:
            self._room.set()
        return data


class WebSocketClosed(Exception):
    """The peer closed the WebSocket or the connection broke."""


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (ValueError, TypeError):
        return False


class WebSocket:
    """Message-level WebSocket over an upgraded connection (server role: unmasked sends,
    masked receives)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, client: bool = False) -> None:
        self._reader = reader
        self._writer = writer
        self._client = client
        self.closed = False
        self._close_sent = False

    async def receive(self) -> tuple[int, bytes]:
        """Next data message as (opcode, payload); answers pings; raises WebSocketClosed."""
        fragments: list[bytes] = []
        opcode = 0
        size = 0
        while True:
            try:
                b0, b1 = await self._reader.readexactly(2)
                fin, op = b0 & 0x80, b0 & 0x0F
                masked, length = b1 & 0x80, b1 & 0x7F
                if length == 126:
                    (length,) = struct.unpack(">H", await self._reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack(">Q", await self._reader.readexactly(8))
                if size + length > MAX_MESSAGE:
                    await self.close(1009, "message too big")
                    raise WebSocketClosed("message too big")
                mask = await self._reader.readexactly(4) if masked else b""
                payload = await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                self.closed = True
                raise WebSocketClosed("connection lost") from e
            if mask:
                payload = _unmask(payload, mask)
            elif not self._client:
                # RFC 6455 5.1: a server must close on an unmasked client frame.
                await self.close(1002, "unmasked frame")
                raise WebSocketClosed("unmasked client frame")
            if op >= 0x8:
                if op == OP_PING:
                    await self._send_frame(OP_PONG, payload)
                elif op == OP_CLOSE:
                    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                    await self.close(1000 if code == 1005 else code)
                    raise WebSocketClosed(f"closed by peer ({code})")
                continue
            if op != OP_CONT:
                opcode = op
            fragments.append(payload)
            size += length
            if fin:
                return opcode, b"".join(fragments)

    async def send(self, data: bytes, opcode: int = OP_BINARY) -> None:
        """Send one message."""
        if self.closed or self._close_sent:
            raise WebSocketClosed("closed")
        await self._send_frame(opcode, data)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        mask_bit = 0x80 if self._client else 0
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, mask_bit | n)
        elif n < 1 << 16:
            head = struct.pack(">BBH", 0x80 | opcode, mask_bit | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, mask_bit | 127, n)
        if self._client:
            mask = os.urandom(4)
            head += mask
            payload = _unmask(payload, mask)
        try:
            self._writer.write(head + payload)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self.closed = True
            raise WebSocketClosed("connection lost") from e

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame once, then close the transport."""
        if not self._close_sent and not self.closed:
            self._close_sent = True
            try:
                await asyncio.wait_for(
                    self._send_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()[:120]),
                    5)
            except (WebSocketClosed, asyncio.TimeoutError):
                pass
        self.closed = True
        self._writer.close()


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR with the 4-byte key repeated (RFC 6455 5.3), done on big integers for speed.
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


class WsTunnel:
    """A byte stream carried in binary WebSocket messages, no channel byte: client-go's
    `TunnelingConnection` (tools/portforward/tunneling_connection.go), used with the
    "SPDY/3.1+portforward.k8s.io" subprotocol to run SPDY inside a WebSocket.

    `reader` is an asyncio.StreamReader fed from the messages; the object itself is the
    writer (write buffers, drain sends one message per drain, in order).
    """

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.reader = asyncio.StreamReader(limit=1 << 20)
        self._pending: list[bytes] = []
        self._lock = asyncio.Lock()
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                opcode, msg = await self.ws.receive()
                if opcode == OP_BINARY and msg:
                    self.reader.feed_data(msg)
        except WebSocketClosed:
            pass
        finally:
            self.reader.feed_eof()

    def write(self, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("websocket closed")
        self._pending.append(data)

    async def drain(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            data, self._pending = b"".join(self._pending), []
            try:
                await self.ws.send(data)
            except WebSocketClosed as e:
                raise ConnectionResetError("websocket closed") from e

    def is_closing(self) -> bool:
        return self.ws.closed

    def close(self) -> None:
        self._pump.cancel()
        if not self.ws.closed:
            asyncio.ensure_future(self.ws.close())

    async def aclose(self) -> None:
        """Close and wait for the reader task to end."""
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        await self.ws.close()
