"""ID-mapped mounts made by runtimed itself, through the new mount API (ctypes).

Debian 12's runc 1.1.5 cannot ID-map a mount and crun 1.8.1 only a plain bind, so the
OCI runtime is handed an ID-mapped mount ready-made: a clone of the source tree
(`open_tree(OPEN_TREE_CLONE)`), ID-mapped to a user namespace (`mount_setattr` with
`MOUNT_ATTR_IDMAP`), attached under the bundle (`move_mount`). Through it a file owned
by ID n on disk shows as the user namespace's mapping of n: with the pod's mapping
(container 0 -> host H), host root's files are the container's root's. Nothing on disk
is chowned.

Errors are `IdmapError` (an OSError with the errno) naming the call, the path and what
the errno means here (EINVAL from mount_setattr: the filesystem cannot be ID-mapped).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path
from typing import Any

__all__ = ["IdmapError", "idmapped_bind", "SYS_OPEN_TREE", "SYS_MOVE_MOUNT",
           "SYS_MOUNT_SETATTR"]

# Syscall numbers from the kernel's generic table (arch/x86/entry/syscalls/
# syscall_64.tbl and include/uapi/asm-generic/unistd.h agree from 424 on): open_tree
# 428, move_mount 429, mount_setattr 442.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
# include/uapi/linux/mount.h
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOUNT_ATTR_IDMAP = 0x00100000
# include/uapi/linux/fcntl.h
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000


class _MountAttr(ctypes.Structure):
    """struct mount_attr, MOUNT_ATTR_SIZE_VER0 (32 bytes)."""

    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


MOUNT_ATTR_SIZE_VER0 = ctypes.sizeof(_MountAttr)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class IdmapError(OSError):
    """An ID-mapped mount could not be made; `errno` is the kernel's."""


# What an errno means for each call, when it means something more precise than
# strerror: mount_setattr(2), open_tree(2), move_mount(2) ERRORS.
_HINTS: dict[tuple[str, int], str] = {
    ("mount_setattr", errno.EINVAL): "the filesystem cannot be ID-mapped, or the user "
                                     "namespace has no mapping",
    ("mount_setattr", errno.EPERM): "not allowed to ID-map with this user namespace",
    ("mount_setattr", errno.EBADF): "not a user namespace file descriptor",
    ("open_tree", errno.ENOSYS): "the kernel has no open_tree (needs Linux 5.2)",
    ("mount_setattr", errno.ENOSYS): "the kernel has no mount_setattr (needs Linux 5.12)",
}


def _fail(call: str, path: str | Path) -> IdmapError:
    err = ctypes.get_errno()
    hint = _HINTS.get((call, err))
    return IdmapError(err, f"{call} {path}: {os.strerror(err)}"
                           + (f" ({hint})" if hint else ""))


def _syscall(number: int, *args: Any) -> int:
    return int(_libc.syscall(ctypes.c_long(number), *args))


def idmapped_bind(source: str | Path, target: str | Path, userns_fd: int, *,
                  recursive: bool = True) -> None:
    """Attach at `target` (which must exist: a directory for a directory, a file for a
    file) a clone of `source` ID-mapped through the user namespace `userns_fd`;
    `recursive` takes the mounts below `source` along, each ID-mapped too. IdmapError
    naming the failing call; nothing is left attached on failure."""
    rec = AT_RECURSIVE if recursive else 0
    fd = _syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), str(source).encode(),
                  ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | rec))
    if fd < 0:
        raise _fail("open_tree", source)
    try:
        attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        if _syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"",
                    ctypes.c_uint(AT_EMPTY_PATH | rec), ctypes.byref(attr),
                    ctypes.c_size_t(MOUNT_ATTR_SIZE_VER0)) != 0:
            raise _fail("mount_setattr", source)
        if _syscall(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
                    str(target).encode(), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)) != 0:
            raise _fail("move_mount", target)
    finally:
        # A detached clone that was never attached goes away with its last fd.
        with contextlib.suppress(OSError):
            os.close(fd)
