"""cgroup v2 (unified hierarchy): stats, OOM kills, pod limits, cgroup.kill, removal.

One tree under the root; a controller's files exist in a cgroup only when its parent
enables it in cgroup.subtree_control, and a parent can enable only what its own
cgroup.controllers lists (cgroup-v2.rst, "Enabling and Disabling"). Files and formats
are those of Documentation/admin-guide/cgroup-v2.rst:

    cpu.stat         flat keyed, usage_usec user_usec system_usec (always there),
                     nr_periods nr_throttled throttled_usec (cpu controller)
    cpu.max          "$MAX $PERIOD", MAX "max" or microseconds
    cpu.weight       1..10000, default 100
    memory.current   bytes
    memory.stat      flat keyed: anon file kernel file_mapped inactive_file pgfault ...
    memory.events    flat keyed: low high max oom oom_kill oom_group_kill
    memory.peak      bytes (Linux >= 5.19)
    memory.max, memory.swap.max, pids.max, hugetlb.<size>.max   bytes/count or "max"
    io.stat          nested keyed: "MAJ:MIN rbytes= wbytes= rios= wios= dbytes= dios="
    cgroup.kill      write "1" to SIGKILL the whole subtree (Linux >= 5.14)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from crib_common.errors import FailedPrecondition

from .limits import DEFAULT_CFS_PERIOD, cpu_shares_to_weight, memory_swap_to_v2
from .stats import CgroupStats, IoDeviceStats, flat_keyed, read_int, read_text
from .v1 import kill_procs, rmdir_tree

__all__ = [
    "apply_pod_resources",
    "available_controllers",
    "kill_cgroup",
    "oom_kill_count",
    "read_stats",
    "remove_cgroup",
]

ROOT = Path("/sys/fs/cgroup")

# The kernel's default cpu.weight (cgroup-v2.rst, "CPU Interface Files").
DEFAULT_WEIGHT = 100


def read_stats(cgroup_path: str, root: Path = ROOT) -> CgroupStats:
    """One reading of a v2 cgroup. RSS is `anon` and cache `file` (cAdvisor's v2
    mapping); working set = memory.current - inactive_file, as the kubelet computes it."""
    d = root / cgroup_path.strip("/")
    st = CgroupStats(time.time_ns(), 0, 0, 0, 0, 0, 0, 0, d.is_dir(), version=2)
    if not st.exists:
        return st
    cpu = flat_keyed(read_text(d / "cpu.stat"))
    st.cpu_usage_ns = cpu.get("usage_usec", 0) * 1000
    st.cpu_user_ns = cpu.get("user_usec", 0) * 1000
    st.cpu_system_ns = cpu.get("system_usec", 0) * 1000
    st.cpu_periods = cpu.get("nr_periods", 0)
    st.cpu_throttled_periods = cpu.get("nr_throttled", 0)
    st.cpu_throttled_ns = cpu.get("throttled_usec", 0) * 1000
    st.memory_usage = read_int(d / "memory.current")
    mem = flat_keyed(read_text(d / "memory.stat"))
    st.working_set = max(st.memory_usage - mem.get("inactive_file", 0), 0)
    st.rss = mem.get("anon", 0)
    st.memory_cache = mem.get("file", 0)
    st.memory_mapped_file = mem.get("file_mapped", 0)
    # `kernel` exists since Linux 6.1; before, its main parts are listed apart.
    st.memory_kernel = mem.get("kernel", sum(mem.get(k, 0) for k in (
        "kernel_stack", "pagetables", "sec_pagetables", "percpu", "sock", "vmalloc",
        "slab")))
    st.page_faults = mem.get("pgfault", 0)
    st.major_page_faults = mem.get("pgmajfault", 0)
    st.memory_swap = read_int(d / "memory.swap.current")
    st.memory_max_usage = read_int(d / "memory.peak")
    events = flat_keyed(read_text(d / "memory.events"))
    st.memory_failcnt = events.get("max", 0)
    st.oom_kills = events.get("oom_kill", 0)
    st.pids = read_int(d / "pids.current")
    st.pids_max = read_int(d / "pids.max")
    st.processes = len(read_text(d / "cgroup.procs").split())
    st.io = _io_stat(read_text(d / "io.stat"))
    return st


def _io_stat(text: str) -> list[IoDeviceStats]:
    out: list[IoDeviceStats] = []
    for line in text.splitlines():
        dev, *fields = line.split()
        major, sep, minor = dev.partition(":")
        if not sep:
            continue
        kv = {k: int(v) for k, _, v in (f.partition("=") for f in fields) if v.isdigit()}
        out.append(IoDeviceStats(int(major), int(minor), read_bytes=kv.get("rbytes", 0),
                                 write_bytes=kv.get("wbytes", 0), reads=kv.get("rios", 0),
                                 writes=kv.get("wios", 0)))
    return sorted(out, key=lambda x: (x.major, x.minor))


def oom_kill_count(cgroup_path: str, root: Path = ROOT) -> int:
    """memory.events `oom_kill`: tasks of this cgroup (and below) the OOM killer ended.
    The file exists only where the memory controller is enabled; otherwise 0."""
    return flat_keyed(read_text(root / cgroup_path.strip("/") / "memory.events")).get(
        "oom_kill", 0)


def available_controllers(cgroup_path: str, root: Path = ROOT) -> set[str]:
    """Controllers a cgroup at `cgroup_path` has or would have: its own cgroup.controllers
    if it exists, else what its nearest existing ancestor can pass down (every
    controller of that ancestor's cgroup.controllers; `ensure_controllers` enables them
    on the way)."""
    d = root / cgroup_path.strip("/")
    if d.is_dir():
        return set(read_text(d / "cgroup.controllers").split())
    while d != root and not d.is_dir():
        d = d.parent
    return set(read_text(d / "cgroup.controllers").split())


def ensure_controllers(cgroup_path: str, wanted: set[str], root: Path = ROOT) -> Path:
    """Create the cgroup with `wanted` controllers enabled: each ancestor from the root
    down must list a controller in cgroup.controllers and gets it in
    cgroup.subtree_control (as runc does for its containers). A controller that is not
    available raises FailedPrecondition naming it; nothing is written before the check."""
    rel = cgroup_path.strip("/")
    if not rel:
        raise ValueError("no pod cgroup")
    missing = sorted(wanted - available_controllers(rel, root))
    if missing:
        raise FailedPrecondition(
            f"cgroup v2 controller {', '.join(missing)} is not available to "
            f"/{rel} (not in cgroup.controllers / cgroup.subtree_control of its parents "
            f"under {root}); cannot apply the pod's limits")
    d = root
    for part in rel.split("/"):
        enabled = set(read_text(d / "cgroup.subtree_control").split())
        todo = sorted(wanted - enabled)
        if todo:
            _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))
        d = d / part
        d.mkdir(exist_ok=True)
    return d


def _write(path: Path, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def apply_pod_resources(cgroup_path: str, res: dict[str, Any], *, swap: bool = False,
                        root: Path = ROOT) -> None:
    """Write `pod_resources` output the v2 way: cpu.weight (shares converted as runc),
    cpu.max, memory.max, memory.swap.max (no swap unless `memory_swap_limit_in_bytes`
    asks, as the v1 path sets memsw = memory), pids.max, hugetlb.<size>.max. A limit
    left out is reset to the kernel's default, so an update can remove one. A limit
    whose controller is not available raises FailedPrecondition naming it. Raises
    OSError on a failed write (EBUSY: memory already above the new limit). `swap` is
    accepted for the v1 signature; memory.swap.max is written wherever it exists."""
    del swap
    shares = int(res.get("cpu_shares") or 0)
    quota = int(res.get("cpu_quota") or 0)
    memory = int(res.get("memory_limit_in_bytes") or 0)
    pids = int(res.get("pids_limit") or 0)
    pages = [h for h in res.get("hugepage_limits") or [] if h.get("page_size")]
    wanted: set[str] = set()
    if shares > 0 or quota > 0:
        wanted.add("cpu")
    if memory > 0:
        wanted.add("memory")
    if pids > 0:
        wanted.add("pids")
    if pages:
        wanted.add("hugetlb")
    d = ensure_controllers(cgroup_path, wanted, root)
    have = set(read_text(d / "cgroup.controllers").split())
    if "cpu" in have:
        _write(d / "cpu.weight", cpu_shares_to_weight(shares) if shares else DEFAULT_WEIGHT)
        period = int(res.get("cpu_period") or DEFAULT_CFS_PERIOD)
        _write(d / "cpu.max", f"{quota if quota > 0 else 'max'} {period}")
    if "memory" in have:
        files: list[tuple[str, str]] = [("memory.max", str(memory) if memory > 0 else "max")]
        if (d / "memory.swap.max").exists():
            sw = memory_swap_to_v2(int(res.get("memory_swap_limit_in_bytes") or 0),
                                   memory if memory > 0 else -1)
            files.append(("memory.swap.max", "max" if sw < 0 else str(sw)))
        for name, value in files:
            _write(d / name, value)
    if "pids" in have:
        _write(d / "pids.max", pids if pids > 0 else "max")
    for h in pages:
        _write(d / f"hugetlb.{h['page_size']}.max", int(h.get("limit") or 0) or "max")


def kill_cgroup(cgroup_path: str, root: Path = ROOT) -> int:
    """End every process of the cgroup and below at once through cgroup.kill; where the
    kernel lacks it (before 5.14), SIGKILL each pid of cgroup.procs. Returns 1 for a
    cgroup.kill write, else the number of processes signalled; 0 if the cgroup is gone."""
    d = root / cgroup_path.strip("/")
    if not d.is_dir():
        return 0
    if (d / "cgroup.kill").exists():
        with contextlib.suppress(FileNotFoundError):
            _write(d / "cgroup.kill", 1)
            return 1
        return 0
    return kill_procs(d)


def populated(cgroup_path: str, root: Path = ROOT) -> bool:
    """cgroup.events `populated`: a live process in the cgroup or below."""
    events = flat_keyed(read_text(root / cgroup_path.strip("/") / "cgroup.events"))
    return events.get("populated", 0) == 1


def remove_cgroup(cgroup_path: str, root: Path = ROOT) -> list[str]:
    """rmdir the cgroup, children first; returns what is left."""
    rel = cgroup_path.strip("/")
    if not rel:
        return []
    top = root / rel
    return [] if rmdir_tree(top) else [str(top)]
