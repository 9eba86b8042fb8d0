"""Records -> the CRI status and list-item messages of pods and containers."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from crib_common.cri.runtime.v1 import (
    Container,
    ContainerMetadata,
    ContainerResources,
    ContainerState,
    ContainerStatus,
    ContainerUser,
    IdMapping,
    ImageSpec,
    LinuxContainerResources,
    LinuxContainerUser,
    LinuxPodSandboxStatus,
    Mount,
    MountPropagation,
    Namespace,
    NamespaceMode,
    NamespaceOption,
    PodIp,
    PodSandbox,
    PodSandboxMetadata,
    PodSandboxNetworkStatus,
    PodSandboxState,
    PodSandboxStatus,
    UserNamespace,
)

from ..store.records import ContainerRecord, SandboxMeta, SandboxRecord

__all__ = ["container_info", "container_item", "container_state", "container_status",
           "pod_metadata", "resources_message", "sandbox_info", "sandbox_item",
           "sandbox_state", "sandbox_status"]

_STATE = {
    "creating": ContainerState.CONTAINER_CREATED,
    "created": ContainerState.CONTAINER_CREATED,
    "running": ContainerState.CONTAINER_RUNNING,
    "exited": ContainerState.CONTAINER_EXITED,
    "unknown": ContainerState.CONTAINER_UNKNOWN,
}


def container_state(rec: ContainerRecord) -> ContainerState:
    return ContainerState(_STATE[rec.status.state])


def sandbox_state(rec: SandboxRecord) -> PodSandboxState:
    return PodSandboxState(PodSandboxState.SANDBOX_READY if rec.status.state == "ready"
                           else PodSandboxState.SANDBOX_NOTREADY)


def pod_metadata(rec: SandboxRecord) -> PodSandboxMetadata:
    m = rec.meta
    return PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def sandbox_item(rec: SandboxRecord) -> PodSandbox:
    return PodSandbox(id=rec.meta.id, metadata=pod_metadata(rec), state=sandbox_state(rec),
                      created_at=rec.meta.created_at, labels=dict(rec.meta.labels),
                      annotations=dict(rec.meta.annotations),
                      runtime_handler=rec.meta.handler)


def sandbox_status(rec: SandboxRecord) -> PodSandboxStatus:
    m = rec.meta
    ips = rec.status.ips if rec.status.state == "ready" else []

    def mode(host: bool, pod: bool) -> NamespaceMode:
        return NamespaceMode(NamespaceMode.NODE if host else
                             NamespaceMode.POD if pod else NamespaceMode.CONTAINER)

    options = NamespaceOption(network=mode(m.host_network, True),
                              pid=mode(m.host_pid, m.shared_pid), ipc=mode(m.host_ipc, True))
    if m.userns_mappings:
        options.userns_options = _userns(m)
    return PodSandboxStatus(
        id=m.id, metadata=pod_metadata(rec), state=sandbox_state(rec), created_at=m.created_at,
        network=PodSandboxNetworkStatus(ip=ips[0] if ips else "",
                                        additional_ips=[PodIp(ip=i) for i in ips[1:]]),
        linux=LinuxPodSandboxStatus(namespaces=Namespace(options=options)),
        labels=dict(m.labels), annotations=dict(m.annotations), runtime_handler=m.handler)


def _userns(m: SandboxMeta) -> UserNamespace:
    """The pod's user namespace as it asked for it (`userns.mappings`)."""
    return UserNamespace(
        mode=NamespaceMode(NamespaceMode.POD),
        uids=[IdMapping(**x) for x in m.userns_mappings.get("uids") or []],
        gids=[IdMapping(**x) for x in m.userns_mappings.get("gids") or []])


def sandbox_info(rec: SandboxRecord, container_ids: list[str]) -> dict[str, str]:
    """The verbose `info` map (free-form JSON, as containerd's "info" key)."""
    m = rec.meta
    info = {
        "pid": rec.status.infra_pid, "netns": m.netns_path, "ipc": m.ipc_ns, "uts": m.uts_ns,
        "userns": m.userns,
        "cgroupParent": m.cgroup_parent, "podDir": m.pod_dir, "hostname": m.hostname,
        "runtimeHandler": m.handler, "state": rec.status.state,
        "containers": container_ids,
    }
    return {"info": json.dumps(info)}


def _image(rec: ContainerRecord) -> ImageSpec:
    return ImageSpec(image=rec.meta.image, user_specified_image=rec.meta.image)


def container_item(rec: ContainerRecord) -> Container:
    m = rec.meta
    return Container(id=m.id, pod_sandbox_id=m.pod_id,
                     metadata=ContainerMetadata(name=m.name, attempt=m.attempt),
                     image=_image(rec), image_ref=m.image_ref, state=container_state(rec),
                     created_at=m.created_at, labels=dict(m.labels),
                     annotations=dict(m.annotations), image_id=m.image_id)


def resources_message(res: dict[str, Any]) -> LinuxContainerResources:
    msg = LinuxContainerResources()
    if res:
        with contextlib.suppress(Exception):
            msg = LinuxContainerResources().from_dict(res)
    return msg


def _mount(x: dict[str, Any]) -> Mount:
    mount = Mount(container_path=x["container_path"], host_path=x["host_path"],
                  readonly=bool(x.get("readonly")),
                  propagation=MountPropagation(int(x.get("propagation", 0))),
                  recursive_read_only=bool(x.get("recursive_read_only")),
                  image_sub_path=x.get("image_sub_path", ""))
    if x.get("image"):
        mount.image = ImageSpec(image=x["image"], image_ref=x.get("image_ref", ""))
    return mount


def container_status(rec: ContainerRecord) -> ContainerStatus:
    m, s = rec.meta, rec.status
    return ContainerStatus(
        id=m.id, metadata=ContainerMetadata(name=m.name, attempt=m.attempt),
        state=container_state(rec), created_at=m.created_at, started_at=s.started_at,
        finished_at=s.finished_at, exit_code=s.exit_code, image=_image(rec),
        image_ref=m.image_ref, image_id=m.image_id, reason=s.reason, message=s.message,
        labels=dict(m.labels), annotations=dict(m.annotations),
        mounts=[_mount(x) for x in m.mounts], log_path=m.log_path,
        resources=ContainerResources(linux=resources_message(s.resources)),
        user=ContainerUser(linux=LinuxContainerUser(uid=m.uid, gid=m.gid,
                                                    supplemental_groups=[m.gid, *m.groups])),
    )


def container_info(rec: ContainerRecord) -> dict[str, str]:
    info: dict[str, Any] = {"pid": rec.status.pid, "conmonPid": rec.status.conmon_pid,
                            "bundle": rec.meta.bundle, "runtimeHandler": rec.meta.handler,
                            "cgroupPath": rec.meta.cgroup_path,
                            "snapshotKey": rec.meta.snapshot_key}
    with contextlib.suppress(OSError, ValueError):
        info["runtimeSpec"] = json.loads((Path(rec.meta.bundle) / "config.json").read_text())
    return {"info": json.dumps(info)}
