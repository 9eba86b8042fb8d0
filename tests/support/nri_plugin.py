"""A small NRI plugin for tests, written apart from runtimed's `nri` package (its own
framing and ttrpc envelope) so the two sides check each other.

It connects to a runtimed's NRI socket, registers with a name and an index, answers
Configure with its event mask and Synchronize with nothing, and records every request
it gets in `log` as (plugin, method, message). `replies[method]` may answer a method
differently: a function of the request returning the reply message, or raising
`PluginFailure` (an error status) or sleeping (a timeout on runtimed's side).

`ThreadedPlugin` runs one in its own event loop thread, for the synchronous grpcio tests.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import betterproto

from crib_common.nri import v1alpha1 as api

__all__ = ["PluginFailure", "TestPlugin", "ThreadedPlugin", "mask"]

PLUGIN_CONN, RUNTIME_CONN = 1, 2  # the plugin serves on 1, calls the runtime on 2
PLUGIN = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"

# Request and reply types of the Plugin service's methods (api.proto).
METHODS: dict[str, tuple[type[betterproto.Message], type[betterproto.Message]]] = {
    "Configure": (api.ConfigureRequest, api.ConfigureResponse),
    "Synchronize": (api.SynchronizeRequest, api.SynchronizeResponse),
    "Shutdown": (api.Empty, api.Empty),
    "RunPodSandbox": (api.RunPodSandboxRequest, api.RunPodSandboxResponse),
    "StopPodSandbox": (api.StopPodSandboxRequest, api.StopPodSandboxResponse),
    "RemovePodSandbox": (api.RemovePodSandboxRequest, api.RemovePodSandboxResponse),
    "CreateContainer": (api.CreateContainerRequest, api.CreateContainerResponse),
    "PostCreateContainer": (api.PostCreateContainerRequest, api.PostCreateContainerResponse),
    "StartContainer": (api.StartContainerRequest, api.StartContainerResponse),
    "PostStartContainer": (api.PostStartContainerRequest, api.PostStartContainerResponse),
    "UpdateContainer": (api.UpdateContainerRequest, api.UpdateContainerResponse),
    "PostUpdateContainer": (api.PostUpdateContainerRequest, api.PostUpdateContainerResponse),
    "StopContainer": (api.StopContainerRequest, api.StopContainerResponse),
    "RemoveContainer": (api.RemoveContainerRequest, api.RemoveContainerResponse),
    "StateChange": (api.StateChangeEvent, api.Empty),
    "UpdatePodSandbox": (api.UpdatePodSandboxRequest, api.UpdatePodSandboxResponse),
    "PostUpdatePodSandbox": (api.PostUpdatePodSandboxRequest,
                             api.PostUpdatePodSandboxResponse),
}
EVENTS = {
    "RunPodSandbox": 1, "StopPodSandbox": 2, "RemovePodSandbox": 3, "CreateContainer": 4,
    "PostCreateContainer": 5, "StartContainer": 6, "PostStartContainer": 7,
    "UpdateContainer": 8, "PostUpdateContainer": 9, "StopContainer": 10,
    "RemoveContainer": 11, "UpdatePodSandbox": 12, "PostUpdatePodSandbox": 13,
}


def mask(*methods: str) -> int:
    """ConfigureResponse.events for these event methods: bit (event number - 1)."""
    out = 0
    for m in methods:
        out |= 1 << (EVENTS[m] - 1)
    return out


class NodeStub:
    """What runtimed's `Nri` reads of its node, empty: the records (by ID) and the drop
    callbacks, for driving `Nri` alone (unit tests, bench/bench_nri.py)."""

    def __init__(self) -> None:
        self.sandboxes: dict[str, Any] = {}
        self.containers: dict[str, Any] = {}
        self.on_drop: list[Callable[[str], None]] = []
        self.runtimes: dict[str, Any] = {}


class PluginFailure(Exception):
    """Raised by a reply function: the plugin answers with this gRPC status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _bytes_field(num: int, value: bytes) -> bytes:
    return _uvarint(num << 3 | 2) + _uvarint(len(value)) + value


