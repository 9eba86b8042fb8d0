"""One connected NRI plugin: its multiplexed connection, the ttrpc client of its `Plugin`
service (connection 1) and the `Runtime` service crib serves it (connection 2).

    connected ──RegisterPlugin (registration timeout)──> registered ──Configure──>
    configured ──Synchronize──> active ──timeout, closed connection──> closed

A plugin is "external" when it connected to the socket itself, "pre-launched" when
runtimed started it from the plugin directory with a connected socket as fd 3 (containerd
/nri `newLaunchedPlugin`: NRI_PLUGIN_NAME, NRI_PLUGIN_IDX, NRI_PLUGIN_SOCKET=3).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import betterproto
import structlog

from crib_common.nri import v1alpha1 as api

from .mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from .ttrpc import Client, Code, Server, TtrpcError

__all__ = ["PLUGIN_SERVICE", "RUNTIME_SERVICE", "Plugin", "event_bit"]

log = structlog.get_logger("crib.runtimed.nri")

# The services' full names on the wire: the proto's package and service name
# (api.proto: `package nri.pkg.api.v1alpha1;`, `service Plugin`, `service Runtime`).
PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
# containerd/nri pkg/api/plugin.go: an index is two digits; a name has no "-" ... we
# accept what containerd accepts: letters, digits, "_", "." and "-" after the first.
_INDEX = re.compile(r"^[0-9]{2}$")
_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-]*$")

_Reply = TypeVar("_Reply", bound=betterproto.Message)


def event_bit(event: int) -> int:
    """An event's bit in ConfigureResponse.events (containerd/nri event.go:
    `1 << (e - 1)`)."""
    return 1 << (int(event) - 1)


# Every valid event (event.go ValidEvents: the bits below Event_LAST).
ALL_EVENTS = (1 << (int(api.Event.LAST) - 1)) - 1


class Plugin:
    """A plugin's connection and what it registered and subscribed to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 update_containers: Callable[[Plugin, api.UpdateContainersRequest],
                                             Awaitable[api.UpdateContainersResponse]],
                 name: str = "", index: str = "", config: str = "",
                 process: asyncio.subprocess.Process | None = None) -> None:
        self.name = name
        self.index = index
        self.config = config
        self.process = process
        self.kind = "pre-launched" if process is not None else "external"
        self.events = 0
        self.pid = _peer_pid(writer)
        self.registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.mux = Mux(reader, writer)
        self.client = Client(self.mux, PLUGIN_SERVICE_CONN)
        self._update_containers = update_containers
        Server(self.mux, RUNTIME_SERVICE_CONN, {
            (RUNTIME_SERVICE, "RegisterPlugin"): self._register,
            (RUNTIME_SERVICE, "UpdateContainers"): self._updates,
        })
        self.mux.on_close.append(self._on_close)
        self.mux.start()

    @property
    def id(self) -> str:
        """`<index>-<name>`, as NRI names a plugin."""
        return f"{self.index or '??'}-{self.name or 'plugin'}"

    def subscribed(self, event: int) -> bool:
        return bool(self.events & event_bit(event))

    async def _register(self, payload: bytes) -> bytes:
        req = api.RegisterPluginRequest().parse(payload)
        if self.kind == "external":
            if not _NAME.match(req.plugin_name):
                self._fail_registration(f"invalid plugin name {req.plugin_name!r}")
                raise TtrpcError(Code.INVALID_ARGUMENT,
                                 f"invalid plugin name {req.plugin_name!r}")
            if not _INDEX.match(req.plugin_idx):
                self._fail_registration(f"invalid plugin index {req.plugin_idx!r}")
                raise TtrpcError(Code.INVALID_ARGUMENT,
                                 f"invalid plugin index {req.plugin_idx!r}: two digits")
            self.name, self.index = req.plugin_name, req.plugin_idx
        if not self.registered.done():
            self.registered.set_result(None)
        log.info("nri plugin registered", plugin=self.id, kind=self.kind, pid=self.pid,
                 nri_version=req.nri_version)
        return bytes(api.Empty())

    def _fail_registration(self, why: str) -> None:
        if not self.registered.done():
            self.registered.set_exception(ValueError(why))

    async def _updates(self, payload: bytes) -> bytes:
        if not self.closed.is_set() and self.registered.done():
            req = api.UpdateContainersRequest().parse(payload)
            return bytes(await self._update_containers(self, req))
        raise TtrpcError(Code.FAILED_PRECONDITION, "plugin not registered")

    def _on_close(self, _error: BaseException | None) -> None:
        self.closed.set()
        if not self.registered.done():
            self.registered.set_exception(ConnectionError("connection closed"))
            # Nobody may be waiting for it any more: retrieve, so it is not reported.
            self.registered.exception()

    async def call(self, method: str, request: betterproto.Message | bytes,
                   reply: type[_Reply], timeout: float) -> _Reply:
        """`Plugin/<method>` with `request` (a message, or one already encoded: an event
        for several plugins is encoded once); TtrpcError for the plugin's error,
        TimeoutError, ConnectionClosed."""
        payload = request if isinstance(request, bytes) else bytes(request)
        answer = await self.client.call(PLUGIN_SERVICE, method, payload, timeout)
        return reply().parse(answer)

    async def close(self) -> None:
        """Close the connection; a plugin runtimed started is stopped too."""
        await self.mux.close()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "id": self.id, "kind": self.kind,
                "pid": self.pid, "events": [e.name for e in api.Event
                                            if 0 < e < api.Event.LAST and self.subscribed(e)]}


def _peer_pid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return 0
    with contextlib.suppress(OSError):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])
    return 0
