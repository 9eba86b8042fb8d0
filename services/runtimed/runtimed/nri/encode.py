"""NRI's request messages written straight from crib's records and OCI config, with the
protobuf wire format's primitives (`crib_common.protowire`) instead of betterproto:
building and encoding a Container through betterproto took about 3 ms per event, this
about a tenth of it, on every event of every container (bench/bench_nri.py).

Field numbers are api.proto's (containerd/nri pkg/api/api.proto, vendored in
crib_common/nri_proto/); proto3 rules: a scalar at its default and an empty list are left
out, a sub-message present is written even when empty. Replies are parsed with the
generated betterproto types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from crib_common.protowire import field, varint

from ..oci.spec import resources_to_oci
from ..store.records import ContainerRecord, SandboxRecord
from .convert import HOOK_LISTS

__all__ = ["container_bytes", "message", "pod_bytes", "resources_bytes"]

# ContainerState (api.proto): CONTAINER_CREATED 1, CONTAINER_RUNNING 3, CONTAINER_STOPPED 4.
_STATES = {"creating": 0, "created": 1, "running": 3, "exited": 4}


def _str(number: int, value: str) -> bytes:
    return field(number, value.encode()) if value else b""


def _int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def _strs(number: int, values: Iterable[str]) -> bytes:
    return b"".join(field(number, str(v).encode()) for v in values)


def _map(number: int, values: Mapping[str, Any]) -> bytes:
    # map<string, string>: each entry a message {key = 1; value = 2}.
    return b"".join(field(number, _str(1, str(k)) + _str(2, str(v)))
                    for k, v in values.items())


def _wrapped(number: int, value: Any) -> bytes:
    """An Optional* wrapper message ({value = 1}), present even holding 0."""
    if isinstance(value, bool):
        value = int(value)
    return field(number, _int(1, int(value)))


def message(*parts: bytes) -> bytes:
    """A message from its encoded fields (in field order)."""
    return b"".join(parts)


def pod_bytes(pod: SandboxRecord) -> bytes:
    """PodSandbox: id 1, name 2, uid 3, namespace 4, labels 5, annotations 6,
    runtime_handler 7, linux 8 (LinuxPodSandbox: pod_resources 2, cgroup_parent 3,
    cgroups_path 4), pid 9, ips 10. The pod's resources are those its cgroup got (the
    containers' sum plus the overhead, `cgroups.pod_resources`)."""
    meta = pod.meta
    linux = b""
    if pod.status.resources:
        linux += field(2, resources_bytes(resources_to_oci(pod.status.resources)))
    linux += _str(3, meta.cgroup_parent) + _str(4, meta.cgroup_path)
    return (_str(1, meta.id) + _str(2, meta.name) + _str(3, meta.uid)
            + _str(4, meta.namespace) + _map(5, meta.labels) + _map(6, meta.annotations)
            + _str(7, meta.handler) + field(8, linux) + _int(9, pod.status.infra_pid)
            + _strs(10, pod.status.ips))


# LinuxMemory and LinuxCPU fields (api.proto) by OCI key, each an Optional* wrapper.
_MEMORY = (("limit", 1), ("reservation", 2), ("swap", 3), ("kernel", 4), ("kernelTCP", 5),
           ("swappiness", 6), ("disableOOMKiller", 7))
_CPU = (("shares", 1), ("quota", 2), ("period", 3), ("realtimeRuntime", 4),
        ("realtimePeriod", 5))


def resources_bytes(oci: Mapping[str, Any]) -> bytes:
    """LinuxResources from OCI `linux.resources`: memory 1, cpu 2 (cpus 6, mems 7),
    hugepage_limits 3 (page_size 1, limit 2), unified 6, pids 8 (limit 1)."""
    mem, cpu = oci.get("memory") or {}, oci.get("cpu") or {}
    memory = b"".join(_wrapped(n, mem[k]) for k, n in _MEMORY if k in mem)
    cpu_msg = b"".join(_wrapped(n, cpu[k]) for k, n in _CPU if k in cpu) \
        + _str(6, str(cpu.get("cpus") or "")) + _str(7, str(cpu.get("mems") or ""))
    out = field(1, memory) + field(2, cpu_msg)
    for h in oci.get("hugepageLimits") or []:
        out += field(3, _str(1, h.get("pageSize", "")) + _int(2, int(h.get("limit", 0))))
    out += _map(6, oci.get("unified") or {})
    if oci.get("pids"):
        out += field(8, _int(1, int(oci["pids"].get("limit", 0))))
    return out


