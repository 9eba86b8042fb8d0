"""Build OCI runtime `config.json` documents (opencontainers/runtime-spec config.md,
config-linux.md) for sandboxes and containers from the CRI request and the image config.

Every document validates against the runtime-spec JSON schema
(tests/unit/runtimed/test_spec.py checks that with jsonschema).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import betterproto

from crib_common.cri.runtime.v1 import (
    ContainerConfig,
    LinuxContainerResources,
    MountPropagation,
    NamespaceMode,
    NamespaceOption,
    SeLinuxOption,
)
from crib_common.errors import InvalidArgument

from ..oom import SANDBOX_OOM_SCORE_ADJ, oom_policy
from ..userns.mappings import PodUserns, oci_userns
from ..store.records import SandboxMeta
from .devices import DEFAULT_ALLOW, device, host_devices
from .capabilities import ALL_CAPS, DEFAULT_CAPS, cap_name, container_capabilities
from .security import DEFAULT_MASKED, DEFAULT_READONLY, SecurityDefaults, apply_security, \
    current
from .user import ResolvedUser

__all__ = [
    "DEFAULT_CAPS",
    "DEFAULT_MASKED",
    "DEFAULT_READONLY",
    "ALL_CAPS",
    "OCI_VERSION",
    "ContainerSpecInput",
    "build_container_spec",
    "build_pause_spec",
    "build_sandbox_spec",
    "combine_command",
    "host_devices",
    "merge_env",
    "resources_to_oci",
    "resources_to_dict",
]

OCI_VERSION = "1.0.2"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PROPAGATION = {
    MountPropagation.PROPAGATION_PRIVATE: "rprivate",
    MountPropagation.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    MountPropagation.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def is_set(msg: Any) -> bool:
    """Whether an optional sub-message was present on the wire."""
    return msg is not None and betterproto.serialized_on_wire(msg)


def combine_command(command: list[str], args: list[str], entrypoint: list[str] | None,
                    cmd: list[str] | None) -> list[str]:
    """The kubelet's rule (k8s.io/kubernetes pkg/kubelet/kuberuntime, and containerd's
    WithProcessArgs): a container `command` replaces the image Entrypoint and drops its
    Cmd; `args` replace the image Cmd; otherwise Entrypoint + Cmd."""
    if command:
        argv = list(command) + list(args)
    elif args:
        argv = list(entrypoint or []) + list(args)
    else:
        argv = list(entrypoint or []) + list(cmd or [])
    if not argv:
        raise InvalidArgument("no command specified: the container and its image give none")
    return argv


def merge_env(image_env: list[str], container_env: list[tuple[str, str]]) -> list[str]:
    """Image Env first, then the container's, a later key replacing an earlier one in
    place (containerd's WithEnv)."""
    order: list[str] = []
    values: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        if key not in values:
            order.append(key)
        values[key] = value
    for key, value in container_env:
        if not key:
            continue
        if key not in values:
            order.append(key)
        values[key] = value
    if "PATH" not in values:
        order.insert(0, "PATH")
        values["PATH"] = DEFAULT_PATH
    return [f"{k}={values[k]}" for k in order]


def resources_to_dict(res: LinuxContainerResources | None) -> dict[str, Any]:
    """CRI resources as a plain dict for the record (ContainerStatus reports them)."""
    if res is None or not is_set(res):
        return {}
    return res.to_dict(casing=betterproto.Casing.SNAKE)  # type: ignore[arg-type]


def resources_to_oci(res: dict[str, Any], *, pids_limit: int = 0,
                     swap_controller: bool = False) -> dict[str, Any]:
    """OCI `linux.resources` from CRI resources (as stored by `resources_to_dict`)."""
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    cpu: dict[str, Any] = {}
    if int(res.get("cpu_shares") or 0) > 0:
        cpu["shares"] = int(res["cpu_shares"])
    if int(res.get("cpu_quota") or 0) != 0:
        cpu["quota"] = int(res["cpu_quota"])
    if int(res.get("cpu_period") or 0) > 0:
        cpu["period"] = int(res["cpu_period"])
    if res.get("cpuset_cpus"):
        cpu["cpus"] = str(res["cpuset_cpus"])
    if res.get("cpuset_mems"):
        cpu["mems"] = str(res["cpuset_mems"])
    if cpu:
        out["cpu"] = cpu
    limit = int(res.get("memory_limit_in_bytes") or 0)
    if limit > 0:
        mem: dict[str, Any] = {"limit": limit}
        swap = int(res.get("memory_swap_limit_in_bytes") or 0)
        # No swap unless asked for: swap limit = memory limit (containerd WithResources).
        if swap_controller:
            mem["swap"] = swap if swap > 0 else limit
        out["memory"] = mem
    if pids_limit > 0:
        out["pids"] = {"limit": pids_limit}
    hp = [
        {"pageSize": h.get("page_size", ""), "limit": int(h.get("limit") or 0)}
        for h in res.get("hugepage_limits") or [] if h.get("page_size")
    ]
    if hp:
        out["hugepageLimits"] = hp
    if res.get("unified"):
        out["unified"] = {str(k): str(v) for k, v in res["unified"].items()}
    return out


@dataclass
class ContainerSpecInput:
    """Everything a container's config.json is made of besides the CRI request."""

    cid: str
    rootfs: Path
    sandbox: SandboxMeta
    image_config: dict[str, Any]
    user: ResolvedUser
    cgroup_path: str
    infra_pid: int = 0
    pids_limit: int = 0
    swap_controller: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    # Containers of this pod by id -> pid, for NamespaceMode.TARGET.
    target_pids: dict[str, int] = field(default_factory=dict)
    # The handler takes recursive read-only mounts ("rro"), and its name for errors.
    recursive_read_only: bool = False
    handler: str = ""
    # Host directories of the image volumes (CRI Mount.image), by container path.
    image_sources: dict[str, str] = field(default_factory=dict)
    # ID-mapped clones of the mounts that carry mappings (pod user namespace,
    # `lifecycle.rootfs.map_mounts`), by container path: the runtime binds these.
    mapped_sources: dict[str, str] = field(default_factory=dict)
    # The host side of seccomp, AppArmor and SELinux (None: the ones installed at start,
    # security.install), and the pod's SELinux options (its sandbox config's
    # linux.security_context.selinux_options), which the container's fall back to.
    security: SecurityDefaults | None = None
    pod_selinux: SeLinuxOption | None = None


def _base_mounts(shm: str, privileged: bool) -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime",
                     "rw" if privileged else "ro"]},
        {"destination": "/dev/shm", "type": "bind", "source": shm,
         "options": ["rbind", "nosuid", "noexec", "nodev", "rw"]},
    ]


