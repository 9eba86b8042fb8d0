"""cgroup v1 (cgroupfs driver) helpers: stats for the CRI stats RPCs, pod cgroup removal.

The host is hybrid: v1 controllers under /sys/fs/cgroup/<controller> (cpu and cpuacct may
be separate hierarchies or one "cpu,cpuacct"), cgroup2 at /sys/fs/cgroup/unified.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CgroupStats",
    "apply_pod_resources",
    "pod_resources",
    "read_stats",
    "remove_cgroup",
    "swap_controller",
    "oom_killed",
]

ROOT = Path("/sys/fs/cgroup")


def _controller_dir(controller: str, root: Path = ROOT) -> Path | None:
    for name in (controller, "cpu,cpuacct" if controller in ("cpu", "cpuacct") else ""):
        if name and (root / name).is_dir():
            return root / name
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


@dataclass
class CgroupStats:
    timestamp: int
    cpu_usage_ns: int
    memory_usage: int
    working_set: int
    rss: int
    page_faults: int
    major_page_faults: int
    pids: int
    exists: bool


def read_stats(cgroup_path: str, root: Path = ROOT) -> CgroupStats:
    """CPU and memory of one cgroup (working set = usage - inactive_file, as cAdvisor)."""
    rel = cgroup_path.lstrip("/")
    now = time.time_ns()
    cpuacct = _controller_dir("cpuacct", root)
    memory = _controller_dir("memory", root)
    pids = _controller_dir("pids", root)
    cpu = _int(_read(cpuacct / rel / "cpuacct.usage")) if cpuacct else 0
    usage, ws, rss, pf, mpf = 0, 0, 0, 0, 0
    exists = False
    if memory and (memory / rel).is_dir():
        exists = True
        usage = _int(_read(memory / rel / "memory.usage_in_bytes"))
        stat: dict[str, int] = {}
        for line in _read(memory / rel / "memory.stat").splitlines():
            key, _, value = line.partition(" ")
            stat[key] = _int(value)
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        ws = max(usage - inactive, 0)
        rss = stat.get("total_rss", stat.get("rss", 0))
        pf = stat.get("total_pgfault", stat.get("pgfault", 0))
        mpf = stat.get("total_pgmajfault", stat.get("pgmajfault", 0))
    npids = _int(_read(pids / rel / "pids.current")) if pids else 0
    return CgroupStats(now, cpu, usage, ws, rss, pf, mpf, npids, exists)


def oom_killed(cgroup_path: str, root: Path = ROOT) -> bool:
    """Whether the kernel OOM-killed a task of this memory cgroup (memory.oom_control's
    `oom_kill` counter, Linux >= 4.13)."""
    memory = _controller_dir("memory", root)
    if memory is None:
        return False
    for line in _read(memory / cgroup_path.lstrip("/") / "memory.oom_control").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return _int(value) > 0
    return False


def swap_controller(root: Path = ROOT) -> bool:
    memory = _controller_dir("memory", root)
    return bool(memory and (memory / "memory.memsw.limit_in_bytes").exists())


# CFS period when the kubelet sends a quota without one (the kernel's default, 100 ms).
DEFAULT_CFS_PERIOD = 100_000


def pod_resources(resources: dict[str, Any], overhead: dict[str, Any]) -> dict[str, Any]:
    """The pod cgroup's limits from LinuxPodSandboxConfig: `resources` is the sum of the
    containers' resources and `overhead` the sandbox's own (api.proto), so the pod gets
    both, as the kubelet sizes its pod cgroups (limits + overhead). Zero means unset; a
    memory or CPU limit exists only when `resources` has one (no limit plus overhead is
    still no limit). Dicts as stored by oci.spec.resources_to_dict."""
    def num(d: dict[str, Any], key: str) -> int:
        return int(d.get(key) or 0)

    out: dict[str, Any] = {}
    shares = num(resources, "cpu_shares") + num(overhead, "cpu_shares")
    if shares > 0:
        out["cpu_shares"] = shares
    quota = num(resources, "cpu_quota")
    if quota > 0:
        period = num(resources, "cpu_period") or DEFAULT_CFS_PERIOD
        extra = num(overhead, "cpu_quota")
        # An overhead quota over another period is scaled to this one.
        if extra > 0:
            extra = extra * period // (num(overhead, "cpu_period") or DEFAULT_CFS_PERIOD)
        out["cpu_quota"], out["cpu_period"] = quota + extra, period
    memory = num(resources, "memory_limit_in_bytes")
    if memory > 0:
        out["memory_limit_in_bytes"] = memory + num(overhead, "memory_limit_in_bytes")
    return out


def _write(path: Path, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def apply_pod_resources(cgroup_path: str, res: dict[str, Any], *, swap: bool = False,
                        root: Path = ROOT) -> None:
    """Write `pod_resources` output into the pod cgroup's cgroup v1 files (created if
    missing: the containers' cgroups are made below it by the OCI runtime). A limit left
    out is reset to unlimited, so an update can remove one. Raises OSError on failure
    (EBUSY: memory already above the new limit)."""
    rel = cgroup_path.strip("/")
    if not rel:
        raise ValueError("no pod cgroup")
    cpu = _controller_dir("cpu", root)
    if cpu is not None:
        d = cpu / rel
        d.mkdir(parents=True, exist_ok=True)
        # 1024 is the kernel's default weight (sched/core.c, cpu.shares of a new group).
        _write(d / "cpu.shares", int(res.get("cpu_shares") or 1024))
        quota = int(res.get("cpu_quota") or 0)
        if quota > 0:
            _write(d / "cpu.cfs_period_us", int(res.get("cpu_period") or DEFAULT_CFS_PERIOD))
            _write(d / "cpu.cfs_quota_us", quota)
        else:
            _write(d / "cpu.cfs_quota_us", -1)
    memory = _controller_dir("memory", root)
    if memory is not None:
        d = memory / rel
        d.mkdir(parents=True, exist_ok=True)
        limit = int(res.get("memory_limit_in_bytes") or 0) or -1
        files = [d / "memory.limit_in_bytes"]
        if swap and (d / "memory.memsw.limit_in_bytes").exists():
            # No swap for the pod: memsw = memory. memsw may never be below memory, so
            # the order depends on the direction of the change.
            files.append(d / "memory.memsw.limit_in_bytes")
            try:
                current = _int(_read(files[0]))
            except OSError:
                current = 0
            if limit == -1 or (current and limit > current):
                files.reverse()
        for f in files:
            _write(f, limit)


def remove_cgroup(cgroup_path: str, root: Path = ROOT) -> list[str]:
    """rmdir the cgroup (children first) in every hierarchy; returns what is left."""
    rel = cgroup_path.strip("/")
    if not rel:
        return []
    left: list[str] = []
    with contextlib.suppress(OSError):
        hierarchies = [e.path for e in os.scandir(root) if e.is_dir()]
    for h in hierarchies:
        top = Path(h) / rel
        if not top.is_dir():
            continue
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
        if top.exists():
            left.append(str(top))
    return left
