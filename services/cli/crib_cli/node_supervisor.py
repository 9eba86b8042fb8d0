"""crib-node: an optional launcher that runs the four daemons as forks of one parent.

Each daemon alone is a Python process whose interpreter state (asyncio, uvloop, aiohttp,
pydantic, structlog, betterproto and the generated CRI types) costs ~33 MiB of private
memory before any crib code; four of them idle take ~175 MiB PSS (issue 14). crib-node
imports every daemon's modules once, freezes the objects out of the collector's reach
(`gc.freeze`, so collections in the children do not write to the shared pages), and forks
one child per daemon. The children share those pages copy-on-write until they write them.

What a child is: the daemon's normal `main` (same settings, sockets, logs, signals), in its
own session, named `crib-<daemon>` (/proc/<pid>/comm) and recorded in
`<pid-dir>/<daemon>.pid` exactly as `scripts/up.sh` records a per-process daemon.

Supervision, as a state machine per daemon:

    absent --fork--> running(child) --exit--> absent   (fork again at once, or after
                                                        a backoff if it keeps dying)
    absent --adopt (pid file names a live crib-<daemon>)--> running(adopted)
    running --crib-node SIGTERM--> stopping --exit or STOP_TIMEOUT (then SIGKILL)--> gone

A daemon is watched through a pidfd, whether it is our child or was adopted, so a
crib-node killed with SIGKILL leaves the daemons serving (no PR_SET_PDEATHSIG, children in
their own sessions) and a crib-node started again adopts them instead of starting twins.
Containers are never touched: conmon outlives runtimed as it does today.

The parent starts no event loop, opens no socket and starts no thread before forking: a
fork copies only the calling thread, and a lock held by another thread would stay locked
forever in the child.
"""

from __future__ import annotations

import sys

# As in the daemons' own __main__: structlog imports rich, when installed, for console
# tracebacks; the daemons log JSON lines and would carry ~3 MiB of it (issue 14).
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

import argparse
import contextlib
import ctypes
import fcntl
import gc
import importlib
import logging
import os
import random
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .node_memory import drop_file_pages, plug_free_blocks

__all__ = ["DAEMONS", "NODE", "PRELOAD", "comm_of", "main", "pid_of", "restart_delay"]

# Start order; stop is all at once (each daemon drains on its own SIGTERM).
DAEMONS = ("netd", "imaged", "runtimed", "gateway")
NODE = "node"
# The module whose `main()` is each daemon's console script (pyproject.toml).
MAINS = {
    "netd": "netd.__main__",
    "imaged": "imaged.__main__",
    "runtimed": "runtimed.__main__",
    "gateway": "cri_gateway.__main__",
}
# What the daemons otherwise load on first use (betterproto and the CRI types through
# crib_common.wire, the runtime stubs the gateway and runtimed talk through): loaded here
# once, their pages are shared instead of being copied into each daemon that uses them.
PRELOAD = (
    "uvloop",
    "aiohttp.web",
    "crib_common.wire",
    "crib_common.cri.runtime.v1",
    "crib_common.settings",
    "crib_common.logging",
    "crib_common.server",
    *MAINS.values(),
)
PID_DIR = Path("/run/crib")
# As scripts/down.sh and `crib restart`: SIGTERM gets this long to drain, then SIGKILL.
STOP_TIMEOUT = 10.0
# A child that lived less than this counts as "keeps dying" and is forked again after a
# growing delay (BACKOFF_FIRST doubling up to BACKOFF_MAX), as systemd's RestartSec would.
MIN_UPTIME = 10.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
# linux/prctl.h
PR_SET_NAME = 15

log = structlog.get_logger("crib.node")


@dataclass
class Watched:
    """One daemon slot: the process serving it (ours or adopted), or when to fork it."""

    name: str
    pid: int = 0
    pidfd: int = -1
    child: bool = False  # forked by this crib-node, so ours to reap
    started: float = 0.0
    failures: int = 0  # quick deaths in a row
    fork_at: float | None = None  # monotonic time of the next fork while absent


