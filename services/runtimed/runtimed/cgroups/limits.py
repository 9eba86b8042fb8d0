"""A pod cgroup's limits, the same for both cgroup versions: the sum rule of
LinuxPodSandboxConfig and the v1-to-v2 conversions runc applies."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DEFAULT_CFS_PERIOD", "cpu_shares_to_weight", "memory_swap_to_v2", "pod_resources"]

# CFS period when the kubelet sends a quota without one (the kernel's default, 100 ms).
DEFAULT_CFS_PERIOD = 100_000

# cpu.shares spans [2, 262144] (kernel MIN_SHARES, MAX_SHARES = 1 << 18); cpu.weight
# spans [1, 10000] with 100 as default (cgroup-v2.rst, "CPU Interface Files").
_MAX_SHARES = 262_144
_MAX_WEIGHT = 10_000


def cpu_shares_to_weight(shares: int) -> int:
    """cpu.weight for a v1 cpu.shares value, as runc converts it (opencontainers/cgroups
    ConvertCPUSharesToCgroupV2Value since runc 1.3.2 and crun 1.23: a quadratic in
    log2(shares) through (2, 1), (1024, 100) and (262144, 10000), so the kubelet's
    default 1024 shares give the kernel's default weight 100; see kubernetes issue
    131216). Older runtimes used the linear 1 + (shares - 2) * 9999 // 262142, which
    maps 1024 to 39. 0 means unset and stays 0."""
    if shares <= 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= _MAX_SHARES:
        return _MAX_WEIGHT
    log = math.log2(shares)
    exponent = (log * log + 125 * log) / 612.0 - 7.0 / 34.0
    return int(math.ceil(10 ** exponent))


def memory_swap_to_v2(memory_swap: int, memory: int) -> int:
    """memory.swap.max for OCI's memory+swap total (v1 memsw) and a memory limit:
    v2 limits swap alone, so the memory part is taken off (runc's
    ConvertMemorySwapToCgroupV2Value). -1 is unlimited, 0 no swap."""
    if memory_swap < 0:
        return -1
    if memory <= 0:
        return -1 if memory_swap == 0 else memory_swap
    if memory_swap == 0:
        return 0
    if memory_swap < memory:
        raise ValueError(f"memory+swap limit {memory_swap} is below the memory limit {memory}")
    return memory_swap - memory


def pod_resources(resources: dict[str, Any], overhead: dict[str, Any]) -> dict[str, Any]:
    """The pod cgroup's limits from LinuxPodSandboxConfig: `resources` is the sum of the
    containers' resources and `overhead` the sandbox's own (api.proto), so the pod gets
    both, as the kubelet sizes its pod cgroups (limits + overhead). Zero means unset; a
    memory or CPU limit exists only when `resources` has one (no limit plus overhead is
    still no limit). Dicts as stored by oci.spec.resources_to_dict; hugepage limits
    are carried over from `resources` as they are."""
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
    pages = [h for h in resources.get("hugepage_limits") or [] if h.get("page_size")]
    if pages:
        out["hugepage_limits"] = pages
    return out
