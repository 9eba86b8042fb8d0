"""cgroups for runtimed: the host's mode, stats, OOM kills, pod limits, kill and removal
for cgroup v1 and v2, and where pods and containers sit in the tree.

    host.py    CgroupMode, detect_mode, CgroupHost (one facade over v1/v2),
               check_cgroup_driver
    monitor.py the cgroup of each container's monitor, outside runtimed's; joining one
    paths.py   the kubelet's tree as given, container cgroup names for both drivers,
               systemd slice expansion (pure)
    limits.py  pod_resources (the pod sum rule), shares->weight, swap conversion
    v1.py      legacy/hybrid hierarchies       v2.py   the unified hierarchy
    stats.py   CgroupStats, the reading both return

The module-level read_stats, oom_killed, swap_controller, apply_pod_resources and
remove_cgroup are the v1 functions runtimed has always called; new code should go
through a CgroupHost found at start.
"""

from __future__ import annotations

from .host import CgroupHost, CgroupMode, check_cgroup_driver, detect_mode, mount_fstype
from .limits import DEFAULT_CFS_PERIOD, cpu_shares_to_weight, memory_swap_to_v2, pod_resources
from .monitor import (
    MONITOR_POD,
    check_monitor_cgroup,
    join_cgroup,
    monitor_cgroup,
    monitor_id,
)
from .paths import (
    CgroupDriver,
    ContainerCgroup,
    container_cgroup,
    pod_cgroup_parent,
    pod_cgroup_path,
    runtime_global_args,
    slice_path,
)
from .stats import CgroupStats, IoDeviceStats
from .v1 import (
    ROOT,
    apply_pod_resources,
    oom_killed,
    read_stats,
    remove_cgroup,
    swap_controller,
)

__all__ = [
    "DEFAULT_CFS_PERIOD",
    "ROOT",
    "CgroupDriver",
    "CgroupHost",
    "CgroupMode",
    "CgroupStats",
    "ContainerCgroup",
    "IoDeviceStats",
    "MONITOR_POD",
    "apply_pod_resources",
    "check_cgroup_driver",
    "check_monitor_cgroup",
    "container_cgroup",
    "cpu_shares_to_weight",
    "detect_mode",
    "join_cgroup",
    "memory_swap_to_v2",
    "monitor_cgroup",
    "monitor_id",
    "mount_fstype",
    "oom_killed",
    "pod_cgroup_parent",
    "pod_cgroup_path",
    "pod_resources",
    "read_stats",
    "remove_cgroup",
    "runtime_global_args",
    "slice_path",
    "swap_controller",
]
