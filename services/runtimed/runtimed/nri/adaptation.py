"""`Nri`: every lifecycle event delivered to the NRI plugins subscribed to it, in
ascending index order (containerd/nri `pkg/adaptation`), on top of the plugins the
registry (`registry.PluginRegistry`) connected and synchronised.

Semantics plugins rely on (issue 15; containerd behaves the same way):
  * a plugin that times out or whose connection closes is dropped, and the event counts
    as delivered to it; any other error of a plugin fails the CRI call for RunPodSandbox,
    CreateContainer, StartContainer, UpdateContainerResources and
    UpdatePodSandboxResources (the rooms then undo what they did; a retry works); for
    the notifications (Post*, Stop*, Remove*) it is logged and counted;
  * RunPodSandbox and CreateContainer are delivered while the record is still
    "creating", so it is neither listed nor reported ready before the plugins answered;
  * StopPodSandbox is delivered after the pod's containers exited, once per pod;
    StopContainer once per container, also when it exited on its own, and always before
    RemoveContainer;
  * creates in flight hold off a plugin's synchronisation (`block_sync`): none is missed.
A plugin answering Unimplemented to a notification gets it again as `StateChange`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import betterproto
import structlog

from crib_common.errors import CribError, FailedPrecondition
from crib_common.nri import v1alpha1 as api
from crib_common.protowire import field, varint
from crib_common.settings import NriSection

from ..oci.runtime import RuntimeImpl
from ..oci.spec import is_set
from ..store.records import ContainerRecord, SandboxRecord
from .adjust import Adjuster, Owners, Updates
from .cdi import CdiRegistry
from .convert import cri_resources, merge_resources
from .encode import container_bytes, pod_bytes, resources_bytes
from .plugin import Plugin
from .registry import PluginRegistry
from .ttrpc import Code, TtrpcError

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["EvictFn", "Nri", "UpdateFn"]

log = structlog.get_logger("crib.runtimed.nri")

_Reply = TypeVar("_Reply", bound=betterproto.Message)
# Applies OCI resources to a live container (`<runtime> update`), for plugins' updates.
UpdateFn = Callable[[ContainerRecord, dict[str, Any]], Awaitable[None]]
# Stops a container a plugin evicts.
EvictFn = Callable[[ContainerRecord, str], Awaitable[None]]


class Nri(PluginRegistry):
    """Event delivery (see the module docstring)."""

    def __init__(self, node: Node, cfg: NriSection) -> None:
        super().__init__(node, cfg)
        self.update_fn: UpdateFn = self._update_live
        self.evict_fn: EvictFn | None = None
        self.cdi = CdiRegistry(cfg.cdi_spec_dirs)
        self._pods_stopped: set[str] = set()
        self._ctrs_stopped: dict[str, asyncio.Future[None]] = {}
        # Pods and containers whose RunPodSandbox/CreateContainer went out, until they
        # are removed: a create that fails afterwards tells the plugins to forget them.
        self._pods_run: set[str] = set()
        self._ctrs_created: set[str] = set()

    # ------------------------------------------------------------ delivery

    def wants(self, event: int) -> bool:
        """Whether any active plugin subscribed to `event` (cheap: the rooms build no
        message when none did)."""
        return any(p.subscribed(event) for p in self.plugins)

    async def _deliver(self, event: int, method: str, payload: bytes,
                       reply_type: type[_Reply], *, fail: bool,
                       state_change: Callable[[], bytes] | None = None,
                       ) -> list[tuple[Plugin, _Reply]]:
        """The encoded request to each subscribed plugin in index order; their replies.
        `state_change` builds the StateChangeEvent for plugins that answer Unimplemented."""
        replies: list[tuple[Plugin, _Reply]] = []
        for plugin in [p for p in self.plugins if p.subscribed(event)]:
            if self.events_total is not None:
                self.events_total.labels(method).inc()
            try:
                try:
                    replies.append((plugin, await plugin.call(
                        method, payload, reply_type, self.cfg.request_timeout)))
                except TtrpcError as exc:
                    if exc.code != Code.UNIMPLEMENTED or state_change is None:
                        raise
                    await plugin.call("StateChange", state_change(), api.Empty,
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

    async def _notify(self, event: int, method: str, reply_type: type[betterproto.Message],
                      pod: SandboxRecord, rec: ContainerRecord | None = None,
                      spec: dict[str, Any] | None = None) -> None:
        """A notification: {pod = 1; container = 2} (every Post*, Stop*, Remove* request
        has that shape in api.proto); StateChange {event 1, pod 2, container 3} for a
        plugin that answers Unimplemented."""
        if not self.wants(event):
            return
        pod_b = pod_bytes(pod)
        ctr_b = None if rec is None else container_bytes(rec, spec)
        payload = field(1, pod_b) + (b"" if ctr_b is None else field(2, ctr_b))
        await self._deliver(event, method, payload, reply_type, fail=False,
                            state_change=lambda: varint(1 << 3) + varint(event)
                            + field(2, pod_b) + (b"" if ctr_b is None else field(3, ctr_b)))

    # ------------------------------------------------------------ pod events

    async def run_pod_sandbox(self, pod: SandboxRecord) -> None:
        if self.wants(api.Event.RUN_POD_SANDBOX):
            self._pods_run.add(pod.meta.id)
            # RunPodSandboxRequest {pod = 1}
            await self._deliver(api.Event.RUN_POD_SANDBOX, "RunPodSandbox",
                                field(1, pod_bytes(pod)), api.RunPodSandboxResponse,
                                fail=True)

    async def stop_pod_sandbox(self, pod: SandboxRecord) -> None:
        """Once per pod, after its containers exited."""
        if pod.meta.id in self._pods_stopped:
            return
        self._pods_stopped.add(pod.meta.id)
        await self._notify(api.Event.STOP_POD_SANDBOX, "StopPodSandbox",
                           api.StopPodSandboxResponse, pod)

    async def undo_run_pod_sandbox(self, pod: SandboxRecord) -> None:
        """RunPodSandbox failed after plugins saw it (one of them refused, or a later
        step): StopPodSandbox and RemovePodSandbox, so none keeps what it set aside for
        the pod (containerd's NRI does the same)."""
        if pod.meta.id in self._pods_run:
            await self.remove_pod_sandbox(pod)

    async def remove_pod_sandbox(self, pod: SandboxRecord) -> None:
        await self.stop_pod_sandbox(pod)
        self._pods_stopped.discard(pod.meta.id)  # the pod is gone: forget it
        self._pods_run.discard(pod.meta.id)
        await self._notify(api.Event.REMOVE_POD_SANDBOX, "RemovePodSandbox",
                           api.RemovePodSandboxResponse, pod)

    async def update_pod_sandbox(self, pod: SandboxRecord, resources: dict[str, Any],
                                 overhead: dict[str, Any]) -> None:
        """UpdatePodSandbox (UpdatePodSandboxResources): the pod's new resources and
        overhead, as OCI resources; a plugin's error fails the call."""
        if self.wants(api.Event.UPDATE_POD_SANDBOX):
            # UpdatePodSandboxRequest {pod = 1; overhead_linux_resources = 2;
            # linux_resources = 3}
            await self._deliver(api.Event.UPDATE_POD_SANDBOX, "UpdatePodSandbox",
                                field(1, pod_bytes(pod)) + field(2, resources_bytes(overhead))
                                + field(3, resources_bytes(resources)),
                                api.UpdatePodSandboxResponse, fail=True)

    async def post_update_pod_sandbox(self, pod: SandboxRecord) -> None:
        await self._notify(api.Event.POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox",
                           api.PostUpdatePodSandboxResponse, pod)

    # ------------------------------------------------------------ container events

    async def create_container(self, pod: SandboxRecord, rec: ContainerRecord,
                               spec: dict[str, Any]) -> None:
        """CreateContainer: every subscribed plugin's adjustment laid on `spec` (the
        config.json about to be written), in index order; their updates to other
        containers applied. A conflict or a failed update fails the create."""
        if self.plugins:
            self._specs[rec.meta.id] = spec
        if not self.wants(api.Event.CREATE_CONTAINER):
            return
        self._ctrs_created.add(rec.meta.id)
        # CreateContainerRequest {pod = 1; container = 2}
        replies = await self._deliver(
            api.Event.CREATE_CONTAINER, "CreateContainer",
            field(1, pod_bytes(pod)) + field(2, container_bytes(rec, spec)),
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
                           api.PostCreateContainerResponse, pod, rec, self._spec(rec))

    async def start_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        if self.wants(api.Event.START_CONTAINER):
            # StartContainerRequest {pod = 1; container = 2}
            await self._deliver(api.Event.START_CONTAINER, "StartContainer",
                                field(1, pod_bytes(pod))
                                + field(2, container_bytes(rec, self._spec(rec))),
                                api.StartContainerResponse, fail=True)

    async def post_start_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        await self._notify(api.Event.POST_START_CONTAINER, "PostStartContainer",
                           api.PostStartContainerResponse, pod, rec, self._spec(rec))

    async def update_container(self, pod: SandboxRecord, rec: ContainerRecord,
                               resources: dict[str, Any]) -> dict[str, Any]:
        """UpdateContainer: the OCI resources the container is to get, as the plugins
        changed them; their updates to other containers applied."""
        if not self.wants(api.Event.UPDATE_CONTAINER):
            return resources
        # UpdateContainerRequest {pod = 1; container = 2; linux_resources = 3}
        replies = await self._deliver(
            api.Event.UPDATE_CONTAINER, "UpdateContainer",
            field(1, pod_bytes(pod)) + field(2, container_bytes(rec, self._spec(rec)))
            + field(3, resources_bytes(resources)),
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
                           api.PostUpdateContainerResponse, pod, rec, self._spec(rec))

    async def stop_container(self, pod: SandboxRecord | None, rec: ContainerRecord) -> None:
        """StopContainer, once per container (StopContainer, an exit of its own, or
        before RemoveContainer, whichever comes first); a second caller waits for it."""
        done = self._claim_stop(rec.meta.id)
        if done is None:
            await asyncio.shield(self._ctrs_stopped[rec.meta.id])
            return
        await self._send_stop(pod, rec, done)

    def _claim_stop(self, cid: str) -> asyncio.Future[None] | None:
        """Take the container's one StopContainer, synchronously (so a later caller,
        whatever runs in between, finds it taken); None if already taken."""
        if cid in self._ctrs_stopped:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ctrs_stopped[cid] = done
        return done

    async def _send_stop(self, pod: SandboxRecord | None, rec: ContainerRecord,
                         done: asyncio.Future[None]) -> None:
        cid = rec.meta.id
        try:
            if pod is not None and self.wants(api.Event.STOP_CONTAINER):
                pod_b, ctr_b = pod_bytes(pod), container_bytes(rec, self._spec(rec))
                replies = await self._deliver(
                    api.Event.STOP_CONTAINER, "StopContainer",
                    field(1, pod_b) + field(2, ctr_b), api.StopContainerResponse,
                    fail=False, state_change=lambda: varint(1 << 3)
                    + varint(api.Event.STOP_CONTAINER) + field(2, pod_b) + field(3, ctr_b))
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
        """A container exited on its own: StopContainer in the background, its turn
        taken now (before any RemoveContainer can come)."""
        if not self.wants(api.Event.STOP_CONTAINER):
            return
        done = self._claim_stop(rec.meta.id)
        if done is not None:
            self._spawn(self._send_stop(self.node.sandboxes.get(rec.meta.pod_id), rec, done))

    async def undo_create_container(self, pod: SandboxRecord, rec: ContainerRecord) -> None:
        """CreateContainer failed after plugins saw it: StopContainer and
        RemoveContainer, as for a container removed (containerd's NRI does the same)."""
        if rec.meta.id in self._ctrs_created:
            await self.remove_container(pod, rec)

    async def remove_container(self, pod: SandboxRecord | None, rec: ContainerRecord) -> None:
        await self.stop_container(pod, rec)
        self._ctrs_stopped.pop(rec.meta.id, None)  # the container is gone: forget it
        self._ctrs_created.discard(rec.meta.id)
        if pod is not None:
            await self._notify(api.Event.REMOVE_CONTAINER, "RemoveContainer",
                               api.RemoveContainerResponse, pod, rec)

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
