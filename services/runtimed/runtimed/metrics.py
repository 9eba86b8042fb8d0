"""cAdvisor's container metrics from crib's own readings, as plain samples.

The descriptors are data (data/cadvisor_metrics.json: cAdvisor's names, help texts, types
and labels); this module turns a cgroup reading (v1 or v2), a filesystem usage, a
container's limits and a pod's network counters into `Sample`s whose label values line
up with the descriptor's keys. The CRI messages (MetricDescriptor, Metric,
ContainerMetrics, PodSandboxMetrics) are built from these at the edge, in the RPC module.

Like cAdvisor: the CFS metrics and container_spec_cpu_quota exist only for a container
with a CPU quota; network counters belong to the pod (its network namespace), not to a
container; per-device I/O and filesystem metrics carry a `device` label.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .cgroups.limits import DEFAULT_CFS_PERIOD
from .cgroups.stats import CgroupStats

__all__ = [
    "ContainerSpec",
    "FsUsage",
    "MetricDescriptor",
    "MetricLabels",
    "NetworkCounters",
    "Sample",
    "block_device_name",
    "container_samples",
    "descriptors",
    "parse_net_dev",
    "pod_samples",
    "spec_from_resources",
]

MetricType = Literal["counter", "gauge"]
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class MetricDescriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    metric_type: MetricType


@dataclass(frozen=True)
class Sample:
    """One value of one metric; `label_values` follow the descriptor's `label_keys`."""

    name: str
    label_values: tuple[str, ...]
    value: int
    metric_type: MetricType


@dataclass(frozen=True)
class MetricLabels:
    """The base labels (the kubelet's containerPrometheusLabelsFunc): `id` is the cgroup
    path (cAdvisor's container name), `name` the container ID, `container` the name in
    the pod spec ("" for the pod itself)."""

    container: str = ""
    id: str = ""
    image: str = ""
    name: str = ""
    namespace: str = ""
    pod: str = ""

    def values(self, keys: Iterable[str]) -> tuple[str, ...]:
        return tuple(str(getattr(self, k)) for k in keys)


@dataclass(frozen=True)
class FsUsage:
    """The container's writable layer: bytes used and the filesystem's size and inodes."""

    device: str
    usage_bytes: int = 0
    limit_bytes: int = 0
    inodes_free: int = 0
    inodes_total: int = 0


@dataclass(frozen=True)
class ContainerSpec:
    """The container's limits as cAdvisor's container_spec_* report them (0: unset)."""

    cpu_period: int = DEFAULT_CFS_PERIOD
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit: int = 0
    memory_reservation: int = 0
    memory_swap_limit: int = 0


@dataclass(frozen=True)
class NetworkCounters:
    """One interface of the pod's network namespace (/proc/<pid>/net/dev)."""

    interface: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@functools.cache
def _catalogue() -> tuple[tuple[str, ...], dict[str, MetricDescriptor]]:
    raw: dict[str, Any] = json.loads(
        resources.files("runtimed").joinpath("data/cadvisor_metrics.json").read_text())
    base = tuple(raw["base_label_keys"])
    out: dict[str, MetricDescriptor] = {}
    for m in raw["metrics"]:
        if m["type"] not in ("counter", "gauge"):
            raise ValueError(f"cadvisor_metrics.json: {m['name']}: type {m['type']!r}")
        out[m["name"]] = MetricDescriptor(m["name"], m["help"], base + tuple(m["labels"]),
                                          m["type"])
    return base, out


def descriptors() -> list[MetricDescriptor]:
    """Every metric crib serves, in file order (ListMetricDescriptors)."""
    return list(_catalogue()[1].values())


class _Builder:
    def __init__(self, labels: MetricLabels) -> None:
        self.base, self.catalogue = _catalogue()
        self.base_values = labels.values(self.base)
        self.samples: list[Sample] = []

    def add(self, name: str, value: int, *extra: str) -> None:
        d = self.catalogue[name]
        values = self.base_values + extra
        if len(values) != len(d.label_keys):
            raise ValueError(f"{name}: {len(values)} label values for {d.label_keys}")
        self.samples.append(Sample(name, values, max(int(value), 0), d.metric_type))


