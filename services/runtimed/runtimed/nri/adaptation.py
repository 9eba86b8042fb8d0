"""`Nri`: runtimed's side of NRI (containerd/nri `pkg/adaptation`): the socket plugins
connect to, the plugins started from the plugin directory, and every lifecycle event
delivered to the plugins subscribed to it, in ascending index order.

Semantics plugins rely on (issue 15; containerd behaves the same way):
  * a plugin that times out or whose connection closes is dropped, and the event counts
    as delivered to it; any other error of a plugin fails the CRI call for RunPodSandbox,
    CreateContainer, StartContainer and UpdateContainerResources (the rooms then undo
    what they did; a retry works); for the notifications (Post*, Stop*, Remove*) it is
    logged and counted;
  * RunPodSandbox and CreateContainer are delivered while the record is still
    "creating", so it is neither listed nor reported ready before the plugins answered;
  * StopPodSandbox is delivered after the pod's containers exited, once per pod;
    StopContainer once per container, also when it exited on its own, and always before
    RemoveContainer;
  * a plugin is synchronised with no pod or container create in flight (`block_sync`),
    and creates that start meanwhile wait for it: none is missed.
A plugin answering Unimplemented to a notification gets it again as `StateChange`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import betterproto
import structlog
from prometheus_client import CollectorRegistry, Counter

from crib_common.errors import CribError, FailedPrecondition
from crib_common.nri import v1alpha1 as api
from crib_common.settings import NriSection
from crib_common.version import RUNTIME_NAME, __version__

from ..bundle import read_config
from ..oci.runtime import RuntimeImpl
from ..oci.spec import is_set
from ..store.records import ContainerRecord, SandboxRecord
from .adjust import Adjuster, Owners, Updates
from .cdi import CdiRegistry
from .convert import container_message, cri_resources, merge_resources, pod_message, resources_message
from .plugin import ALL_EVENTS, Plugin
from .ttrpc import Code, TtrpcError

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Nri", "UpdateFn"]

log = structlog.get_logger("crib.runtimed.nri")

_Reply = TypeVar("_Reply", bound=betterproto.Message)
# Applies OCI resources to a live container (`<runtime> update`), for plugins' updates.
UpdateFn = Callable[[ContainerRecord, dict[str, Any]], Awaitable[None]]
EvictFn = Callable[[ContainerRecord, str], Awaitable[None]]
# Synchronize may take longer than an event (issue 15: at least 5 s).
SYNC_TIMEOUT_MIN = 5.0
# A Synchronize message is split below ttrpc's 4 MiB message limit.
SYNC_CHUNK_BYTES = 3 << 20
_LAUNCHABLE = re.compile(r"^([0-9]{2})-(.+)$")


class Nri:
    """Plugins and event delivery (see the module docstring)."""

    def __init__(self, node: Node, cfg: NriSection) -> None:
        self.node = node
        self.cfg = cfg
        self.plugins: list[Plugin] = []  # active, sorted by (index, name)
        self.update_fn: UpdateFn = self._update_live
        self.cdi = CdiRegistry(cfg.cdi_spec_dirs)
        self.evict_fn: EvictFn | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pending: set[Plugin] = set()  # connected, not yet synchronised
        self._tasks: set[asyncio.Task[None]] = set()
        self._cond = asyncio.Condition()
        self._syncing = 0
        self._blockers = 0
        self._pods_stopped: set[str] = set()
        self._ctrs_stopped: dict[str, asyncio.Future[None]] = {}
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
            pods = [pod_message(p) for p in node.sandboxes.values()
                    if p.status.state != "creating"]
            ctrs = [container_message(c, _spec(c)) for c in node.containers.values()
                    if c.status.state != "creating"]
            timeout = max(self.cfg.request_timeout, SYNC_TIMEOUT_MIN)
            updates: list[api.ContainerUpdate] = []
            for chunk_pods, chunk_ctrs, more in _chunks(pods, ctrs):
                reply = await plugin.call("Synchronize", api.SynchronizeRequest(
                    pods=chunk_pods, containers=chunk_ctrs, more=more),
                    api.SynchronizeResponse, timeout)
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

    # ------------------------------------------------------------ delivery

    def wants(self, event: int) -> bool:
        """Whether any active plugin subscribed to `event` (cheap: the rooms build no
        message when none did)."""
        return any(p.subscribed(event) for p in self.plugins)

    async def _deliver(self, event: int, method: str, request: betterproto.Message,
                       reply_type: type[_Reply], *, fail: bool,
                       state_change: api.StateChangeEvent | None = None,
                       ) -> list[tuple[Plugin, _Reply]]:
        """`request` to each subscribed plugin in index order; their replies."""
        replies: list[tuple[Plugin, _Reply]] = []
        for plugin in [p for p in self.plugins if p.subscribed(event)]:
            if self.events_total is not None:
                self.events_total.labels(method).inc()
            try:
                try:
                    replies.append((plugin, await plugin.call(
                        method, request, reply_type, self.cfg.request_timeout)))
                except TtrpcError as exc:
                    if exc.code != Code.UNIMPLEMENTED or state_change is None:
                        raise
                    await plugin.call("StateChange", state_change, api.Empty,
                                      self.cfg.request_timeout)
            except (TimeoutError, ConnectionError) as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else "closed"
                self._count_error(plugin, method, kind)
                log.warning("nri plugin dropped", plugin=plugin.id, rpc=method, why=kind)
                await self._drop(plugin)
            except TtrpcError as exc:
                self._count_error(plugin, method, "error")
                if fail:
                    raise FailedPrecondition(
                        f"NRI plugin {plugin.id} failed {method}: {exc.message}") from None
                log.warning("nri plugin failed", plugin=plugin.id, rpc=method,
                            error=exc.message)
        return replies

    def _count_error(self, plugin: Plugin, method: str, kind: str) -> None:
        if self.errors_total is not None:
            self.errors_total.labels(plugin.id, method, kind).inc()

    async def _drop(self, plugin: Plugin) -> None:
        if plugin in self.plugins:
            self.plugins.remove(plugin)
        await plugin.close()

    # ------------------------------------------------------------ pod events

    async def run_pod_sandbox(self, pod: SandboxRecord) -> None:
        if self.wants(api.Event.RUN_POD_SANDBOX):
            await self._deliver(api.Event.RUN_POD_SANDBOX, "RunPodSandbox",
                                api.RunPodSandboxRequest(pod=pod_message(pod)),
                                api.RunPodSandboxResponse, fail=True)

    async def stop_pod_sandbox(self, pod: SandboxRecord) -> None:
        """Once per pod, after its containers exited."""
        if pod.meta.id in self._pods_stopped:
            return
        self._pods_stopped.add(pod.meta.id)
        if self.wants(api.Event.STOP_POD_SANDBOX):
            msg = pod_message(pod)
            await self._deliver(api.Event.STOP_POD_SANDBOX, "StopPodSandbox",
                                api.StopPodSandboxRequest(pod=msg), api.StopPodSandboxResponse,
                                fail=False, state_change=api.StateChangeEvent(
                                    event=api.Event(api.Event.STOP_POD_SANDBOX), pod=msg))

    async def remove_pod_sandbox(self, pod: SandboxRecord) -> None:
        await self.stop_pod_sandbox(pod)
        self._pods_stopped.discard(pod.meta.id)  # the pod is gone: forget it
        if self.wants(api.Event.REMOVE_POD_SANDBOX):
            msg = pod_message(pod)
            await self._deliver(api.Event.REMOVE_POD_SANDBOX, "RemovePodSandbox",
                                api.RemovePodSandboxRequest(pod=msg),
                                api.RemovePodSandboxResponse, fail=False,
                                state_change=api.StateChangeEvent(
                                    event=api.Event(api.Event.REMOVE_POD_SANDBOX), pod=msg))

    async def update_pod_sandbox(self, pod: SandboxRecord, resources: dict[str, Any],
                                 overhead: dict[str, Any]) -> None:
        """UpdatePodSandbox (UpdatePodSandboxResources): the pod's new resources and
        overhead, as OCI resources; a plugin's error fails the call."""
        if self.wants(api.Event.UPDATE_POD_SANDBOX):
            await self._deliver(api.Event.UPDATE_POD_SANDBOX, "UpdatePodSandbox",
                                api.UpdatePodSandboxRequest(
                                    pod=pod_message(pod),
                                    linux_resources=resources_message(resources),
                                    overhead_linux_resources=resources_message(overhead)),
                                api.UpdatePodSandboxResponse, fail=True)

    async def post_update_pod_sandbox(self, pod: SandboxRecord) -> None:
        if self.wants(api.Event.POST_UPDATE_POD_SANDBOX):
            msg = pod_message(pod)
            await self._deliver(api.Event.POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox",
                                api.PostUpdatePodSandboxRequest(pod=msg),
                                api.PostUpdatePodSandboxResponse, fail=False,
                                state_change=api.StateChangeEvent(
                                    event=api.Event(api.Event.POST_UPDATE_POD_SANDBOX),
                                    pod=msg))

    # ------------------------------------------------------------ container events

    async def create_container(self, pod: SandboxRecord, rec: ContainerRecord,
                               spec: dict[str, Any]) -> None:
        """CreateContainer: every subscribed plugin's adjustment laid on `spec` (the
        config.json about to be written), in index order; their updates to other
        containers applied. A conflict or a failed update fails the create."""
        if not self.wants(api.Event.CREATE_CONTAINER):
            return
        replies = await self._deliver(
            api.Event.CREATE_CONTAINER, "CreateContainer",
            api.CreateContainerRequest(pod=pod_message(pod),
                                       container=container_message(rec, spec)),
            api.CreateContainerResponse, fail=True)
        owners = Owners()
        adjuster = Adjuster(rec.meta.id, spec, owners)
        updates = Updates(owners)
        evictions: list[api.ContainerEviction] = []
        for plugin, reply in replies:
            if is_set(reply.adjust):
                adjuster.apply(reply.adjust, plugin.id)
            updates.add(reply.update, plugin.id)
            evictions += reply.evict
        if adjuster.cdi_devices:
            await asyncio.to_thread(self.cdi.inject, spec, adjuster.cdi_devices)
        own = updates.by_container.pop(rec.meta.id, None)
        if own is not None:  # an update of the container being made: part of its config
            linux = spec.setdefault("linux", {})
            linux["resources"] = merge_resources(linux.get("resources") or {}, own[0])
        await self._apply_updates(updates, skip=rec.meta.id)
        await self._evict(evictions)

    async def post_create_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        await self._notify(api.Event.POST_CREATE_CONTAINER, "PostCreateContainer",
                           api.PostCreateContainerRequest, api.PostCreateContainerResponse,
                           pod, rec)

    async def start_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        if self.wants(api.Event.START_CONTAINER):
            await self._deliver(api.Event.START_CONTAINER, "StartContainer",
                                api.StartContainerRequest(pod=pod_message(pod),
                                                          container=container_message(
                                                              rec, _spec(rec))),
                                api.StartContainerResponse, fail=True)

    async def post_start_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        await self._notify(api.Event.POST_START_CONTAINER, "PostStartContainer",
                           api.PostStartContainerRequest, api.PostStartContainerResponse,
                           pod, rec)

    async def update_container(self, pod: SandboxRecord, rec: ContainerRecord,
                               resources: dict[str, Any]) -> dict[str, Any]:
        """UpdateContainer: the OCI resources the container is to get, as the plugins
        changed them; their updates to other containers applied."""
        if not self.wants(api.Event.UPDATE_CONTAINER):
            return resources
        replies = await self._deliver(
            api.Event.UPDATE_CONTAINER, "UpdateContainer",
            api.UpdateContainerRequest(pod=pod_message(pod),
                                       container=container_message(rec, _spec(rec)),
                                       linux_resources=resources_message(resources)),
            api.UpdateContainerResponse, fail=True)
        updates = Updates()
        evictions: list[api.ContainerEviction] = []
        for plugin, reply in replies:
            updates.add(reply.update, plugin.id)
            evictions += reply.evict
        own = updates.by_container.pop(rec.meta.id, None)
        if own is not None:
            resources = merge_resources(resources, own[0])
        await self._apply_updates(updates, skip=rec.meta.id)
        await self._evict(evictions)
        return resources

    async def post_update_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        await self._notify(api.Event.POST_UPDATE_CONTAINER, "PostUpdateContainer",
                           api.PostUpdateContainerRequest, api.PostUpdateContainerResponse,
                           pod, rec)

    async def stop_container(self, pod: SandboxRecord | None, rec: ContainerRecord) -> None:
        """StopContainer, once per container (StopContainer, an exit of its own, or
        before RemoveContainer, whichever comes first); a second caller waits for it."""
        cid = rec.meta.id
        sent = self._ctrs_stopped.get(cid)
        if sent is not None:
            await asyncio.shield(sent)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ctrs_stopped[cid] = done
        try:
            if pod is not None and self.wants(api.Event.STOP_CONTAINER):
                ctr = container_message(rec, _spec(rec))
                replies = await self._deliver(
                    api.Event.STOP_CONTAINER, "StopContainer",
                    api.StopContainerRequest(pod=pod_message(pod), container=ctr),
                    api.StopContainerResponse, fail=False,
                    state_change=api.StateChangeEvent(
                        event=api.Event(api.Event.STOP_CONTAINER), pod=pod_message(pod), container=ctr))
                updates = Updates()
                for plugin, reply in replies:
                    with contextlib.suppress(CribError):
                        updates.add(reply.update, plugin.id)
                updates.by_container.pop(cid, None)
                with contextlib.suppress(CribError):
                    await self._apply_updates(updates, skip=cid)
        finally:
            done.set_result(None)

    def container_exited(self, rec: ContainerRecord) -> None:
        """A container exited on its own: StopContainer in the background."""
        if rec.meta.id in self._ctrs_stopped or not self.wants(api.Event.STOP_CONTAINER):
            return
        pod = self.node.sandboxes.get(rec.meta.pod_id)
        self._spawn(self.stop_container(pod, rec))

    async def remove_container(self, pod: SandboxRecord | None, rec: ContainerRecord,
                               spec: dict[str, Any] | None = None) -> None:
        await self.stop_container(pod, rec)
        self._ctrs_stopped.pop(rec.meta.id, None)  # the container is gone: forget it
        if pod is not None and self.wants(api.Event.REMOVE_CONTAINER):
            ctr = container_message(rec, spec)
            await self._deliver(api.Event.REMOVE_CONTAINER, "RemoveContainer",
                                api.RemoveContainerRequest(pod=pod_message(pod), container=ctr),
                                api.RemoveContainerResponse, fail=False,
                                state_change=api.StateChangeEvent(
                                    event=api.Event(api.Event.REMOVE_CONTAINER), pod=pod_message(pod),
                                    container=ctr))

    async def _notify(self, event: int, method: str,
                      request_type: Callable[..., betterproto.Message],
                      reply_type: type[betterproto.Message], pod: SandboxRecord,
                      rec: ContainerRecord) -> None:
        if not self.wants(event):
            return
        pod_msg, ctr = pod_message(pod), container_message(rec, _spec(rec))
        await self._deliver(event, method, request_type(pod=pod_msg, container=ctr),
                            reply_type, fail=False, state_change=api.StateChangeEvent(
                                event=api.Event(event), pod=pod_msg, container=ctr))

    # ------------------------------------------------------------ updates

    async def _plugin_updates(self, plugin: Plugin, req: api.UpdateContainersRequest,
                              ) -> api.UpdateContainersResponse:
        """UpdateContainers, unsolicited: applied; the ones that failed answered back."""
        log.info("nri plugin updates containers", plugin=plugin.id,
                 containers=[u.container_id for u in req.update])
        failed: list[api.ContainerUpdate] = []
        for u in req.update:
            one = Updates()
            one.add([u], plugin.id)
            try:
                await self._apply_updates(one, skip="")
            except CribError as exc:
                log.warning("nri container update failed", plugin=plugin.id,
                            container=u.container_id, error=exc.message)
                failed.append(u)
        await self._evict(req.evict)
        return api.UpdateContainersResponse(failed=failed)

    async def _apply_updates(self, updates: Updates, skip: str) -> None:
        for cid, (resources, ignore) in updates.by_container.items():
            if cid == skip or not resources:
                continue
            rec = self.node.containers.get(cid)
            try:
                if rec is None or rec.status.state not in ("created", "running"):
                    raise FailedPrecondition(f"container {cid} is not created or running")
                await self.update_fn(rec, resources)
            except CribError:
                if not ignore:
                    raise

    async def _update_live(self, rec: ContainerRecord, resources: dict[str, Any]) -> None:
        """A plugin's update: `<runtime> update` on the live container, then recorded."""
        rt: RuntimeImpl | None = self.node.runtimes.get(rec.meta.handler)
        if rt is None:
            raise FailedPrecondition(f"runtime handler {rec.meta.handler!r} is gone")
        await rt.update(rec.meta.id, resources)
        rec.status.resources = {**rec.status.resources, **cri_resources(resources)}
        self.node.put_container(rec)
        log.info("container resources updated by nri", container=rec.meta.id,
                 resources=resources)

    async def _evict(self, evictions: list[api.ContainerEviction]) -> None:
        for ev in evictions:
            rec = self.node.containers.get(ev.container_id)
            if rec is not None and self.evict_fn is not None:
                log.warning("nri plugin evicts container", container=ev.container_id,
                            reason=ev.reason)
                await self.evict_fn(rec, ev.reason)


def _spec(rec: ContainerRecord) -> dict[str, Any] | None:
    try:
        return read_config(Path(rec.meta.bundle))
    except (OSError, ValueError):
        return None


def _chunks(pods: list[api.PodSandbox], ctrs: list[api.Container],
            ) -> list[tuple[list[api.PodSandbox], list[api.Container], bool]]:
    """Pods and containers in Synchronize messages under SYNC_CHUNK_BYTES each; all but
    the last say `more` (SynchronizeRequest.more)."""
    chunks: list[tuple[list[api.PodSandbox], list[api.Container], bool]] = []
    cur_p: list[api.PodSandbox] = []
    cur_c: list[api.Container] = []
    size = 0
    for item in [*pods, *ctrs]:
        n = len(bytes(item)) + 8
        if size + n > SYNC_CHUNK_BYTES and (cur_p or cur_c):
            chunks.append((cur_p, cur_c, True))
            cur_p, cur_c, size = [], [], 0
        (cur_p if isinstance(item, api.PodSandbox) else cur_c).append(item)  # type: ignore[arg-type]
        size += n
    chunks.append((cur_p, cur_c, False))
    return chunks


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}