@dataclass
class Supervisor:
    pid_dir: Path
    log_dir: Path | None
    daemons: tuple[str, ...] = DAEMONS
    slots: dict[str, Watched] = field(default_factory=dict)
    wake_r: int = -1
    wake_w: int = -1
    lock_fd: int = -1
    stopping: bool = False

    # ------------------------------------------------------------------ set-up
    def lock(self) -> None:
        """One crib-node per pid dir: a second one would fork twins of every daemon.

        flock, not the pid file alone: the kernel drops it when crib-node dies, however
        it dies. The children close their inherited copy first thing, or a surviving
        daemon would keep the lock of a dead crib-node."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.pid_dir / "node.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = pid_of(self.pid_dir, NODE)
            raise SystemExit(f"crib-node: already running for {self.pid_dir} (pid {other})")
        self.lock_fd = fd
        _write_pid(self.pid_dir, NODE, os.getpid())

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        # A Python-level handler, so the wakeup fd fires when a child ends.
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_stop(self, _sig: int, _frame: object) -> None:
        self.stopping = True

    def adopt_or_schedule(self) -> None:
        """Adopt each daemon a pid file names and that still runs; fork the others."""
        now = time.monotonic()
        for name in self.daemons:
            slot = self.slots[name] = Watched(name)
            pid = pid_of(self.pid_dir, name)
            fd = _pidfd_of(pid, name) if pid else -1
            if fd >= 0:
                slot.pid, slot.pidfd, slot.child, slot.started = pid, fd, False, now
                log.info("daemon adopted", daemon=name, pid=pid)
            else:
                slot.fork_at = now

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        while not self.stopping:
            now = time.monotonic()
            forked = False
            for slot in self.slots.values():
                if slot.pid == 0 and slot.fork_at is not None and slot.fork_at <= now:
                    self._fork(slot)
                    forked = True
            if forked:
                drop_file_pages()
            self._wait(self._next_timeout())
            self._reap_ended()
        return self._stop_all()

    def _next_timeout(self) -> float | None:
        due = [s.fork_at for s in self.slots.values() if s.pid == 0 and s.fork_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _wait(self, timeout: float | None) -> None:
        fds = [s.pidfd for s in self.slots.values() if s.pidfd >= 0] + [self.wake_r]
        with contextlib.suppress(InterruptedError):
            select.select(fds, [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass

    def _reap_ended(self) -> None:
        for slot in self.slots.values():
            if slot.pidfd < 0 or not _readable(slot.pidfd):
                continue
            status = self._collect(slot)
            lived = time.monotonic() - slot.started
            slot.failures = slot.failures + 1 if lived < MIN_UPTIME else 0
            delay = restart_delay(slot.failures)
            slot.fork_at = time.monotonic() + delay
            _remove_pid(self.pid_dir, slot.name, slot.pid)
            log.warning("daemon ended", daemon=slot.name, pid=slot.pid, status=status,
                        lived_s=round(lived, 3), restart_in_s=round(delay, 3))
            slot.pid = 0

    def _collect(self, slot: Watched) -> str:
        """Close the pidfd; reap the child if it was ours. Returns how it ended."""
        how = "unknown (adopted)"
        if slot.child:
            with contextlib.suppress(ChildProcessError):
                _pid, status = os.waitpid(slot.pid, 0)
                how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"exit {os.WEXITSTATUS(status)}")
        os.close(slot.pidfd)
        slot.pidfd = -1
        return how

    # ------------------------------------------------------------------ fork
    def _fork(self, slot: Watched) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become(slot.name)  # never returns
        slot.pid, slot.child, slot.started, slot.fork_at = pid, True, time.monotonic(), None
        slot.pidfd = os.pidfd_open(pid)
        _write_pid(self.pid_dir, slot.name, pid)
        log.info("daemon forked", daemon=slot.name, pid=pid, attempt=slot.failures + 1)

    def _become(self, name: str) -> None:
        """In the child: drop what must not be shared with the parent, then run `main`."""
        code = 1
        try:
            os.setsid()  # a signal to crib-node's process group does not reach the daemons
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd in [self.wake_r, self.wake_w, self.lock_fd,
                       *(s.pidfd for s in self.slots.values())]:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            random.seed()  # the parent's state would give every daemon the same sequence
            logging.getLogger().handlers.clear()  # the daemon's main configures its own
            structlog.contextvars.clear_contextvars()
            _set_comm(f"crib-{name}")
            sys.argv = [f"crib-{name}"]
            if self.log_dir is not None:
                _redirect_output(self.log_dir / f"{name}.log")
            gc.enable()
            main_fn: Callable[[], None] = importlib.import_module(MAINS[name]).main
            main_fn()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    # ------------------------------------------------------------------ stop
    def _stop_all(self) -> int:
        """SIGTERM every daemon (ours and adopted), wait for them (bounded), then exit."""
        live = [s for s in self.slots.values() if s.pidfd >= 0]
        log.info("stopping", daemons={s.name: s.pid for s in live})
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(slot.pidfd, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while live and time.monotonic() < deadline:
            with contextlib.suppress(InterruptedError):
                select.select([s.pidfd for s in live], [], [], deadline - time.monotonic())
            live = [s for s in live if not _readable(s.pidfd) or self._ended(s)]
        for slot in live:
            log.warning("daemon did not stop in time, killing", daemon=slot.name, pid=slot.pid)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
            select.select([slot.pidfd], [], [], 5.0)
            self._ended(slot)
        _remove_pid(self.pid_dir, NODE, os.getpid())
        log.info("stopped")
        return 0

    def _ended(self, slot: Watched) -> bool:
        """Record a stopped daemon; False, so the filter above drops it."""
        status = self._collect(slot)
        _remove_pid(self.pid_dir, slot.name, slot.pid)
        log.info("daemon stopped", daemon=slot.name, pid=slot.pid, status=status)
        return False


# ---------------------------------------------------------------------- helpers


def restart_delay(quick_deaths: int) -> float:
    """Seconds before forking a daemon again: at once after a crash that follows a good
    run (or a first one), then BACKOFF_FIRST doubling up to BACKOFF_MAX while it keeps
    dying within MIN_UPTIME of its start."""
    if quick_deaths <= 1:
        return 0.0
    return min(BACKOFF_FIRST * 2.0 ** (quick_deaths - 2), BACKOFF_MAX)


def pid_of(pid_dir: Path, name: str) -> int:
    """The pid `<pid_dir>/<name>.pid` records, or 0."""
    try:
        return int((pid_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def comm_of(pid: int) -> str:
    """/proc/<pid>/comm, "" for a process that is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return ""
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, IndexError):
        return ""


