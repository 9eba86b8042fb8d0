"""kubectl (client-go's SPDY and WebSocket executors, an implementation we did not write)
against our streaming server, through a minimal API server stand-in (apiserver.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtimed.streaming import StreamServer
from tests.integration.streaming.apiserver import FakeApiServer
from tests.integration.streaming.nodes import FakeTargets, Node

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"),
]

# client-go picks the transport by these (kubectl 1.30+ defaults to WebSocket first).
SPDY_ENV = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
            "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
WS_ENV = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true"}


@pytest.fixture
async def api(node: Node, server: tuple[StreamServer, FakeTargets],
              tmp_path: Path) -> AsyncIterator[tuple[FakeApiServer, Path]]:
    srv, _ = server
    fake = await FakeApiServer(srv).start()
    try:
        yield fake, fake.kubeconfig(tmp_path / "kubeconfig")
    finally:
        await fake.stop()


async def kubectl(kubeconfig: Path, env: dict[str, str], *args: str, stdin: bytes = b"",
                  timeout: float = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(kubeconfig.parent), **env})
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.mark.parametrize("env", [SPDY_ENV, WS_ENV], ids=["spdy", "websocket"])
async def test_kubectl_exec(node: Node, api: tuple[FakeApiServer, Path],
                            env: dict[str, str]) -> None:
    fake, kubeconfig = api
    cid = node.run(["sleep", "3600"]).id
    fake.pods["web"] = (cid, "")
    code, out, err = await kubectl(kubeconfig, env, "exec", "web", "--", "sh", "-c",
                                   "echo out; echo err >&2; exit 3")
    assert (code, out, err.count(b"err\n")) == (3, b"out\n", 1), (err, fake.requests)
    code, out, _ = await kubectl(kubeconfig, env, "exec", "-i", "web", "--", "cat",
                                 stdin=b"piped through stdin\n")
    assert (code, out) == (0, b"piped through stdin\n")
    # No silent fallback: each kubectl used the transport it was told to.
    want = "spdy/3.1" if env is SPDY_ENV else "websocket"
    assert fake.upgrades == [want, want], fake.upgrades


@pytest.mark.parametrize("env", [SPDY_ENV, {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "true"}],
                         ids=["spdy", "spdy-over-websocket"])
async def test_kubectl_port_forward(node: Node, server: tuple[StreamServer, FakeTargets],
                                    api: tuple[FakeApiServer, Path],
                                    env: dict[str, str]) -> None:
    srv, targets = server
    fake, kubeconfig = api
    netns = node.add_netns()
    script = ("import socket\ns=socket.socket();s.bind(('127.0.0.1',18555));s.listen(4)\n"
              "print('ready',flush=True)\nwhile True:\n c,_=s.accept();d=c.recv(100)\n"
              " c.sendall(b'pong:'+d);c.close()\n")
    pod_server = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", script],
                                  stdout=subprocess.PIPE)
    targets.sandboxes["sb-1"] = netns
    fake.pods["web"] = ("", "sb-1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    forward = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig), "port-forward", "pod/web",
        f"{local}:18555", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(kubeconfig.parent), **env})
    try:
        assert pod_server.stdout is not None and pod_server.stdout.readline() == b"ready\n"
        assert forward.stdout is not None
        line = await asyncio.wait_for(forward.stdout.readline(), 30)
        assert b"Forwarding from" in line, line
        for word in (b"one", b"two"):
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            writer.write(word)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b"pong:" + word
            writer.close()
        want = "spdy/3.1" if env is SPDY_ENV else "websocket"
        assert set(fake.upgrades) == {want}, fake.upgrades
    finally:
        forward.kill()
        await forward.wait()
        pod_server.kill()
        pod_server.wait()
    deadline = time.monotonic() + 5
    while srv.active_sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert srv.active_sessions == 0


@pytest.mark.parametrize("env", [SPDY_ENV, WS_ENV], ids=["spdy", "websocket"])
async def test_kubectl_attach(node: Node, api: tuple[FakeApiServer, Path],
                              env: dict[str, str]) -> None:
    fake, kubeconfig = api
    c = node.run_conmon(["sh", "-c", 'while read l; do [ "$l" = quit ] && exit 4; '
                         'echo "got $l"; done'], tty=False)
    fake.pods["web"] = (c.id, "")
    code, out, err = await kubectl(kubeconfig, env, "attach", "-i", "web",
                                   stdin=b"hello\nquit\n")
    assert b"got hello\n" in out, (out, err)
    assert code == 4, (code, err)


@pytest.mark.parametrize("env", [SPDY_ENV, WS_ENV], ids=["spdy", "websocket"])
async def test_kubectl_exec_tty_resize(node: Node, api: tuple[FakeApiServer, Path],
                                       env: dict[str, str]) -> None:
    """kubectl on a real terminal sends its size, and again on SIGWINCH."""
    import fcntl
    import struct
    import termios

    fake, kubeconfig = api
    cid = node.run(["sleep", "3600"]).id
    fake.pods["web"] = (cid, "")
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    # setsid --ctty: the pty must be kubectl's controlling terminal for SIGWINCH to reach it.
    proc = await asyncio.create_subprocess_exec(
        "setsid", "--ctty", "kubectl", "--kubeconfig", str(kubeconfig), "exec", "-it", "web",
        "--", "sh", stdin=slave, stdout=slave, stderr=slave,
        env={**os.environ, "HOME": str(kubeconfig.parent), **env})
    os.close(slave)
    os.set_blocking(master, False)
    seen = bytearray()

    async def expect(needle: bytes) -> None:
        deadline = time.monotonic() + 20
        while needle not in seen:
            assert time.monotonic() < deadline, bytes(seen)
            try:
                seen.extend(os.read(master, 65536))
            except BlockingIOError:
                await asyncio.sleep(0.02)

    try:
        await asyncio.sleep(1.0)
        os.write(master, b"stty size\r")
        await expect(b"33 111")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 99, 0, 0))
        await asyncio.sleep(0.5)
        os.write(master, b"stty size\r")
        await expect(b"44 99")
        os.write(master, b"exit 6\r")
        assert await asyncio.wait_for(proc.wait(), 20) == 6
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
