"""Nothing is left behind: file descriptors, child processes, exec'd processes, sessions."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from runtimed.streaming import AttachSpec, ExecSpec, PortForwardSpec, StreamServer
from tests.integration.streaming.nodes import RUNC, FakeTargets, Node
from tests.support.streamclient import SpdyPortForward, open_stdio

pytestmark = pytest.mark.integration


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children() -> list[str]:
    pid = os.getpid()
    kids: list[str] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += f.read().split()
    return kids


async def _settle(srv: StreamServer) -> None:
    for _ in range(200):
        if srv.active_sessions == 0 and not _children():
            return
        await asyncio.sleep(0.02)


async def test_no_leaks_after_many_sessions(node: Node,
                                            server: tuple[StreamServer, FakeTargets]) -> None:
    srv, targets = server
    sleeper = node.run(["sleep", "3600"]).id
    attachable = node.run_conmon(["sh", "-c", "while read l; do echo $l; done"], tty=False)
    targets.sandboxes["crib-pod-leak"] = None  # host netns, to a port nobody listens on
    # Warm up once so lazily created loop resources are not counted as leaks.
    await (await open_stdio(srv.url(ExecSpec(sleeper, ("true",), False, True, True, False)),
                            "ws")).wait()
    await _settle(srv)
    fds, kids = _fds(), _children()
    for transport in ("spdy", "ws"):
        for tty in (False, True):
            client = await open_stdio(
                srv.url(ExecSpec(sleeper, ("sh", "-c", "echo x; sleep 30"), True, True,
                                 not tty, tty)), transport, stdin=True, stderr=not tty,
                tty=tty)
            await client.wait_output(b"x")
            await client.close()  # abandoned mid-run: the exec'd sleep must die
            client = await open_stdio(
                srv.url(ExecSpec(sleeper, ("echo", "y"), False, True, True, False)),
                transport)
            assert (await client.wait()).stdout == b"y\n"
        client = await open_stdio(
            srv.url(AttachSpec(attachable.id, True, True, True, False)), transport, stdin=True)
        await client.write(b"ping\n")
        await client.wait_output(b"ping\n")
        await client.close()
    pf = await SpdyPortForward().connect(srv.url(PortForwardSpec("crib-pod-leak", ())))
    conn = await pf.open(1)
    assert "error forwarding port 1" in await conn.error_text()
    await pf.close()
    await _settle(srv)
    assert srv.active_sessions == 0
    assert _children() == kids
    assert _fds() <= fds
    assert len(node.processes(sleeper)) == 1  # only the container's own sleep
    assert node.state(attachable.id) == "running"


@pytest.mark.parametrize("transport", ["spdy", "ws"])
async def test_container_killed_ends_exec_with_its_code(
        node: Node, server: tuple[StreamServer, FakeTargets], transport: str) -> None:
    srv, _ = server
    c = node.run(["sleep", "3600"])
    client = await open_stdio(srv.url(ExecSpec(c.id, ("sh", "-c", "echo up; sleep 100"),
                                               False, True, True, False)), transport)
    await client.wait_output(b"up")
    subprocess.run([RUNC, "--root", str(node.runc_root), "kill", c.id, "KILL"], check=True)
    result = await client.wait(timeout=20)
    assert result.exit_code == 137  # 128 + SIGKILL, as the runtime reports it
    await _settle(srv)
    assert srv.active_sessions == 0


async def test_server_stop_kills_running_execs(node: Node,
                                               server: tuple[StreamServer, FakeTargets]) -> None:
    srv, _ = server
    c = node.run(["sleep", "3600"])
    kids = _children()  # other fixtures (a session registry) may have children of their own
    clients = []
    for transport, tty in (("spdy", False), ("ws", True)):
        client = await open_stdio(srv.url(ExecSpec(c.id, ("sh", "-c", "echo up; sleep 300"),
                                                   False, True, not tty, tty)),
                                  transport, stderr=not tty, tty=tty)
        await client.wait_output(b"up")
        clients.append(client)
    assert len(node.processes(c.id)) >= 3
    await srv.stop()  # as runtimed does on SIGTERM
    assert srv.active_sessions == 0
    assert len(node.processes(c.id)) == 1
    assert _children() == kids
    for client in clients:
        await client.close()


@pytest.mark.parametrize("transport", ["spdy", "ws"])
async def test_idle_session_is_closed_and_its_process_killed(node: Node,
                                                             transport: str) -> None:
    from crib_common.settings import RuntimedSection

    c = node.run(["sleep", "3600"])
    srv = StreamServer(RuntimedSection(stream_idle_timeout=2.0), FakeTargets(node))
    await srv.start()
    try:
        # Output every 0.2 s keeps a session alive well past the timeout...
        busy = await open_stdio(srv.url(ExecSpec(
            c.id, ("sh", "-c", "for i in $(seq 1 20); do echo t$i; sleep 0.2; done"),
            False, True, True, False)), transport)
        assert (await busy.wait(timeout=20)).exit_code == 0
        # ...a silent one is closed once idle, and its exec'd process killed.
        quiet = await open_stdio(srv.url(ExecSpec(c.id, ("sh", "-c", "echo up; sleep 300"),
                                                  False, True, True, False)), transport)
        await quiet.wait_output(b"up")
        assert len(node.processes(c.id)) >= 2
        for _ in range(200):
            if srv.active_sessions == 0:
                break
            await asyncio.sleep(0.05)
        assert srv.active_sessions == 0
        await _settle(srv)
        assert len(node.processes(c.id)) == 1  # only the container's own sleep
        await quiet.close()
    finally:
        await srv.stop()
