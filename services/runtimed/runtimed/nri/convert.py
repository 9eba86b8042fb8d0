"""Between OCI config (runtime-spec config.md, config-linux.md) and NRI's messages
(containerd/nri `pkg/api/api.proto`), for what plugins answer: NRI's resources and hooks
as OCI, merged, and as the CRI fields crib's records keep. (Requests are written by
`encode`.)"""

from __future__ import annotations

from typing import Any

from crib_common.nri import v1alpha1 as api

from ..oci.spec import is_set

__all__ = ["HOOK_LISTS", "cri_resources", "hook_oci", "merge_resources", "oci_resources"]

# OCI hook lists (config.md "POSIX-platform Hooks") and NRI's Hooks fields.
HOOK_LISTS = (("prestart", "prestart"), ("createRuntime", "create_runtime"),
              ("createContainer", "create_container"), ("startContainer", "start_container"),
              ("poststart", "poststart"), ("poststop", "poststop"))


def hook_oci(h: api.Hook) -> dict[str, Any]:
    out: dict[str, Any] = {"path": h.path}
    if h.args:
        out["args"] = list(h.args)
    if h.env:
        out["env"] = list(h.env)
    if is_set(h.timeout):
        out["timeout"] = int(h.timeout.value)
    return out


# OCI memory and cpu keys and NRI's fields (config-linux.md "Memory", "CPU").
_MEMORY = (("limit", "limit"), ("reservation", "reservation"), ("swap", "swap"),
           ("kernel", "kernel"), ("kernelTCP", "kernel_tcp"), ("swappiness", "swappiness"),
           ("disableOOMKiller", "disable_oom_killer"))
_CPU = (("shares", "shares"), ("quota", "quota"), ("period", "period"),
        ("realtimeRuntime", "realtime_runtime"), ("realtimePeriod", "realtime_period"))


def oci_resources(res: api.LinuxResources) -> dict[str, Any]:
    """The fields NRI's LinuxResources sets, as OCI `linux.resources` (what is unset
    stays out, so the result can be laid over existing resources)."""
    out: dict[str, Any] = {}
    if is_set(res.memory):
        mem = {key: getattr(res.memory, field).value for key, field in _MEMORY
               if is_set(getattr(res.memory, field))}
        if mem:
            out["memory"] = mem
    if is_set(res.cpu):
        cpu: dict[str, Any] = {key: getattr(res.cpu, field).value for key, field in _CPU
                               if is_set(getattr(res.cpu, field))}
        if res.cpu.cpus:
            cpu["cpus"] = res.cpu.cpus
        if res.cpu.mems:
            cpu["mems"] = res.cpu.mems
        if cpu:
            out["cpu"] = cpu
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                 for h in res.hugepage_limits]
    if res.unified:
        out["unified"] = dict(res.unified)
    if is_set(res.pids):
        out["pids"] = {"limit": res.pids.limit}
    return out


def merge_resources(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base` key by key (memory, cpu, pids, unified merged; lists replace)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def cri_resources(oci: dict[str, Any]) -> dict[str, Any]:
    """What of OCI resources the container record keeps (CRI LinuxContainerResources
    field names, as `oci.spec.resources_to_dict` stores them) for ContainerStatus."""
    cpu, mem = oci.get("cpu") or {}, oci.get("memory") or {}
    out: dict[str, Any] = {}
    for cri, value in (("cpu_shares", cpu.get("shares")), ("cpu_quota", cpu.get("quota")),
                       ("cpu_period", cpu.get("period")), ("cpuset_cpus", cpu.get("cpus")),
                       ("cpuset_mems", cpu.get("mems")),
                       ("memory_limit_in_bytes", mem.get("limit")),
                       ("memory_swap_limit_in_bytes", mem.get("swap"))):
        if value not in (None, ""):
            out[cri] = value
    if oci.get("unified"):
        out["unified"] = dict(oci["unified"])
    return out
