"""Persistent network namespaces, pinned by a bind mount, made without `ip netns`.

A namespace is created in a short-lived helper thread: the thread calls
`unshare(CLONE_NEWNET)` (namespaces are per task, so only that thread moves), brings the
new namespace's `lo` up, and bind-mounts its own `/proc/self/task/<tid>/ns/net` onto an
empty file under `netns_dir`. The bind mount keeps the namespace alive after the thread
exits and after netd dies, exactly as `ip netns add` does; runtimed hands the path to the
OCI runtime (`linux.namespaces[].path`). The thread is never reused, so no other code ever
runs in the pod's namespace by accident.

As iproute2 does, `netns_dir` itself is made a shared mount point (bind-mounted onto
itself if it is not a mount point yet), so a pin that is unmounted here also disappears
from mount namespaces that copied it, and removal never fails with EBUSY later.

A pod with its own user namespace (hostUsers: false) gets a network namespace owned by
it, so the pod's root may configure it and mount sysfs: the kernel lets no threaded
process enter a user namespace, so a helper process (`crib_common.nsholder`) joins the
pod's user namespace and unshares the network namespace there; netd pins that one the
same way and brings `lo` up from a fresh thread that enters it.

A pin is recognised as one when its inode lives on nsfs: it has the same `st_dev` as our
own `/proc/self/ns/net`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from crib_common.nsholder import HolderError, spawn_holder

__all__ = ["NetnsError", "NamespaceManager", "is_pinned_netns", "is_user_namespace"]

# <linux/sched.h>, <sys/mount.h>
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
# <linux/nsfs.h>: _IO(NSIO, 0x3), NSIO 0xb7
NS_GET_NSTYPE = 0xB703
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

T = TypeVar("T")


class NetnsError(OSError):
    """A namespace could not be created or removed; the message names the path."""


def _check(ret: int, what: str, path: Path | str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{what} {path}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> int:
    return int(_libc.mount(source.encode() if source is not None else None, target.encode(),
                           fstype.encode() if fstype is not None else None, flags, None))


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def is_pinned_netns(path: Path) -> bool:
    """True when `path` is a bind mount of a network namespace (an nsfs inode)."""
    try:
        return path.stat().st_dev == _nsfs_dev()
    except OSError:
        return False


def is_user_namespace(path: Path) -> bool:
    """True when `path` is a user namespace (a pin of one, or /proc/<pid>/ns/user)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # NS_GET_NSTYPE (linux/nsfs.h: _IO(0xb7, 0x3)) answers CLONE_NEWUSER for one.
        return os.stat(fd).st_dev == _nsfs_dev() and \
            fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWUSER
    except OSError:
        return False
    finally:
        os.close(fd)


def _set_lo_up() -> None:
    """Bring `lo` up in the calling thread's namespace (kubelet expects a working lo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _pin_new_netns(target: Path) -> None:
    """Runs in a dedicated thread that dies afterwards: unshare, lo up, bind-mount."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) for", target)
    _set_lo_up()
    tid = threading.get_native_id()
    _check(_mount(f"/proc/self/task/{tid}/ns/net", str(target), None, MS_BIND),
           "bind-mounting the new namespace on", target)


def _pin_userns_netns(target: Path, userns: str) -> None:
    """A network namespace owned by the user namespace pinned at `userns`, made by a
    holder process (see the module docstring), pinned at `target`."""
    try:
        holder = spawn_holder(["net"], join_userns=userns)
    except HolderError as exc:
        raise NetnsError(exc.errno or errno.EINVAL,
                         f"creating a network namespace in user namespace {userns}: "
                         f"{exc.strerror or exc}") from None
    try:
        _check(_mount(holder.ns_path("net"), str(target), None, MS_BIND),
               "bind-mounting the new namespace on", target)
    finally:
        holder.release()


def _lo_up_in(target: Path) -> None:
    """Runs in a dedicated thread that dies afterwards: enter the pinned namespace,
    bring lo up."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "entering", target)
    finally:
        os.close(fd)
    _set_lo_up()


async def _in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a new OS thread that exits afterwards, and await its outcome."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def body() -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=body, name="crib-netns", daemon=True).start()
    return await future


class NamespaceManager:
    """Creates, lists and removes pinned namespaces under one directory."""

    def __init__(self, netns_dir: Path, prefix: str = "crib-") -> None:
        self.dir = netns_dir
        self.prefix = prefix
        self._prepared = False

    def path_for(self, pod_id: str) -> Path:
        """The pin of a pod's namespace; derived from the pod id so it is found again."""
        return self.dir / f"{self.prefix}{pod_id}"

    def prepare(self) -> None:
        """Create `netns_dir` and make it a shared mount point (as `ip netns add` does)."""
        if self._prepared:
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        target = str(self.dir)
        made_bind = False
        while _mount("none", target, None, MS_SHARED | MS_REC) != 0:
            err = ctypes.get_errno()
            # EINVAL: not a mount point yet; bind it onto itself once and retry.
            if err != errno.EINVAL or made_bind:
                raise NetnsError(err, f"making {target} a shared mount: {os.strerror(err)}")
            _check(_mount(target, target, None, MS_BIND | MS_REC), "bind-mounting", target)
            made_bind = True
        self._prepared = True

    async def create(self, pod_id: str, userns: str = "") -> Path:
        """Create and pin a new namespace for `pod_id` (owned by the user namespace
        pinned at `userns`, when given); an existing pin is reused."""
        self.prepare()
        path = self.path_for(pod_id)
        if is_pinned_netns(path):
            return path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.close(fd)
        except FileExistsError:
            pass  # a leftover empty file from a crash between create and mount
        try:
            if userns:
                await asyncio.to_thread(_pin_userns_netns, path, userns)
                await _in_fresh_thread(lambda: _lo_up_in(path))
            else:
                await _in_fresh_thread(lambda: _pin_new_netns(path))
        except BaseException:
            self._remove_sync(path)
            raise
        return path

    async def remove(self, path: Path) -> None:
        """Unpin and delete a namespace file; a missing one is success."""
        await asyncio.to_thread(self._remove_sync, path)

    @staticmethod
    def _remove_sync(path: Path) -> None:
        # Detach, not a plain umount: a process still inside the namespace keeps it, but the
        # pin goes away at once.
        if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise NetnsError(err, f"unmounting {path}: {os.strerror(err)}")
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NetnsError(exc.errno or errno.EIO, f"removing {path}: {exc.strerror}") from None

    def list(self) -> list[Path]:
        """Every crib pin (or leftover file) under `netns_dir`."""
        try:
            return sorted(p for p in self.dir.iterdir() if p.name.startswith(self.prefix))
        except FileNotFoundError:
            return []
