"""`PluginRegistry`: the NRI plugins runtimed talks to (containerd/nri `pkg/adaptation`
adaptation.go and plugin.go): the socket external plugins connect to, the pre-registered
plugins started from the plugin directory, each plugin's handshake (RegisterPlugin within
the registration timeout, Configure, Synchronize) and the active plugins in index order.

A plugin is synchronised with no pod or container create in flight (`block_sync`): a
create holds the gate from its first event until its record is "ready"/"created", and
creates that start while a plugin synchronises wait for it, so every object is either in
the plugin's Synchronize or reaches it as an event, never neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter

from crib_common.errors import CribError
from crib_common.nri import v1alpha1 as api
from crib_common.protowire import field, varint
from crib_common.settings import NriSection
from crib_common.version import RUNTIME_NAME, __version__

from ..bundle import read_config
from ..store.records import ContainerRecord
from .adjust import Updates
from .encode import container_bytes, pod_bytes
from .plugin import ALL_EVENTS, Plugin

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["PluginRegistry"]

log = structlog.get_logger("crib.runtimed.nri")

# Synchronize may take longer than an event (issue 15: at least 5 s).
SYNC_TIMEOUT_MIN = 5.0
# A Synchronize message is split below ttrpc's 4 MiB message limit.
SYNC_CHUNK_BYTES = 3 << 20
# A pre-registered plugin's file name: <two-digit index>-<name> (containerd/nri).
_LAUNCHABLE = re.compile(r"^([0-9]{2})-(.+)$")


class PluginRegistry:
    """Connected plugins, their handshake and synchronisation (see the module doc)."""

    def __init__(self, node: Node, cfg: NriSection) -> None:
        self.node = node
        self.cfg = cfg
        self.plugins: list[Plugin] = []  # active, sorted by (index, name)
        # config.json as written, per container, while plugins are connected: events
        # show it without reading the file back.
        self._specs: dict[str, dict[str, Any]] = {}
        node.on_drop.append(self._forget_spec)
        self._server: asyncio.AbstractServer | None = None
        self._pending: set[Plugin] = set()  # connected, not yet synchronised
        self._tasks: set[asyncio.Task[None]] = set()
        self._cond = asyncio.Condition()
        self._syncing = 0
        self._blockers = 0
        self.events_total: Counter | None = None
        self.errors_total: Counter | None = None

    def use_registry(self, registry: CollectorRegistry) -> None:
        """Count events and plugin errors on the daemon's /metrics."""
        self.events_total = Counter("crib_nri_events_total",
                                    "NRI events delivered to plugins, by event",
                                    ["event"], registry=registry)
        self.errors_total = Counter("crib_nri_plugin_errors_total",
                                    "NRI plugin failures, by plugin, event and kind "
                                    "(timeout, closed, error)",
                                    ["plugin", "event", "kind"], registry=registry)

    async def _plugin_updates(self, plugin: Plugin, req: api.UpdateContainersRequest,
                              ) -> api.UpdateContainersResponse:
        raise NotImplementedError  # Nri: the Runtime service's UpdateContainers

    async def _apply_updates(self, updates: Updates, skip: str) -> None:
        raise NotImplementedError  # Nri: plugins' updates applied

    # ------------------------------------------------------------ start, stop

    async def start(self) -> None:
        """Listen on the socket and start the pre-registered plugins."""
        if not self.cfg.enable:
            return
        path = self.cfg.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a previous run
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        os.chmod(path, 0o600)
        log.info("nri listening", socket=str(path))
        await self._launch_all()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.cfg.socket.unlink()
        for task in list(self._tasks):
            task.cancel()
        for plugin in [*self.plugins, *self._pending]:
            with contextlib.suppress(Exception):
                await plugin.call("Shutdown", api.Empty(), api.Empty, 0.5)
            await plugin.close()
        self.plugins.clear()
        self._pending.clear()

    def describe(self) -> list[dict[str, Any]]:
        """The connected plugins, in call order (for the REST API and `crib status`)."""
        return [p.describe() for p in self.plugins]

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        plugin = Plugin(reader, writer, update_containers=self._plugin_updates)
        self._spawn(self._handshake(plugin))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _launch_all(self) -> None:
        directory = self.cfg.plugin_dir
        if not directory.is_dir():
            return
        for entry in sorted(directory.iterdir()):
            m = _LAUNCHABLE.match(entry.name)
            if m is None or not entry.is_file() or not os.access(entry, os.X_OK):
                continue
            try:
                # One after the other, each through its handshake, before runtimed
                # listens (app.py): pods are not made before the node's own plugins are
                # in place, as containerd starts them before serving the CRI.
                await self._launch(entry, m.group(1), m.group(2))
            except OSError as exc:
                log.error("nri plugin not started", plugin=entry.name, error=str(exc))

    async def _launch(self, path: Path, index: str, name: str) -> None:
        """Start a pre-registered plugin on a connected socket pair, its end as fd 3."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = theirs.fileno()
        try:
            process = await asyncio.create_subprocess_exec(
                str(path), env={**_base_env(), "NRI_PLUGIN_NAME": name,
                                "NRI_PLUGIN_IDX": index, "NRI_PLUGIN_SOCKET": "3"},
                stdin=asyncio.subprocess.DEVNULL, close_fds=False,
                # dup2 leaves fd 3 inheritable; every other fd of ours is close-on-exec.
                preexec_fn=lambda: os.dup2(child_fd, 3))
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        plugin = Plugin(reader, writer, update_containers=self._plugin_updates, name=name,
                        index=index, config=self._plugin_config(index, name), process=process)
        log.info("nri plugin started", plugin=plugin.id, pid=process.pid)
        await self._handshake(plugin)

    def _plugin_config(self, index: str, name: str) -> str:
        for candidate in (f"{index}-{name}.conf", f"{name}.conf"):
            with contextlib.suppress(FileNotFoundError):
                return (self.cfg.plugin_config_dir / candidate).read_text()
        return ""

    async def _handshake(self, plugin: Plugin) -> None:
        """RegisterPlugin within the registration timeout, Configure, Synchronize; only
        then does the plugin get events."""
        self._pending.add(plugin)
        try:
            async with asyncio.timeout(self.cfg.registration_timeout):
                await plugin.registered
            reply = await plugin.call("Configure", api.ConfigureRequest(
                config=plugin.config, runtime_name=RUNTIME_NAME, runtime_version=__version__,
                registration_timeout=int(self.cfg.registration_timeout * 1000),
                request_timeout=int(self.cfg.request_timeout * 1000)),
                api.ConfigureResponse, self.cfg.request_timeout)
            events = reply.events or ALL_EVENTS  # none named: every event (NRI)
            if events & ~ALL_EVENTS:
                raise ValueError(f"invalid event mask {events:#x}")
            plugin.events = events
            await self._synchronize(plugin)
        except asyncio.CancelledError:
            await plugin.close()
            raise
        except Exception as exc:
            log.warning("nri plugin refused", plugin=plugin.id, error=str(exc) or
                        type(exc).__name__)
            self._count_error(plugin, "Register", "handshake")
            await plugin.close()
            return
        finally:
            self._pending.discard(plugin)
        self._spawn(self._watch(plugin))

    async def _watch(self, plugin: Plugin) -> None:
        await plugin.closed.wait()
        if plugin in self.plugins:
            self.plugins.remove(plugin)
            log.warning("nri plugin disconnected", plugin=plugin.id)
        await plugin.close()

    # ------------------------------------------------------------ synchronisation

    @contextlib.asynccontextmanager
    async def block_sync(self) -> AsyncIterator[None]:
        """Held by a pod or container create from its first event to its record's
        "ready"/"created": a plugin is never synchronised in between (it would see
        neither the object nor its event)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._syncing == 0)
            self._blockers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._blockers -= 1
                self._cond.notify_all()

    async def _synchronize(self, plugin: Plugin) -> None:
        async with self._cond:
            self._syncing += 1
            await self._cond.wait_for(lambda: self._blockers == 0)
        try:
            node = self.node
            pods = [pod_bytes(p) for p in node.sandboxes.values()
                    if p.status.state != "creating"]
            ctrs = [container_bytes(c, self._spec(c)) for c in node.containers.values()
                    if c.status.state != "creating"]
            timeout = max(self.cfg.request_timeout, SYNC_TIMEOUT_MIN)
            updates: list[api.ContainerUpdate] = []
            for request in _sync_requests(pods, ctrs):
                reply = await plugin.call("Synchronize", request, api.SynchronizeResponse,
                                          timeout)
                updates += reply.update
            self.plugins.append(plugin)
            self.plugins.sort(key=lambda p: (p.index, p.name))
            log.info("nri plugin synchronised", plugin=plugin.id, pods=len(pods),
                     containers=len(ctrs), events=plugin.describe()["events"])
        finally:
            async with self._cond:
                self._syncing -= 1
                self._cond.notify_all()
        if updates:
            merged = Updates()
            merged.add(updates, plugin.id)
            with contextlib.suppress(CribError):
                await self._apply_updates(merged, skip="")

    def _count_error(self, plugin: Plugin, method: str, kind: str) -> None:
        if self.errors_total is not None:
            self.errors_total.labels(plugin.id, method, kind).inc()

    async def _drop(self, plugin: Plugin) -> None:
        if plugin in self.plugins:
            self.plugins.remove(plugin)
        await plugin.close()

    def _forget_spec(self, oid: str) -> None:
        self._specs.pop(oid, None)

    def _spec(self, rec: ContainerRecord) -> dict[str, Any] | None:
        """The container's config.json: as written, or read back (after a restart)."""
        spec = self._specs.get(rec.meta.id)
        if spec is not None:
            return spec
        try:
            return read_config(Path(rec.meta.bundle))
        except (OSError, ValueError):
            return None


def _sync_requests(pods: list[bytes], ctrs: list[bytes]) -> list[bytes]:
    """SynchronizeRequest {pods = 1; containers = 2; more = 3} messages under
    SYNC_CHUNK_BYTES each; all but the last say `more` (containerd/nri plugin.go splits
    the same way)."""
    items = [field(1, p) for p in pods] + [field(2, c) for c in ctrs]
    chunks: list[bytes] = []
    current = b""
    for item in items:
        if current and len(current) + len(item) > SYNC_CHUNK_BYTES:
            chunks.append(current + varint(3 << 3) + varint(1))
            current = b""
        current += item
    chunks.append(current)
    return chunks


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}



