"""PortForward: TCP connections into a pod's network namespace.

SPDY (`portforward.k8s.io`, kubelet `portforward/httpstream.go`): for every connection the
client opens two streams with the same `port` and `requestid` headers, `streamtype: error`
and `streamtype: data`; once both are there we connect to 127.0.0.1:port inside the pod and
copy bytes both ways. A failure is written as text on that pair's error stream; other
connections on the session go on.

WebSocket (`v4.channel.k8s.io`, kubelet `portforward/websocket.go`): ports come from the
`port` query parameters; port i uses channel 2i for data and 2i+1 for errors, and we first
send the port number (2 bytes, little endian) on both channels. One connection per port.

The socket is created by a short-lived thread that joined the pod's netns with setns(2),
which only moves that thread (CRI-O does the same with `ns.Do`); the loop then uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from .spdy import ByteWriter, SpdyConnection, SpdyError, SpdyStream
from .targets import SandboxTarget
from .websocket import MAX_SEND, OP_BINARY, ByteQueue, WebSocket, WebSocketClosed

__all__ = ["connect_in_netns", "serve_spdy_portforward", "serve_ws_portforward"]

log = structlog.get_logger("runtimed.streaming.portforward")

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 10.0
READ_SIZE = 64 * 1024
# kubelet's StreamCreationTimeout: the second stream of a pair must come within this.
PAIR_TIMEOUT = 30.0

_Read = Callable[[], Awaitable[bytes]]
_Write = Callable[[bytes], Awaitable[None]]
_Close = Callable[[], Awaitable[None]]

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _connect_blocking(netns: Path | None, port: int) -> socket.socket:
    if netns is not None:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
    last: OSError | None = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((host, port))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as e:
            sock.close()
            last = e
    assert last is not None
    raise last


async def connect_in_netns(netns: Path | None, port: int) -> socket.socket:
    """A connected TCP socket to localhost:port inside `netns` (None: our own netns)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[socket.socket] = loop.create_future()

    def run() -> None:
        # A fresh thread each time: it ends in the pod's netns and must not be reused.
        try:
            result = _connect_blocking(netns, port)
        except BaseException as e:  # handed to the loop
            err = e

            def fail() -> None:
                if not fut.done():
                    fut.set_exception(err)
            loop.call_soon_threadsafe(fail)
            return

        def deliver() -> None:
            if fut.done():
                result.close()
            else:
                fut.set_result(result)
        loop.call_soon_threadsafe(deliver)

    threading.Thread(target=run, name="crib-portforward-connect", daemon=True).start()
    return await fut


def _error_text(port: int, sandbox: SandboxTarget, err: BaseException) -> bytes:
    # kubelet's wording, which kubectl prints as is.
    return f"error forwarding port {port} to pod {sandbox.id}, uid : {err}".encode()


# -- SPDY ---------------------------------------------------------------------------------

