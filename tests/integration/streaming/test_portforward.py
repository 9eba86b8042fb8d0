"""PortForward through the streaming server into a real network namespace."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from runtimed.streaming import PortForwardSpec, StreamServer
from tests.integration.streaming.nodes import FakeTargets, Node
from tests.support.streamclient import SpdyPortForward, ws_port_forward

pytestmark = pytest.mark.integration

ECHO, HELLO, CLOSED = 18080, 18081, 18099

# Runs inside the pod netns: an echo server (echo until EOF, then close) and a greeter.
SERVER = f"""
import socket, threading
def echo(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR); c.close()
def hello(c):
    c.sendall(b"hello from {HELLO}\\n"); c.close()
def serve(port, fn):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(16)
    while True:
        c, _ = s.accept(); threading.Thread(target=fn, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=({HELLO}, hello), daemon=True).start()
print("ready", flush=True)
serve({ECHO}, echo)
"""


@pytest.fixture(scope="module")
def pod_netns(node: Node) -> Iterator[str]:
    path = node.add_netns()
    proc = subprocess.Popen(["nsenter", f"--net={path}", sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.1)
        yield path
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def pod(server: tuple[StreamServer, FakeTargets], pod_netns: str) -> str:
    _, targets = server
    targets.sandboxes["crib-pod-1"] = pod_netns
    return "crib-pod-1"


async def test_spdy_two_parallel_connections_and_port_errors(
        server: tuple[StreamServer, FakeTargets], pod: str) -> None:
    srv, _ = server
    pf = await SpdyPortForward().connect(srv.url(PortForwardSpec(pod, ())))
    assert pf.protocol == "portforward.k8s.io"
    payloads = [os.urandom(3 * 1024 * 1024), os.urandom(2 * 1024 * 1024 + 17)]
    conns = [await pf.open(ECHO) for _ in payloads]

    async def roundtrip(conn, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
        reader = asyncio.create_task(conn.read_all())
        for off in range(0, len(data), 100_000):
            await conn.send(data[off:off + 100_000])
        await conn.close_write()
        return await reader

    echoed = await asyncio.gather(*(roundtrip(c, d) for c, d in zip(conns, payloads)))
    assert echoed == payloads
    # A port nobody listens on fails on its own error stream; the session goes on.
    bad = await pf.open(CLOSED)
    assert f"error forwarding port {CLOSED} to pod {pod}" in await bad.error_text()
    hello = await pf.open(HELLO)
    assert await hello.read_all() == f"hello from {HELLO}\n".encode()
    assert await hello.error_text() == ""
    await pf.close()
    for _ in range(100):
        if srv.active_sessions == 0:
            break
        await asyncio.sleep(0.02)
    assert srv.active_sessions == 0


async def test_websocket_two_ports(server: tuple[StreamServer, FakeTargets], pod: str) -> None:
    srv, _ = server
    async with ws_port_forward(srv.url(PortForwardSpec(pod, ())), [ECHO, HELLO]) as ws:
        data = os.urandom(300_000)
        await ws.send_bytes(b"\x00" + data)
        got = {0: bytearray(), 2: bytearray()}
        while len(got[0]) < len(data) or not got[2].endswith(b"\n"):
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            got[msg.data[0]].extend(msg.data[1:])
        assert bytes(got[0]) == data
        assert bytes(got[2]) == f"hello from {HELLO}\n".encode()


async def test_websocket_port_error(server: tuple[StreamServer, FakeTargets], pod: str) -> None:
    srv, _ = server
    async with ws_port_forward(srv.url(PortForwardSpec(pod, ())), [CLOSED]) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.data[0] == 1
        assert f"error forwarding port {CLOSED}" in msg.data[1:].decode()
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
