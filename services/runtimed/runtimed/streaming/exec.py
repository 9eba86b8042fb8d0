"""Exec: run a command in a running container through the OCI runtime, wired to a session.

Without a tty: `<runtime> --root R exec --pid-file P <id> <cmd...>` with pipes; the runtime
hands the pipes to the process and exits with its code.

With a tty: the runtime is started as the session leader of a pty we allocate
(`setsid --ctty`), runs `exec --tty`, proxies its own terminal to the pty it creates inside
the container, and forwards SIGWINCH: a TIOCSWINSZ on our master makes the kernel signal it
and it copies the new size inside (runc `tty.go` `resize`). CRI-O runs exec the same way
(`pty.Start` of `runc exec --tty`).

Either way `--pid-file` gives the host PID of the exec'd process, so a client that goes away
has its process killed: a killed runtime alone would leave it running in the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import tempfile
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from crib_common.proc import DEVNULL, PIPE, Child, wait_fd

from .session import StdioSession
from .status import exit_status, failure_status
from .targets import ContainerTarget

__all__ = ["run_exec"]

log = structlog.get_logger("runtimed.streaming.exec")

_Writer = Callable[[bytes], Awaitable[None]]

SETSID = "/usr/bin/setsid"
READ_SIZE = 64 * 1024
# After the process exits, how long its output may stay idle before we stop waiting for a
# descendant that keeps the pipe open (output still flowing to a slow client is waited for).
OUTPUT_GRACE = 10.0


class _Progress:
    """When output last moved; shared by the pumps and the supervisor."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.writing = 0  # pumps blocked on a slow client count as moving

    def mark(self) -> None:
        self.at = time.monotonic()

    def idle(self) -> float:
        return 0.0 if self.writing else time.monotonic() - self.at


async def run_exec(target: ContainerTarget, cmd: list[str], session: StdioSession) -> None:
    """Run `cmd` in `target`, stream it through `session`, and finish with its status."""
    with tempfile.TemporaryDirectory(prefix="crib-exec-") as tmp:
        pid_file = Path(tmp) / "pid"
        argv = [target.runtime_path, "--root", str(target.runtime_root),
                *target.runtime_args, "exec", "--pid-file", str(pid_file)]
        if session.opts.tty:
            argv.append("--tty")
        argv += [target.id, *cmd]
        log.debug("exec", argv=argv)
        started = time.monotonic()
        try:
            if session.opts.tty:
                code = await _exec_tty(argv, pid_file, session)
            else:
                code = await _exec_pipes(argv, pid_file, session)
        except OSError as e:
            log.warning("exec failed", container=target.id, error=str(e))
            await session.finish(failure_status(f"error executing command in container: {e}"))
            return
    if code is None:
        log.info("exec ended by client", container=target.id)
        await session.abort()
        return
    log.info("exec finished", container=target.id, exit_code=code,
             seconds=round(time.monotonic() - started, 4))
    await session.finish(exit_status(code))


def _exit_code(returncode: int) -> int:
    # A process killed by signal N reports 128+N, as shells and kubelet's runtimes do.
    return 128 - returncode if returncode < 0 else returncode


async def _exec_pipes(argv: list[str], pid_file: Path, session: StdioSession) -> int | None:
    opts = session.opts
    child = Child(argv, stdin=PIPE if opts.stdin else DEVNULL,
                  stdout=PIPE if opts.stdout else DEVNULL,
                  stderr=PIPE if opts.stderr else DEVNULL)
    try:
        tasks: list[asyncio.Task[None]] = []
        outputs: list[asyncio.Task[None]] = []
        progress = _Progress()
        if child.stdin is not None:
            tasks.append(asyncio.create_task(
                _pump_stdin_fd(session, child.stdin.fileno(), on_eof=child.stdin.close)))
        for stream, write in ((child.stdout, session.write_stdout),
                              (child.stderr, session.write_stderr)):
            if stream is not None:
                outputs.append(asyncio.create_task(
                    _pump_fd(stream.fileno(), write, progress)))
        return await _supervise(child, pid_file, session, tasks, outputs, progress)
    finally:
        child.close_pipes()


async def _supervise(child: Child, pid_file: Path, session: StdioSession,
                     tasks: list[asyncio.Task[None]], outputs: list[asyncio.Task[None]],
                     progress: _Progress) -> int | None:
    """Wait for the process and its output, or for the client to leave (then kill)."""
    waiter = asyncio.create_task(child.wait())
    gone: asyncio.Task[Any] = asyncio.create_task(session.closed.wait())
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            return None
        pending: set[asyncio.Task[Any]] = set(outputs)
        while pending and not gone.done():
            _, pending = await asyncio.wait(pending | {gone}, timeout=1.0,
                                            return_when=asyncio.FIRST_COMPLETED)
            pending.discard(gone)
            if pending and progress.idle() > OUTPUT_GRACE:
                log.warning("exec output still open after exit; closing")
                break
        if gone.done() and pending:
            return None
        await session.close_output()
        return _exit_code(waiter.result())
    finally:
        if child.returncode is None:
            _kill_exec(pid_file, child)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), 10)
        for task in (*tasks, *outputs, gone, waiter):
            task.cancel()
        await asyncio.gather(*tasks, *outputs, gone, waiter, return_exceptions=True)


def _kill_exec(pid_file: Path, child: Child) -> None:
    """Kill the exec'd process (host PID from the pid file), then the runtime."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
    child.kill()


async def _pump_fd(fd: int, write: _Writer, progress: _Progress) -> None:
    """Copy a non-blocking fd to `write` until EOF (a pty master reports EOF as EIO)."""
    while True:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            await wait_fd(fd)
            continue
        except OSError as e:
            if e.errno == errno.EIO:  # every slave holder is gone: end of output
                return
            raise
        if not chunk:
            return
        progress.writing += 1
        try:
            await write(chunk)
        finally:
            progress.writing -= 1
            progress.mark()


async def _pump_stdin_fd(session: StdioSession, fd: int,
                         on_eof: Callable[[], None] | None = None) -> None:
    """Copy the session's stdin to a non-blocking fd; at its end call `on_eof`."""
    while data := await session.read_stdin():
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                await wait_fd(fd, writable=True)
            except OSError:  # the process closed its stdin
                return
    if on_eof is not None:
        with contextlib.suppress(OSError):
            on_eof()


# -- tty ----------------------------------------------------------------------------------

async def _exec_tty(argv: list[str], pid_file: Path, session: StdioSession) -> int | None:
    master, slave = os.openpty()
    try:
        _set_winsize(master, 80, 24)
        os.set_blocking(master, False)
        child = Child([SETSID, "--ctty", *argv], stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        # Only the runtime may hold the slave, or we never see EIO when it is done.
        os.close(slave)
    try:
        tasks = [asyncio.create_task(_pump_stdin_fd(session, master)),
                 asyncio.create_task(_apply_resizes(session, master))]
        progress = _Progress()
        outputs = [asyncio.create_task(_pump_fd(master, session.write_stdout, progress))]
        return await _supervise(child, pid_file, session, tasks, outputs, progress)
    finally:
        os.close(master)


def _set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def _apply_resizes(session: StdioSession, master: int) -> None:
    while True:
        width, height = await session.resizes.get()
        with contextlib.suppress(OSError):
            _set_winsize(master, width, height)
