"""A pod's own user namespace on this host: pinned with the pod's IPC and UTS namespaces
inside it (`pod_namespaces`; netd makes the network namespace inside it too), and
the pod's mounts ID-mapped through it before the OCI runtime sees them
(`userns.idmap`): the rootfs is an overlay over ID-mapped lower layers with an upper
directory owned by the mapped root (`mount_overlay_idmapped`); volumes, bind mounts and
image volumes are ID-mapped clones under the bundle (`idmapped_clone`). A start-up probe
(`probe_idmap`) decides whether any of it is offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from crib_common.errors import Internal, InvalidArgument
from crib_common.models.imaged import Mount
from crib_common.nsholder import HolderError, IdMapping, NamespaceHolder, spawn_holder

from ..oci.mount import mount_all
from ..userns.idmap import IdmapError, idmapped_bind
from ..userns.mappings import PodUserns
from .namespaces import _libc, umount, unpin_namespaces

__all__ = ["idmapped_clone", "mount_overlay_idmapped", "pod_namespaces", "probe_idmap"]

# <linux/sched.h>, <sys/mount.h>
_CLONE_FS = 0x00000200
_CLONE_NEWUTS = 0x04000000
_MS_BIND = 4096
# The mapping the start-up probe ID-maps with: any range works; this one is out of the
# way of the kubelet's (65536 * n).
_PROBE_MAP = IdMapping(container_id=0, host_id=4_000_000_000, length=65536)




def _bind(source: str, target: Path) -> None:
    target.touch(exist_ok=True)
    if _libc.mount(source.encode(), str(target).encode(), None, ctypes.c_ulong(_MS_BIND),
                   None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pinning {source} at {target}: {os.strerror(err)}")


def _set_hostname_in(uts: Path, hostname: str) -> None:
    """In a thread of its own that ends afterwards: enter the pinned UTS namespace (a
    thread may; only user namespaces refuse threaded callers) and set the hostname."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(uts, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWUTS) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"entering {uts}: {os.strerror(err)}")
            finally:
                os.close(fd)
            socket.sethostname(hostname)
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=body, name="crib-uts", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _pin_sync(ns_dir: Path, pod: PodUserns, *, ipc: bool, uts: bool,
              hostname: str) -> tuple[NamespaceHolder, dict[str, str]]:
    ns_dir.mkdir(parents=True, exist_ok=True)
    kinds = ["user"] + (["ipc"] if ipc else []) + (["uts"] if uts else [])
    holder = spawn_holder(kinds)
    pinned: dict[str, str] = {}
    try:
        holder.write_maps(pod.uids, pod.gids)
        for kind in kinds:
            _bind(holder.ns_path(kind), ns_dir / kind)
            pinned[kind] = str(ns_dir / kind)
        if uts and hostname:
            _set_hostname_in(ns_dir / "uts", hostname)
    except BaseException:
        holder.release()
        raise
    return holder, pinned


@contextlib.asynccontextmanager
async def pod_namespaces(ns_dir: Path, pod: PodUserns, *, ipc: bool, uts: bool,
                         hostname: str) -> AsyncIterator[dict[str, str]]:
    """Pin the pod's user namespace with its mapping and, owned by it, its IPC and UTS
    namespaces (the hostname set), under `ns_dir`: {"user": path, "ipc": ..., ...}, and
    "held": the user namespace as /proc/<pid>/ns/user of the process holding it, valid
    in the block only. That one is for netd, which may live in another mount namespace
    than runtimed's pins (a private one under systemd's sandboxing, or a test's) but
    never in another PID namespace. The pins stay after the block. Internal with the
    reason when the kernel refuses; nothing stays pinned then."""
    try:
        holder, pinned = await asyncio.to_thread(_pin_sync, ns_dir, pod, ipc=ipc, uts=uts,
                                                 hostname=hostname)
    except (HolderError, OSError) as exc:
        unpin_namespaces(ns_dir)
        raise Internal(f"pinning the pod's user namespace: {exc}") from None
    try:
        yield {**pinned, "held": holder.ns_path("user")}
    finally:
        await asyncio.to_thread(holder.release)


# ---------------------------------------------------------------- ID-mapped mounts


def _open_userns(userns_path: str) -> int:
    return os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)


def idmapped_clone(source: str, target: Path, userns_path: str) -> None:
    """An ID-mapped clone of `source` (a directory or a file, with what is mounted
    below it) at `target`, created to match; InvalidArgument naming the source when
    its filesystem cannot be ID-mapped."""
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    fd = _open_userns(userns_path)
    try:
        idmapped_bind(source, target, fd)
    except IdmapError as exc:
        raise InvalidArgument(f"ID-mapping {source}: {exc.strerror}") from None
    finally:
        os.close(fd)


