"""The mount table as proc(5) writes it in /proc/self/mountinfo: where each filesystem
is mounted and its type. imaged names the filesystems holding its store (ImageFsInfo),
runtimed finds the cgroup layout by the filesystem type at /sys/fs/cgroup."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MOUNTINFO", "mount_fstype", "mountpoint_of", "mounts"]

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


def mounts(mountinfo: Path = MOUNTINFO) -> list[tuple[str, str]] | None:
    """(mount point, filesystem type) of every mount, in the table's order (a later one
    is on top of an earlier one at the same point); None when the table is unreadable."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        fstype = right.split()
        out.append((_unescape(fields[4]), fstype[0] if fstype else ""))
    return out


def mount_fstype(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """Filesystem type of what is mounted exactly at `path` (the one on top), or None
    when nothing is."""
    want = str(path).rstrip("/") or "/"
    found: str | None = None
    for point, fstype in mounts(mountinfo) or []:
        if point == want:
            found = fstype or None
    return found


def mountpoint_of(directory: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> str:
    """The mount point of the filesystem holding `directory` (symlinks resolved): the
    longest mount point that is the directory or one of its ancestors. Falls back to the
    resolved directory itself when the table cannot be read."""
    real = os.path.realpath(directory)
    table = mounts(mountinfo)
    if table is None:
        return real
    best = ""
    for point, _fstype in table:
        inside = point == "/" or real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best = point
    return best or real