def _namespaces(sb: SandboxMeta, mode_pid: int, infra_pid: int, target_id: str,
                target_pids: dict[str, int]) -> list[dict[str, str]]:
    ns: list[dict[str, str]] = [{"type": "mount"}]
    if sb.userns:
        ns.append(_userns(sb)[0])
    if sb.netns_path:
        ns.append({"type": "network", "path": sb.netns_path})
    if sb.ipc_ns:
        ns.append({"type": "ipc", "path": sb.ipc_ns})
    if sb.uts_ns:
        ns.append({"type": "uts", "path": sb.uts_ns})
    if mode_pid == NamespaceMode.NODE:
        pass
    elif mode_pid == NamespaceMode.POD:
        if not infra_pid:
            raise InvalidArgument("the pod does not share a PID namespace")
        ns.append({"type": "pid", "path": f"/proc/{infra_pid}/ns/pid"})
    elif mode_pid == NamespaceMode.TARGET:
        pid = target_pids.get(target_id, 0)
        if not pid:
            raise InvalidArgument(f"PID namespace target {target_id!r} is not a running "
                                  "container of this pod")
        ns.append({"type": "pid", "path": f"/proc/{pid}/ns/pid"})
    else:
        ns.append({"type": "pid"})
    return ns


def _userns(sb: SandboxMeta) -> tuple[dict[str, str], dict[str, Any]]:
    """The pod's user namespace entry and its mappings (`userns.mappings.oci_userns`)."""
    pod = PodUserns.from_record(sb.userns_mappings)
    if pod is None or not sb.userns:
        raise InvalidArgument(f"pod {sb.id}: its user namespace is not pinned")
    return oci_userns(sb.userns, pod)


def _userns_mappings(sb: SandboxMeta) -> dict[str, Any]:
    return _userns(sb)[1] if sb.userns else {}