def mount_overlay_idmapped(mounts: list[Mount], target: Path, userns_path: str,
                           root: tuple[int, int], work: Path) -> None:
    """Mount imaged's overlay at `target` with every lower layer ID-mapped through the
    pod's user namespace (overlayfs takes ID-mapped layers since Linux 5.19), and the
    upper directory, the container's own, owned by the mapped root. The ID-mapped
    layers are attached under `work` only while the overlay is mounted: overlayfs
    keeps its own private clones, so they are detached right after."""
    out: list[Mount] = []
    attached: list[Path] = []
    try:
        for m in mounts:
            if m.type != "overlay":
                out.append(m)
                continue
            options: list[str] = []
            for opt in m.options:
                key, _, value = opt.partition("=")
                if key == "lowerdir":
                    mapped = []
                    for i, lower in enumerate(value.split(":")):
                        layer = work / f"l{i}"
                        idmapped_clone(lower, layer, userns_path)
                        attached.append(layer)
                        mapped.append(layer.name)  # relative to `work`: see below
                    options.append("lowerdir=" + ":".join(mapped))
                    continue
                if key == "upperdir":
                    os.chown(value, *root)
                options.append(opt)
            out.append(Mount(type=m.type, source=m.source, options=options))
        # The layers by their names in `work`, from there: mount(2) takes one page of
        # options, and the clones' full paths (under the bundle) passed it at about 35
        # layers; names keep 127 layers within a few hundred bytes.
        with _working_directory(work):
            mount_all(out, target)
    finally:
        # Never a recursive removal here: a layer that stayed attached would take the
        # shared layer store's files with it. Empty directories only.
        for layer in reversed(attached):
            with contextlib.suppress(OSError):
                umount(layer)
        for leftover in [*sorted(work.glob("l*"), reverse=True), work]:
            with contextlib.suppress(OSError):
                leftover.rmdir()


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """`path` as the working directory of this thread alone for the block (overlayfs
    resolves relative layer paths from the mounting thread's): CLONE_FS unshared first,
    so the rest of runtimed, and what it spawns meanwhile, keep theirs."""
    if _libc.unshare(_CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        before = os.open(".", flags)
    except OSError:  # the working directory is gone: back to / after
        before = os.open("/", flags)
    try:
        os.chdir(path)
        yield
    finally:
        os.fchdir(before)
        os.close(before)


# ---------------------------------------------------------------- start-up probe


def closed_ancestor(path: Path) -> Path | None:
    """The first directory on the way to `path` that others may not search: the
    container's root is an unprivileged host ID, and the OCI runtime reaches the rootfs
    and the bind mount sources under the state directory as that ID."""
    for d in [*reversed(path.parents), path]:
        try:
            if not os.stat(d).st_mode & 0o001:
                return d
        except OSError:
            return d
    return None


def _probe_sync(state_dir: Path) -> tuple[bool, str]:
    closed = closed_ancestor(state_dir)
    if closed is not None:
        return False, (f"{closed} is not searchable by others (o+x): a pod's root, an "
                       f"unprivileged host ID, could not reach {state_dir}")
    holder = spawn_holder(["user"])
    try:
        holder.write_maps([_PROBE_MAP], [_PROBE_MAP])
        probe_dir = Path(tempfile.mkdtemp(prefix=".idmap-probe-", dir=state_dir))
        try:
            target = probe_dir / "mnt"
            target.mkdir()
            (probe_dir / "owned").touch()
            fd = os.open(holder.ns_path("user"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                idmapped_bind(probe_dir, target, fd, recursive=False)
            finally:
                os.close(fd)
            try:
                uid = os.stat(target / "owned").st_uid
            finally:
                umount(target)
            expect = _PROBE_MAP.host_id + os.stat(probe_dir / "owned").st_uid
            if uid != expect:
                return False, (f"an ID-mapped mount of {state_dir} shows uid {uid}, not "
                               f"{expect}")
            return True, f"ID-mapped mounts of {state_dir} work"
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
    finally:
        holder.release()


async def probe_idmap(state_dir: Path) -> tuple[bool, str]:
    """Whether this kernel and the state directory's filesystem can do what pod user
    namespaces need: a user namespace with a mapping, and an ID-mapped mount of the
    state directory through it (as the conformance suite checks before its user
    namespace specs). (ok, what was found)."""
    try:
        return await asyncio.to_thread(_probe_sync, state_dir)
    except (HolderError, OSError) as exc:
        return False, f"ID-mapped mount probe on {state_dir} failed: {exc}"
