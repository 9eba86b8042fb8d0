"""Attach: a session wired to a running container's stdio through conmon.

conmon serves a SOCK_SEQPACKET attach socket (conmon `src/conn_sock.c`): every packet it
sends starts with one byte naming the pipe (2 stdout, 3 stderr; a tty is all stdout) and
whatever we send is written to the container's stdin. Terminal sizes go to conmon's control
FIFO as "1 <height> <width>\\n" (`src/ctrl.c`, WIN_RESIZE_EVENT). Closing our end detaches;
the container keeps running. When the container exits conmon closes the socket and the
stream ends with the container's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import structlog

from .session import StdioSession
from .status import exit_status, failure_status, success_status
from .targets import ContainerTarget, StreamTargets

__all__ = ["run_attach"]

log = structlog.get_logger("runtimed.streaming.attach")

# conmon's STDIO_BUF_SIZE (8192) plus the pipe byte.
PACKET_SIZE = 8192 + 1
PIPE_STDOUT = 2
PIPE_STDERR = 3
WIN_RESIZE_EVENT = 1
# How long to wait for conmon to record the exit after it closed the socket.
EXIT_CODE_TIMEOUT = 5.0


async def run_attach(target: ContainerTarget, targets: StreamTargets,
                     session: StdioSession) -> None:
    """Attach `session` to `target` until either side ends."""
    if target.attach_socket is None:
        await session.finish(failure_status("container has no attach socket"))
        return
    try:
        sock = await _connect(target.attach_socket)
    except OSError as e:
        log.warning("attach connect failed", container=target.id, error=str(e))
        await session.finish(failure_status(f"failed to attach to container: {e}"))
        return
    log.info("attached", container=target.id)
    tasks: list[asyncio.Task[Any]] = []
    try:
        output = asyncio.create_task(_pump_output(sock, session))
        gone = asyncio.create_task(session.closed.wait())
        tasks += [output, gone]
        if session.opts.stdin:
            tasks.append(asyncio.create_task(_pump_stdin(sock, session)))
        if session.opts.tty and target.ctl_fifo is not None:
            tasks.append(asyncio.create_task(_apply_resizes(target.ctl_fifo, session)))
        await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
        detached = not output.done()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
    if detached:
        log.info("detached", container=target.id)
        await session.abort()
        return
    code = await targets.container_exit_code(target.id, EXIT_CODE_TIMEOUT)
    log.info("attach ended", container=target.id, exit_code=code)
    await session.finish(success_status() if code is None else exit_status(code))


async def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    # Attach socket paths easily pass the 108-byte sun_path limit; connecting through
    # /proc/self/fd of the directory sidesteps it (conmon-rs `DialLongSocket`).
    dir_fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    try:
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dir_fd}/{path.name}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock


async def _pump_output(sock: socket.socket, session: StdioSession) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            packet = await loop.sock_recv(sock, PACKET_SIZE)
        except OSError:
            return
        if not packet:
            return
        if packet[0] == PIPE_STDOUT and session.opts.stdout:
            await session.write_stdout(packet[1:])
        elif packet[0] == PIPE_STDERR and session.opts.stderr:
            await session.write_stderr(packet[1:])


async def _pump_stdin(sock: socket.socket, session: StdioSession) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await session.read_stdin():
            # conmon reads at most STDIO_BUF_SIZE per packet.
            for off in range(0, len(data), PACKET_SIZE - 1):
                await loop.sock_sendall(sock, data[off:off + PACKET_SIZE - 1])
        if not session.closed.is_set():
            # End of stdin: half-close, as CRI-O does, so conmon closes a stdin_once stdin.
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        return


async def _apply_resizes(ctl_fifo: Path, session: StdioSession) -> None:
    while True:
        width, height = await session.resizes.get()
        line = f"{WIN_RESIZE_EVENT} {height} {width}\n".encode()
        with contextlib.suppress(OSError):
            fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
