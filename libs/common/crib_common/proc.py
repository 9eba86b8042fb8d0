"""Child processes for the daemons: runc, crun, conmon, CNI plugins, exec sessions.

A child is started with `subprocess.Popen`, which forks with vfork: its cost does not grow
with the daemon's heap. The event loop's own subprocess support forks the whole daemon
first; under uvloop that costs about 10 ms more per child from a daemon of 60 MB
(measured here: /bin/true 12.4 ms through `asyncio.create_subprocess_exec`, 1.3 ms this
way), and a pod's lifecycle starts a dozen children. The exit is awaited through a pidfd
on the event loop (a thread waits on kernels without pidfd); pipes are read and written
non-blocking through the loop's readers and writers.

`run()` is the one-shot form (argv in, exit status and captured output out, a deadline);
`Child` is for callers that wire stdio themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["DEVNULL", "PIPE", "Child", "Completed", "read_fd", "run", "wait_fd"]

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
_CHUNK = 1 << 16


@dataclass
class Completed:
    """A finished child: its exit status (negative: killed by that signal) and output."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def wait_fd(fd: int, writable: bool = False) -> None:
    """Until `fd` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def read_fd(fd: int, cap: int | None = None) -> bytes:
    """Everything from a non-blocking fd up to EOF, keeping at most `cap` bytes (the rest
    is read and dropped, so that the writer never blocks on a full pipe)."""
    chunks: list[bytes] = []
    kept = 0
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            await wait_fd(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        if cap is None:
            chunks.append(chunk)
        elif kept < cap:
            chunk = chunk[:cap - kept]
            chunks.append(chunk)
            kept += len(chunk)


class Child:
    """A started child process. Pipes asked for with PIPE are non-blocking file objects
    (`stdin`, `stdout`, `stderr`); the caller closes them with `close_pipes`."""

    def __init__(self, argv: Sequence[str], *, stdin: int | IO[Any] | None = DEVNULL,
                 stdout: int | IO[Any] | None = PIPE, stderr: int | IO[Any] | None = PIPE,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 pass_fds: Sequence[int] = (), start_new_session: bool = False) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
            pass_fds=tuple(pass_fds), start_new_session=start_new_session, close_fds=True)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes] | None:
        return self.popen.stdout

    @property
    def stderr(self) -> IO[bytes] | None:
        return self.popen.stderr

    async def wait(self) -> int:
        """The exit status, once the child has exited (and is reaped)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            fd = os.pidfd_open(self.popen.pid)
        except OSError:  # no pidfd (kernel < 5.3): a thread waits instead
            return await asyncio.to_thread(self.popen.wait)
        try:
            await wait_fd(fd)  # readable once the process has exited
        finally:
            os.close(fd)
        return self.popen.wait()

    def kill(self) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()

    async def reap(self) -> None:
        """Kill and wait, even when the caller is being cancelled: no zombie is left."""
        self.kill()
        await asyncio.shield(self.wait())

    def close_pipes(self) -> None:
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _input_fd(data: bytes) -> int:
    """An in-memory file (memfd) holding `data`, positioned at its start: a child that exits
    before reading all of it is no broken pipe on our side, and no writer task is needed."""
    fd = os.memfd_create("crib-stdin", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def run(argv: Sequence[str], *, timeout: float | None, input: bytes | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None,
              cap: int | None = None) -> Completed:
    """Run argv to its end and capture stdout and stderr (each at most `cap` bytes).

    Past `timeout` seconds the child is killed and reaped and TimeoutError raised; a
    cancelled caller kills and reaps it too."""
    stdin_fd = _input_fd(input) if input is not None else None
    try:
        child = Child(argv, stdin=stdin_fd if stdin_fd is not None else DEVNULL,
                      env=env, cwd=cwd)
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)
    assert child.stdout is not None and child.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            out, err, code = await asyncio.gather(
                read_fd(child.stdout.fileno(), cap), read_fd(child.stderr.fileno(), cap),
                child.wait())
    except BaseException:
        await child.reap()
        raise
    finally:
        child.close_pipes()
    return Completed(code, out, err)