def container_samples(labels: MetricLabels, stats: CgroupStats, *,
                      fs: FsUsage | None = None,
                      spec: ContainerSpec | None = None,
                      device_names: Mapping[tuple[int, int], str] | None = None,
                      ) -> list[Sample]:
    """The samples of one container (ContainerMetrics.metrics). Nothing for a cgroup
    that is gone. `device_names` maps (major, minor) to the name for the `device` label
    (`block_device_name`); unnamed devices read "major:minor"."""
    if not stats.exists:
        return []
    b = _Builder(labels)
    b.add("container_cpu_usage_seconds_total", stats.cpu_usage_ns // _NS_PER_S, "total")
    b.add("container_cpu_user_seconds_total", stats.cpu_user_ns // _NS_PER_S)
    b.add("container_cpu_system_seconds_total", stats.cpu_system_ns // _NS_PER_S)
    if spec is not None and spec.cpu_quota > 0:
        b.add("container_cpu_cfs_periods_total", stats.cpu_periods)
        b.add("container_cpu_cfs_throttled_periods_total", stats.cpu_throttled_periods)
        b.add("container_cpu_cfs_throttled_seconds_total", stats.cpu_throttled_ns // _NS_PER_S)
    b.add("container_memory_usage_bytes", stats.memory_usage)
    b.add("container_memory_working_set_bytes", stats.working_set)
    b.add("container_memory_rss", stats.rss)
    b.add("container_memory_cache", stats.memory_cache)
    b.add("container_memory_swap", stats.memory_swap)
    b.add("container_memory_kernel_usage", stats.memory_kernel)
    b.add("container_memory_mapped_file", stats.memory_mapped_file)
    b.add("container_memory_failcnt", stats.memory_failcnt)
    # cAdvisor's container scope is this cgroup, hierarchy its subtree; the kernel's
    # counters (total_* on v1, v2's memory.stat) are the subtree's, reported for both.
    for scope in ("container", "hierarchy"):
        b.add("container_memory_failures_total", stats.page_faults, "pgfault", scope)
        b.add("container_memory_failures_total", stats.major_page_faults, "pgmajfault", scope)
    b.add("container_memory_max_usage_bytes", stats.memory_max_usage)
    if fs is not None:
        b.add("container_fs_usage_bytes", fs.usage_bytes, fs.device)
        b.add("container_fs_limit_bytes", fs.limit_bytes, fs.device)
        b.add("container_fs_inodes_free", fs.inodes_free, fs.device)
        b.add("container_fs_inodes_total", fs.inodes_total, fs.device)
    for io in stats.io:
        dev = (device_names or {}).get((io.major, io.minor), f"{io.major}:{io.minor}")
        b.add("container_fs_reads_bytes_total", io.read_bytes, dev)
        b.add("container_fs_reads_total", io.reads, dev)
        b.add("container_fs_writes_bytes_total", io.write_bytes, dev)
        b.add("container_fs_writes_total", io.writes, dev)
    b.add("container_processes", stats.processes)
    b.add("container_threads", stats.pids)
    b.add("container_threads_max", stats.pids_max)
    if spec is not None:
        b.add("container_spec_cpu_period", spec.cpu_period)
        if spec.cpu_quota > 0:
            b.add("container_spec_cpu_quota", spec.cpu_quota)
        b.add("container_spec_cpu_shares", spec.cpu_shares)
        b.add("container_spec_memory_limit_bytes", spec.memory_limit)
        b.add("container_spec_memory_reservation_limit_bytes", spec.memory_reservation)
        b.add("container_spec_memory_swap_limit_bytes", spec.memory_swap_limit)
    return b.samples


def pod_samples(labels: MetricLabels, network: Iterable[NetworkCounters],
                stats: CgroupStats | None = None) -> list[Sample]:
    """The pod's own samples (PodSandboxMetrics.metrics): its network interfaces, and
    the pod cgroup's CPU and memory when a reading is given."""
    out: list[Sample] = []
    if stats is not None:
        out.extend(container_samples(labels, stats))
    b = _Builder(labels)
    for n in network:
        b.add("container_network_receive_bytes_total", n.rx_bytes, n.interface)
        b.add("container_network_receive_packets_total", n.rx_packets, n.interface)
        b.add("container_network_receive_errors_total", n.rx_errors, n.interface)
        b.add("container_network_receive_packets_dropped_total", n.rx_dropped, n.interface)
        b.add("container_network_transmit_bytes_total", n.tx_bytes, n.interface)
        b.add("container_network_transmit_packets_total", n.tx_packets, n.interface)
        b.add("container_network_transmit_errors_total", n.tx_errors, n.interface)
        b.add("container_network_transmit_packets_dropped_total", n.tx_dropped, n.interface)
    return out + b.samples


def spec_from_resources(res: Mapping[str, Any]) -> ContainerSpec:
    """ContainerSpec from CRI resources as stored (oci.spec.resources_to_dict)."""
    def num(key: str) -> int:
        return int(res.get(key) or 0)

    return ContainerSpec(cpu_period=num("cpu_period") or DEFAULT_CFS_PERIOD,
                         cpu_quota=max(num("cpu_quota"), 0), cpu_shares=num("cpu_shares"),
                         memory_limit=num("memory_limit_in_bytes"),
                         memory_swap_limit=num("memory_swap_limit_in_bytes"))


def parse_net_dev(text: str, *, skip: Iterable[str] = ("lo",)) -> list[NetworkCounters]:
    """Interfaces of /proc/<pid>/net/dev: after "name:", 8 receive columns (bytes packets
    errs drop fifo frame compressed multicast) then 8 transmit (bytes packets errs drop
    fifo colls carrier compressed)."""
    out: list[NetworkCounters] = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        f = rest.split()
        if not sep or len(f) < 16 or not f[0].isdigit():
            continue
        name = name.strip()
        if name in skip:
            continue
        v = [int(x) for x in f[:16]]
        out.append(NetworkCounters(name, rx_bytes=v[0], rx_packets=v[1], rx_errors=v[2],
                                   rx_dropped=v[3], tx_bytes=v[8], tx_packets=v[9],
                                   tx_errors=v[10], tx_dropped=v[11]))
    return out


def block_device_name(major: int, minor: int, sys: Path = Path("/sys")) -> str:
    """/dev/<DEVNAME> of a block device (its uevent in sysfs), else "major:minor"."""
    try:
        for line in (sys / "dev/block" / f"{major}:{minor}" / "uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                return "/dev/" + line.partition("=")[2]
    except OSError:
        pass
    return f"{major}:{minor}"
