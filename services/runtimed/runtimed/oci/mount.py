"""Mount a snapshot's mounts (containerd's mount description) at a bundle's rootfs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from crib_common.errors import Internal
from crib_common.models.imaged import Mount

__all__ = ["mount_all"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# mount(2) flags for the options that are flags, not filesystem data.
_FLAGS = {
    "ro": 0x1, "rw": 0, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "bind": 0x1000,
    "rbind": 0x1000 | 0x4000, "noatime": 0x400, "relatime": 0x200000,
}


def mount_all(mounts: list[Mount], target: Path) -> None:
    """Mount each description on `target` in order (overlay or bind)."""
    target.mkdir(parents=True, exist_ok=True)
    for m in mounts:
        flags = 0
        data: list[str] = []
        for opt in m.options:
            if opt in _FLAGS:
                flags |= _FLAGS[opt]
            else:
                data.append(opt)
        fstype = m.type
        if fstype == "bind":
            flags |= 0x1000
        rc = _libc.mount(m.source.encode(), str(target).encode(), fstype.encode(),
                         ctypes.c_ulong(flags), ",".join(data).encode() or None)
        if rc != 0:
            err = ctypes.get_errno()
            raise Internal(f"mounting {fstype} at {target}: {os.strerror(err)}")
