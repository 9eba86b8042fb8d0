"""Usage readings (`runtimed.stats`) -> the CRI stats messages."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import (
    ContainerAttributes,
    ContainerMetadata,
    ContainerStats,
    CpuUsage,
    FilesystemIdentifier,
    FilesystemUsage,
    LinuxPodSandboxStats,
    MemoryUsage,
    NetworkInterfaceUsage,
    NetworkUsage,
    PodSandboxAttributes,
    PodSandboxStats,
    ProcessUsage,
    UInt64Value,
)

from ..cgroups import CgroupStats
from ..metrics import NetworkCounters
from ..stats import ContainerUsage, PodUsage
from .status import pod_metadata

__all__ = ["container_stats", "sandbox_stats"]


def _u(v: int) -> UInt64Value:
    return UInt64Value(value=max(int(v), 0))


def _cpu(st: CgroupStats) -> CpuUsage:
    return CpuUsage(timestamp=st.timestamp, usage_core_nano_seconds=_u(st.cpu_usage_ns))


def _memory(st: CgroupStats) -> MemoryUsage:
    return MemoryUsage(timestamp=st.timestamp, working_set_bytes=_u(st.working_set),
                       usage_bytes=_u(st.memory_usage), rss_bytes=_u(st.rss),
                       page_faults=_u(st.page_faults),
                       major_page_faults=_u(st.major_page_faults))


def container_stats(usage: ContainerUsage) -> ContainerStats:
    m, st = usage.rec.meta, usage.cgroup
    stats = ContainerStats(
        attributes=ContainerAttributes(
            id=m.id, metadata=ContainerMetadata(name=m.name, attempt=m.attempt),
            labels=dict(m.labels), annotations=dict(m.annotations)),
        cpu=_cpu(st), memory=_memory(st))
    if usage.layer is not None:
        stats.writable_layer = FilesystemUsage(
            timestamp=st.timestamp,
            fs_id=FilesystemIdentifier(mountpoint=usage.layer.mountpoint),
            used_bytes=_u(usage.layer.bytes), inodes_used=_u(usage.layer.inodes))
    return stats


def _interface(i: NetworkCounters) -> NetworkInterfaceUsage:
    return NetworkInterfaceUsage(name=i.interface, rx_bytes=_u(i.rx_bytes),
                                 rx_errors=_u(i.rx_errors), tx_bytes=_u(i.tx_bytes),
                                 tx_errors=_u(i.tx_errors))


def sandbox_stats(usage: PodUsage) -> PodSandboxStats:
    rec, st = usage.rec, usage.cgroup
    linux = LinuxPodSandboxStats(
        cpu=_cpu(st), memory=_memory(st),
        process=ProcessUsage(timestamp=st.timestamp, process_count=_u(st.pids)),
        containers=[container_stats(c) for c in usage.containers])
    if usage.interfaces:
        ifaces = [_interface(i) for i in usage.interfaces]
        default = next((i for i in ifaces if i.name == "eth0"), ifaces[0])
        linux.network = NetworkUsage(timestamp=st.timestamp, default_interface=default,
                                     interfaces=ifaces)
    return PodSandboxStats(
        attributes=PodSandboxAttributes(id=rec.meta.id, metadata=pod_metadata(rec),
                                        labels=dict(rec.meta.labels),
                                        annotations=dict(rec.meta.annotations)),
        linux=linux)
