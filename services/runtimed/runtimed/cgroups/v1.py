"""cgroup v1 (legacy and hybrid hosts): stats, OOM kills, pod limits, kill and removal.

Each controller has its own hierarchy under the root (/sys/fs/cgroup/<controller>); cpu
and cpuacct may be two hierarchies or one "cpu,cpuacct". On a hybrid host cgroup2 is at
<root>/unified and owns no controller; its tree is removed with the others.
Files and formats: the kernel's Documentation/admin-guide/cgroup-v1/*.rst.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from crib_common.errors import FailedPrecondition

from .stats import CgroupStats, IoDeviceStats, flat_keyed, read_int, read_text

__all__ = [
    "apply_pod_resources",
    "controller_dir",
    "kill_cgroup",
    "oom_kill_count",
    "oom_killed",
    "read_stats",
    "remove_cgroup",
    "swap_controller",
]

ROOT = Path("/sys/fs/cgroup")

# CFS period when the kubelet sends a quota without one (the kernel's default, 100 ms).
DEFAULT_CFS_PERIOD = 100_000

# What a v1 file holds when unlimited: LONG_MAX rounded down to a page (mm/memcontrol.c).
_UNLIMITED_V1 = 9223372036854771712


def controller_dir(controller: str, root: Path = ROOT) -> Path | None:
    """The hierarchy holding `controller`, or None when the host has none."""
    for name in (controller, "cpu,cpuacct" if controller in ("cpu", "cpuacct") else ""):
        if name and (root / name).is_dir():
            return root / name
    return None


def read_stats(cgroup_path: str, root: Path = ROOT) -> CgroupStats:
    """One reading of a v1 cgroup (working set = usage - total_inactive_file, as
    cAdvisor and the kubelet compute it)."""
    rel = cgroup_path.strip("/")
    st = CgroupStats(time.time_ns(), 0, 0, 0, 0, 0, 0, 0, False, version=1)
    cpuacct = controller_dir("cpuacct", root)
    if cpuacct is not None:
        st.cpu_usage_ns = read_int(cpuacct / rel / "cpuacct.usage")
        # cpuacct.stat counts USER_HZ ticks (cgroup-v1/cpuacct.rst).
        ticks = flat_keyed(read_text(cpuacct / rel / "cpuacct.stat"))
        hz = os.sysconf("SC_CLK_TCK")
        st.cpu_user_ns = ticks.get("user", 0) * 1_000_000_000 // hz
        st.cpu_system_ns = ticks.get("system", 0) * 1_000_000_000 // hz
    cpu = controller_dir("cpu", root)
    if cpu is not None:
        cs = flat_keyed(read_text(cpu / rel / "cpu.stat"))
        st.cpu_periods = cs.get("nr_periods", 0)
        st.cpu_throttled_periods = cs.get("nr_throttled", 0)
        st.cpu_throttled_ns = cs.get("throttled_time", 0)
    memory = controller_dir("memory", root)
    if memory is not None and (memory / rel).is_dir():
        d = memory / rel
        st.exists = True
        st.memory_usage = read_int(d / "memory.usage_in_bytes")
        ms = flat_keyed(read_text(d / "memory.stat"))

        def stat(key: str) -> int:
            # total_* counts the whole subtree (hierarchical), the plain key this cgroup.
            return ms.get(f"total_{key}", ms.get(key, 0))

        st.working_set = max(st.memory_usage - stat("inactive_file"), 0)
        st.rss = stat("rss")
        st.memory_cache = stat("cache")
        st.memory_mapped_file = stat("mapped_file")
        st.page_faults = stat("pgfault")
        st.major_page_faults = stat("pgmajfault")
        st.memory_kernel = read_int(d / "memory.kmem.usage_in_bytes")
        st.memory_failcnt = read_int(d / "memory.failcnt")
        st.memory_max_usage = read_int(d / "memory.max_usage_in_bytes")
        memsw = read_int(d / "memory.memsw.usage_in_bytes")
        st.memory_swap = max(memsw - st.memory_usage, 0) if memsw else 0
        st.oom_kills = _oom_kills(d)
    pids = controller_dir("pids", root)
    if pids is not None:
        st.pids = read_int(pids / rel / "pids.current")
        st.pids_max = read_int(pids / rel / "pids.max")
    for ctrl in ("pids", "memory", "cpuacct"):
        h = controller_dir(ctrl, root)
        if h is not None and (h / rel / "cgroup.procs").exists():
            st.processes = len(read_text(h / rel / "cgroup.procs").split())
            break
    blkio = controller_dir("blkio", root)
    if blkio is not None:
        st.io = _blkio(blkio / rel)
    return st


def _blkio(d: Path) -> list[IoDeviceStats]:
    """Per-device bytes and operations from the throttle files (present whatever the I/O
    scheduler; the CFQ-only blkio.io_service_bytes_recursive is read first if there)."""
    devices: dict[tuple[int, int], IoDeviceStats] = {}
    for kind, names in (("bytes", ("blkio.io_service_bytes_recursive",
                                   "blkio.throttle.io_service_bytes_recursive")),
                        ("ios", ("blkio.io_serviced_recursive",
                                 "blkio.throttle.io_serviced_recursive"))):
        text = ""
        for name in names:
            text = read_text(d / name)
            if text.strip() and not text.startswith("Total"):
                break
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or ":" not in parts[0]:
                continue  # "Total N"
            major, _, minor = parts[0].partition(":")
            dev = devices.setdefault((int(major), int(minor)),
                                     IoDeviceStats(int(major), int(minor)))
            value = int(parts[2])
            if parts[1] == "Read":
                if kind == "bytes":
                    dev.read_bytes = value
                else:
                    dev.reads = value
            elif parts[1] == "Write":
                if kind == "bytes":
                    dev.write_bytes = value
                else:
                    dev.writes = value
    return [devices[k] for k in sorted(devices)]


def _oom_kills(memory_cgroup: Path) -> int:
    # memory.oom_control's `oom_kill` counter (Linux >= 4.13).
    return flat_keyed(read_text(memory_cgroup / "memory.oom_control")).get("oom_kill", 0)


def oom_kill_count(cgroup_path: str, root: Path = ROOT) -> int:
    """How many tasks of this memory cgroup the kernel OOM-killed."""
    memory = controller_dir("memory", root)
    if memory is None:
        return 0
    return _oom_kills(memory / cgroup_path.strip("/"))


def oom_killed(cgroup_path: str, root: Path = ROOT) -> bool:
    """Whether the kernel OOM-killed a task of this memory cgroup."""
    return oom_kill_count(cgroup_path, root) > 0


def swap_controller(root: Path = ROOT) -> bool:
    memory = controller_dir("memory", root)
    return bool(memory and (memory / "memory.memsw.limit_in_bytes").exists())


def _write(path: Path, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _require(controller: str, root: Path, what: str) -> Path:
    h = controller_dir(controller, root)
    if h is None:
        raise FailedPrecondition(
            f"cannot apply {what}: the {controller} controller has no cgroup v1 hierarchy "
            f"under {root}")
    return h


def apply_pod_resources(cgroup_path: str, res: dict[str, Any], *, swap: bool = False,
                        root: Path = ROOT) -> None:
    """Write `pod_resources` output into the pod cgroup's cgroup v1 files (created if
    missing: the containers' cgroups are made below it by the OCI runtime). A limit left
    out is reset to unlimited, so an update can remove one. A limit whose controller has
    no hierarchy raises FailedPrecondition naming it. Raises OSError on a failed write
    (EBUSY: memory already above the new limit)."""
    rel = cgroup_path.strip("/")
    if not rel:
        raise ValueError("no pod cgroup")
    quota = int(res.get("cpu_quota") or 0)
    shares = int(res.get("cpu_shares") or 0)
    cpu = (_require("cpu", root, "a CPU limit") if quota > 0 or shares > 0
           else controller_dir("cpu", root))
    if cpu is not None:
        d = cpu / rel
        d.mkdir(parents=True, exist_ok=True)
        # 1024 is the kernel's default weight (sched/core.c, cpu.shares of a new group).
        _write(d / "cpu.shares", shares or 1024)
        if quota > 0:
            _write(d / "cpu.cfs_period_us", int(res.get("cpu_period") or DEFAULT_CFS_PERIOD))
            _write(d / "cpu.cfs_quota_us", quota)
        else:
            _write(d / "cpu.cfs_quota_us", -1)
    limit = int(res.get("memory_limit_in_bytes") or 0) or -1
    memory = (_require("memory", root, "a memory limit") if limit > 0
              else controller_dir("memory", root))
    if memory is not None:
        d = memory / rel
        d.mkdir(parents=True, exist_ok=True)
        files = [d / "memory.limit_in_bytes"]
        if swap and (d / "memory.memsw.limit_in_bytes").exists():
            # No swap for the pod: memsw = memory. memsw may never be below memory, so
            # the order depends on the direction of the change.
            files.append(d / "memory.memsw.limit_in_bytes")
            current = read_int(files[0])
            if limit == -1 or (current and limit > current):
                files.reverse()
        for f in files:
            _write(f, limit)
    pids_limit = int(res.get("pids_limit") or 0)
    pids = (_require("pids", root, "a pids limit") if pids_limit > 0
            else controller_dir("pids", root))
    if pids is not None and (pids_limit > 0 or (pids / rel).is_dir()):
        (pids / rel).mkdir(parents=True, exist_ok=True)
        _write(pids / rel / "pids.max", pids_limit if pids_limit > 0 else "max")
    pages = [h for h in res.get("hugepage_limits") or [] if h.get("page_size")]
    if pages:
        hugetlb = _require("hugetlb", root, "a hugepage limit")
        (hugetlb / rel).mkdir(parents=True, exist_ok=True)
        for h in pages:
            _write(hugetlb / rel / f"hugetlb.{h['page_size']}.limit_in_bytes",
                   int(h.get("limit") or 0) or _UNLIMITED_V1)


def kill_cgroup(cgroup_path: str, root: Path = ROOT) -> int:
    """SIGKILL every process of the cgroup and its children (v1 has no cgroup.kill);
    returns how many were signalled. Tasks forked while this runs can escape: call it
    again until the cgroup is empty, or freeze it first."""
    rel = cgroup_path.strip("/")
    for ctrl in ("pids", "memory", "cpuacct", "cpu", "systemd"):
        h = controller_dir(ctrl, root)
        if h is not None and (h / rel).is_dir():
            return kill_procs(h / rel)
    return 0


def kill_procs(top: Path) -> int:
    """SIGKILL every pid listed in cgroup.procs under `top` (any cgroup version)."""
    killed = 0
    for dirpath, _dirs, _files in os.walk(top):
        for pid in read_text(Path(dirpath) / "cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    return killed


def rmdir_tree(top: Path) -> bool:
    """rmdir a cgroup directory, children first, retrying while tasks leave; True when
    it is gone."""
    if not top.is_dir():
        return True
    dirs = sorted((Path(p) for p, _d, _f in os.walk(top)), key=lambda p: len(p.parts),
                  reverse=True)
    for d in dirs:
        for attempt in range(5):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02 * (attempt + 1))
    return not top.exists()


def remove_cgroup(cgroup_path: str, root: Path = ROOT) -> list[str]:
    """rmdir the cgroup (children first) in every hierarchy; returns what is left."""
    rel = cgroup_path.strip("/")
    if not rel:
        return []
    hierarchies: list[str] = []
    with contextlib.suppress(OSError):
        hierarchies = [e.path for e in os.scandir(root) if e.is_dir()]
    left: list[str] = []
    for h in hierarchies:
        top = Path(h) / rel
        if not rmdir_tree(top):
            left.append(str(top))
    return left
