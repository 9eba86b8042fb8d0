"""Start conmon for a container, watch the exit directory, talk to the control FIFO.

conmon (containers/conmon) double-forks away from runtimed, runs `<runtime> create`,
holds the container's stdio, writes the CRI log (`-l k8s-file:<path>`), and at exit writes
the code to `<exit-dir>/<id>` and `<persist-dir>/exit`, so runtimed may die and come back
(conmon README). It reports the container's pid on the sync pipe named by `_OCI_SYNCPIPE`
as one JSON line `{"data": <pid>}` (a negative pid and "message" on failure).

Before conmon forks anything it waits on its start pipe (`_OCI_STARTPIPE`); runtimed
moves it into its own cgroup first (`cgroups.monitor`), so that no moment exists in which
a kill of runtimed's cgroup could take the monitor along.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import struct
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from crib_common.errors import DeadlineExceeded, FailedPrecondition
from crib_common.proc import DEVNULL, Child, wait_fd

from ..oci.runtime import without_warnings

__all__ = [
    "CgroupJoin",
    "Conmon",
    "ConmonSpec",
    "Monitor",
    "ExitWatcher",
    "control",
    "process_alive",
    "process_start_time",
    "read_exit_file",
    "start_conmon",
]

log = structlog.get_logger("crib.runtimed.conmon")

# conmon's control FIFO message types (src/ctrl.c): "<type> <height> <width>\n".
WIN_RESIZE_EVENT = 1
REOPEN_LOGS_EVENT = 2


@dataclass
class ConmonSpec:
    """What one conmon instance is started with."""

    conmon: str
    cid: str
    name: str
    runtime_path: str
    runtime_args: list[str]
    bundle: Path
    log_path: str
    exit_dir: Path
    socket_dir: Path
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_level: str = "info"
    log_size_max: int = 0
    # The monitor's own cgroup, a path under the cgroup root (`cgroups.monitor_cgroup`);
    # "" leaves it where runtimed is (unit tests).
    cgroup: str = ""

    @property
    def pidfile(self) -> Path:
        return self.bundle / "pidfile"

    @property
    def conmon_pidfile(self) -> Path:
        return self.bundle / "conmon.pid"

    @property
    def persist_dir(self) -> Path:
        return self.bundle / "persist"

    def argv(self) -> list[str]:
        args = [
            self.conmon, "--api-version", "1",
            "-c", self.cid, "-n", self.name, "-u", self.cid,
            "-r", self.runtime_path, "-b", str(self.bundle),
            "-p", str(self.pidfile), "-P", str(self.conmon_pidfile),
            "-l", f"k8s-file:{self.log_path}",
            "--exit-dir", str(self.exit_dir),
            "--persist-dir", str(self.persist_dir),
            "--socket-dir-path", str(self.socket_dir),
            "--log-level", self.log_level,
        ]
        for arg in self.runtime_args:
            args += ["--runtime-arg", arg]
        if self.tty:
            args.append("-t")
        if self.stdin:
            args.append("-i")
            if not self.stdin_once:
                args.append("--leave-stdin-open")
        if self.log_size_max > 0:
            args += ["--log-size-max", str(self.log_size_max)]
        return args


class Monitor(Protocol):
    """The per-container monitor as the lifecycles use it: it creates the container
    through the OCI runtime, holds its stdio and log, and records its exit in
    `<exit-dir>/<id>` (and `<bundle>/persist/exit`)."""

    async def start(self, spec: ConmonSpec, *, timeout: float = 60.0,
                    ready: asyncio.Event | None = None) -> tuple[int, int]:
        """Start it; (monitor pid, container pid) once the container is created. With
        `ready`, the monitor is started and placed in its cgroup at once but creates
        nothing until `ready` is set (the bundle's config.json written by then): the
        caller overlaps the placement with the rest of its setup, and cancels this to
        give up (the held monitor is killed)."""
    def alive(self, pid: int, started: int = 0) -> bool:
        """Process `pid` runs (and, when `started` is given, is the one that started
        then: after a reboot a recorded pid may name another process)."""
    def started(self, pid: int) -> int:
        """When process `pid` started (0 if it is gone), for a later `alive`."""
    async def wait(self, pid: int) -> None:
        """Return once process `pid` has ended (at once when there is none)."""
    def kill(self, pid: int) -> None:
        """SIGKILL the monitor with this pid, if it still is one."""
    def control(self, bundle: Path, msg_type: int) -> None: ...


# Moves a pid into a cgroup (path under the cgroup root) in every hierarchy
# (`ports.Host.join_cgroup`).
CgroupJoin = Callable[[str, int], object]


class Conmon:
    """`Monitor` through Debian's conmon; `join` places each one in its `spec.cgroup`."""

    def __init__(self, join: CgroupJoin | None = None) -> None:
        self.join = join

    async def start(self, spec: ConmonSpec, *, timeout: float = 60.0,
                    ready: asyncio.Event | None = None) -> tuple[int, int]:
        return await start_conmon(spec, timeout=timeout,
                                  join=self.join if spec.cgroup else None, ready=ready)

    def alive(self, pid: int, started: int = 0) -> bool:
        return process_alive(pid) and (not started or process_start_time(pid) == started)

    def started(self, pid: int) -> int:
        return process_start_time(pid)

    async def wait(self, pid: int) -> None:
        """Through a pidfd, which works for processes that are not our children (conmon
        double-forks away; a container's process is conmon's child)."""
        if pid <= 0:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # ESRCH: gone already
        try:
            if not process_alive(pid):
                return  # a zombie has ended too
            loop = asyncio.get_running_loop()
            ended: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)

    def kill(self, pid: int) -> None:
        """Only a live process whose command is conmon: a pid recorded long ago may
        belong to something else by now."""
        if pid <= 0 or not process_alive(pid):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"conmon" in cmdline.split(b"\0", 1)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def control(self, bundle: Path, msg_type: int) -> None:
        control(bundle, msg_type)


