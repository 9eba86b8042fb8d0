"""Usage readings of pods and containers: cgroup counters (through the host), the
writable layer's disk use (from imaged), and the pod's network interfaces. Plain
dataclasses; `messages.stats` turns them into CRI messages."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import CgroupStats
from .node import Node
from .store.records import ContainerRecord, SandboxRecord

__all__ = ["ContainerUsage", "Interface", "LayerUsage", "PodUsage", "container_usage",
           "parse_net_dev", "pod_usage"]


@dataclass
class LayerUsage:
    mountpoint: str
    bytes: int
    inodes: int


@dataclass
class ContainerUsage:
    rec: ContainerRecord
    cgroup: CgroupStats
    layer: LayerUsage | None = None


@dataclass
class Interface:
    """One line of /proc/net/dev."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


@dataclass
class PodUsage:
    rec: SandboxRecord
    cgroup: CgroupStats
    containers: list[ContainerUsage] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)


async def container_usage(node: Node, rec: ContainerRecord) -> ContainerUsage:
    usage = ContainerUsage(rec, await asyncio.to_thread(node.host.read_stats,
                                                        rec.meta.cgroup_path))
    try:
        layer = await node.imaged.snapshot_usage(rec.meta.snapshot_key, timeout=5)
        usage.layer = LayerUsage(str(node.settings.imaged.root), layer.bytes, layer.inodes)
    except Exception:  # imaged down or snapshot gone: stats without the layer
        pass
    return usage


async def pod_usage(node: Node, rec: SandboxRecord) -> PodUsage:
    cgroup = await asyncio.to_thread(node.host.read_stats, rec.meta.cgroup_parent)
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


def _net_dev(pid: int) -> list[Interface]:
    try:
        return parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())
    except OSError:
        return []


def parse_net_dev(text: str) -> list[Interface]:
    """Interfaces of a /proc/net/dev text except loopback (the kubelet reports eth0)."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        name = name.strip()
        if name == "lo" or len(f) < 16:
            continue
        n = [int(x) for x in f[:16]]
        # Receive: bytes packets errs drop fifo frame compressed multicast; transmit:
        # bytes packets errs drop fifo colls carrier compressed (net/core/net-procfs.c).
        out.append(Interface(name, rx_bytes=n[0], rx_packets=n[1], rx_errors=n[2],
                             rx_dropped=n[3], tx_bytes=n[8], tx_packets=n[9],
                             tx_errors=n[10], tx_dropped=n[11]))
    return out


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