def build_container_spec(cfg: ContainerConfig, inp: ContainerSpecInput) -> dict[str, Any]:
    """config.json of an application container."""
    img = inp.image_config.get("config") or {}
    linux = cfg.linux
    security = linux.security_context if is_set(linux) else None
    if security is not None and not is_set(security):
        security = None
    privileged = bool(security and security.privileged)
    argv = combine_command(list(cfg.command), list(cfg.args), img.get("Entrypoint"),
                           img.get("Cmd"))
    # KeyValue.value is `bytes` in our api.proto copy (wire-compatible with string).
    env = merge_env(list(img.get("Env") or []),
                    [(kv.key, kv.value.decode("utf-8", "replace")
                      if isinstance(kv.value, bytes) else str(kv.value)) for kv in cfg.envs])
    if cfg.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    if inp.sandbox.hostname and not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={inp.sandbox.hostname}")
    cwd = cfg.working_dir or img.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working_dir {cwd!r} must be absolute")
    asked = security.capabilities if security and is_set(security.capabilities) else None
    caps = container_capabilities(
        list(asked.add_capabilities) if asked else [],
        list(asked.drop_capabilities) if asked else [],
        privileged,
    )
    ambient = [cap_name(c) for c in (asked.add_ambient_capabilities if asked else [])]
    res = resources_to_dict(linux.resources if is_set(linux) else None)
    # As the kubelet asks (-997 Guaranteed), raised only where the daemon lacks
    # CAP_SYS_RESOURCE (runtimed.oom).
    oom = oom_policy().apply(int(res.get("oom_score_adj") or 0))
    process: dict[str, Any] = {
        "terminal": bool(cfg.tty),
        "user": {"uid": inp.user.uid, "gid": inp.user.gid},
        "args": argv,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps,
                         **({"ambient": ambient, "inheritable": ambient} if ambient else {})},
        "noNewPrivileges": bool(security and security.no_new_privs),
        "oomScoreAdj": oom,
    }
    if inp.user.groups:
        process["user"]["additionalGids"] = inp.user.groups
    pod = inp.sandbox
    mounts = _base_mounts(str(Path(pod.pod_dir) / "shm") if not pod.host_ipc else "/dev/shm",
                          privileged)
    wanted = {m.container_path for m in cfg.mounts}
    # The pod's files, which its setup always writes (lifecycle.sandboxes).
    for name in ("hostname", "resolv.conf", "hosts"):
        dest = f"/etc/{name}"
        src = Path(pod.pod_dir) / name
        if dest not in wanted:
            mounts.append({"destination": dest, "type": "bind", "source": str(src),
                           "options": ["rbind", "rprivate",
                                       "ro" if (security and security.readonly_rootfs) else "rw"]})
    rootfs_propagation = ""
    for m in cfg.mounts:
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"mount destination {m.container_path!r} must be absolute")
        source = inp.image_sources.get(m.container_path, "")
        if source:
            # An image volume: always read-only (api.proto), from the image's snapshot.
            mounts = [x for x in mounts if x["destination"] != m.container_path]
            mounts.append({"destination": m.container_path, "type": "bind",
                           "source": source, "options": ["rbind", "rprivate", "ro"]})
            continue
        if not m.host_path:
            raise InvalidArgument(f"mount {m.container_path}: empty host_path")
        prop = _PROPAGATION.get(m.propagation, "rprivate")
        # rootfsPropagation takes "shared"/"slave" (config-linux.md), not the r- forms.
        if prop == "rshared":
            rootfs_propagation = "shared"
        elif prop == "rslave" and rootfs_propagation != "shared":
            rootfs_propagation = "slave"
        host_path = inp.mapped_sources.get(m.container_path, m.host_path)
        if (m.uid_mappings or m.gid_mappings) and host_path == m.host_path:
            raise InvalidArgument(f"mount {m.container_path}: ID-mapped mounts need the "
                                  "pod's own user namespace")
        opts = ["rbind", prop, "ro" if m.readonly else "rw"]
        if m.recursive_read_only:
            # api.proto: readonly must be set too, and propagation PRIVATE.
            if not m.readonly:
                raise InvalidArgument(f"mount {m.container_path}: recursive_read_only "
                                      "needs readonly")
            if m.propagation != MountPropagation.PROPAGATION_PRIVATE:
                raise InvalidArgument(f"mount {m.container_path}: recursive_read_only "
                                      "needs private propagation")
            if not inp.recursive_read_only:
                raise InvalidArgument(
                    f"mount {m.container_path}: runtime handler {inp.handler!r} does not "
                    "support recursive read-only mounts")
            opts.append("rro")
        mounts = [x for x in mounts if x["destination"] != m.container_path]
        mounts.append({"destination": m.container_path, "type": "bind",
                       "source": host_path, "options": opts})
    devices: list[dict[str, Any]] = []
    rules = list(DEFAULT_ALLOW)
    for d in cfg.devices:
        dev, rule = device(d.host_path, d.container_path, d.permissions)
        devices.append(dev)
        rules.append(rule)
    oci_res = resources_to_oci(res, pids_limit=inp.pids_limit,
                               swap_controller=inp.swap_controller)
    if privileged:
        oci_res["devices"] = [{"allow": True, "access": "rwm"}]
        # Explicitly requested devices win over the host node at the same path.
        taken = {d["path"] for d in devices}
        devices += [d for d in host_devices() if d["path"] not in taken]
    else:
        oci_res["devices"] = oci_res["devices"] + rules
    ns_opts = security.namespace_options \
        if security and is_set(security.namespace_options) else None
    pid_mode = ns_opts.pid if ns_opts else (
        NamespaceMode.POD if pod.shared_pid else
        NamespaceMode.NODE if pod.host_pid else NamespaceMode.CONTAINER)
    if pod.host_pid:
        pid_mode = NamespaceMode.NODE
    spec_linux: dict[str, Any] = {
        "namespaces": _namespaces(pod, pid_mode, inp.infra_pid,
                                  ns_opts.target_id if ns_opts else "", inp.target_pids),
        "resources": oci_res,
        "cgroupsPath": inp.cgroup_path,
        **_userns_mappings(pod),
    }
    if devices:
        spec_linux["devices"] = devices
    if pod.sysctls:
        spec_linux["sysctl"] = dict(pod.sysctls)
    if rootfs_propagation:
        spec_linux["rootfsPropagation"] = rootfs_propagation
    apply_security(security, caps, privileged, inp.security or current(), inp.pod_selinux,
                   pod.id, process, spec_linux)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(inp.rootfs), "readonly": bool(security and security.readonly_rootfs)},
        "mounts": mounts,
        "annotations": dict(inp.annotations),
        "linux": spec_linux,
    }
    return spec