def _pidfd_of(pid: int, name: str) -> int:
    """A pidfd for `pid` if it is a live crib-<name>, else -1.

    Opened first and checked after: once open, the pidfd names that process even if the
    pid is reused, so what was checked is what is watched."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return -1
    # comm is "crib-<name>" whether the daemon was forked here (prctl) or started from its
    # console script (the kernel names a process after the script it executes).
    if comm_of(pid) != f"crib-{name}"[:15] or _readable(fd):
        os.close(fd)
        return -1
    return fd


def _readable(fd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def _write_pid(pid_dir: Path, name: str, pid: int) -> None:
    tmp = pid_dir / f".{name}.pid.tmp"
    tmp.write_text(f"{pid}\n")
    tmp.rename(pid_dir / f"{name}.pid")


def _remove_pid(pid_dir: Path, name: str, pid: int) -> None:
    """Remove the pid file if it still names `pid` (a restart may have rewritten it)."""
    if pid_of(pid_dir, name) == pid:
        with contextlib.suppress(FileNotFoundError):
            (pid_dir / f"{name}.pid").unlink()


def _set_comm(name: str) -> None:
    """Name the process as its console script would be named (ps, pgrep, `crib restart`)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _redirect_output(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def preload() -> None:
    """Import every daemon's modules once; fail if that started a thread (see module doc)."""
    for module in PRELOAD:
        importlib.import_module(module)
    threads = len(os.listdir("/proc/self/task"))
    if threading.active_count() != 1 or threads != 1:
        raise SystemExit(f"crib-node: importing the daemons started {threads - 1} thread(s); "
                         "forking now would be unsafe")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crib-node", description=__doc__.split("\n")[0])
    parser.add_argument("--pid-dir", type=Path, default=PID_DIR,
                        help="where each daemon's pid file is kept (as scripts/up.sh)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="append each daemon's output to <dir>/<daemon>.log "
                             "(default: crib-node's own stdout/stderr, e.g. the journal)")
    parser.add_argument("--daemons", default=",".join(DAEMONS),
                        help="comma-separated subset of " + ",".join(DAEMONS))
    args = parser.parse_args(argv)
    daemons = tuple(d for d in args.daemons.split(",") if d)
    unknown = set(daemons) - set(DAEMONS)
    if unknown:
        parser.error(f"unknown daemon(s): {', '.join(sorted(unknown))}")

    from crib_common.server import daemon_settings

    # As the `gc.freeze` documentation advises: no collection between the imports and the
    # fork. A collection frees objects all over the heap, and the children's allocations
    # would then fill those holes, copying the shared pages they sit in; the cyclic
    # garbage of the imports instead stays, frozen and shared (measured with
    # bench/bench_node.py: 3 MiB less idle, 6 MiB less after 200 pod lifecycles).
    gc.disable()
    preload()
    # Settings and logging after the imports, not before: what reading the settings and
    # configuring logging leave behind the first time (library caches, specialised
    # bytecode) is then in the frozen, shared image, and each daemon, which runs the same
    # code first thing, writes fewer of the shared pages (bench/bench_node.py, /proc/<pid>/
    # smaps: 3.5 MiB less private dirty memory over crib-node and its four daemons).
    daemon_settings(NODE)
    gc.freeze()
    gc.enable()  # what the parent allocates from now on is its own; the frozen set is skipped
    # A collection now traverses nothing (all is frozen) but empties the interpreter's
    # free lists (dicts, lists, tuples, floats) into the pools, where the plugging below
    # takes their blocks: a daemon would otherwise reuse them, in shared pages, first.
    gc.collect()
    plug_free_blocks()  # bench/bench_node.py: 20 pods 112.7 -> 108.7 MiB PSS
    supervisor = Supervisor(args.pid_dir, args.log_dir, daemons)
    supervisor.lock()
    supervisor.install_signals()
    supervisor.adopt_or_schedule()
    raise SystemExit(supervisor.run())


if __name__ == "__main__":
    main()
