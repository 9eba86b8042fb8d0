"""Test clients for the streaming server, one per wire protocol, written from the protocol
descriptions (k8s remotecommand and portforward), as the kubelet's clients use them.

- `SpdyStdio` / `WsStdio`: exec and attach (`open_stdio(url, transport=...)`).
- `SpdyPortForward` / `ws_port_forward`: port forwarding.
- `raw_request`: send any HTTP request and read the response head (refusal tests).

The SPDY client frames with `runtimed.streaming.spdy` (its codec is checked on its own in
tests/unit/streaming/test_spdy.py against zlib and the spec's dictionary); the WebSocket
client is aiohttp's, independent of our server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from runtimed.streaming.spdy import SpdyConnection, SpdyStream

__all__ = ["SpdyPortForward", "SpdyStdio", "StdioResult", "UpgradeRefused", "WsStdio",
           "open_stdio", "raw_request", "ws_port_forward"]

EXEC_PROTOCOLS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                  "channel.k8s.io"]
WS_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]


class UpgradeRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"upgrade refused: {status} {body}")
        self.status, self.body = status, body


@dataclass
class StdioResult:
    stdout: bytes
    stderr: bytes
    status: dict[str, Any] | None
    exit_code: int


def exit_code_of(status: dict[str, Any] | None) -> int:
    """Decode a v4 Status the way client-go's errorDecoderV4 does (-1: an error that is not
    an exit code)."""
    if not status or status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    return -1


async def raw_request(url: str, headers: dict[str, str], method: str = "POST",
                      ) -> tuple[int, dict[str, str], asyncio.StreamReader,
                                 asyncio.StreamWriter]:
    """Send a request head; return status, headers and the still-open connection."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port,
                                                   limit=1 << 20)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *rest = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    got = {}
    for line in rest:
        if ":" in line:
            k, v = line.split(":", 1)
            got[k.strip().lower()] = v.strip()
    return status, got, reader, writer


async def _spdy_upgrade(url: str, protocols: list[str]) -> tuple[SpdyConnection, str,
                                                                 asyncio.Task[None]]:
    headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
    status, got, reader, writer = await raw_request(
        url, {**headers, "X-Stream-Protocol-Version": ", ".join(protocols)})
    if status != 101:
        body = (await reader.read(4096)).decode(errors="replace")
        writer.close()
        raise UpgradeRefused(status, body)
    conn = SpdyConnection(reader, writer, client=True)
    task = asyncio.create_task(conn.run())
    return conn, got.get("x-stream-protocol-version", ""), task


