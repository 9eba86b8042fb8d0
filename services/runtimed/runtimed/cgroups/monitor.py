"""The cgroup each container's monitor (conmon) runs in: its own, outside runtimed's.

A monitor left in runtimed's cgroup dies with runtimed whenever its whole cgroup is
killed: a container engine stopping runtimed's container, `systemctl stop` with the
default KillMode=control-group, an OOM kill of the group. The container then loses the
process holding its stdio, log and exit code (issue 17). So conmon is moved out before it
forks anything: it blocks on its start pipe (`_OCI_STARTPIPE`, conmon.c "to ensure the
parent can put us in the right cgroup") until runtimed has written its pid into the
target cgroup of every hierarchy; the runtime it runs and the container it creates are
its descendants and start there (runc/crun then move the container into its own cgroup).

Where, as CRI-O's `conmon_cgroup` (monitor_cgroup in newer versions) has it:

    "pod"        under the pod's cgroup parent, beside its containers (the default):
                 cgroupfs  <pod parent>/crib-conmon-<id>
                 systemd   <pod slice>/crib-conmon-<id>.scope
    a cgroup     cgroupfs: a path ("/crib.monitors"); systemd: a slice ("system.slice"),
                 each monitor in its own child named as above

"pod" is the default a real node wants: the monitor's memory and CPU are charged to the
pod the kubelet accounts and evicts for, not to an unbounded system slice, and it lives
and dies with the pod's cgroup. (Upstream CRI-O moved its default to "system.slice";
OpenShift sets "pod" in its crio.conf, machine-config-operator PR 1296.) A cgroup
of one's own per monitor (not one shared group) lets crib remove exactly what it made
when the container goes, and never leaves a process in a cgroup the kubelet will rmdir.

Every hierarchy the process is in is written: on a v1 host each controller's tree, the
named `name=systemd` tree and, on a hybrid host, the controller-less cgroup2 tree at
<root>/unified (an engine may kill through any of them); on v2 the one unified tree.
With the systemd driver the path is the one systemd would give the scope (a slice
expanded, `paths.slice_path`) and the directories are made on the cgroup filesystem
directly, as runc's fs fallback does: no D-Bus call, so it also holds where systemd is
not running (and is tested on synthetic trees).
"""

from __future__ import annotations

import os
from pathlib import Path

from crib_common.errors import FailedPrecondition, InvalidArgument

from .paths import CgroupDriver, clean_fs_path, pod_cgroup_path, slice_path

__all__ = [
    "INIT_CGROUP_NS",
    "MONITOR_POD",
    "MONITOR_PREFIX",
    "check_monitor_cgroup",
    "in_cgroup_namespace",
    "hierarchies",
    "join_cgroup",
    "monitor_cgroup",
    "monitor_id",
]

MONITOR_POD = "pod"
# "crib-conmon-<id>": CRI-O names its monitors' scopes "crio-conmon-<id>.scope" so that
# cAdvisor and the kubelet never take them for the container "<id>" itself.
MONITOR_PREFIX = "crib-conmon-"
_SCOPE = ".scope"
# The inode of the initial cgroup namespace (PROC_CGROUP_INIT_INO, include/linux/proc_ns.h).
INIT_CGROUP_NS = 0xEFFFFFFB


def in_cgroup_namespace(ns: str = "/proc/self/ns/cgroup") -> bool:
    """runtimed sees a cgroup namespace of its own (a container engine's default on v2):
    its cgroup root is then its container's cgroup, and every cgroup it makes, the
    monitors' included, is inside it; stopping that container kills them all."""
    try:
        return os.stat(ns).st_ino != INIT_CGROUP_NS
    except OSError:
        return False


def check_monitor_cgroup(setting: str, driver: CgroupDriver) -> None:
    """At start: "pod", a cgroupfs path with the cgroupfs driver, a slice with systemd."""
    if setting == MONITOR_POD:
        return
    try:
        if driver == "systemd":
            slice_path(setting)
        elif not setting.startswith("/"):
            raise InvalidArgument("not an absolute cgroupfs path")
        else:
            clean_fs_path(setting)
    except InvalidArgument as exc:
        form = "a slice such as \"system.slice\"" if driver == "systemd" else \
            "an absolute cgroupfs path such as \"/crib.monitors\""
        raise FailedPrecondition(
            f"runtimed.monitor_cgroup {setting!r}: must be \"pod\" or {form} "
            f"(cgroup_driver {driver}): {exc.message}") from None


def monitor_cgroup(setting: str, pod_parent: str, cid: str, driver: CgroupDriver) -> str:
    """The monitor's cgroup path under the cgroup root, for container (or infra) `cid` of
    the pod whose parent is `pod_parent`."""
    if not cid or "/" in cid:
        raise InvalidArgument(f"invalid container id {cid!r} for a cgroup name")
    if setting == MONITOR_POD:
        base = pod_cgroup_path(pod_parent, driver)
    else:
        base = slice_path(setting) if driver == "systemd" else clean_fs_path(setting)
    leaf = MONITOR_PREFIX + cid + (_SCOPE if driver == "systemd" else "")
    return f"{base.rstrip('/')}/{leaf}"


def monitor_id(name: str) -> str:
    """The container id in a monitor cgroup's name ("" when it is not one)."""
    if not name.startswith(MONITOR_PREFIX):
        return ""
    rest = name[len(MONITOR_PREFIX):]
    return rest[: -len(_SCOPE)] if rest.endswith(_SCOPE) else rest


def hierarchies(root: Path, unified: bool) -> list[Path]:
    """The root directory of every mounted hierarchy: `root` itself on a v2 host; on v1
    each directory under it holding cgroup.procs (controllers, name=systemd, and the
    hybrid host's cgroup2 at ./unified). A co-mounted pair appears once, its aliases
    (cpu -> cpu,cpuacct) being symlinks."""
    if unified:
        return [root]
    out: list[Path] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and \
                os.path.exists(os.path.join(entry.path, "cgroup.procs")):
            out.append(Path(entry.path))
    return out


def _make(top: Path, rel: str) -> Path:
    """mkdir the cgroup below hierarchy `top`, parents first. A new v1 cpuset cgroup
    starts with empty cpuset.cpus and cpuset.mems, and a task cannot join it (ENOSPC;
    cgroup-v1/cpusets.rst): each made level gets its parent's."""
    d = top
    for part in rel.split("/"):
        parent, d = d, d / part
        try:
            d.mkdir()
        except FileExistsError:
            continue
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (parent / name).exists() and not _read(d / name):
                (d / name).write_text(_read(parent / name) + "\n")
    return d


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def join_cgroup(cgroup_path: str, pid: int, root: Path, unified: bool) -> list[str]:
    """Move process `pid` into `cgroup_path` (made where missing) in every hierarchy;
    returns the cgroup.procs files written. OSError when one refuses."""
    rel = clean_fs_path(cgroup_path).strip("/")
    if not rel:
        raise InvalidArgument("refusing to move a monitor into the root cgroup")
    written: list[str] = []
    for top in hierarchies(root, unified):
        procs = _make(top, rel) / "cgroup.procs"
        # One write per hierarchy: the pid moves with its threads (it has one: conmon is
        # blocked on its start pipe before it forks or spawns anything).
        # (O_CREAT|O_TRUNC as runc's WriteFile: the file always exists on a cgroupfs.)
        fd = os.open(procs, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        written.append(str(procs))
    return written