def _hook(h: Mapping[str, Any]) -> bytes:
    # Hook: path 1, args 2, env 3, timeout 4 (OptionalInt).
    out = _str(1, h.get("path", "")) + _strs(2, h.get("args") or []) \
        + _strs(3, h.get("env") or [])
    if "timeout" in h:
        out += _wrapped(4, h["timeout"])
    return out


def container_bytes(rec: ContainerRecord, spec: Mapping[str, Any] | None) -> bytes:
    """Container: id 1, pod_sandbox_id 2, name 3, state 4, labels 5, annotations 6,
    args 7, env 8, mounts 9, hooks 10, linux 11, pid 12, rlimits 13, created_at 14,
    started_at 15, finished_at 16, exit_code 17, status_reason 18, status_message 19,
    user 21; what was made (annotations, args, env, mounts, hooks, linux, rlimits) from
    `spec`, its config.json."""
    meta, status = rec.meta, rec.status
    annotations = (spec.get("annotations") or {}) if spec else meta.annotations
    out = (_str(1, meta.id) + _str(2, meta.pod_id) + _str(3, meta.name)
           + _int(4, _STATES.get(status.state, 0)) + _map(5, meta.labels)
           + _map(6, annotations))
    rlimits = b""
    if spec:
        process = spec.get("process") or {}
        linux = spec.get("linux") or {}
        out += _strs(7, process.get("args") or []) + _strs(8, process.get("env") or [])
        for m in spec.get("mounts") or []:
            # Mount: destination 1, type 2, source 3, options 4.
            out += field(9, _str(1, m.get("destination", "")) + _str(2, m.get("type", ""))
                         + _str(3, m.get("source", "")) + _strs(4, m.get("options") or []))
        hooks = spec.get("hooks") or {}
        out += field(10, b"".join(field(n, _hook(h)) for n, (oci, _f) in
                                  enumerate(HOOK_LISTS, start=1) for h in hooks.get(oci) or []))
        # LinuxContainer: namespaces 1 (type 1, path 2), devices 2 (path 1, type 2,
        # major 3, minor 4), resources 3, oom_score_adj 4, cgroups_path 5, sysctl 9.
        lc = b"".join(field(1, _str(1, n.get("type", "")) + _str(2, n.get("path", "")))
                      for n in linux.get("namespaces") or [])
        lc += b"".join(field(2, _str(1, d.get("path", "")) + _str(2, d.get("type", ""))
                             + _int(3, int(d.get("major", 0))) + _int(4, int(d.get("minor", 0))))
                       for d in linux.get("devices") or [])
        lc += field(3, resources_bytes(linux.get("resources") or {}))
        if "oomScoreAdj" in process:
            lc += _wrapped(4, process["oomScoreAdj"])
        lc += _str(5, str(linux.get("cgroupsPath") or "")) + _map(9, linux.get("sysctl") or {})
        out += field(11, lc)
        # POSIXRlimit: type 1, hard 2, soft 3.
        rlimits = b"".join(field(13, _str(1, r["type"]) + _int(2, int(r.get("hard", 0)))
                                 + _int(3, int(r.get("soft", 0))))
                           for r in process.get("rlimits") or [])
    out += _int(12, status.pid) + rlimits + _int(14, meta.created_at) \
        + _int(15, status.started_at) + _int(16, status.finished_at) \
        + _int(17, status.exit_code) + _str(18, status.reason) + _str(19, status.message)
    # User: uid 1, gid 2, additional_gids 3 (packed, proto3's default for scalars).
    gids = b"".join(varint(g) for g in meta.groups)
    user = _int(1, meta.uid) + _int(2, meta.gid) + (field(3, gids) if gids else b"")
    return out + field(21, user)
