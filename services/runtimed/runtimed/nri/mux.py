"""NRI's connection multiplexer: several logical connections over one unix socket.

Every frame is `[u32 big-endian connection id][u32 big-endian length][payload]`
(containerd/nri `pkg/net/multiplex/mux.go`). NRI opens two: on connection 1 the plugin
serves its `Plugin` service and the runtime calls it; on connection 2 the runtime serves
`Runtime` and the plugin calls it. Connection 0 is reserved. A frame for a connection
nobody opened is dropped, as the Go reader drops it.

The Go side reads a connection through ttrpc's 4096-byte `bufio.Reader`, and its mux
hands a reader one whole frame per `Read`, failing with ENOMEM when the frame is larger
than the buffer it is given. Hence the rules `frames` follows when writing:
  * one ttrpc message per frame, never two in one frame;
  * a message of at most 4096 bytes is one frame;
  * a longer one is a first frame of exactly 4096 bytes (the header and the start of the
    data: what fills bufio's buffer) and one more frame with the rest, which bufio reads
    straight into the message buffer (rest >= 4096) or into its emptied buffer (< 4096).
  * no frame carries more than ttrpc's 10-byte header plus its 4 MiB limit
    (`maxPayloadSize`).
What arrives is not assumed to be framed that way: bytes are reassembled per connection
(`ttrpc.Channel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

import structlog

__all__ = [
    "FIRST_FRAME_MAX",
    "MAX_FRAME_PAYLOAD",
    "Mux",
    "PLUGIN_SERVICE_CONN",
    "RUNTIME_SERVICE_CONN",
    "frames",
]

log = structlog.get_logger("crib.runtimed.nri")

FRAME_HEADER = struct.Struct(">II")
# multiplex.PluginServiceConn and RuntimeServiceConn (containerd/nri pkg/net/multiplex).
PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2
# Go's bufio default size, the buffer ttrpc's channel reads through (ttrpc channel.go
# `bufio.NewReader(conn)`): the largest frame that may start a message.
FIRST_FRAME_MAX = 4096
# mux.go maxPayloadSize: ttrpc's message header plus its 4 MiB data limit.
MAX_FRAME_PAYLOAD = 10 + (4 << 20)


def frames(conn_id: int, message: bytes) -> list[bytes]:
    """The frames carrying one whole ttrpc `message` on `conn_id` (see the module doc)."""
    if len(message) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"message of {len(message)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    if len(message) <= FIRST_FRAME_MAX:
        return [FRAME_HEADER.pack(conn_id, len(message)) + message]
    head, rest = message[:FIRST_FRAME_MAX], message[FIRST_FRAME_MAX:]
    return [FRAME_HEADER.pack(conn_id, len(head)) + head,
            FRAME_HEADER.pack(conn_id, len(rest)) + rest]


class Mux:
    """One trunk (an asyncio stream pair); `open(id, receive)` routes that connection's
    payloads to `receive`; `send` writes one message's frames at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._receivers: dict[int, Callable[[bytes], None]] = {}
        self.on_close: list[Callable[[BaseException | None], None]] = []
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    def open(self, conn_id: int, receive: Callable[[bytes], None]) -> None:
        if conn_id == 0:
            raise ValueError("connection id 0 is reserved")
        self._receivers[conn_id] = receive

    def start(self) -> None:
        """Start reading the trunk (after every connection is opened)."""
        if self._task is None:
            self._task = asyncio.create_task(self._read())

    def send(self, conn_id: int, message: bytes) -> None:
        """Queue every frame of `message`, synchronously: frames of two messages never
        interleave, and a caller that takes a stream id and sends does so in one step."""
        if self.closed:
            raise ConnectionResetError("NRI connection closed")
        self._writer.writelines(frames(conn_id, message))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def _read(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                header = await self._reader.readexactly(FRAME_HEADER.size)
                conn_id, length = FRAME_HEADER.unpack(header)
                if length > MAX_FRAME_PAYLOAD:
                    raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_PAYLOAD}")
                payload = await self._reader.readexactly(length) if length else b""
                receive = self._receivers.get(conn_id)
                if receive is not None:
                    receive(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a protocol violation ends the trunk, as in mux.go
            error = exc
            log.warning("nri connection broken", error=str(exc))
        finally:
            self._shut(error)

    def _shut(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
        for callback in self.on_close:
            callback(error)

    async def close(self) -> None:
        """Close the trunk; every connection's users see it closed."""
        self._shut(None)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
