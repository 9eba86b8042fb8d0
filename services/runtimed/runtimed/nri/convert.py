"""Between crib's records and OCI config and NRI's messages (containerd/nri
`pkg/api/api.proto`): the pod and container a plugin is shown, and NRI's resources as
OCI `linux.resources` (runtime-spec config-linux.md)."""

from __future__ import annotations

from typing import Any

from crib_common.nri import v1alpha1 as api

from ..oci.spec import is_set
from ..store.records import ContainerRecord, SandboxRecord

__all__ = ["container_message", "oci_resources", "pod_message", "resources_message"]

_STATES = {
    "creating": api.ContainerState.CONTAINER_UNKNOWN,
    "created": api.ContainerState.CONTAINER_CREATED,
    "running": api.ContainerState.CONTAINER_RUNNING,
    "exited": api.ContainerState.CONTAINER_STOPPED,
}
# OCI hook lists (config.md "POSIX-platform Hooks") and NRI's Hooks fields.
HOOK_LISTS = (("prestart", "prestart"), ("createRuntime", "create_runtime"),
              ("createContainer", "create_container"), ("startContainer", "start_container"),
              ("poststart", "poststart"), ("poststop", "poststop"))


def pod_message(pod: SandboxRecord) -> api.PodSandbox:
    meta = pod.meta
    return api.PodSandbox(
        id=meta.id, name=meta.name, uid=meta.uid, namespace=meta.namespace,
        labels=dict(meta.labels), annotations=dict(meta.annotations),
        runtime_handler=meta.handler, pid=pod.status.infra_pid, ips=list(pod.status.ips),
        linux=api.LinuxPodSandbox(cgroup_parent=meta.cgroup_parent,
                                  cgroups_path=meta.cgroup_path))


def container_message(rec: ContainerRecord, spec: dict[str, Any] | None) -> api.Container:
    """The container as NRI shows it; `spec` (its config.json) gives what was made."""
    meta, status = rec.meta, rec.status
    ctr = api.Container(
        id=meta.id, pod_sandbox_id=meta.pod_id, name=meta.name,
        state=api.ContainerState(_STATES.get(status.state, 0)),
        labels=dict(meta.labels), annotations=dict(meta.annotations), pid=status.pid,
        created_at=meta.created_at, started_at=status.started_at,
        finished_at=status.finished_at, exit_code=status.exit_code,
        status_reason=status.reason, status_message=status.message,
        user=api.User(uid=meta.uid, gid=meta.gid, additional_gids=list(meta.groups)))
    if not spec:
        return ctr
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    ctr.annotations = dict(spec.get("annotations") or {})
    ctr.args = list(process.get("args") or [])
    ctr.env = list(process.get("env") or [])
    ctr.mounts = [api.Mount(destination=m.get("destination", ""), type=m.get("type", ""),
                            source=m.get("source", ""), options=list(m.get("options") or []))
                  for m in spec.get("mounts") or []]
    hooks = spec.get("hooks") or {}
    ctr.hooks = api.Hooks(**{field: [_hook_message(h) for h in hooks.get(oci) or []]
                             for oci, field in HOOK_LISTS})
    ctr.rlimits = [api.PosixRlimit(type=r["type"], hard=int(r.get("hard", 0)),
                                   soft=int(r.get("soft", 0)))
                   for r in process.get("rlimits") or []]
    ctr.linux = api.LinuxContainer(
        namespaces=[api.LinuxNamespace(type=n.get("type", ""), path=n.get("path", ""))
                    for n in linux.get("namespaces") or []],
        devices=[api.LinuxDevice(path=d.get("path", ""), type=d.get("type", ""),
                                 major=int(d.get("major", 0)), minor=int(d.get("minor", 0)))
                 for d in linux.get("devices") or []],
        resources=resources_message(linux.get("resources") or {}),
        cgroups_path=str(linux.get("cgroupsPath") or ""),
        sysctl=dict(linux.get("sysctl") or {}))
    if "oomScoreAdj" in process:
        ctr.linux.oom_score_adj = api.OptionalInt(value=int(process["oomScoreAdj"]))
    return ctr


def _hook_message(h: dict[str, Any]) -> api.Hook:
    hook = api.Hook(path=h.get("path", ""), args=list(h.get("args") or []),
                    env=list(h.get("env") or []))
    if "timeout" in h:
        hook.timeout = api.OptionalInt(value=int(h["timeout"]))
    return hook


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


def resources_message(oci: dict[str, Any]) -> api.LinuxResources:
    """OCI `linux.resources` as NRI's LinuxResources."""
    res = api.LinuxResources()
    mem, cpu = oci.get("memory") or {}, oci.get("cpu") or {}
    memory = api.LinuxMemory()
    for key, field in _MEMORY:
        if key in mem:
            wrapper = type(getattr(memory, field))
            setattr(memory, field, wrapper(value=mem[key]))
    cpu_msg = api.LinuxCpu(cpus=str(cpu.get("cpus") or ""), mems=str(cpu.get("mems") or ""))
    for key, field in _CPU:
        if key in cpu:
            wrapper = type(getattr(cpu_msg, field))
            setattr(cpu_msg, field, wrapper(value=int(cpu[key])))
    res.memory, res.cpu = memory, cpu_msg
    res.hugepage_limits = [api.HugepageLimit(page_size=h.get("pageSize", ""),
                                             limit=int(h.get("limit", 0)))
                           for h in oci.get("hugepageLimits") or []]
    res.unified = dict(oci.get("unified") or {})
    if oci.get("pids"):
        res.pids = api.LinuxPids(limit=int(oci["pids"].get("limit", 0)))
    return res


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
