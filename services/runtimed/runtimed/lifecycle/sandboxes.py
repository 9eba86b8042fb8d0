"""Pod sandboxes: what RunPodSandbox sets up, StopPodSandbox stops and RemovePodSandbox
takes away. The CRI modules (`cri/sandbox_*.py`) check requests and decide idempotency;
this room does the work on records it is handed.

    creating ──setup──> ready ──stop──> notready ──remove──> (deleted)
        │                 └──infra exited (lifecycle.exits)──┘
        └──a step failed, or found half-done at start──> teardown ──> (deleted)

Setup, in order, each step persisted before the next so a teardown (rollback, recovery,
remove) knows what to undo: the pod directory; the pod cgroup's resources; IPC and UTS
namespaces pinned (inside the pod's own user namespace, pinned with them, for
hostUsers: false: `sandbox.idmapped`); the network from netd (netns path and IPs
recorded; made inside that user namespace); hostname,
resolv.conf and hosts files; a private /dev/shm; the infra process (`lifecycle.infra`).
Teardown undoes each step whether or not it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from crib_common.cri.runtime.v1 import DnsConfig
from crib_common.errors import FailedPrecondition
from crib_common.models.netd import DnsConfig as NetDns
from crib_common.models.netd import PodNetworkCreate, PortMapping

from .. import cgroups
from ..node import Node, failpoint, new_id, now
from ..oci.runtime import RuntimeImpl
from ..oci.spec import resources_to_oci
from ..store.records import SandboxMeta, SandboxRecord
from ..userns.mappings import PodUserns
from .containers import Containers
from .infra import start_infra, stop_infra
from .undo import attempt, release_monitor, undone_on_failure, unmount_and_remove

__all__ = ["SandboxRequest", "Sandboxes"]

log = structlog.get_logger("crib.runtimed")

_PROTOCOLS = ("tcp", "udp", "sctp")  # CRI Protocol enum order


@dataclass
class SandboxRequest:
    """A checked RunPodSandbox: what the pod is (its metadata record, without id and
    paths yet), its DNS and its pod-level resources."""

    meta: dict[str, Any]
    dns: DnsConfig | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    cgroup_parent: str = ""  # as the kubelet gave it ("" = none)


class Sandboxes:
    """Sets pods up and takes them down."""

    def __init__(self, node: Node, containers: Containers) -> None:
        self.node = node
        self.containers = containers

    async def run(self, req: SandboxRequest, rt: RuntimeImpl) -> str:
        """Reserve the name, persist a "creating" record, set up, mark ready; on any
        failure the teardown runs and the record goes. Returns the new pod's id."""
        node = self.node
        sid = new_id()
        meta = SandboxMeta(id=sid, handler=rt.name, created_at=now(),
                           pod_dir=str(node.pods_dir / sid), **req.meta,
                           **self._cgroup_parent(sid, req.cgroup_parent))
        rec = SandboxRecord(meta=meta)
        rec.status.resources = req.resources
        node.add_sandbox(rec)
        log.info("sandbox creating", pod=sid, name=meta.name, namespace=meta.namespace,
                 handler=rt.name)
        try:
            async with node.nri.block_sync(), \
                    undone_on_failure(node, rec, self.teardown, node.drop_sandbox):
                await self._setup(rec, req.dns, rt)
                # NRI RunPodSandbox while the pod is still "creating": unlisted, not
                # ready; a plugin's error undoes the pod.
                await node.nri.run_pod_sandbox(rec)
                failpoint("sandbox_before_ready")
                rec.status.state = "ready"
                node.put_sandbox(rec)
        except Exception:
            await node.nri.undo_run_pod_sandbox(rec)
            raise
        log.info("sandbox ready", pod=sid, ips=rec.status.ips)
        # containerd's RunPodSandbox sends both, for the sandbox id.
        node.emit(sid, "created", sid)
        node.emit(sid, "started", sid)
        return sid

    def _cgroup_parent(self, sid: str, asked: str) -> dict[str, Any]:
        """Where the pod sits in the cgroup tree (SandboxMeta's cgroup fields): the
        kubelet's parent as given, like containerd and CRI-O (the kubelet made and limits
        it); crib's `cgroup_parent` setting only for a pod that names none, and then crib
        owns the pod cgroup. InvalidArgument for a parent not in the driver's form."""
        cfg = self.node.cfg
        driver = cfg.cgroup_driver
        parent = cgroups.pod_cgroup_parent(asked, setting=cfg.cgroup_parent, sandbox_id=sid,
                                           driver=driver)
        return {"cgroup_parent": parent,
                "cgroup_path": cgroups.pod_cgroup_path(parent, driver),
                "cgroup_owned": not asked,
                "infra_cgroup": cgroups.container_cgroup(parent, sid, driver).fs_path,
                "infra_monitor_cgroup": cgroups.monitor_cgroup(cfg.monitor_cgroup, parent,
                                                               sid, driver)}

    async def _setup(self, rec: SandboxRecord, dns: DnsConfig | None,
                     rt: RuntimeImpl) -> None:
        node, meta = self.node, rec.meta
        pod_dir = Path(meta.pod_dir)
        pod_dir.mkdir(parents=True, exist_ok=True)
        if rec.status.resources and meta.cgroup_owned:
            await self.apply_resources(meta.pod_cgroup, rec.status.resources)
        # IPC and UTS first: with a pod user namespace they are pinned inside it, and
        # netd makes the network namespace inside it too, while its holder still runs.
        ns_dir = Path(node.cfg.pinns_dir) / meta.id
        userns = PodUserns.from_record(meta.userns_mappings)
        if userns is not None:
            async with node.host.pod_namespaces(ns_dir, userns, ipc=not meta.host_ipc,
                                                uts=not meta.host_network,
                                                hostname=meta.hostname) as pins:
                meta.userns = pins["user"]
                self._pinned(rec, pins)
                ips = await self._network(rec, dns, pins["held"])
        else:
            self._pinned(rec, await node.host.pin_namespaces(
                ns_dir, ipc=not meta.host_ipc, uts=not meta.host_network,
                hostname=meta.hostname))
            ips = await self._network(rec, dns, "")
        node.host.write_pod_files(pod_dir, meta.hostname, dns, ips, meta.host_network,
                                  userns.root if userns is not None else None)
        if not meta.host_ipc:
            node.host.mount_shm(pod_dir / "shm")
        await start_infra(node, rec, rt)

    def _pinned(self, rec: SandboxRecord, pins: dict[str, str]) -> None:
        rec.meta.ipc_ns = pins.get("ipc", "")
        rec.meta.uts_ns = pins.get("uts", "")
        self.node.put_sandbox(rec)

    async def _network(self, rec: SandboxRecord, dns: DnsConfig | None,
                       userns: str) -> list[str]:
        """The pod's network from netd (in the user namespace at `userns`, if any);
        its IPs."""
        node, meta = self.node, rec.meta
        ips: list[str] = []
        if not meta.host_network:
            net = await node.netd.create_pod_network(PodNetworkCreate(
                pod_id=meta.id, pod_name=meta.name, pod_namespace=meta.namespace,
                pod_uid=meta.uid,
                port_mappings=[PortMapping(
                    host_port=p["host_port"], container_port=p["container_port"],
                    protocol=_PROTOCOLS[p["protocol"]] if 0 <= p["protocol"] < 3 else "tcp",
                    host_ip=p["host_ip"]) for p in meta.port_mappings if p["host_port"]],
                dns=NetDns(servers=list(dns.servers), searches=list(dns.searches),
                           options=list(dns.options)) if dns else None,
                annotations=meta.annotations, userns_path=userns,
            ))
            meta.netns_path = net.netns_path
            ips = [ip.ip for ip in net.ips]
            rec.status.ips = ips
            node.put_sandbox(rec)
            failpoint("sandbox_after_network")
        return ips

    async def teardown(self, rec: SandboxRecord, network: bool = True) -> None:
        """Undo every step of `_setup`; each one tolerates not having happened.
        `network=False` when StopPodSandbox has just released it. A step that fails (a
        peer down) does not stop the local ones; the first failure is raised at the end."""
        node, meta = self.node, rec.meta
        failed: list[Exception] = []
        await attempt(failed, "stop infra", stop_infra(node, rec), pod=meta.id)
        rt = node.runtimes.get(meta.handler)
        if rt is not None and meta.has_infra:
            await attempt(failed, "delete infra", rt.delete(meta.id), pod=meta.id)
        await release_monitor(node, rec.status.infra_conmon_pid, 0,
                              meta.infra_monitor_cgroup if meta.has_infra else "", meta.id)
        if network and not meta.host_network:
            await attempt(failed, "remove network", node.netd.remove_pod_network(meta.id),
                          pod=meta.id)
        await unmount_and_remove(
            node, failed, meta.pod_dir, [meta.infra_snapshot],
            first=lambda: node.host.unpin_namespaces(Path(node.cfg.pinns_dir) / meta.id),
            pod=meta.id)
        for leftover in (node.exit_dir / meta.id, node.sock_dir / meta.id):
            with contextlib.suppress(OSError):
                leftover.unlink()
        left = await asyncio.to_thread(self._remove_cgroups, meta)
        if left:
            log.warning("cgroups left behind", pod=meta.id, cgroups=left)
        if failed:
            raise failed[0]

    def _remove_cgroups(self, meta: SandboxMeta) -> list[str]:
        """A pod cgroup crib made: everything left in it killed at once (cgroup.kill on
        v2), then removed. The kubelet's pod cgroup is the kubelet's to remove; only
        the infra's cgroup under it is crib's."""
        host = self.node.host
        top = meta.pod_cgroup if meta.cgroup_owned else (
            meta.infra_cgroup_path if meta.has_infra else "")
        if not top:
            return []
        host.kill_cgroup(top)
        return host.remove_cgroup(top)

    async def stop(self, rec: SandboxRecord) -> None:
        """Kill every container and the infra, release the network; ready -> notready."""
        node = self.node
        async with node.lock(rec.meta.id):
            for c in node.pod_containers(rec.meta.id):
                await self.containers.stop(c, 0)
            await stop_infra(node, rec)
            await node.nri.stop_pod_sandbox(rec)  # its containers have exited; once
            if not rec.meta.host_network:
                # Idempotent in netd; always asked, so a pod marked NotReady by its infra's
                # death still gets its IP released.
                await node.netd.remove_pod_network(rec.meta.id)
            if rec.status.state != "notready":
                rec.status.state = "notready"
                node.put_sandbox(rec)
                log.info("sandbox stopped", pod=rec.meta.id)
                node.emit(rec.meta.id, "stopped", rec.meta.id)

    async def remove(self, rec: SandboxRecord) -> None:
        """Stop, remove every container, tear down, drop the record."""
        node = self.node
        await self.stop(rec)
        async with node.lock(rec.meta.id):
            # The pod's cgroup and directories go after its containers' own: those of
            # containers removed before are waited for, the rest torn down here.
            await self.containers.released(rec.meta.id)
            for c in node.pod_containers(rec.meta.id):
                await self.containers.remove(c, queue=False)
            failpoint("remove_sandbox_after_containers")
            await self.teardown(rec, network=False)
            node.drop_sandbox(rec.meta.id)
        await node.nri.remove_pod_sandbox(rec)
        log.info("sandbox removed", pod=rec.meta.id)
        node.emit(rec.meta.id, "deleted", rec)

    async def apply_resources(self, cgroup_parent: str, res: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self.node.host.apply_pod_resources, cgroup_parent, res)
        except OSError as exc:
            # The controller is there but refused the value (EBUSY: memory already above
            # the new limit); a missing controller is FailedPrecondition from the host.
            raise FailedPrecondition(
                f"pod cgroup {cgroup_parent}: cannot apply {res}: "
                f"{exc.filename or ''} {exc.strerror}") from None

    async def update_resources(self, rec: SandboxRecord, resources: dict[str, Any],
                               overhead: dict[str, Any]) -> None:
        """The kubelet's new pod-level resources (after it resized the pod cgroup
        itself, api.proto) applied to the pod cgroup too."""
        async with self.node.lock(rec.meta.id):
            if rec.status.state != "ready":
                raise FailedPrecondition(f"pod sandbox {rec.meta.id} is not ready")
            res = cgroups.pod_resources(resources, overhead)
            await self.node.nri.update_pod_sandbox(  # NRI UpdatePodSandbox
                rec, resources_to_oci(resources), resources_to_oci(overhead))
            if rec.meta.cgroup_owned:
                await self.apply_resources(rec.meta.pod_cgroup, res)
            rec.status.resources = res
            self.node.put_sandbox(rec)
        log.info("sandbox resources updated", pod=rec.meta.id, resources=res)
        await self.node.nri.post_update_pod_sandbox(rec)