def build_sandbox_spec(sb: SandboxMeta, rootfs: Path, catatonit_in_rootfs: str,
                       catatonit_host: str, cgroup_path: str) -> dict[str, Any]:
    """config.json of the pod's PID-namespace holder: catatonit in pause mode (`-P`) as
    PID 1 of a new PID namespace, joining the pod's pinned namespaces."""
    spec = _infra_spec(sb, rootfs, [catatonit_in_rootfs, "-P"], [f"PATH={DEFAULT_PATH}"],
                       "/", 65535, 65535, cgroup_path, readonly=True)
    spec["mounts"].append({"destination": catatonit_in_rootfs, "type": "bind",
                           "source": catatonit_host,
                           "options": ["bind", "ro", "nosuid", "nodev"]})
    return spec


def build_pause_spec(sb: SandboxMeta, rootfs: Path, image_config: dict[str, Any],
                     uid: int, gid: int, cgroup_path: str) -> dict[str, Any]:
    """config.json of a configured pause image run as the pod's infra container: its
    process from the image config's Entrypoint/Cmd/Env/WorkingDir (image-spec config.md),
    PID 1 of its own PID namespace (the host's for a host-PID pod), joining the pod's
    network, IPC and UTS namespaces."""
    img = image_config.get("config") or {}
    argv = combine_command([], [], img.get("Entrypoint"), img.get("Cmd"))
    env = merge_env(list(img.get("Env") or []), [])
    if not any(e.startswith("PATH=") for e in env):
        env.append(f"PATH={DEFAULT_PATH}")
    cwd = img.get("WorkingDir") or "/"
    return _infra_spec(sb, rootfs, argv, env, cwd if cwd.startswith("/") else "/", uid, gid,
                       cgroup_path, readonly=False)


def _infra_spec(sb: SandboxMeta, rootfs: Path, argv: list[str], env: list[str], cwd: str,
                uid: int, gid: int, cgroup_path: str, *, readonly: bool) -> dict[str, Any]:
    ns = _namespaces(sb, NamespaceMode.NODE if sb.host_pid else NamespaceMode.CONTAINER,
                     0, "", {})
    caps: list[str] = []
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": argv,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
            # The kubelet's PodInfraOOMAdj: the last thing of the pod the OOM killer
            # should pick, within what the daemon may grant (runtimed.oom).
            "oomScoreAdj": oom_policy().apply(SANDBOX_OOM_SCORE_ADJ),
        },
        "root": {"path": str(rootfs), "readonly": readonly},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "annotations": {"io.kubernetes.cri.container-type": "sandbox",
                        "io.kubernetes.cri.sandbox-id": sb.id},
        "linux": {
            "namespaces": ns,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": cgroup_path,
            **_userns_mappings(sb),
            "maskedPaths": list(DEFAULT_MASKED),
            "readonlyPaths": list(DEFAULT_READONLY),
            # The infra process is crib's own (catatonit, or a pause image): always
            # confined by RuntimeDefault, for an empty capability set.
            "seccomp": current().seccomp.evaluate(frozenset()),
            **({"sysctl": dict(sb.sysctls)} if sb.sysctls else {}),
        },
    }
