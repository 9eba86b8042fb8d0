"""Namespace facts for tests that check what crib created."""

from __future__ import annotations

import fcntl
import os

__all__ = ["owner_userns"]

# ioctl_ns(2): NS_GET_USERNS, _IO(0xb7, 0x1).
NS_GET_USERNS = 0xB701


def owner_userns(pin: str | os.PathLike[str]) -> int:
    """The inode of the user namespace owning the namespace at `pin` (a pin or a
    /proc/<pid>/ns/<kind> path)."""
    fd = os.open(pin, os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)
