"""Linux capabilities of a container: the default set, the kubelet's add/drop lists with
`ALL`, and what a privileged container gets.

Capabilities are named as the OCI config takes them (`CAP_` prefix, upper case); the
kubelet sends them with or without the prefix.
"""

from __future__ import annotations

from pathlib import Path

from crib_common.errors import InvalidArgument

__all__ = [
    "ALL_CAPS",
    "DEFAULT_CAPS",
    "cap_name",
    "container_capabilities",
    "host_capabilities",
]

# The set a container gets when the CRI sends neither add nor drop: containerd's
# (pkg/oci/spec.go defaultUnixCaps), which CRI-O's default_capabilities also lists.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

# By number, <linux/capability.h> (capabilities(7)): index i is capability i. Linux 5.9
# added the last one, CAP_CHECKPOINT_RESTORE (40).
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def cap_name(name: str) -> str:
    """`net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` all name CAP_NET_ADMIN; `ALL` stays."""
    name = name.strip().upper()
    return name if name.startswith("CAP_") or name == "ALL" else "CAP_" + name


def host_capabilities(proc: Path = Path("/proc")) -> list[str]:
    """Every capability the host kernel knows (`sys/kernel/cap_last_cap`) that runtimed
    itself holds in its bounding set: a runtime cannot hand out a capability it lacks
    (capset fails), and some nodes run runtimed without CAP_SYS_RESOURCE (this one).
    containerd's GetAllCapabilities makes the same cut."""
    known = len(ALL_CAPS) - 1
    try:
        known = min(known, int((proc / "sys/kernel/cap_last_cap").read_text()))
    except (OSError, ValueError):
        pass
    mask = (1 << (known + 1)) - 1
    try:
        for line in (proc / "self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                mask &= int(line.split()[1], 16)
                break
    except (OSError, ValueError):
        pass
    return [c for i, c in enumerate(ALL_CAPS) if mask >> i & 1]


_HOST_CAPS: list[str] = host_capabilities()


def container_capabilities(add: list[str], drop: list[str], privileged: bool,
                           host: list[str] | None = None) -> list[str]:
    """The bounding (= effective, permitted) set of a container. Privileged: everything
    the host has. Otherwise DEFAULT_CAPS, then the kubelet's lists as containerd reads
    them: `ALL` in add starts from every host capability, `ALL` in drop from none, then
    the named adds are added and the named drops removed, so add [ALL] drop [CHOWN] is
    all but CAP_CHOWN and drop [ALL] add [NET_BIND_SERVICE] is that one alone."""
    host_caps = list(_HOST_CAPS if host is None else host)
    if privileged:
        return host_caps
    add_n = [cap_name(c) for c in add]
    drop_n = [cap_name(c) for c in drop]
    # An unknown name to drop is harmless and left alone; one to add is a mistake.
    for c in add_n:
        if c != "ALL" and c not in ALL_CAPS:
            raise InvalidArgument(f"unknown capability {c}")
    caps = list(DEFAULT_CAPS)
    if "ALL" in add_n:
        caps = list(host_caps)
    if "ALL" in drop_n:
        caps = []
    for c in add_n:
        if c != "ALL" and c not in caps:
            caps.append(c)
    # What the host lacks cannot be granted; the runtime would fail the container.
    return [c for c in caps if c not in drop_n and c in host_caps]
