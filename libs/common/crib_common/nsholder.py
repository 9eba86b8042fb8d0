"""A short-lived process that holds new namespaces while their creator pins them.

A daemon is multithreaded, and the kernel lets no multithreaded process join or create a
user namespace (setns(2), unshare(2): EINVAL). So user namespaces, and namespaces that
must be owned by one, are made by a helper process: util-linux's `unshare` (and
`nsenter` to join a user namespace first) execs `cat`, which holds them until its stdin
closes. The daemon, still root in the host's namespaces, writes the ID maps and
bind-mounts `/proc/<pid>/ns/<kind>` where the namespaces should stay; then it lets the
holder go. Nothing else ever runs inside.

runtimed pins a pod's user namespace this way (with its IPC and UTS namespaces, owned by
it); netd creates the pod's network namespace inside that user namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KINDS", "HolderError", "IdMapping", "NamespaceHolder", "format_map", "spawn_holder"]


class HolderError(OSError):
    """The holder could not be started, or its namespaces did not appear in time; the
    message carries the tool's own words."""


@dataclass(frozen=True)
class IdMapping:
    """One line of /proc/<pid>/uid_map or gid_map (user_namespaces(7)): `length` IDs
    from `container_id` inside map to `host_id` outside."""

    container_id: int
    host_id: int
    length: int


def format_map(mappings: Sequence[IdMapping]) -> str:
    """The text written to uid_map/gid_map: "inside outside length" per line."""
    return "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in mappings)


# The kinds a holder makes: `unshare --<kind>` and /proc/<pid>/ns/<kind> agree on these.
KINDS = ("user", "ipc", "uts", "net")


def _ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


class NamespaceHolder:
    """A running holder: its namespaces are at `/proc/<pid>/ns/<kind>` until `release`."""

    def __init__(self, proc: subprocess.Popen[bytes], argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv
        self.pid = proc.pid

    def ns_path(self, kind: str) -> str:
        return f"/proc/{self.pid}/ns/{kind}"

    def wait_unshared(self, kinds: Sequence[str], timeout: float) -> None:
        """Until every namespace in `kinds` differs from ours (the tool has made or
        joined them); HolderError with the tool's stderr if it died or took too long."""
        ours = {k: _ns_inode("self", k) for k in kinds}
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(_ns_inode(self.pid, k) != ours[k] for k in kinds):
                    return
            except OSError:
                pass  # between exec and exec, or gone: the poll below tells
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stop(timeout=1.0)
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(
                    errors="replace").strip()
                self.release()
                raise HolderError(f"namespace holder ({' '.join(self.argv)}) "
                                     f"failed: {err or 'timed out'}")
            time.sleep(0.0005)

    def write_maps(self, uids: Sequence[IdMapping], gids: Sequence[IdMapping]) -> None:
        """The user namespace's ID maps, written once from outside (as root here, so
        setgroups(2) stays allowed inside, as the OCI runtimes need)."""
        for name, mappings in (("uid_map", uids), ("gid_map", gids)):
            try:
                with open(f"/proc/{self.pid}/{name}", "w") as f:
                    f.write(format_map(mappings))
            except OSError as exc:
                raise HolderError(exc.errno or 0,
                                  f"writing {name} {format_map(mappings).strip()!r}: "
                                  f"{exc.strerror}") from None

    def release(self, timeout: float = 5.0) -> None:
        """Let the holder exit (stdin closed; killed after `timeout`) and reap it."""
        self._stop(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def _stop(self, timeout: float) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn_holder(unshare: Sequence[str], *, join_userns: str = "",
                 timeout: float = 5.0) -> NamespaceHolder:
    """Start `cat` in new namespaces of the kinds in `unshare` ("user", "ipc", "uts",
    "net"), inside the user namespace pinned at `join_userns` when one is given (then
    the new ones are owned by it). Returns once they exist."""
    unknown = [k for k in unshare if k not in KINDS]
    if unknown or not unshare:
        raise HolderError(f"namespace holder: kinds {list(unshare)!r}; each one of "
                             f"{', '.join(KINDS)}")
    argv: list[str] = []
    if join_userns:
        # nsenter becomes root (0) of the joined namespace, so `unshare` keeps its
        # capabilities there across exec.
        argv += [shutil.which("nsenter") or "nsenter", f"--user={join_userns}", "--"]
    argv += [shutil.which("unshare") or "unshare", *(f"--{k}" for k in unshare), "--",
             shutil.which("cat") or "cat"]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, close_fds=True)
    except OSError as exc:
        raise HolderError(exc.errno or 0, f"starting {argv[0]}: {exc.strerror}") from None
    holder = NamespaceHolder(proc, argv)
    holder.wait_unshared(list(unshare) + (["user"] if join_userns else []), timeout)
    return holder