class SpdyStdio:
    """An exec/attach client over SPDY (client-go `remotecommand` v4 streamProtocolV4)."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.streams: dict[str, SpdyStream] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.protocol = ""

    async def connect(self, url: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                      protocols: list[str] | None = None) -> SpdyStdio:
        self.conn, self.protocol, run = await _spdy_upgrade(url, protocols or EXEC_PROTOCOLS)
        self._tasks.append(run)
        # Same order as client-go: error first, then the std streams, then resize.
        kinds = ["error"] + [k for k, on in (("stdin", stdin), ("stdout", stdout),
                                             ("stderr", stderr and not tty)) if on]
        if tty:
            kinds.append("resize")
        for kind in kinds:
            self.streams[kind] = await self.conn.open_stream({"streamtype": [kind]})
        # The error stream is read-only for us: close our half right away, as client-go.
        await self.streams["error"].close()
        self._error = asyncio.create_task(self.streams["error"].read_all())
        for kind, buf in (("stdout", self.stdout), ("stderr", self.stderr)):
            if kind in self.streams:
                self._tasks.append(asyncio.create_task(self._collect(self.streams[kind], buf)))
        return self

    async def _collect(self, stream: SpdyStream, buf: bytearray) -> None:
        while chunk := await stream.read():
            buf.extend(chunk)

    async def write(self, data: bytes) -> None:
        await self.streams["stdin"].write(data)

    async def close_stdin(self) -> None:
        await self.streams["stdin"].close()

    async def resize(self, width: int, height: int) -> None:
        await self.streams["resize"].write(json.dumps({"Width": width, "Height": height})
                                           .encode())

    async def wait_output(self, needle: bytes, timeout: float = 10.0) -> None:
        await _wait_for(lambda: needle in self.stdout, timeout, lambda: bytes(self.stdout))

    async def wait(self, timeout: float = 30.0) -> StdioResult:
        raw = await asyncio.wait_for(self._error, timeout)
        outputs = self._tasks[1:]
        await asyncio.wait_for(asyncio.gather(*outputs), timeout)
        await self.close()
        status = json.loads(raw) if raw and self.protocol.startswith("v4") else None
        if raw and status is None:
            status = {"status": "Failure", "message": raw.decode()}
        return StdioResult(bytes(self.stdout), bytes(self.stderr), status,
                           exit_code_of(status))

    async def close(self) -> None:
        await self.conn.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class WsStdio:
    """An exec/attach client over WebSocket channels (aiohttp's websocket client)."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.error = bytearray()
        self.protocol = ""

    async def connect(self, url: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                      protocols: list[str] | None = None) -> WsStdio:
        self.session = aiohttp.ClientSession()
        try:
            self.ws = await self.session.ws_connect(
                url.replace("http://", "ws://"), protocols=protocols or WS_PROTOCOLS,
                max_msg_size=0, autoping=True)
        except aiohttp.WSServerHandshakeError as e:
            await self.session.close()
            raise UpgradeRefused(e.status, e.message) from e
        self.protocol = self.ws.protocol or ""
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            {1: self.stdout, 2: self.stderr, 3: self.error}.get(channel, bytearray()).extend(data)

    async def write(self, data: bytes) -> None:
        await self.ws.send_bytes(b"\x00" + data)

    async def close_stdin(self) -> None:
        # v5 close signal for channel 0.
        await self.ws.send_bytes(bytes([255, 0]))

    async def resize(self, width: int, height: int) -> None:
        await self.ws.send_bytes(b"\x04" + json.dumps({"Width": width, "Height": height})
                                 .encode())

    async def wait_output(self, needle: bytes, timeout: float = 10.0) -> None:
        await _wait_for(lambda: needle in self.stdout, timeout, lambda: bytes(self.stdout))

    async def wait(self, timeout: float = 30.0) -> StdioResult:
        await asyncio.wait_for(self._reader, timeout)
        await self.close()
        status = json.loads(self.error) if self.error else None
        return StdioResult(bytes(self.stdout), bytes(self.stderr), status,
                           exit_code_of(status))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close()


async def open_stdio(url: str, transport: str, *, stdin: bool = False, stdout: bool = True,
                     stderr: bool = True, tty: bool = False,
                     protocols: list[str] | None = None) -> SpdyStdio | WsStdio:
    """Connect an exec/attach client of the given transport ("spdy" or "ws")."""
    client: SpdyStdio | WsStdio = SpdyStdio() if transport == "spdy" else WsStdio()
    return await client.connect(url, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty,
                                protocols=protocols)


async def _wait_for(cond: Any, timeout: float, show: Any) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; have {show()!r}")
        await asyncio.sleep(0.02)


# -- port forwarding ----------------------------------------------------------------------

@dataclass
class ForwardedConn:
    """One forwarded TCP connection: a data stream and its error stream."""

    data: SpdyStream
    error: SpdyStream
    received: bytearray = field(default_factory=bytearray)

    async def send(self, payload: bytes) -> None:
        await self.data.write(payload)

    async def close_write(self) -> None:
        await self.data.close()

    async def read_all(self, timeout: float = 30.0) -> bytes:
        return await asyncio.wait_for(self.data.read_all(limit=1 << 30), timeout)

    async def error_text(self, timeout: float = 10.0) -> str:
        return (await asyncio.wait_for(self.error.read_all(), timeout)).decode()


class SpdyPortForward:
    """A port-forward session over SPDY (client-go `portforward` as kubectl uses it)."""

    async def connect(self, url: str) -> SpdyPortForward:
        self.conn, self.protocol, self._run = await _spdy_upgrade(url, ["portforward.k8s.io"])
        self._next_request = 0
        return self

    async def open(self, port: int) -> ForwardedConn:
        request_id = str(self._next_request)
        self._next_request += 1
        base = {"port": [str(port)], "requestid": [request_id]}
        error = await self.conn.open_stream({"streamtype": ["error"], **base})
        await error.close()  # kubectl never writes to it
        data = await self.conn.open_stream({"streamtype": ["data"], **base})
        return ForwardedConn(data, error)

    async def close(self) -> None:
        await self.conn.close()
        self._run.cancel()
        await asyncio.gather(self._run, return_exceptions=True)


@contextlib.asynccontextmanager
async def ws_port_forward(url: str, ports: list[int]) -> Any:
    """A WebSocket port-forward session; yields the aiohttp websocket after the port
    prefixes (2 bytes little endian on each data and error channel) were checked."""
    query = "&".join(f"port={p}" for p in ports)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http://", "ws://") + f"?{query}",
                                      protocols=["v4.channel.k8s.io"]) as ws:
            for i, port in enumerate(ports):
                for channel in (2 * i, 2 * i + 1):
                    msg = await ws.receive(timeout=10)
                    assert msg.data == bytes([channel]) + struct.pack("<H", port), msg
            yield ws
