"""Usage readings of pods and containers: cgroup counters (through the host, v1 or v2),
the writable layer's disk use (from imaged) and its filesystem's size, and the pod's
network interfaces. Plain dataclasses; one reading feeds both the CRI stats
(`messages.stats`) and the cAdvisor metrics (`messages.metrics`)."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import CgroupStats
from .metrics import NetworkCounters, block_device_name, parse_net_dev
from .node import Node
from .store.records import ContainerRecord, SandboxRecord

__all__ = ["ContainerUsage", "LayerUsage", "PodUsage", "container_usage",
           "pod_usage"]


@dataclass
class LayerUsage:
    mountpoint: str
    bytes: int
    inodes: int
    # The filesystem holding the layers (statvfs): container_fs_limit_bytes and the
    # inode gauges of the metrics. 0 when it could not be read.
    capacity_bytes: int = 0
    inodes_free: int = 0
    inodes_total: int = 0


@dataclass
class ContainerUsage:
    rec: ContainerRecord
    cgroup: CgroupStats
    layer: LayerUsage | None = None
    # (major, minor) -> /dev/<name> for the block devices in `cgroup.io` (the metrics'
    # `device` label).
    device_names: dict[tuple[int, int], str] = field(default_factory=dict)


@dataclass
class PodUsage:
    rec: SandboxRecord
    cgroup: CgroupStats
    containers: list[ContainerUsage] = field(default_factory=list)
    interfaces: list[NetworkCounters] = field(default_factory=list)


async def container_usage(node: Node, rec: ContainerRecord) -> ContainerUsage:
    cgroup = await asyncio.to_thread(node.host.read_stats, rec.meta.cgroup_path)
    usage = ContainerUsage(rec, cgroup, device_names={
        (io.major, io.minor): _device_name(io.major, io.minor) for io in cgroup.io})
    try:
        layer = await node.imaged.snapshot_usage(rec.meta.snapshot_key, timeout=5)
        mountpoint = layer.mountpoint or str(node.settings.imaged.root)
        usage.layer = LayerUsage(mountpoint, layer.bytes, layer.inodes,
                                 *_filesystem(mountpoint))
    except Exception:  # imaged down or snapshot gone: stats without the layer
        pass
    return usage


@functools.lru_cache(maxsize=256)
def _device_name(major: int, minor: int) -> str:
    # Block devices keep their names while the node runs; sysfs is read once each.
    return block_device_name(major, minor)


def _filesystem(path: str) -> tuple[int, int, int]:
    """Size in bytes, free inodes and total inodes of the filesystem holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0, 0
    return st.f_blocks * st.f_frsize, st.f_favail, st.f_files


async def pod_usage(node: Node, rec: SandboxRecord) -> PodUsage:
    cgroup = await asyncio.to_thread(node.host.read_stats, rec.meta.pod_cgroup)
    containers = [c for c in node.pod_containers(rec.meta.id)
                  if c.status.state in ("created", "running", "exited")]
    usage = PodUsage(rec, cgroup, list(await asyncio.gather(
        *(container_usage(node, c) for c in containers))))
    if rec.meta.host_network:
        return usage
    pids = [c.status.pid for c in containers if c.status.state == "running"]
    pids.append(rec.status.infra_pid)
    for pid in pids:
        usage.interfaces = _net_dev(pid) if pid else []
        if usage.interfaces:
            break
    if not usage.interfaces and rec.meta.netns_path:
        usage.interfaces = parse_net_dev(await asyncio.to_thread(_read_net_dev_in,
                                                                 rec.meta.netns_path))
    return usage


def _net_dev(pid: int) -> list[NetworkCounters]:
    try:
        return parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())
    except OSError:
        return []


_CLONE_NEWNET = 0x40000000  # <linux/sched.h>


def _read_net_dev_in(netns_path: str) -> str:
    """/proc/net/dev as seen from a network namespace file (a pod with no process to look
    through, e.g. no infra and no running container). Runs in a thread made for it:
    setns(2) moves only the calling thread, and a thread that failed to move back must
    never serve anything else, so it ends right after."""
    result: list[str] = []

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(target, _CLONE_NEWNET) != 0:
                    return
                try:
                    result.append(Path("/proc/thread-self/net/dev").read_text())
                finally:
                    libc.setns(own, _CLONE_NEWNET)
            finally:
                os.close(target)
        except OSError:
            pass
        finally:
            os.close(own)

    t = threading.Thread(target=work, name="crib-netns-stats", daemon=True)
    t.start()
    t.join(5)
    return result[0] if result else ""
