"""Pin a pod's IPC and UTS namespaces with bind mounts, without an infra container.

Like CRI-O's pinns: a short-lived `unshare --ipc=<file> --uts=<file>` creates the
namespaces and bind-mounts /proc/<pid>/ns/* onto the files (util-linux's persistent
namespaces), and `hostname` run inside sets the pod's hostname. Containers then join
the files by path. Removing the pod unmounts the files, which frees the namespaces once
no process is left in them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from crib_common.errors import Internal

from ..oci.runtime import run_command

__all__ = ["lost_pins", "pin_namespaces", "unpin_namespaces", "umount", "is_mountpoint",
           "mounts_under"]

_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


async def pin_namespaces(ns_dir: Path, *, ipc: bool, uts: bool, hostname: str,
                         timeout: float = 10.0) -> dict[str, str]:
    """Create and pin the asked namespaces under `ns_dir`; returns {"ipc": path, ...}."""
    if not ipc and not uts:
        return {}
    ns_dir.mkdir(parents=True, exist_ok=True)
    argv = ["unshare"]
    pinned: dict[str, str] = {}
    for kind, wanted in (("ipc", ipc), ("uts", uts)):
        if wanted:
            path = ns_dir / kind
            path.touch(exist_ok=True)
            argv.append(f"--{kind}={path}")
            pinned[kind] = str(path)
    hostname_bin = shutil.which("hostname")
    if uts and hostname and hostname_bin:
        argv += [hostname_bin, hostname]
    else:
        argv += ["true"]
    res = await run_command(argv, timeout=timeout)
    if res.returncode != 0:
        unpin_namespaces(ns_dir)
        raise Internal(f"pinning namespaces: {res.stderr.decode(errors='replace').strip()}")
    return pinned


def umount(path: str | Path) -> None:
    """Lazy unmount; not mounted is fine."""
    rc = _libc.umount2(str(path).encode(), _MNT_DETACH)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise OSError(err, f"umount {path}: {os.strerror(err)}")


def unpin_namespaces(ns_dir: Path) -> None:
    """Unmount and remove the pins; missing ones are fine (idempotent)."""
    for kind in ("ipc", "uts", "pid"):
        path = ns_dir / kind
        if path.exists():
            umount(path)
            with contextlib.suppress(OSError):
                path.unlink()
    with contextlib.suppress(OSError):
        ns_dir.rmdir()


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below `prefix` (deepest first)."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) > 4:
            target = parts[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):
                out.append(target)
    return sorted(set(out), key=len, reverse=True)


def is_mountpoint(path: str | Path) -> bool:
    return str(path) in mounts_under(str(path))


def lost_pins(pins: dict[str, str]) -> list[str]:
    """The kinds ("ipc", "uts") of `pins` whose file no longer holds a namespace: gone, or
    no longer a mount point (unmounted behind runtimed's back, or a copy seen from another
    mount namespace after a restart). Two stats per pin, no mount table: a bind-mounted
    namespace file is on nsfs, another device than its directory."""
    lost = []
    for kind, path in pins.items():
        try:
            mounted = os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
        except OSError:
            mounted = False
        if not mounted:
            lost.append(kind)
    return lost
