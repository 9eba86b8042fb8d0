"""Resolve a container's user from the image's /etc/passwd and /etc/group.

The files are read from the container's rootfs without following a symlink out of it
(an image could point /etc/passwd at the host's), and only when they are regular files
(a FIFO there would block the read forever).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from crib_common.errors import InvalidArgument

__all__ = ["ResolvedUser", "resolve_user", "read_rootfs_file"]


@dataclass
class ResolvedUser:
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    name: str = ""
    home: str = "/"


def read_rootfs_file(rootfs: Path, rel: str) -> str:
    """Contents of `rel` inside `rootfs`, or "" when missing or escaping the rootfs."""
    root = os.path.realpath(rootfs)
    target = os.path.realpath(os.path.join(root, rel.lstrip("/")))
    if target != root and not target.startswith(root + os.sep):
        return ""
    try:
        # Non-blocking and regular files only: an image may ship a FIFO (or a device)
        # as /etc/passwd, and a blocked open would hang the create and its thread.
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        with os.fdopen(fd, encoding="utf-8", errors="replace", closefd=False) as fh:
            return fh.read(4 * 1024 * 1024)
    except OSError:
        return ""
    finally:
        os.close(fd)


def _passwd(rootfs: Path) -> list[list[str]]:
    return [line.split(":") for line in read_rootfs_file(rootfs, "/etc/passwd").splitlines()
            if line and not line.startswith("#") and line.count(":") >= 6]


def _group(rootfs: Path) -> list[list[str]]:
    return [line.split(":") for line in read_rootfs_file(rootfs, "/etc/group").splitlines()
            if line and not line.startswith("#") and line.count(":") >= 3]


def resolve_user(rootfs: Path, *, image_user: str = "", run_as_user: int | None = None,
                 run_as_username: str = "", run_as_group: int | None = None,
                 supplemental: list[int] | None = None,
                 strict_groups: bool = False) -> ResolvedUser:
    """The uid/gid/groups a container runs as.

    Precedence as in the kubelet/containerd: the security context's run_as_user (or
    run_as_username) over the image's `User`; run_as_group over the user's primary group.
    Image users may be `uid`, `name`, `uid:gid`, `name:group`. Supplemental groups are
    the user's memberships in /etc/group plus the security context's list; with
    `strict_groups` (SupplementalGroupsPolicy Strict) the context's list alone.
    """
    user_part, group_part = "", ""
    if run_as_user is not None:
        user_part = str(run_as_user)
    elif run_as_username:
        user_part = run_as_username
    elif image_user:
        user_part, _, group_part = image_user.partition(":")
    passwd = _passwd(rootfs)
    groups = _group(rootfs)
    uid, gid, name, home = 0, 0, "root", "/root"
    if user_part:
        if user_part.isdigit():
            uid = int(user_part)
            entry = next((p for p in passwd if p[2] == user_part), None)
            if entry is not None:
                gid, name, home = _int(entry[3]), entry[0], entry[5] or "/"
            else:
                name, home = "", "/"
        else:
            entry = next((p for p in passwd if p[0] == user_part), None)
            if entry is None:
                raise InvalidArgument(f"user {user_part!r} is not in the image's /etc/passwd")
            uid, gid, name, home = _int(entry[2]), _int(entry[3]), entry[0], entry[5] or "/"
    else:
        entry = next((p for p in passwd if p[2] == "0"), None)
        if entry is not None:
            gid, name, home = _int(entry[3]), entry[0], entry[5] or "/"
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            g = next((g for g in groups if g[0] == group_part), None)
            if g is None:
                raise InvalidArgument(f"group {group_part!r} is not in the image's /etc/group")
            gid = _int(g[2])
    if run_as_group is not None:
        gid = run_as_group
    extra: list[int] = []
    if name and not strict_groups:
        for g in groups:
            members = [m for m in g[3].strip().split(",") if m]
            if name in members:
                extra.append(_int(g[2]))
    for g_id in supplemental or []:
        extra.append(int(g_id))
    seen: list[int] = []
    for g_id in extra:
        if g_id != gid and g_id not in seen:
            seen.append(g_id)
    return ResolvedUser(uid=uid, gid=gid, groups=seen, name=name, home=home)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