async def start_conmon(spec: ConmonSpec, *, timeout: float = 60.0,
                       join: CgroupJoin | None = None,
                       ready: asyncio.Event | None = None) -> tuple[int, int]:
    """Run conmon, which runs `<runtime> create`; returns (conmon pid, container pid).
    conmon is held on its start pipe until `join(spec.cgroup, pid)` has moved it (a
    failure kills it and is FailedPrecondition) and `ready` is set (`Monitor.start`)."""
    spec.persist_dir.mkdir(parents=True, exist_ok=True)
    spec.socket_dir.mkdir(parents=True, exist_ok=True)
    if spec.log_path:
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    argv = spec.argv()
    log.debug("conmon", argv=argv)
    r, w = os.pipe()
    os.set_blocking(r, False)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "_OCI_SYNCPIPE": str(w)}
    child_fds = [w]
    start_r = start_w = -1
    if join is not None or ready is not None:
        start_r, start_w = os.pipe()
        env["_OCI_STARTPIPE"] = str(start_r)
        child_fds.append(start_r)
    errfile = open(spec.bundle / "conmon.err", "wb")
    try:
        child = Child(argv, env=env, pass_fds=child_fds, stdin=DEVNULL, stdout=DEVNULL,
                      stderr=errfile, start_new_session=True,
                      # conmon writes its "oom" marker relative to its working directory.
                      cwd=str(spec.bundle))
    except BaseException:
        os.close(r)
        if start_w >= 0:
            os.close(start_w)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
        errfile.close()
    if start_w >= 0:
        await _release(child, spec, join, ready, start_w, r)
    try:
        async with asyncio.timeout(timeout):
            # The first conmon process exits as soon as its child has detached. (Its
            # stderr goes to a file: the detached child keeps inherited pipes open.)
            code = await child.wait()
            if code != 0:
                raise FailedPrecondition(
                    f"conmon for {spec.cid} failed ({code}): "
                    f"{_tail(spec.bundle / 'conmon.err')}")
            line = await _read_line(r)
    except TimeoutError:
        await child.reap()
        raise DeadlineExceeded(f"conmon did not create {spec.cid} within {timeout}s") from None
    except asyncio.CancelledError:
        await child.reap()
        raise
    finally:
        os.close(r)
    try:
        msg = json.loads(line)
    except ValueError:
        msg = {}
    pid = int(msg.get("data", -1)) if isinstance(msg, dict) else -1
    conmon_pid = _read_int(spec.conmon_pidfile)
    if pid <= 0:
        text = without_warnings(str(msg.get("message", ""))) if isinstance(msg, dict) else ""
        if not text:
            text = line.decode(errors="replace").strip() or (
                "conmon closed the sync pipe: " + _tail(spec.bundle / "conmon.err"))
        raise FailedPrecondition(f"creating container {spec.cid}: {text.strip()}")
    return conmon_pid, pid


