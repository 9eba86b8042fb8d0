"""Where pods and containers sit in the cgroup tree, for both cgroup drivers. Pure.

The kubelet owns the pod tree and names each pod's parent in
LinuxPodSandboxConfig.cgroup_parent: "/kubepods/burstable/pod<uid>" with the cgroupfs
driver, "kubepods-burstable-pod<uid>.slice" with systemd. It is used as given (as
containerd and CRI-O do); crib's own `cgroup_parent` setting only places pods that name
none (crictl, tests). Each container's cgroup is named the way the kubelet and cAdvisor
parse it back into a container ID:

    cgroupfs   <parent>/<container id>            /kubepods/burstable/pod1/<id>
    systemd    <parent slice>/crib-<id>.scope     passed to runc/crun as
               "kubepods-burstable-pod1.slice:crib:<id>" with --systemd-cgroup

A systemd slice name encodes its ancestors with dashes; on disk
kubepods-burstable-pod1.slice lives at
/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice (systemd.slice(5),
runc's ExpandSlice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crib_common.errors import InvalidArgument

__all__ = [
    "CgroupDriver",
    "ContainerCgroup",
    "SCOPE_PREFIX",
    "clean_fs_path",
    "container_cgroup",
    "pod_cgroup_parent",
    "pod_cgroup_path",
    "runtime_global_args",
    "slice_path",
]

CgroupDriver = Literal["cgroupfs", "systemd"]

# The middle of runc's "slice:prefix:name": the scope is "<prefix>-<name>.scope". cAdvisor
# and the kubelet take the container ID from the part after the last dash (cri-containerd-,
# crio- and docker- are the other runtimes' prefixes).
SCOPE_PREFIX = "crib"

_SLICE = ".slice"


@dataclass(frozen=True)
class ContainerCgroup:
    """`oci_path` goes into config.json's linux.cgroupsPath; `fs_path` is the cgroup's
    path under the cgroup root, for stats, OOM, kill and removal."""

    oci_path: str
    fs_path: str


def slice_path(name: str) -> str:
    """The filesystem path of a systemd slice: each dash-separated prefix is a parent
    slice ("a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice"; "-.slice" is the root)."""
    if not name.endswith(_SLICE) or "/" in name:
        raise InvalidArgument(f"invalid systemd slice name {name!r}")
    base = name[: -len(_SLICE)]
    if base == "-":
        return "/"
    parts = base.split("-")
    if any(p == "" for p in parts):
        raise InvalidArgument(f"invalid systemd slice name {name!r}: empty dash component")
    out, prefix = "", ""
    for part in parts:
        prefix = f"{prefix}-{part}" if prefix else part
        out += f"/{prefix}{_SLICE}"
    return out


def clean_fs_path(path: str) -> str:
    """A cgroupfs path made absolute and normal; InvalidArgument for . or .. parts."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"cgroup path {path!r} must not contain . or ..")
    return "/" + "/".join(parts)


def pod_cgroup_parent(requested: str, *, setting: str, sandbox_id: str,
                      driver: CgroupDriver) -> str:
    """The pod's cgroup parent, as runtimed stores it: the kubelet's value as given
    (checked for the driver's form), else one made from crib's `cgroup_parent` setting:
    cgroupfs "<setting>/crib-<id16>", systemd "<setting slice base>-pod<id16>.slice"
    (a slice named after its parent, so systemd nests it there)."""
    if requested:
        if driver == "systemd":
            slice_path(requested)  # validates
            return requested
        if not requested.startswith("/"):
            raise InvalidArgument(
                f"cgroup_parent {requested!r} is not a cgroupfs path: with the cgroupfs "
                f"driver the kubelet sends /kubepods/...; is the kubelet's cgroupDriver "
                f"systemd?")
        return clean_fs_path(requested)
    short = sandbox_id[:16]
    if driver == "systemd":
        base = setting.strip("/")
        if base.endswith(_SLICE):
            base = base[: -len(_SLICE)]
        if not base or "/" in base:
            raise InvalidArgument(
                f"runtimed.cgroup_parent {setting!r} is not a slice name (systemd driver)")
        name = f"pod{short}{_SLICE}" if base == "-" else f"{base}-pod{short}{_SLICE}"
        slice_path(name)
        return name
    return clean_fs_path(f"{setting}/crib-{short}")


def pod_cgroup_path(parent: str, driver: CgroupDriver) -> str:
    """The pod cgroup's path under the cgroup root (stats, limits, removal)."""
    return slice_path(parent) if driver == "systemd" else clean_fs_path(parent)


def container_cgroup(parent: str, container_id: str, driver: CgroupDriver) -> ContainerCgroup:
    """The cgroup of a container (or of the sandbox's init) under its pod's parent."""
    if not container_id or "/" in container_id or ":" in container_id:
        raise InvalidArgument(f"invalid container id {container_id!r} for a cgroup name")
    if driver == "systemd":
        base = slice_path(parent)
        return ContainerCgroup(
            oci_path=f"{parent}:{SCOPE_PREFIX}:{container_id}",
            fs_path=f"{base.rstrip('/')}/{SCOPE_PREFIX}-{container_id}.scope")
    path = f"{clean_fs_path(parent).rstrip('/')}/{container_id}"
    return ContainerCgroup(oci_path=path, fs_path=path)


def runtime_global_args(driver: CgroupDriver) -> list[str]:
    """Global flags for runc and crun (before the subcommand): both take
    --systemd-cgroup to use the systemd cgroup manager and the slice:prefix:name form."""
    return ["--systemd-cgroup"] if driver == "systemd" else []
