"""Exec/attach stdio over either wire protocol, behind one small interface.

`StdioSession` is what exec and attach use: read stdin, write stdout/stderr, receive
terminal sizes, report the final status; it also tells when the client went away. The SPDY
flavour waits for the client to open one stream per channel (`streamtype` header: error,
stdin, stdout, stderr, resize; kubelet `remotecommand/httpstream.go`); the WebSocket flavour
uses fixed channel numbers (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; kubelet
`remotecommand/websocket.go`), with v5's close signal (255) to end stdin.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from abc import ABC, abstractmethod
from typing import Any

import structlog

from .spdy import SpdyConnection, SpdyError, SpdyStream
from .status import status_bytes
from .websocket import MAX_SEND, OP_BINARY, OP_TEXT, ByteQueue, WebSocket, WebSocketClosed

__all__ = ["SpdyStdioSession", "StdioOptions", "StdioSession", "WsStdioSession"]

log = structlog.get_logger("runtimed.streaming")

# Channel numbers of the WebSocket protocols (kubelet remotecommand/websocket.go).
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE_SIGNAL = 255  # v5.channel.k8s.io: [255, channel] closes that channel
# kubelet's default `StreamCreationTimeout`: how long the client has to open its streams.
STREAM_CREATION_TIMEOUT = 30.0


class StdioOptions:
    """Which channels a session carries (from the stored CRI request)."""

    def __init__(self, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr, tty


class StdioSession(ABC):
    """One client's stdio for an exec or attach."""

    def __init__(self, opts: StdioOptions, version: int) -> None:
        self.opts = opts
        self.version = version  # 1..5, from the negotiated subprotocol
        self.resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self.closed = asyncio.Event()  # the client went away

    @abstractmethod
    async def read_stdin(self) -> bytes:
        """Next stdin chunk; b"" at end of input (or when stdin is not streamed)."""

    @abstractmethod
    async def write_stdout(self, data: bytes) -> None: ...

    @abstractmethod
    async def write_stderr(self, data: bytes) -> None: ...

    @abstractmethod
    async def close_output(self) -> None:
        """No more stdout/stderr (FIN the streams where the protocol can)."""

    @abstractmethod
    async def finish(self, status: dict[str, Any]) -> None:
        """Send the final status on the error channel and close the connection."""

    @abstractmethod
    async def abort(self) -> None:
        """Close the connection without a status."""

    def _push_resize(self, buffer: bytes) -> bytes:
        """Parse concatenated {"Width":W,"Height":H} objects; return the unparsed rest."""
        decoder = json.JSONDecoder()
        text = buffer.decode(errors="replace")
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return b""
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                return text[pos:].encode()
            if isinstance(obj, dict):
                try:
                    w, h = int(obj.get("Width", 0)), int(obj.get("Height", 0))
                except (TypeError, ValueError):
                    continue
                if 0 < w <= 0xFFFF and 0 < h <= 0xFFFF:
                    if self.resizes.qsize() >= 16:  # only the latest sizes matter
                        self.resizes.get_nowait()
                    self.resizes.put_nowait((w, h))