async def _release(child: Child, spec: ConmonSpec, join: CgroupJoin | None,
                   ready: asyncio.Event | None, start_w: int, sync_r: int) -> None:
    """Move the waiting conmon into its cgroup, wait for `ready`, then let it go on (one
    byte on the start pipe). A move that fails, or a caller that gives up, kills it: a
    monitor left in runtimed's cgroup would die with runtimed.

    The move runs in a thread: the kernel makes the first cgroup.procs write after a quiet
    spell wait for an RCU grace period (cgroup_threadgroup_rwsem taken for writing; 10-15
    ms measured here), which must not stall the event loop; the writes to the other
    hierarchies that follow cost ~20 us each. A caller passing `ready` hides that wait
    behind the rest of its setup."""
    try:
        begun = time.perf_counter()
        try:
            if join is not None:
                await asyncio.to_thread(join, spec.cgroup, child.pid)
                log.debug("monitor placed", container=spec.cid, cgroup=spec.cgroup,
                          ms=round((time.perf_counter() - begun) * 1000, 3))
            if ready is not None:
                await ready.wait()
        except BaseException as exc:
            await child.reap()
            os.close(sync_r)
            if not isinstance(exc, OSError):
                raise
            raise FailedPrecondition(
                f"moving the monitor of {spec.cid} into cgroup {spec.cgroup}: "
                f"{exc.strerror} ({exc.filename or 'cgroup.procs'})") from None
        with contextlib.suppress(BrokenPipeError):  # conmon died: its exit status says why
            os.write(start_w, b"\0")
    finally:
        os.close(start_w)


async def _read_line(fd: int) -> bytes:
    """Read up to the first newline (or EOF) from a non-blocking pipe."""
    data = b""
    while b"\n" not in data:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            await wait_fd(fd)
            continue
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[-500:]
    except OSError:
        return ""


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def read_exit_file(path: Path) -> tuple[int, int] | None:
    """(exit code, finish time in unix ns) from a conmon exit file, None if absent."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError:
        return None
    if not text:
        return None  # conmon is still writing it; the close event follows
    try:
        code = int(text)
    except ValueError:
        code = -1
    return code, st.st_mtime_ns


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); 0 if gone. Pid plus start
    time names a process without the risk of pid reuse (CRI-O's ContainerMonitorProcess)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    rest = raw.rsplit(")", 1)[-1].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return 0


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = raw.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def control(bundle: Path, msg_type: int, height: int = 0, width: int = 0) -> None:
    """Send one message on conmon's control FIFO (`<bundle>/ctl`)."""
    path = bundle / "ctl"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            raise FailedPrecondition(f"conmon of {bundle.name} is not running") from None
        raise
    try:
        os.write(fd, f"{msg_type} {height} {width}\n".encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------------ exit watcher

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class ExitWatcher:
    """Calls `on_exit(cid)` when conmon writes `<exit-dir>/<cid>`: inotify through ctypes,
    plus a slow sweep in case an event was lost (queue overflow) or inotify is missing."""

    def __init__(self, exit_dir: Path, on_exit: Callable[[str], Awaitable[None]],
                 sweep_interval: float = 2.0) -> None:
        self.exit_dir = exit_dir
        self.on_exit = on_exit
        self.sweep_interval = sweep_interval
        self._fd = -1
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._seen: dict[str, int] = {}

    async def start(self) -> None:
        self.exit_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            wd = libc.inotify_add_watch(fd, str(self.exit_dir).encode(),
                                        _IN_CLOSE_WRITE | _IN_MOVED_TO)
            if wd < 0:
                os.close(fd)
                raise OSError(ctypes.get_errno(), "inotify_add_watch")
            self._fd = fd
            loop.add_reader(fd, self._readable)
        except OSError as exc:
            log.warning("inotify unavailable, polling exits", error=str(exc))
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if name:
                self._dispatch(name.decode(errors="replace"))

    def _dispatch(self, cid: str) -> None:
        if cid.startswith("."):
            return
        task = asyncio.create_task(self._handle(cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, cid: str) -> None:
        # An exit is handled under a timeout with retries, so one stuck runtime call does
        # not lose it (CRI-O handleExit, containerd handleEventTimeout).
        for attempt in range(3):
            try:
                async with asyncio.timeout(30):
                    await self.on_exit(cid)
                return
            except Exception:
                log.exception("handling exit failed", container=cid, attempt=attempt)
                await asyncio.sleep(0.5 * (attempt + 1))

    def sweep(self) -> list[str]:
        """Exit files present now (recovery calls this at start)."""
        try:
            return [e.name for e in os.scandir(self.exit_dir) if not e.name.startswith(".")]
        except OSError:
            return []

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            present = self.sweep()
            for gone in set(self._seen) - set(present):
                del self._seen[gone]
            for cid in present:
                try:
                    mtime = os.stat(self.exit_dir / cid).st_mtime_ns
                except OSError:
                    continue
                if self._seen.get(cid) != mtime:
                    self._seen[cid] = mtime
                    self._dispatch(cid)
