"""The host's cgroup layout, found once at start, and one facade over the v1 and v2 code.

    unified   /sys/fs/cgroup is cgroup2: every controller in one tree (real nodes)
    hybrid    /sys/fs/cgroup is a tmpfs of v1 hierarchies with cgroup2 at ./unified
              owning no controller (this machine; systemd's "hybrid" mode)
    legacy    v1 hierarchies only

On hybrid and legacy hosts the controllers are v1, so stats and limits go through the v1
code; only the unified mode uses the v2 files (runc's and crun's own rule:
IsCgroup2UnifiedMode looks at the filesystem type of /sys/fs/cgroup alone).
"""

from __future__ import annotations

import contextlib
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crib_common.errors import FailedPrecondition
from crib_common.mountinfo import MOUNTINFO, mount_fstype

from . import monitor, v1, v2
from .stats import CgroupStats

__all__ = ["CgroupHost", "CgroupMode", "check_cgroup_driver", "detect_mode", "mount_fstype"]

ROOT = Path("/sys/fs/cgroup")
# sd_booted(3): systemd is PID 1 exactly when this directory exists.
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


class CgroupMode(str, enum.Enum):
    UNIFIED = "unified"
    HYBRID = "hybrid"
    LEGACY = "legacy"


def detect_mode(root: Path = ROOT, mountinfo: Path = MOUNTINFO) -> CgroupMode:
    """cgroup2 at the root: unified; a tmpfs with cgroup2 at <root>/unified: hybrid;
    anything else: legacy."""
    fstype = mount_fstype(root, mountinfo)
    if fstype == "cgroup2":
        return CgroupMode.UNIFIED
    if fstype == "tmpfs" and mount_fstype(root / "unified", mountinfo) == "cgroup2":
        return CgroupMode.HYBRID
    return CgroupMode.LEGACY


def check_cgroup_driver(driver: str, systemd_run_dir: Path = SYSTEMD_RUN_DIR) -> None:
    """Refuse the systemd driver where systemd is not PID 1: runc and crun would ask a
    systemd that is not there for every container's scope."""
    if driver not in ("cgroupfs", "systemd"):
        raise FailedPrecondition(
            f"runtimed.cgroup_driver {driver!r}: must be \"cgroupfs\" or \"systemd\"")
    if driver == "systemd" and not systemd_run_dir.is_dir():
        raise FailedPrecondition(
            f"runtimed.cgroup_driver is \"systemd\" but systemd is not PID 1 here "
            f"({systemd_run_dir} is missing): set cgroup_driver = \"cgroupfs\", and the "
            f"kubelet's cgroupDriver to match")


@dataclass(frozen=True)
class CgroupHost:
    """The cgroup code for this host's mode. Paths are cgroup paths ("/kubepods/pod1"),
    relative to the root of each hierarchy; with the systemd driver, pass the expanded
    filesystem path (`paths.slice_path`)."""

    mode: CgroupMode
    root: Path = ROOT

    @classmethod
    def detect(cls, root: Path = ROOT, mountinfo: Path = MOUNTINFO) -> CgroupHost:
        return cls(detect_mode(root, mountinfo), root)

    @property
    def unified(self) -> bool:
        return self.mode is CgroupMode.UNIFIED

    def describe(self) -> dict[str, Any]:
        """For `crib status` and /healthz."""
        out: dict[str, Any] = {"mode": self.mode.value, "version": 2 if self.unified else 1,
                               "root": str(self.root)}
        if self.unified:
            out["controllers"] = sorted(v2.available_controllers("/", self.root))
        return out

    def read_stats(self, cgroup_path: str) -> CgroupStats:
        if self.unified:
            return v2.read_stats(cgroup_path, self.root)
        return v1.read_stats(cgroup_path, self.root)

    def oom_kill_count(self, cgroup_path: str) -> int:
        if self.unified:
            return v2.oom_kill_count(cgroup_path, self.root)
        return v1.oom_kill_count(cgroup_path, self.root)

    def oom_killed(self, cgroup_path: str) -> bool:
        """Whether the kernel OOM-killed a task of this cgroup (v2 memory.events
        `oom_kill`, v1 memory.oom_control `oom_kill`): the container's reason is then
        OOMKilled."""
        return self.oom_kill_count(cgroup_path) > 0

    def swap_controller(self) -> bool:
        """v1: memsw accounting exists. v2: swap is limited through memory.swap.max,
        which exists wherever the memory controller is."""
        if self.unified:
            return "memory" in v2.available_controllers("/", self.root)
        return v1.swap_controller(self.root)

    def apply_pod_resources(self, cgroup_path: str, res: dict[str, Any], *,
                            swap: bool = False) -> None:
        if self.unified:
            v2.apply_pod_resources(cgroup_path, res, swap=swap, root=self.root)
        else:
            v1.apply_pod_resources(cgroup_path, res, swap=swap, root=self.root)

    def kill(self, cgroup_path: str) -> int:
        """End every process of the cgroup and below (cgroup.kill on v2 and, on hybrid
        hosts, in the cgroup2 tree when the cgroup is there too; SIGKILL per pid
        otherwise)."""
        if self.unified:
            return v2.kill_cgroup(cgroup_path, self.root)
        n = 0
        if self.mode is CgroupMode.HYBRID:
            n = v2.kill_cgroup(cgroup_path, self.root / "unified")
        return n + v1.kill_cgroup(cgroup_path, self.root)

    def join(self, cgroup_path: str, pid: int) -> list[str]:
        """Move `pid` into the cgroup (made where missing) in every hierarchy
        (`monitor.join_cgroup`)."""
        return monitor.join_cgroup(cgroup_path, pid, self.root, self.unified)

    def children(self, cgroup_path: str) -> set[str]:
        """Names of the cgroups directly below `cgroup_path`, in any hierarchy (a v1
        cgroup may be left in some trees and not others)."""
        rel = cgroup_path.strip("/")
        names: set[str] = set()
        for top in monitor.hierarchies(self.root, self.unified):
            with contextlib.suppress(OSError):
                names |= {e.name for e in os.scandir(top / rel) if e.is_dir()}
        return names

    def remove(self, cgroup_path: str) -> list[str]:
        """rmdir the cgroup tree (every v1 hierarchy, or the one v2 tree); returns what
        is left."""
        if self.unified:
            return v2.remove_cgroup(cgroup_path, self.root)
        return v1.remove_cgroup(cgroup_path, self.root)
