"""The mount table as proc(5) writes it in /proc/self/mountinfo: where each filesystem
is mounted and its type. imaged names the filesystems holding its store (ImageFsInfo),
runtimed finds the cgroup layout by the filesystem type at /sys/fs/cgroup and checks that
its state directories propagate mounts (the optional fields "shared:N", "master:N")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MOUNTINFO", "Mount", "mount_fstype", "mount_of", "mountpoint_of", "table"]

MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    # proc(5): space, tab, newline and backslash in mount points are written as \ooo.
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    """One line of the table: where, what, and its propagation (proc(5) field 7, the
    optional fields: "shared:N" a member of peer group N, "master:N" a slave receiving
    from group N, "propagate_from:N", "unbindable"; none at all: private)."""

    point: str
    fstype: str
    optional: tuple[str, ...]

    @property
    def shared(self) -> bool:
        return any(f.startswith("shared:") for f in self.optional)

    @property
    def slave(self) -> bool:
        return any(f.startswith("master:") for f in self.optional)

    @property
    def propagation(self) -> str:
        """As findmnt(8) names it: "shared", "slave", "shared,slave" or "private"."""
        kinds = [k for k, on in (("shared", self.shared), ("slave", self.slave)) if on]
        return ",".join(kinds) or ("unbindable" if "unbindable" in self.optional
                                   else "private")


def table(mountinfo: Path = MOUNTINFO) -> list[Mount] | None:
    """Every mount in the table's order; None when the table is unreadable."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 6:
            continue
        fstype = right.split()
        out.append(Mount(_unescape(fields[4]), fstype[0] if fstype else "",
                         tuple(fields[6:])))
    return out


def mount_of(directory: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount holding `directory` (symlinks resolved): the longest mount point that is
    it or an ancestor, the last one at that point (the one on top). None when the table
    cannot be read."""
    real = os.path.realpath(directory)
    found: Mount | None = None
    for m in table(mountinfo) or []:
        inside = m.point == "/" or real == m.point or real.startswith(m.point.rstrip("/") + "/")
        if inside and (found is None or len(m.point) >= len(found.point)):
            found = m
    return found


def mount_fstype(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """Filesystem type of what is mounted exactly at `path` (the one on top), or None
    when nothing is."""
    want = str(path).rstrip("/") or "/"
    found: str | None = None
    for m in table(mountinfo) or []:
        if m.point == want:
            found = m.fstype or None
    return found


def mountpoint_of(directory: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> str:
    """The mount point of the filesystem holding `directory` (symlinks resolved): the
    longest mount point that is the directory or one of its ancestors. Falls back to the
    resolved directory itself when the table cannot be read."""
    found = mount_of(directory, mountinfo)
    return found.point if found is not None else os.path.realpath(directory)
