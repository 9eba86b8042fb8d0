"""The start-up check that runtimed's state directories propagate mounts to the host.

runtimed mounts into its directories what others must see: the pods' pinned IPC and UTS
namespaces, their shm, the containers' root filesystems, the logs the kubelet reads. On a
private mount those exist only in runtimed's own mount namespace: run in a container, a
restarted runtimed (a new namespace) finds empty files where the pins were and runc fails
with "failed to setns into ipc namespace: Invalid argument" (issue 17). So every one of
them must sit on a mount that is shared ("shared:N" in /proc/self/mountinfo) or a slave
of a shared peer ("master:N"); otherwise runtimed refuses to start and says what to run.

On systemd hosts / is shared (systemd makes it so at boot, mount_namespaces(7)), so
runtimed in the host's namespace passes as it is; on hosts without systemd `make up`
makes the directories shared first (scripts/share-mounts.sh), and a container engine has
to be given them with rshared propagation (the compose file).
"""

from __future__ import annotations

from pathlib import Path

from crib_common.errors import FailedPrecondition
from crib_common.mountinfo import MOUNTINFO, mount_of
from crib_common.settings import RuntimedSection

__all__ = ["check_propagation", "state_directories"]


def state_directories(cfg: RuntimedSection) -> dict[str, Path]:
    """The directories runtimed mounts into, by setting name."""
    return {"runtimed.run_dir": cfg.run_dir, "runtimed.root": cfg.root,
            "runtimed.pinns_dir": cfg.pinns_dir, "runtimed.pod_log_dir": cfg.pod_log_dir}


def check_propagation(dirs: dict[str, Path], mountinfo: Path = MOUNTINFO) -> None:
    """Make each directory, then require the mount it is on to be shared or a slave;
    FailedPrecondition naming every one that is not, with the commands that fix it."""
    bad: list[str] = []
    fixes: list[str] = []
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        mount = mount_of(path, mountinfo)
        if mount is None:
            raise FailedPrecondition(f"cannot read {mountinfo} to check mount propagation")
        if mount.shared or mount.slave:
            continue
        bad.append(f"{key} {path} is on mount {mount.point}, which is {mount.propagation}")
        fix = f"mount --bind {path} {path} && mount --make-rshared {path}"
        if fix not in fixes:
            fixes.append(fix)
    if bad:
        raise FailedPrecondition(
            "mounts made in runtimed's directories would not propagate to the host (pinned "
            "namespaces, shm, container root filesystems and logs would exist only in "
            "runtimed's mount namespace): " + "; ".join(bad) + ". Make them shared first, "
            "as root on the host: " + "; ".join(fixes))