class SpdyStdioSession(StdioSession):
    """Stdio over SPDY streams the client opens."""

    def __init__(self, opts: StdioOptions, version: int) -> None:
        super().__init__(opts, version)
        self.conn: SpdyConnection | None = None
        self.streams: dict[str, SpdyStream] = {}
        self._expected = {"error"}
        if opts.stdin:
            self._expected.add("stdin")
        if opts.stdout:
            self._expected.add("stdout")
        if opts.stderr:
            self._expected.add("stderr")
        # Resizing arrived with v3 (kubelet `supportsTerminalResizing`).
        if opts.tty and version >= 3:
            self._expected.add("resize")
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def on_stream(self, stream: SpdyStream) -> None:
        kind = stream.header("streamtype")
        if kind not in ("error", "stdin", "stdout", "stderr", "resize") or kind in self.streams:
            log.warning("unexpected spdy stream", streamtype=kind)
            stream.abort()
            return
        self.streams[kind] = stream
        if kind == "resize":
            self._tasks.append(asyncio.create_task(self._read_resizes(stream)))
        elif kind == "stdin" and not self.opts.stdin:
            # Input nobody will read must not fill the connection's buffers and stall it.
            self._tasks.append(asyncio.create_task(_discard(stream)))
        if self._expected <= set(self.streams):
            self._ready.set()

    async def start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Run the SPDY connection and wait for the expected streams; False on timeout."""
        self.conn = SpdyConnection(reader, writer, client=False, on_stream=self.on_stream)
        run = asyncio.create_task(self.conn.run())
        run.add_done_callback(lambda _t: self.closed.set())
        self._tasks.append(run)
        waiter = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({waiter, run}, timeout=STREAM_CREATION_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            log.warning("spdy streams not created", expected=sorted(self._expected),
                        got=sorted(self.streams))
            return False
        return True

    async def _read_resizes(self, stream: SpdyStream) -> None:
        pending = b""
        while chunk := await stream.read():
            pending = self._push_resize(pending + chunk)

    async def read_stdin(self) -> bytes:
        stream = self.streams.get("stdin")
        if stream is None:
            return b""
        return await stream.read()

    async def _write(self, kind: str, data: bytes) -> None:
        stream = self.streams.get(kind)
        if stream is None or not data:
            return
        try:
            await stream.write(data)
        except SpdyError:
            self.closed.set()

    async def write_stdout(self, data: bytes) -> None:
        await self._write("stdout", data)

    async def write_stderr(self, data: bytes) -> None:
        await self._write("stderr", data)

    async def close_output(self) -> None:
        for kind in ("stdout", "stderr"):
            stream = self.streams.get(kind)
            if stream is not None:
                with contextlib.suppress(SpdyError):
                    await stream.close()

    async def finish(self, status: dict[str, Any]) -> None:
        await self.close_output()
        err = self.streams.get("error")
        if err is not None:
            with contextlib.suppress(SpdyError):
                payload = status_bytes(status, self.version)
                if payload:
                    await err.write(payload)
                await err.close()
        await self.abort()

    async def abort(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.closed.set()


async def _discard(stream: SpdyStream) -> None:
    while await stream.read():
        pass


class WsStdioSession(StdioSession):
    """Stdio over one WebSocket with channel-prefixed binary messages."""

    def __init__(self, opts: StdioOptions, version: int, ws: WebSocket,
                 base64_frames: bool = False) -> None:
        super().__init__(opts, version)
        self.ws = ws
        # `*base64.channel.k8s.io`: text messages, the channel as an ASCII digit and the data
        # base64-encoded (for clients that cannot send binary frames, e.g. browsers).
        self.base64 = base64_frames
        self._stdin = ByteQueue()
        self._stdin_done = not opts.stdin
        self._reader = asyncio.create_task(self._read_loop())

    async def start(self) -> None:
        """Tell the client we are ready: an empty message on the lowest writable channel
        (kubelet `createWebSocketStreams`)."""
        first = STDOUT if self.opts.stdout else STDERR if self.opts.stderr else ERROR
        await self._send(first, b"")

    async def _read_loop(self) -> None:
        pending = b""
        try:
            while True:
                opcode, msg = await self.ws.receive()
                if not msg or opcode != (OP_TEXT if self.base64 else OP_BINARY):
                    continue
                channel, data = msg[0], msg[1:]
                if self.base64:
                    try:
                        channel, data = channel - ord("0"), base64.b64decode(data)
                    except binascii.Error:
                        continue
                if channel == STDIN and self.opts.stdin:
                    if data:
                        await self._stdin.put(data)
                elif channel == RESIZE:
                    pending = self._push_resize(pending + data)
                elif channel == CLOSE_SIGNAL and self.version >= 5 and data[:1] == b"\x00":
                    self._stdin.end()
        except WebSocketClosed:
            pass
        finally:
            self._stdin.end()
            self.closed.set()

    async def read_stdin(self) -> bytes:
        if self._stdin_done:
            return b""
        data = await self._stdin.get()
        if not data:
            self._stdin_done = True
        return data

    async def _send(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self._send_base64(channel, data)
            return
        prefix = bytes([channel])
        try:
            if not data:
                await self.ws.send(prefix)
            for off in range(0, len(data), MAX_SEND):
                await self.ws.send(prefix + data[off:off + MAX_SEND])
        except WebSocketClosed:
            self.closed.set()

    async def _send_base64(self, channel: int, data: bytes) -> None:
        prefix = str(channel).encode()
        try:
            if not data:
                await self.ws.send(prefix, OP_TEXT)
            step = MAX_SEND // 4 * 3
            for off in range(0, len(data), step):
                await self.ws.send(prefix + base64.b64encode(data[off:off + step]), OP_TEXT)
        except WebSocketClosed:
            self.closed.set()

    async def write_stdout(self, data: bytes) -> None:
        if data:
            await self._send(STDOUT, data)

    async def write_stderr(self, data: bytes) -> None:
        if data:
            await self._send(STDERR, data)

    async def close_output(self) -> None:
        # The close signal is the client's way to end stdin; the end of output is the
        # status on the error channel followed by the close of the WebSocket.
        return

    async def finish(self, status: dict[str, Any]) -> None:
        await self.close_output()
        payload = status_bytes(status, self.version)
        if payload:
            await self._send(ERROR, payload)
        await self.abort()

    async def abort(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.closed.set()
