"""`LinuxHost`: the real `ports.Host`, over the kernel's mount, namespace and cgroup
interfaces (`oci.mount`, `sandbox.*`, `cgroups`). The cgroup layout (v1 hierarchies or
the v2 unified tree) is found once, when the host is made (`cgroups.CgroupHost.detect`),
and every cgroup call goes through that one facade."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from crib_common.models.imaged import Mount

from .cgroups import CgroupHost, CgroupStats
from .oci.mount import mount_all
from .sandbox.files import mount_shm, write_pod_files
from .sandbox.namespaces import (
    lost_pins,
    mounts_under,
    pin_namespaces,
    umount,
    unpin_namespaces,
)
from .sandbox.idmapped import idmapped_clone, mount_overlay_idmapped, pod_namespaces
from .userns.mappings import PodUserns

__all__ = ["LinuxHost"]


class LinuxHost:
    """This machine, as the lifecycles see it."""

    def __init__(self, cgroups: CgroupHost | None = None) -> None:
        self.cgroups = cgroups if cgroups is not None else CgroupHost.detect()
        self.swap_controller = self.cgroups.swap_controller()

    def mount_all(self, mounts: list[Mount], target: Path) -> None:
        mount_all(mounts, target)

    def pod_namespaces(self, ns_dir: Path, pod: PodUserns, *, ipc: bool, uts: bool,
                       hostname: str) -> AbstractAsyncContextManager[dict[str, str]]:
        return pod_namespaces(ns_dir, pod, ipc=ipc, uts=uts, hostname=hostname)

    def mount_overlay_idmapped(self, mounts: list[Mount], target: Path, userns_path: str,
                               root: tuple[int, int], work: Path) -> None:
        mount_overlay_idmapped(mounts, target, userns_path, root, work)

    def idmapped_clone(self, source: str, target: Path, userns_path: str) -> None:
        idmapped_clone(source, target, userns_path)

    def unmount_under(self, path: str) -> None:
        for target in mounts_under(path):
            umount(target)

    async def pin_namespaces(self, ns_dir: Path, *, ipc: bool, uts: bool,
                             hostname: str) -> dict[str, str]:
        return await pin_namespaces(ns_dir, ipc=ipc, uts=uts, hostname=hostname)

    def unpin_namespaces(self, ns_dir: Path) -> None:
        unpin_namespaces(ns_dir)

    def lost_pins(self, pins: dict[str, str]) -> list[str]:
        return lost_pins(pins)

    def write_pod_files(self, pod_dir: Path, hostname: str, dns: Any, ips: list[str],
                        host_network: bool, owner: tuple[int, int] | None = None) -> None:
        write_pod_files(pod_dir, hostname, dns, ips, host_network, owner)

    def mount_shm(self, target: Path) -> None:
        mount_shm(target)

    def describe_cgroups(self) -> dict[str, Any]:
        return self.cgroups.describe()

    def apply_pod_resources(self, cgroup_path: str, res: dict[str, Any]) -> None:
        self.cgroups.apply_pod_resources(cgroup_path, res, swap=self.swap_controller)

    def kill_cgroup(self, cgroup_path: str) -> int:
        return self.cgroups.kill(cgroup_path)

    def join_cgroup(self, cgroup_path: str, pid: int) -> None:
        self.cgroups.join(cgroup_path, pid)

    def cgroup_children(self, cgroup_path: str) -> set[str]:
        return self.cgroups.children(cgroup_path)

    def remove_cgroup(self, cgroup_path: str) -> list[str]:
        return self.cgroups.remove(cgroup_path)

    def read_stats(self, cgroup_path: str) -> CgroupStats:
        return self.cgroups.read_stats(cgroup_path)

    def oom_killed(self, cgroup_path: str) -> bool:
        return self.cgroups.oom_killed(cgroup_path)