def _read_uvarint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at `i`, and the position after it."""
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _parse(data: bytes) -> dict[int, list[Any]]:
    """Fields of a protobuf message: number -> values (varints as int, else bytes)."""
    out: dict[int, list[Any]] = {}
    i = 0
    while i < len(data):
        key, i = _read_uvarint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _read_uvarint(data, i)
            out.setdefault(num, []).append(val)
        elif wt == 2:
            ln, i = _read_uvarint(data, i)
            out.setdefault(num, []).append(data[i:i + ln])
            i += ln
        else:
            raise ValueError(f"wire type {wt}")
    return out


class TestPlugin:
    """One plugin connection (see the module docstring)."""

    __test__ = False  # not a pytest class

    def __init__(self, socket_path: Path | str, name: str, index: str, events: int,
                 log: list[tuple[str, str, Any]] | None = None,
                 replies: dict[str, Callable[[Any], Any]] | None = None,
                 sync_delay: float = 0.0, raw: bool = False) -> None:
        self.socket_path = str(socket_path)
        self.name, self.index, self.events = name, index, events
        self.log = log if log is not None else []
        self.replies = replies or {}
        self.sync_delay = sync_delay
        # raw: events are answered empty without being parsed or logged (bench: what a
        # plugin in a fast language costs, betterproto's parsing left out).
        self.raw = raw
        self.synced = asyncio.Event()
        self.closed = asyncio.Event()
        self.synchronize: api.SynchronizeRequest | None = None
        self._buffers: dict[int, bytearray] = {PLUGIN_CONN: bytearray(),
                                               RUNTIME_CONN: bytearray()}
        self._calls: dict[int, asyncio.Future[tuple[int, str, bytes]]] = {}
        self._stream = 1
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------- wire
    def _write(self, conn: int, stream: int, kind: int, body: bytes) -> None:
        msg = struct.pack(">IIBB", len(body), stream, kind, 0) + body
        assert self._writer is not None
        # Frames as the Go mux reader needs them: the first at most 4096 bytes.
        first, rest = msg[:4096], msg[4096:]
        self._writer.write(struct.pack(">II", conn, len(first)) + first)
        if rest:
            self._writer.write(struct.pack(">II", conn, len(rest)) + rest)

    async def _reader(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                conn, length = struct.unpack(">II", await reader.readexactly(8))
                buf = self._buffers.setdefault(conn, bytearray())
                buf += await reader.readexactly(length)
                while len(buf) >= 10:
                    size, stream, kind, _flags = struct.unpack(">IIBB", buf[:10])
                    if len(buf) < 10 + size:
                        break
                    body = bytes(buf[10:10 + size])
                    del buf[:10 + size]
                    if conn == PLUGIN_CONN and kind == 1:
                        task = asyncio.ensure_future(self._serve(stream, body))
                        self._tasks.add(task)  # the loop keeps only a weak reference
                        task.add_done_callback(self._tasks.discard)
                    elif conn == RUNTIME_CONN and kind == 2:
                        self._answered(stream, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for fut in self._calls.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    def _answered(self, stream: int, body: bytes) -> None:
        fields = _parse(body)
        code, message = 0, ""
        if 1 in fields:
            status = _parse(fields[1][0])
            code = status.get(1, [0])[0]
            message = status.get(2, [b""])[0].decode()
        fut = self._calls.pop(stream, None)
        if fut is not None and not fut.done():
            fut.set_result((code, message, fields.get(2, [b""])[0]))

    async def _serve(self, stream: int, body: bytes) -> None:
        fields = _parse(body)
        service = fields.get(1, [b""])[0].decode()
        method = fields.get(2, [b""])[0].decode()
        payload = fields.get(3, [b""])[0]
        code, message, answer = 0, "", b""
        if service != PLUGIN or method not in METHODS:
            code, message = 12, f"unknown method {service}/{method}"
        elif self.raw and method not in ("Configure", "Synchronize"):
            pass  # an empty reply: valid for every reply type (proto3)
        else:
            req_type, reply_type = METHODS[method]
            req = req_type().parse(payload)
            self.log.append((self.name, method, req))
            try:
                if method == "Configure":
                    reply: betterproto.Message = api.ConfigureResponse(events=self.events)
                elif method == "Synchronize":
                    self.synchronize = req  # type: ignore[assignment]
                    if self.sync_delay:
                        await asyncio.sleep(self.sync_delay)
                    reply = api.SynchronizeResponse()
                    self.synced.set()
                elif method in self.replies:
                    result = self.replies[method](req)
                    if asyncio.iscoroutine(result):
                        result = await result
                    reply = result if result is not None else reply_type()
                else:
                    reply = reply_type()
                answer = bytes(reply)
            except PluginFailure as exc:
                code, message = exc.code, str(exc)
        status = b""
        if code:
            status = _uvarint(1 << 3) + _uvarint(code) + _bytes_field(2, message.encode())
        resp = (_bytes_field(1, status) if status else b"") + \
            (_bytes_field(2, answer) if answer else b"")
        if self._writer is not None and not self._writer.is_closing():
            self._write(PLUGIN_CONN, stream, 2, resp)

    async def call_runtime(self, method: str, request: betterproto.Message,
                           timeout: float = 10) -> tuple[int, str, bytes]:
        """A call of the runtime's `Runtime` service: (status code, message, payload)."""
        stream = self._stream
        self._stream += 2
        fut: asyncio.Future[tuple[int, str, bytes]] = asyncio.get_running_loop().create_future()
        self._calls[stream] = fut
        body = _bytes_field(1, RUNTIME.encode()) + _bytes_field(2, method.encode()) + \
            _bytes_field(3, bytes(request))
        self._write(RUNTIME_CONN, stream, 1, body)
        return await asyncio.wait_for(fut, timeout)

    # -------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        """Connect to the socket, or use fd N for a socket path "fd:N" (a plugin runtimed
        started: NRI_PLUGIN_SOCKET), and register."""
        if self.socket_path.startswith("fd:"):
            import socket as _socket

            sock = _socket.socket(fileno=int(self.socket_path[3:]))
            reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        else:
            reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
        self._tasks.add(asyncio.ensure_future(self._reader(reader)))
        code, message, _ = await self.call_runtime("RegisterPlugin", api.RegisterPluginRequest(
            plugin_name=self.name, plugin_idx=self.index))
        if code:
            raise RuntimeError(f"registration refused: {code} {message}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def methods(self) -> list[str]:
        return [m for p, m, _ in self.log if p == self.name]


class ThreadedPlugin:
    """A TestPlugin in an event loop thread of its own."""

    def __init__(self, plugin: TestPlugin) -> None:
        self.plugin = plugin
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def start(self, synced: bool = True, timeout: float = 15) -> ThreadedPlugin:
        """Connect and register; wait for Synchronize unless `synced` is False."""
        self.run(self.plugin.connect())
        if synced:
            self.run(asyncio.wait_for(self.plugin.synced.wait(), timeout), timeout + 5)
            time.sleep(0.05)  # runtimed adds the plugin once the answer is read
        return self

    def stop(self) -> None:
        async def close() -> None:
            await self.plugin.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            self.run(close(), 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
