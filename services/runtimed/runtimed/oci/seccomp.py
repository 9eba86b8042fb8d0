"""Seccomp profiles: crib's RuntimeDefault, and Localhost profiles read from disk.

RuntimeDefault allows by default and refuses (EPERM) the syscalls that let a container
reach the kernel or the host beyond its namespaces: module and kexec loading, reboot,
swap, clock setting, keyrings, BPF, perf, userfaultfd, raw I/O ports, handle-based opens
(the "shocker" escape), mount-API and namespace syscalls, ptrace and process_vm_*. It is
the deny-list half of the moby/containerd default profile: shorter, and it keeps working
when a new syscall appears. Syscall names the runtime's libseccomp does not know are
skipped by runc and crun.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from crib_common.errors import InvalidArgument

__all__ = ["DEFAULT_DENIED", "default_profile", "load_localhost_profile"]

DEFAULT_DENIED = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
    "mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root", "process_vm_readv",
    "process_vm_writev", "ptrace", "query_module", "quotactl", "reboot", "request_key",
    "set_mempolicy", "setns", "settimeofday", "stime", "swapoff", "swapon", "syslog",
    "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
]

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def default_profile(privileged_caps: set[str] | None = None) -> dict[str, Any]:
    """The OCI `linux.seccomp` object of RuntimeDefault. Syscalls gated by a capability
    the container was granted stay allowed (CAP_SYS_ADMIN: mount and namespaces;
    CAP_SYS_PTRACE: ptrace and process_vm_*), as in moby's profile."""
    caps = privileged_caps or set()
    denied = set(DEFAULT_DENIED)
    if "CAP_SYS_ADMIN" in caps:
        denied -= {"mount", "umount", "umount2", "unshare", "setns", "pivot_root", "fsconfig",
                   "fsmount", "fsopen", "fspick", "move_mount", "open_tree", "mount_setattr",
                   "quotactl"}
    if "CAP_SYS_PTRACE" in caps:
        denied -= {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp"}
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": _ARCHES.get(platform.machine(), []),
        "syscalls": [
            {"names": sorted(denied), "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        ],
    }


def load_localhost_profile(path: str) -> dict[str, Any]:
    """Read an OCI (or Docker-format) seccomp profile from an absolute host path."""
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp localhost profile {path!r} must be an absolute path")
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument(f"cannot read seccomp profile {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or "defaultAction" not in raw:
        raise InvalidArgument(f"seccomp profile {path} has no defaultAction")
    profile: dict[str, Any] = {"defaultAction": raw["defaultAction"]}
    arches = list(raw.get("architectures") or [])
    for entry in raw.get("archMap") or []:  # Docker format
        arches.append(entry.get("architecture"))
        arches.extend(entry.get("subArchitectures") or [])
    if arches:
        profile["architectures"] = [a for a in arches if a]
    if "defaultErrnoRet" in raw:
        profile["defaultErrnoRet"] = raw["defaultErrnoRet"]
    syscalls = []
    for sc in raw.get("syscalls") or []:
        names = sc.get("names") or ([sc["name"]] if sc.get("name") else [])
        if not names:
            continue
        item: dict[str, Any] = {"names": names, "action": sc.get("action", "SCMP_ACT_ALLOW")}
        if sc.get("args"):
            item["args"] = sc["args"]
        if "errnoRet" in sc:
            item["errnoRet"] = sc["errnoRet"]
        syscalls.append(item)
    if syscalls:
        profile["syscalls"] = syscalls
    return profile
