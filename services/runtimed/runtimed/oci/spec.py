"""Build OCI runtime `config.json` documents (opencontainers/runtime-spec config.md,
config-linux.md) for sandboxes and containers from the CRI request and the image config.

Every document validates against the runtime-spec JSON schema
(tests/unit/runtimed/test_spec.py checks that with jsonschema).
"""

from __future__ import annotations

import os
import stat
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
    SecurityProfileProfileType,
)
from crib_common.errors import InvalidArgument

from ..oom import SANDBOX_OOM_SCORE_ADJ, oom_policy
from ..store.records import SandboxMeta
from .seccomp import default_profile, load_localhost_profile
from .user import ResolvedUser

__all__ = [
    "DEFAULT_CAPS",
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

# containerd's and CRI-O's default capability set (pkg/oci/spec.go defaultUnixCaps).
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

# capabilities(7) up to Linux 6.1.
ALL_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]

# containerd's defaults (pkg/oci/spec.go); the kubelet usually sends its own lists.
DEFAULT_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi", "/sys/devices/virtual/powercap",
]
DEFAULT_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

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


def _cap_name(name: str) -> str:
    name = name.strip().upper()
    return name if name.startswith("CAP_") or name == "ALL" else "CAP_" + name


def host_capabilities() -> list[str]:
    """The capabilities runtimed itself may hand out: its bounding set (ALL_CAPS is in
    capability-number order). A container cannot get more than the runtime holds, and
    this machine lacks some (CAP_SYS_RESOURCE), as containerd's GetAllCapabilities."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                mask = int(line.split()[1], 16)
                return [c for i, c in enumerate(ALL_CAPS) if mask >> i & 1]
    except (OSError, ValueError):
        pass
    return list(ALL_CAPS)


_HOST_CAPS: list[str] = host_capabilities()


def _capabilities(add: list[str], drop: list[str], privileged: bool) -> list[str]:
    if privileged:
        return list(_HOST_CAPS)
    caps = list(DEFAULT_CAPS)
    add_n = [_cap_name(c) for c in add]
    drop_n = [_cap_name(c) for c in drop]
    if "ALL" in add_n:
        caps = list(_HOST_CAPS)
    for c in add_n:
        if c != "ALL" and c not in caps:
            if c not in ALL_CAPS:
                raise InvalidArgument(f"unknown capability {c}")
            caps.append(c)
    if "ALL" in drop_n:
        # Drop ALL then add: only the explicitly added ones remain (containerd's order).
        caps = [c for c in add_n if c != "ALL"]
    return [c for c in caps if c not in drop_n and c in _HOST_CAPS]


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


def _device(path: str, dest: str, perms: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"device {path}: {exc.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"{path} is not a device")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    perms = perms or "rwm"
    if any(ch not in "rwm" for ch in perms):
        raise InvalidArgument(f"device {path}: bad permissions {perms!r}")
    dev = {"path": dest or path, "type": kind, "major": major, "minor": minor,
           "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": perms}
    return dev, rule


# Directories of /dev whose nodes a privileged container does not get from the host: they
# are mounted fresh (pts, shm, mqueue) or are the host's own per-process or tool state (the
# same list as runc's libcontainer/devices GetDevices, which containerd's HostDevices uses).
_HOST_DEV_SKIP_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts",
                                 ".udev"})


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """Every character and block device node under the host's /dev, as OCI
    `linux.devices` entries (config-linux.md "Devices"): what a privileged container gets,
    as containerd's WithDevices(HostDevices()) for privileged. /dev/console is skipped
    (the runtime sets up the console), symlinks are not followed, and a node that
    vanishes while walking is ignored."""
    out: list[dict[str, Any]] = []

    def walk(directory: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in _HOST_DEV_SKIP_DIRS:
                        walk(entry.path)
                    continue
                if entry.is_symlink() or entry.path == os.path.join(root, "console"):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append({"path": entry.path, "type": kind, "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid, "gid": st.st_gid})

    walk(root)
    return out


# Devices every container gets (runc adds them too; listing them keeps crun equal).
_DEFAULT_ALLOW = [
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},   # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},   # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},   # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},   # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},   # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},   # tty
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},   # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},             # pts
]


def check_host_userns(ns_opts: NamespaceOption) -> None:
    """Refuse a pod user namespace (hostUsers: false): runtimed runs every container in
    the host's, and running it there silently would drop the isolation the pod asked
    for. `Status` says so too (user_namespaces false on every handler), so the kubelet
    keeps such pods off this node. An absent option, or mode NODE, is the host's."""
    userns = ns_opts.userns_options
    if is_set(userns) and userns.mode != NamespaceMode.NODE:
        raise InvalidArgument("user namespaces (hostUsers: false) are not supported by "
                              "crib's runtime handlers")


