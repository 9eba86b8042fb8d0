"""Devices of a container's OCI config (config-linux.md "Devices" and the cgroup device
rules): what every container gets, what the CRI asks for, and the host's nodes that a
privileged container gets. Reading device nodes is the one host access the spec builder
makes, and it only reads."""

from __future__ import annotations

import os
import stat
from typing import Any

from crib_common.errors import InvalidArgument

__all__ = ["DEFAULT_ALLOW", "device", "host_devices", "node_type"]


def node_type(mode: int) -> str | None:
    """The OCI `linux.devices` type of a device node's st_mode: "c" or "b"; None for
    anything else."""
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    return None


def device(path: str, dest: str, perms: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidArgument(f"device {path}: {exc.strerror}") from None
    kind = node_type(st.st_mode)
    if kind is None:
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
DEFAULT_ALLOW = [
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},   # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},   # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},   # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},   # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},   # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},   # tty
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},   # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},             # pts
]