async def serve_spdy_portforward(reader: asyncio.StreamReader, writer: ByteWriter,
                                 sandbox: SandboxTarget) -> None:
    """Serve one SPDY port-forward session until the client goes away."""
    pairs: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def on_stream(stream: SpdyStream) -> None:
        kind = stream.header("streamtype")
        request_id = stream.header("requestid")
        if not request_id:
            # Old clients: an error stream is followed by its data stream, ids two apart.
            request_id = str(stream.id - 2 if kind == "data" else stream.id)
        if kind not in ("error", "data"):
            stream.abort()
            return
        pair = pairs.setdefault(request_id, {})
        if kind in pair:
            stream.abort()
            return
        pair[kind] = stream
        if len(pair) == 2:
            del pairs[request_id]
            task = asyncio.create_task(_forward_pair(pair["data"], pair["error"], sandbox))
        elif len(pair) == 1:
            task = asyncio.create_task(_expire_pair(pairs, request_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    conn = SpdyConnection(reader, writer, client=False, on_stream=on_stream)
    try:
        await conn.run()
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conn.close()


async def _expire_pair(pairs: dict[str, dict[str, SpdyStream]], request_id: str) -> None:
    await asyncio.sleep(PAIR_TIMEOUT)
    pair = pairs.pop(request_id, None)
    for stream in (pair or {}).values():
        stream.abort()


async def _forward_pair(data: SpdyStream, error: SpdyStream, sandbox: SandboxTarget) -> None:
    port_text = data.header("port")
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(port_text)
    except ValueError:
        await _spdy_error(error, data, f"invalid port {port_text!r}".encode())
        return
    try:
        sock = await connect_in_netns(sandbox.netns_path, port)
    except OSError as e:
        log.info("port forward connect failed", sandbox=sandbox.id, port=port, error=str(e))
        await _spdy_error(error, data, _error_text(port, sandbox, e))
        return
    log.debug("port forward connected", sandbox=sandbox.id, port=port)
    try:
        await _copy_both(sock, data.read, data.write, data.close)
    except SpdyError:
        pass
    finally:
        sock.close()
        with contextlib.suppress(SpdyError):
            await data.close()
            await error.close()


async def _spdy_error(error: SpdyStream, data: SpdyStream, message: bytes) -> None:
    with contextlib.suppress(SpdyError):
        await error.write(message)
        await error.close()
        await data.close()


async def _copy_both(sock: socket.socket, read: _Read, write: _Write, close: _Close) -> None:
    """Copy client->socket and socket->client until both directions ended."""
    loop = asyncio.get_running_loop()

    async def upstream() -> None:
        try:
            while chunk := await read():
                await loop.sock_sendall(sock, chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return

    async def downstream() -> None:
        try:
            while chunk := await loop.sock_recv(sock, READ_SIZE):
                await write(chunk)
        except OSError:
            pass
        await close()

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        # The pod side ending is the end of the connection (kubelet returns when the copy
        # from the pod finishes); the client's half-close only ends upstream.
        await down
    finally:
        up.cancel()
        await asyncio.gather(up, down, return_exceptions=True)


# -- WebSocket ----------------------------------------------------------------------------

async def serve_ws_portforward(ws: WebSocket, ports: list[int], sandbox: SandboxTarget) -> None:
    """Serve one WebSocket port-forward session: one connection per requested port."""
    inboxes = [ByteQueue() for _ in ports]
    try:
        for i, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await ws.send(bytes([2 * i]) + prefix)
            await ws.send(bytes([2 * i + 1]) + prefix)
    except WebSocketClosed:
        return

    async def read_loop() -> None:
        try:
            while True:
                opcode, msg = await ws.receive()
                if opcode != OP_BINARY or not msg:
                    continue
                channel = msg[0]
                if channel % 2 == 0 and channel // 2 < len(ports) and len(msg) > 1:
                    await inboxes[channel // 2].put(msg[1:])
        except WebSocketClosed:
            pass
        finally:
            for inbox in inboxes:
                inbox.end()

    reader = asyncio.create_task(read_loop())
    try:
        await asyncio.gather(*(_ws_forward(ws, i, port, inboxes[i], sandbox)
                               for i, port in enumerate(ports)))
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ws.close()


async def _ws_forward(ws: WebSocket, index: int, port: int, inbox: ByteQueue,
                      sandbox: SandboxTarget) -> None:
    data_ch, err_ch = bytes([2 * index]), bytes([2 * index + 1])
    try:
        sock = await connect_in_netns(sandbox.netns_path, port)
    except OSError as e:
        inbox.discard()
        with contextlib.suppress(WebSocketClosed):
            await ws.send(err_ch + _error_text(port, sandbox, e))
        return

    async def read() -> bytes:
        return await inbox.get()

    async def write(chunk: bytes) -> None:
        for off in range(0, len(chunk), MAX_SEND):
            await ws.send(data_ch + chunk[off:off + MAX_SEND])

    async def close() -> None:
        return

    try:
        await _copy_both(sock, read, write, close)
    except WebSocketClosed:
        pass
    finally:
        sock.close()
        inbox.discard()