def build_container_spec(cfg: ContainerConfig, inp: ContainerSpecInput) -> dict[str, Any]:
    """config.json of an application container."""
    img = inp.image_config.get("config") or {}
    linux = cfg.linux
    sc = linux.security_context if is_set(linux) else None
    if sc is not None and not is_set(sc):
        sc = None
    privileged = bool(sc and sc.privileged)
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
    caps = _capabilities(
        list(sc.capabilities.add_capabilities) if sc and is_set(sc.capabilities) else [],
        list(sc.capabilities.drop_capabilities) if sc and is_set(sc.capabilities) else [],
        privileged,
    )
    ambient = [_cap_name(c) for c in (sc.capabilities.add_ambient_capabilities
                                      if sc and is_set(sc.capabilities) else [])]
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
        "noNewPrivileges": bool(sc and sc.no_new_privs),
        "oomScoreAdj": oom,
    }
    if inp.user.groups:
        process["user"]["additionalGids"] = inp.user.groups
    pod = inp.sandbox
    mounts = _base_mounts(str(Path(pod.pod_dir) / "shm") if not pod.host_ipc else "/dev/shm",
                          privileged)
    wanted = {m.container_path for m in cfg.mounts}
    for name in ("hostname", "resolv.conf", "hosts"):
        dest = f"/etc/{name}"
        src = Path(pod.pod_dir) / name
        if dest not in wanted and src.exists():
            mounts.append({"destination": dest, "type": "bind", "source": str(src),
                           "options": ["rbind", "rprivate",
                                       "ro" if (sc and sc.readonly_rootfs) else "rw"]})
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
        if not os.path.exists(m.host_path):
            # The kubelet expects a missing host directory to be created (containerd does).
            os.makedirs(m.host_path, exist_ok=True)
        prop = _PROPAGATION.get(m.propagation, "rprivate")
        # rootfsPropagation takes "shared"/"slave" (config-linux.md), not the r- forms.
        if prop == "rshared":
            rootfs_propagation = "shared"
        elif prop == "rslave" and rootfs_propagation != "shared":
            rootfs_propagation = "slave"
        if m.uid_mappings or m.gid_mappings:
            raise InvalidArgument(f"mount {m.container_path}: ID-mapped mounts are not "
                                  "supported (they come with user namespaces)")
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
                       "source": m.host_path, "options": opts})
    devices: list[dict[str, Any]] = []
    rules = list(_DEFAULT_ALLOW)
    for d in cfg.devices:
        dev, rule = _device(d.host_path, d.container_path, d.permissions)
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
    ns_opts = sc.namespace_options if sc and is_set(sc.namespace_options) else None
    if ns_opts is not None:
        check_host_userns(ns_opts)
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
    }
    if devices:
        spec_linux["devices"] = devices
    if pod.sysctls:
        spec_linux["sysctl"] = dict(pod.sysctls)
    if rootfs_propagation:
        spec_linux["rootfsPropagation"] = rootfs_propagation
    if not privileged:
        masked = list(sc.masked_paths) if sc and sc.masked_paths else list(DEFAULT_MASKED)
        ro = list(sc.readonly_paths) if sc and sc.readonly_paths else list(DEFAULT_READONLY)
        spec_linux["maskedPaths"] = masked
        spec_linux["readonlyPaths"] = ro
        seccomp = _seccomp(sc, set(caps))
        if seccomp is not None:
            spec_linux["seccomp"] = seccomp
        _check_apparmor(sc)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(inp.rootfs), "readonly": bool(sc and sc.readonly_rootfs)},
        "mounts": mounts,
        "annotations": dict(inp.annotations),
        "linux": spec_linux,
    }
    return spec


def _check_apparmor(sc: Any) -> None:
    """crib loads no AppArmor profiles. A named (Localhost) profile is refused, never
    silently dropped. RuntimeDefault, which the kubelet asks for on every container of an
    AppArmor host, runs without one: refusing it would refuse every pod there (the
    README says so)."""
    if sc is None:
        return
    if is_set(sc.apparmor):
        named = sc.apparmor.profile_type == SecurityProfileProfileType.Localhost
        what = sc.apparmor.localhost_ref
    else:
        what = sc.apparmor_profile
        named = what.startswith("localhost/")
    if named:
        raise InvalidArgument(f"AppArmor profile {what!r}: crib applies no AppArmor "
                              "profiles")


def _seccomp(sc: Any, caps: set[str]) -> dict[str, Any] | None:
    """RuntimeDefault, Unconfined or Localhost; with nothing said, the kubelet's default
    is Unconfined (seccompDefault is off unless the kubelet asks)."""
    if sc is None:
        return None
    if is_set(sc.seccomp):
        kind = sc.seccomp.profile_type
        if kind == SecurityProfileProfileType.RuntimeDefault:
            return default_profile(caps)
        if kind == SecurityProfileProfileType.Localhost:
            return load_localhost_profile(sc.seccomp.localhost_ref)
        return None
    path = sc.seccomp_profile_path
    if path in ("runtime/default", "docker/default"):
        return default_profile(caps)
    if path.startswith("localhost/"):
        return load_localhost_profile(path[len("localhost/"):])
    if path in ("", "unconfined"):
        return None
    raise InvalidArgument(f"unknown seccomp profile {path!r}")


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
            "maskedPaths": list(DEFAULT_MASKED),
            "readonlyPaths": list(DEFAULT_READONLY),
            **({"sysctl": dict(sb.sysctls)} if sb.sysctls else {}),
        },
    }
